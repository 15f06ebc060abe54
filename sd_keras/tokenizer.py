"""CLIP byte-pair-encoding tokenizer: the text front end of Stable Diffusion.

Turns prompts into the ``(batch, 77)`` int32 token ids that the CLIP text encoder reads. The ids are the
same as KerasCV's ``SimpleTokenizer`` (and so OpenAI CLIP's tokenizer without ftfy) on every input,
which is what makes a prompt and a seed give the same image here and in KerasCV. The module is pure
Python (stdlib + numpy) and is the executable specification of the Kotlin port in ``android_demo/core``.

Algorithm, step by step (each step is a function below):

1. ``clean_text``: HTML-unescape twice, collapse whitespace runs to one space, strip, lowercase.
2. ``pre_tokenize``: split the cleaned text into pieces: the literal special tokens, the contractions
   ``'s 't 're 've 'm 'll 'd``, runs of letters, single digits, runs of other non-space characters.
3. Each piece is written as its UTF-8 bytes, each byte mapped to one printable character
   (``bytes_to_unicode``), and the piece's last symbol gets the end-of-word marker ``</w>``.
4. BPE: repeatedly merge the adjacent pair of symbols that comes first in the merges file, until no
   adjacent pair is a merge. Every resulting symbol is a vocabulary entry.

The vocabulary (49408 entries) is derived from the merges file: the 256 byte characters, the same 256 with
``</w>``, the first 48894 merges concatenated, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Example:
    >>> tokenizer = CLIPTokenizer()
    >>> tokenizer.encode("a photo of a cat")
    [320, 1125, 539, 320, 2368]
    >>> tokenizer("a photo of a cat").shape
    (1, 77)
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import operator
import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sd_keras.errors import InputError, InputTypeError

__all__ = [
    "CLIPTokenizer",
    "TokenizedPrompts",
    "PromptTruncatedWarning",
    "bytes_to_unicode",
    "clean_text",
    "pre_tokenize",
    "read_merges",
    "DEFAULT_MERGES_PATH",
    "MERGES_SHA256",
]

DEFAULT_MERGES_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

NUM_MERGES = 48894
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
START_OF_TEXT_ID = 49406
END_OF_TEXT_ID = 49407
END_OF_WORD = "</w>"

# Unicode's White_Space property: what CLIP's ``\s`` matches. Spelled out because Python's
# ``str.isspace`` also accepts U+001C..U+001F, which CLIP treats as symbols inside the text.
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WHITE_SPACE_RUN = re.compile("[" + "".join(sorted(WHITE_SPACE)) + "]+")

_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
# CLIP matches its pattern case-insensitively after lowercasing. The only effect left after lowercasing:
# U+017F LATIN SMALL LETTER LONG S case-folds to "s", so it can spell a contraction or a special token.
_FOLD = str.maketrans({"\u017f": "s"})
# U+0345 COMBINING GREEK YPOGEGRAMMENI case-folds to a letter, so under case-insensitive matching it
# is neither a letter nor "other": no part of CLIP's pattern matches it and it is dropped.
_DROPPED = "\u0345"

_LETTER, _NUMBER, _OTHER, _SKIPPED = "letter", "number", "other", "skipped"

_CACHE_LIMIT = 50_000


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder reads; the tail was dropped."""


@dataclasses.dataclass(frozen=True)
class TokenizedPrompts:
    """Padded token ids of a batch of prompts, and what truncation did to them.

    Attributes:
        ids: ``(batch, context_length)`` int32: start token, content tokens, end token, padding.
        truncated: ``(batch,)`` bool: True where content tokens were dropped to fit.
        num_tokens: ``(batch,)`` int32: content tokens of each prompt before truncation (no start/end).
    """

    ids: np.ndarray
    truncated: np.ndarray
    num_tokens: np.ndarray

    @property
    def any_truncated(self) -> bool:
        """Whether any prompt of the batch was truncated."""
        return bool(self.truncated.any())


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte 0..255 to the character that stands for it inside BPE symbols.

    The dict is in vocabulary order: its ``k``-th value is the token with id ``k`` (and ``k + 256`` is
    that character plus ``</w>``). The 188 printable Latin-1 bytes ``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ`` come first and stand for themselves; the other 68 bytes (controls, space, U+00AD)
    follow in increasing order and stand for U+0100, U+0101, ..., so that no symbol contains
    whitespace or a control character.

    Example:
        >>> table = bytes_to_unicode()
        >>> table[ord("a")], table[ord(" ")], list(table.values())[:3]
        ('a', 'Ġ', ['!', '"', '#'])
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(0x100 + len(table) - len(printable))
    return table


