"""AUTOMATIC1111's prompt syntax: emphasis, ``BREAK`` and ``<lora:name:weight>``, parsed into weighted text.

Pure Python (no Keras, no numpy): the parser sits at the bottom of the library beside the tokenizer, and
``sd_keras.prompts`` turns its output into token chunks and text-encoder contexts.

What the syntax means (AUTOMATIC1111 wiki, "Features": "Attention/emphasis" and "BREAK"):

- ``(text)`` multiplies the attention paid to ``text`` by 1.1, ``[text]`` divides it by 1.1, and
  ``(text:1.5)`` multiplies it by 1.5 (any decimal number, signed or not; spaces around it are allowed).
  Brackets nest and their factors multiply: ``((text))`` is 1.21, ``((text:1.3))`` is 1.43.
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` stand for the literal characters ``(``, ``)``, ``[``, ``]`` and
  ``\\``; any other backslash is kept as written.
- Unbalanced brackets are read as AUTOMATIC1111 reads them: a ``(`` or ``[`` never closed weights everything after
  it to the end of the prompt (``"(unbalanced"`` is ``unbalanced`` at 1.1); a ``)`` or ``]`` with no open bracket of
  its kind, and ``:1.2)`` outside round brackets, are plain text.
- ``BREAK`` (upper case, as a word of its own) ends the current 75-token chunk: the text after it starts a new one.
  Unlike AUTOMATIC1111, where a ``BREAK`` inside brackets is weighted like text and so no longer breaks, ``BREAK``
  breaks wherever it appears.
- ``<lora:name:weight>`` (``<lora:name>`` is weight 1.0) asks for the LoRA file ``name`` at that strength; it is
  taken out of the text wherever it appears, before emphasis is read. AUTOMATIC1111's other extra networks
  (``<hypernet:...>``, separate text-encoder/UNet weights ``<lora:name:0.8:0.5>``) are refused with an
  ``InputError`` rather than dropped silently.
- Neighbouring pieces of equal weight are joined (``(unnecessary)(parens)`` is one piece, ``unnecessaryparens``,
  at 1.1), as AUTOMATIC1111 does before it tokenizes each piece separately.

Weights are computed as AUTOMATIC1111 computes them, by multiplying floats innermost bracket first, so
``a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).`` gives ``house`` exactly ``1.5730000000000004``.
Prompt editing (``[from:to:when]``) and alternation (``[a|b]``) are not part of this syntax here: their
brackets and colons are read as emphasis and text.

Example:
    >>> parsed = parse_prompt("a (red:1.3) [cat] BREAK on a mat <lora:fluffy:0.8>")
    >>> parsed.pieces
    (('a ', 1.0), ('red', 1.3), (' ', 1.0), ('cat', 0.9090909090909091), ('BREAK', None), ('on a mat ', 1.0))
    >>> parsed.loras
    (LoraReference(name='fluffy', weight=0.8),)
"""

from __future__ import annotations

import dataclasses
import re

from sd_keras.errors import InputError

__all__ = ["BREAK", "LoraReference", "ParsedPrompt", "parse_prompt", "parse_emphasis", "extract_loras",
           "ROUND_BRACKET_FACTOR", "SQUARE_BRACKET_FACTOR"]

ROUND_BRACKET_FACTOR = 1.1
SQUARE_BRACKET_FACTOR = 1 / 1.1

# A BREAK marker among the pieces: its weight is None (text pieces always have a float weight).
BREAK = ("BREAK", None)

# One lexical unit of the emphasis syntax, longest alternatives first.
_UNIT = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])              # \( \) \[ \] \\  -> the literal character
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))   # :1.3)  closes a round bracket with that weight
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+ | : | \\)       # everything else, a lone colon, a lone backslash
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
# AUTOMATIC1111's extra-network form: <type:arguments>, the type a word.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclasses.dataclass(frozen=True)
class LoraReference:
    """A ``<lora:name:weight>`` tag: the LoRA's file name (no folder, no extension) and its strength."""

    name: str
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ParsedPrompt:
    """A prompt read with AUTOMATIC1111's syntax.

    Attributes:
        pieces: ``(text, weight)`` pairs in prompt order; ``BREAK`` (``("BREAK", None)``) where a chunk ends.
        loras: the ``<lora:...>`` tags, in prompt order.
    """

    pieces: tuple
    loras: tuple = ()