def clean_text(text: str) -> str:
    """Normalize a prompt as CLIP does before splitting it.

    HTML entities are unescaped twice with HTML5 rules (so ``&amp;amp;`` becomes ``&``, and legacy
    entities need no semicolon: ``&notice`` becomes ``¬ice``), every run of White_Space characters
    becomes one space, the ends are stripped and the result is lowercased with ``str.lower`` (which
    writes a word-final sigma as ``ς``). No ftfy repair and no Unicode normalization happen: KerasCV
    does neither, and a decomposed ``e`` + U+0301 stays two characters.

    Example:
        >>> clean_text("  A &amp;amp; B\\t\\tC ")
        'a & b c'
    """
    text = html.unescape(html.unescape(text))
    text = _WHITE_SPACE_RUN.sub(" ", text)
    # str.strip, as in CLIP: it also removes U+001C..U+001F, which stay as symbols inside the text.
    return text.strip().lower()


def _char_class(char: str) -> str:
    if char in WHITE_SPACE or char == _DROPPED:
        return _SKIPPED
    # Characters unknown to this Python's Unicode database (category Cn) are "other".
    major = unicodedata.category(char)[0]
    if major == "L":
        return _LETTER
    if major == "N":
        return _NUMBER
    return _OTHER


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned text into the pieces that BPE encodes one by one.

    At each position the first rule that applies takes the longest piece it can:

    1. the literal ``<|startoftext|>`` or ``<|endoftext|>``;
    2. an apostrophe followed by ``s``, ``t``, ``re``, ``ve``, ``m``, ``ll`` or ``d``;
    3. a run of letters (Unicode category L*);
    4. one number character (category N*): "2024" becomes four pieces;
    5. a run of characters that are neither letters, numbers nor White_Space (punctuation, symbols,
       emoji, combining marks, ...).

    Spaces separate pieces and are dropped. Rules 1 and 2 are tried only where a piece starts, so in
    ``"!'s"`` the apostrophe joins the ``!`` run. In rules 1 and 2, U+017F (long s) counts as ``s``, and
    U+0345 is dropped wherever it appears: both follow from CLIP matching case-insensitively.

    Args:
        text: the output of ``clean_text``.

    Returns:
        The pieces, in order; their concatenation is ``text`` without spaces (and U+0345).

    Example:
        >>> pre_tokenize("it's 1984, (masterpiece:1.2)")
        ['it', "'s", '1', '9', '8', '4', ',', '(', 'masterpiece', ':', '1', '.', '2', ')']
    """
    pieces = []
    position, length = 0, len(text)
    while position < length:
        char_class = _char_class(text[position])
        if char_class == _SKIPPED:
            position += 1
            continue
        end = _special_token_end(text, position) or _contraction_end(text, position)
        if not end:
            end = position + 1
            if char_class != _NUMBER:
                while end < length and _char_class(text[end]) == char_class:
                    end += 1
        pieces.append(text[position:end])
        position = end
    return pieces


def _special_token_end(text: str, position: int) -> int:
    for token in (START_OF_TEXT, END_OF_TEXT):
        end = position + len(token)
        if text[position:end].translate(_FOLD) == token:
            return end
    return 0


def _contraction_end(text: str, position: int) -> int:
    if text[position] != "'":
        return 0
    for suffix in _CONTRACTIONS:
        end = position + 1 + len(suffix)
        if text[position + 1:end].translate(_FOLD) == suffix:
            return end
    return 0


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read the BPE merges CLIP uses from a merges file, gzip-compressed (``.gz``) or plain text.

    The file holds one merge per line, two symbols separated by one space. A first line containing
    ``#version`` is a header and is skipped (CLIP's file and ``merges.txt`` files both have one). Only
    the first 48894 merges are CLIP's vocabulary; any further lines are ignored.

    Args:
        path: the merges file, e.g. ``bpe_simple_vocab_16e6.txt.gz`` or a ``merges.txt``.

    Returns:
        48894 ``(first, second)`` pairs in merge order.

    Raises:
        FileNotFoundError: the file does not exist.
        InputError: the file is not valid gzip/UTF-8, a line is not two symbols, or merges are missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP merges file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise InputError(f"CLIP merges file {path} is not a valid gzip file: {error}") from error
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise InputError(f"CLIP merges file {path} is not UTF-8 text: {error}") from error
    first_line_number = 1
    if lines and "#version" in lines[0]:
        lines, first_line_number = lines[1:], 2
    merges = []
    for line_number, line in enumerate(lines[:NUM_MERGES], start=first_line_number):
        if not line.strip():
            break  # end of the merges; the count check below reports any that are missing
        symbols = line.rstrip("\r").split(" ")
        if len(symbols) != 2 or not all(symbols):
            raise InputError(
                f"CLIP merges file {path}, line {line_number}: expected two symbols separated by one "
                f"space, got {line!r}"
            )
        merges.append((symbols[0], symbols[1]))
    if len(merges) != NUM_MERGES:
        raise InputError(
            f"CLIP merges file {path} has {len(merges)} merges; CLIP's vocabulary needs {NUM_MERGES}"
        )
    return merges


class CLIPTokenizer:
    """CLIP's BPE tokenizer, with Stable Diffusion's padding to 77 tokens.

    Token ids equal KerasCV's ``SimpleTokenizer`` on any text whose characters this Python's Unicode
    database knows (newer ones count as symbols; see ``pre_tokenize``). Prompts longer than the context (75
    content tokens plus start and end) are truncated with a ``PromptTruncatedWarning`` instead of
    KerasCV's error; ``tokenize_with_info`` tells which prompts were cut.

    Padding: KerasCV pads with the end token 49407 for both ``StableDiffusion`` and
    ``StableDiffusionV2`` (the default here). Stable Diffusion 2 checkpoints from the original release
    and from diffusers were run with padding 0 (``"!"``); pass ``pad_token_id=0`` for those.

    Args:
        merges_path: the merges file (``.txt.gz`` or plain ``.txt``); defaults to the shipped
            ``bpe_simple_vocab_16e6.txt.gz``.
        context_length: padded length of each row, start and end tokens included (77 for SD).
        pad_token_id: id that fills each row after the end token.

    Example:
        >>> tokenizer = CLIPTokenizer()
        >>> ids = tokenizer(["a cat", "a dog"])          # (2, 77) int32, KerasCV's layout
        >>> ids[0, :4].tolist()
        [49406, 320, 2368, 49407]
        >>> tokenizer.decode(ids[1], skip_special_tokens=True)
        'a dog'
    """

    vocab_size = VOCAB_SIZE
    start_token_id = START_OF_TEXT_ID
    end_token_id = END_OF_TEXT_ID

    def __init__(
        self,
        merges_path: str | os.PathLike | None = None,
        *,
        context_length: int = CONTEXT_LENGTH,
        pad_token_id: int = END_OF_TEXT_ID,
    ):
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise InputError(f"context_length must be an int >= 2 (start + end token), got {context_length!r}")
        self.merges_path = Path(merges_path) if merges_path is not None else DEFAULT_MERGES_PATH
        self.context_length = context_length
        self.pad_token_id = self._check_token_id(pad_token_id, "pad_token_id")

        self._merges = read_merges(self.merges_path)
        self._merge_ranks = {pair: rank for rank, pair in enumerate(self._merges)}
        self._byte_to_char = bytes_to_unicode()
        self._char_to_byte = {char: byte for byte, char in self._byte_to_char.items()}
        byte_chars = list(self._byte_to_char.values())
        vocab = (
            byte_chars
            + [char + END_OF_WORD for char in byte_chars]
            + [first + second for first, second in self._merges]
            + [START_OF_TEXT, END_OF_TEXT]
        )
        self._id_to_token = vocab
        self._token_to_id = {token: token_id for token_id, token in enumerate(vocab)}
        if len(self._token_to_id) != VOCAB_SIZE:
            raise InputError(
                f"CLIP merges file {self.merges_path} yields {VOCAB_SIZE - len(self._token_to_id)} "
                "duplicate vocabulary entries; it is not CLIP's merges file"
            )
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "CLIPTokenizer":
        """Build a tokenizer from a merges file: CLIP's ``.txt.gz`` or a plain-text merges file.

        Example:
            >>> tokenizer = CLIPTokenizer.from_file("bundle/merges.txt")  # doctest: +SKIP
        """
        return cls(path, **kwargs)

    # --- single texts -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without start/end tokens and without length limit.

        A literal ``<|startoftext|>`` / ``<|endoftext|>`` in the text becomes its special id, as in
        KerasCV and CLIP.

        Example:
            >>> CLIPTokenizer().encode("it's a (masterpiece:1.2)")
            [585, 568, 320, 263, 12066, 281, 272, 269, 273, 264]
        """
        if not isinstance(text, str):
            raise InputTypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InputError(
                f"text has a lone surrogate U+{ord(text[error.start]):04X} at index {error.start}; "
                "it is not valid Unicode text"
            ) from None
        ids: list[int] = []
        for piece in pre_tokenize(clean_text(text)):
            ids.extend(self._encode_piece(piece))
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of token ids; the inverse of ``encode`` up to cleanup and spacing.

        Each end-of-word marker becomes a space, so pieces that were adjacent in the prompt come back
        space-separated (``"a,b"`` decodes as ``"a , b"``); the result is stripped. Byte sequences that
        are not valid UTF-8 (a token cut through a character) decode as U+FFFD.

        Args:
            ids: token ids, e.g. one row of ``tokenize``'s output.
            skip_special_tokens: drop start, end and (end-token) padding ids instead of writing
                ``<|startoftext|>`` / ``<|endoftext|>``.

        Raises:
            InputError: an id is outside ``0 .. 49407``.
        """
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise InputError(f"decode takes one row of ids (1-D), got an array of shape {ids.shape}")
            ids = ids.tolist()
        tokens = []
        for position, token_id in enumerate(ids):
            token_id = self._check_token_id(token_id, f"token id at position {position}")
            if skip_special_tokens and token_id in (START_OF_TEXT_ID, END_OF_TEXT_ID):
                continue
            tokens.append(self._id_to_token[token_id])
        # Special tokens are printable ASCII, which the byte table maps to itself.
        data = bytes(self._char_to_byte[char] for char in "".join(tokens))
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def token_to_id(self, token: str) -> int:
        """Id of a vocabulary token string (byte-mapped, e.g. ``"cat</w>"``); KeyError if absent."""
        return self._token_to_id[token]

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary token string of an id, e.g. ``2368 -> "cat</w>"``."""
        return self._id_to_token[self._check_token_id(token_id, "token_id")]

    # --- padded batches -------------------------------------------------------------------------------

    def tokenize(self, prompts: str | Sequence[str], *, pad_token_id: int | None = None) -> np.ndarray:
        """Padded ids for the text encoder: ``(batch, context_length)`` int32, KerasCV's layout.

        Each row is ``[49406, content..., 49407, pad, pad, ...]``. A single string gives a batch of one.
        Prompts with more than ``context_length - 2`` content tokens keep their first ones and still
        end with 49407; a ``PromptTruncatedWarning`` names each such prompt.

        Args:
            prompts: a prompt or a list of prompts.
            pad_token_id: overrides the tokenizer's ``pad_token_id`` for this call.

        Example:
            >>> CLIPTokenizer()("").tolist()[0][:3]
            [49406, 49407, 49407]
        """
        return self._tokenize_batch(prompts, pad_token_id).ids

    __call__ = tokenize

    def tokenize_with_info(
        self, prompts: str | Sequence[str], *, pad_token_id: int | None = None
    ) -> TokenizedPrompts:
        """Like ``tokenize``, also reporting which prompts were truncated and their full lengths.

        Example:
            >>> result = CLIPTokenizer().tokenize_with_info(["a cat", "cat " * 100])  # warns
            >>> result.truncated.tolist(), result.num_tokens.tolist()
            ([False, True], [2, 100])
        """
        return self._tokenize_batch(prompts, pad_token_id)

    def save_merges(self, path: str | os.PathLike) -> Path:
        """Write the 48894 merges CLIP uses as a merges file (gzip if ``path`` ends in ``.gz``).

        The format is the one ``from_file`` and ``read_merges`` read: a ``#version: 0.2`` header, then one
        ``first second`` merge per line. It is what the Android bundle ships; the file is written
        atomically and byte-for-byte reproducibly.

        Returns:
            The written path.
        """
        path = Path(path)
        text = "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in self._merges)
        data = text.encode("utf-8")
        if path.name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        from sd_keras import files  # here, not at the top: this module also loads on its own, by path

        files.write_bytes(path, data)
        return path

    # --- internals ----------------------------------------------------------------------------------------

    def _tokenize_batch(self, prompts, pad_token_id) -> TokenizedPrompts:
        pad_token_id = (
            self.pad_token_id if pad_token_id is None else self._check_token_id(pad_token_id, "pad_token_id")
        )
        prompts = self._check_prompts(prompts)
        capacity = self.context_length - 2
        ids = np.full((len(prompts), self.context_length), pad_token_id, dtype=np.int32)
        truncated = np.zeros(len(prompts), dtype=bool)
        num_tokens = np.zeros(len(prompts), dtype=np.int32)
        for row, prompt in enumerate(prompts):
            content = self.encode(prompt)
            num_tokens[row] = len(content)
            if len(content) > capacity:
                truncated[row] = True
                self._warn_truncated(row, content, capacity)
                content = content[:capacity]
            ids[row, 0] = START_OF_TEXT_ID
            ids[row, 1:len(content) + 1] = content
            ids[row, len(content) + 1] = END_OF_TEXT_ID
        return TokenizedPrompts(ids=ids, truncated=truncated, num_tokens=num_tokens)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        if piece == START_OF_TEXT:
            return (START_OF_TEXT_ID,)
        if piece == END_OF_TEXT:
            return (END_OF_TEXT_ID,)
        cached = self._cache.get(piece)
        if cached is None:
            # The cache only bounds repeated work; clearing it all keeps it simple and memory-bounded.
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            symbols = self._bpe("".join(self._byte_to_char[byte] for byte in piece.encode("utf-8")))
            cached = tuple(self._token_to_id[symbol] for symbol in symbols)
            self._cache[piece] = cached
        return cached

    def _bpe(self, word: str) -> list[str]:
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            # The earliest-learned merge among adjacent pairs wins; ties cannot happen (ranks are unique).
            best_rank, best_pair = min(
                (self._merge_ranks.get(pair, NUM_MERGES), pair) for pair in zip(symbols, symbols[1:])
            )
            if best_rank == NUM_MERGES:
                break
            merged = []
            index = 0
            while index < len(symbols):
                if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == best_pair:
                    merged.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            symbols = merged
        return symbols

    def _warn_truncated(self, row: int, content: list[int], capacity: int) -> None:
        dropped = self.decode(content[capacity:])
        if len(dropped) > 80:
            dropped = dropped[:77] + "..."
        warnings.warn(
            f"prompt {row} has {len(content)} tokens but the text encoder reads {capacity} (plus start "
            f"and end tokens); dropped the last {len(content) - capacity}: {dropped!r}",
            PromptTruncatedWarning,
            stacklevel=4,
        )

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, (Sequence, np.ndarray)):
            raise InputTypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
        prompts = list(prompts)
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise InputTypeError(f"prompts[{index}] must be a str, got {type(prompt).__name__}")
        return prompts

    @staticmethod
    def _check_token_id(token_id, name: str) -> int:
        try:
            if isinstance(token_id, bool):
                raise TypeError
            value = operator.index(token_id)
        except TypeError:
            raise InputTypeError(f"{name} must be an int, got {type(token_id).__name__}") from None
        if not 0 <= value < VOCAB_SIZE:
            raise InputError(f"{name} {value} is outside the CLIP vocabulary (0 .. {VOCAB_SIZE - 1})")
        return value