def extract_loras(prompt: str) -> tuple[str, tuple[LoraReference, ...]]:
    """Take ``<lora:name>`` / ``<lora:name:weight>`` tags out of ``prompt``.

    Returns:
        The prompt without the tags, and the tags in order.

    Raises:
        InputError: a tag's weight is not a number, it has more than one weight, its name is empty, or the tag is
            another kind of extra network.

    Example:
        >>> extract_loras("a cat <lora:fluffy> on a mat <lora:film grain:0.5>")
        ('a cat  on a mat ', (LoraReference(name='fluffy', weight=1.0), LoraReference(name='film grain', weight=0.5)))
    """
    loras = []

    def take(match):
        kind, arguments = match.group(1), match.group(2)
        if kind != "lora":
            raise InputError(f"prompt: {match.group(0)!r} is an extra network of kind {kind!r}; only "
                             "<lora:name:weight> is supported")
        name, *weights = arguments.split(":")
        if not name.strip():
            raise InputError(f"prompt: {match.group(0)!r} has no LoRA name")
        if len(weights) > 1:
            raise InputError(f"prompt: {match.group(0)!r} gives {len(weights)} weights; separate text-encoder and "
                             "UNet weights are not supported, give one: <lora:name:weight>")
        weight = _number(weights[0], match.group(0)) if weights else 1.0
        loras.append(LoraReference(name.strip(), weight))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tuple(loras)


def parse_emphasis(text: str) -> list:
    """Split ``text`` into ``(text, weight)`` pieces by AUTOMATIC1111's emphasis rules, ``BREAK`` marked.

    See the module docstring for the rules. An empty prompt gives ``[("", 1.0)]``.

    Raises:
        InputError: a ``(text:weight)`` weight is not a number (``(cat:1.2.3)``).

    Example:
        >>> parse_emphasis("an (important) word")
        [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
        >>> parse_emphasis(r"\\(literal\\]")
        [('(literal]', 1.0)]
    """
    pieces = []  # [text, weight] lists while the brackets are read; weight None marks BREAK
    open_round, open_square = [], []  # index in ``pieces`` where each open bracket's text starts

    def multiply(start, factor):
        for piece in pieces[start:]:
            if piece[1] is not None:
                piece[1] *= factor

    def add_text(value):
        for index, part in enumerate(_BREAK_WORD.split(value)):
            if index:
                pieces.append(list(BREAK))
            pieces.append([part, 1.0])

    for unit in _UNIT.finditer(text):
        if unit.group("escape"):
            pieces.append([unit.group("escape")[1], 1.0])
        elif unit.group("open") == "(":
            open_round.append(len(pieces))
        elif unit.group("open") == "[":
            open_square.append(len(pieces))
        elif unit.group("weight") and open_round:
            multiply(open_round.pop(), _number(unit.group("number"), unit.group(0)))
        elif unit.group("close") == ")" and open_round:
            multiply(open_round.pop(), ROUND_BRACKET_FACTOR)
        elif unit.group("close") == "]" and open_square:
            multiply(open_square.pop(), SQUARE_BRACKET_FACTOR)
        else:
            add_text(unit.group(0))
    # brackets never closed weight the rest of the prompt, innermost last as they were opened
    for start in open_round:
        multiply(start, ROUND_BRACKET_FACTOR)
    for start in open_square:
        multiply(start, SQUARE_BRACKET_FACTOR)

    merged = []
    for text_piece, weight in pieces:
        if not text_piece:
            continue  # only BREAK leaves empty text beside it; it tokenizes to nothing
        if merged and weight is not None and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text_piece, weight)
        else:
            merged.append((text_piece, weight))
    return merged or [("", 1.0)]


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Read ``prompt`` with AUTOMATIC1111's syntax: LoRA tags out, then emphasis and ``BREAK``.

    Raises:
        InputError: ``prompt`` is not a string, or a weight or LoRA tag cannot be read.

    Example:
        >>> parse_prompt("((cat))").pieces
        (('cat', 1.2100000000000002),)
    """
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    text, loras = extract_loras(prompt)
    return ParsedPrompt(tuple(parse_emphasis(text)), loras)


def _number(value, where):
    try:
        return float(value)
    except ValueError:
        raise InputError(f"prompt: {where!r}: {value.strip()!r} is not a number") from None
