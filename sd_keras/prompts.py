"""Prompts to text-encoder contexts with AUTOMATIC1111's syntax: 75-token chunks, emphasis, fixed chunk counts.

``sd_keras.prompt_syntax`` reads a prompt into weighted pieces; this module turns them into what the UNet reads:

1. **Chunks.** Each piece is tokenized on its own and its tokens (each carrying the piece's weight) fill chunks of
   75 tokens; ``BREAK`` starts a new chunk. Each chunk becomes one 77-token row, start token + 75 tokens + end
   token and padding, laid out as the plain tokenizer lays out a prompt (so a prompt of up to 75 tokens without
   syntax is the very row ``CLIPTokenizer.tokenize`` gives).
2. **Words kept whole at commas.** As in AUTOMATIC1111 (its default "comma padding backtrack" of 20): when a chunk
   is full and the next token is not a comma, and one of the chunk's last 20 tokens is a comma, the tokens after
   that comma move to the next chunk. Without a comma that near, the chunk is cut at 75 tokens, even inside a
   word, as AUTOMATIC1111 cuts it.
3. **Encoding.** Each chunk goes through the text encoder on its own (it reads 77 tokens) and the outputs are
   concatenated along the sequence: a prompt of ``n`` chunks gives a ``(n * 77, D)`` context. The UNet's
   cross-attention takes a context of any length.
4. **Emphasis**, AUTOMATIC1111's "Original" method: each chunk's hidden states are multiplied by their tokens'
   weights, then rescaled so that their mean equals the mean before weighting. AUTOMATIC1111 takes that mean over
   the whole batch of prompts; here it is taken per prompt, so a prompt's context does not depend on the other
   prompts of its batch (at batch 1 the two agree). A chunk whose weights are all 1 is left exactly as encoded.
   The rescaling is only as well-posed as that mean is far from zero: the shipped ``shapes`` model's contexts
   have a mean of -0.0009 against a mean magnitude of 0.72, and ``(red:1.3)`` rescales by 0.997; a random text
   encoder whose final layer norm has no bias (the ``tiny`` test model) has a mean of about 0, so there the factor
   is arbitrary.
5. **Fixed chunk counts.** The prompt and the negative prompt of a generation get the same number of chunks, and
   that number is rounded up to one of ``CHUNK_COUNTS`` (1, 2, 4, 8, 16, 32: contexts of 77, 154, 308, 616, ...
   tokens) by appending chunks of the empty prompt, as AUTOMATIC1111 pads a prompt and its negative prompt to the
   same length. The compiled sampling loop is compiled once for each count used, not once per prompt length.
   Prompts of more than ``MAX_CHUNKS`` chunks (2400 tokens) are refused.

Differences from AUTOMATIC1111, besides the per-prompt mean: chunk counts are rounded up as above (AUTOMATIC1111
pads only the shorter of prompt and negative prompt); for SD 2.x models a chunk is laid out as this model's
tokenizer lays out a prompt (end token right after the text, then padding), where AUTOMATIC1111 puts the end token
at the chunk's last position. Textual-inversion embeddings are not looked up.

This module needs no Keras: ``encode`` is any function from ``(batch, 77)`` int32 token ids to ``(batch, 77, D)``
hidden states, so the Keras pipeline and the LiteRT bundle runner share it.

Example:
    >>> from sd_keras.tokenizer import CLIPTokenizer
    >>> chunks = chunk_prompt("a (cat:1.2), " * 30, CLIPTokenizer())
    >>> chunks.ids.shape, chunks.weights[0, 1:4].tolist()
    ((2, 77), [1.0, 1.2000000476837158, 1.0])
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sd_keras.errors import InputError
from sd_keras.prompt_syntax import parse_prompt

__all__ = ["PromptChunks", "PromptContexts", "chunk_prompt", "chunk_count", "apply_emphasis", "encode_chunks",
           "prompt_contexts", "match_lengths", "syntax_contexts", "check_prompt_syntax", "find_lora", "lora_names",
           "CHUNK_COUNTS", "MAX_CHUNKS", "COMMA_BACKTRACK", "PROMPT_SYNTAXES", "LORA_SUFFIXES"]

COMMA_BACKTRACK = 20
PROMPT_SYNTAXES = ("a1111",)
# files a LoRA folder may hold, as AUTOMATIC1111's Lora folder does; read by ``sd_keras.weights.lora`` (PyTorch
# files through the safe pickle reader)
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CHUNK_COUNTS = (1, 2, 4, 8, 16, 32)
MAX_CHUNKS = CHUNK_COUNTS[-1]
_COMMA = ",</w>"


@dataclasses.dataclass(frozen=True)
class PromptChunks:
    """One prompt as rows for the text encoder.

    Attributes:
        ids: ``(num_chunks, 77)`` int32 token ids, one chunk a row.
        weights: ``(num_chunks, 77)`` float32 emphasis of each token (1.0 for start, end and padding).
        loras: the prompt's ``<lora:...>`` tags (``prompt_syntax.LoraReference``).
    """

    ids: np.ndarray
    weights: np.ndarray
    loras: tuple = ()

    @property
    def num_chunks(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass(frozen=True)
class PromptContexts:
    """Contexts of a generation: ``context`` ``(B, L, D)`` and ``unconditional`` ``(B or 1, L, D)`` float32 with
    the same ``L`` (a multiple of 77), and each prompt's LoRA tags then each negative prompt's."""

    context: np.ndarray
    unconditional: np.ndarray
    loras: tuple = ()


def chunk_prompt(prompt, tokenizer, *, pad_token_id=None, comma_backtrack=COMMA_BACKTRACK) -> PromptChunks:
    """Parse ``prompt`` (AUTOMATIC1111's syntax) and lay it out in 77-token rows with per-token weights.

    Args:
        prompt: the prompt text.
        tokenizer: a ``CLIPTokenizer``.
        pad_token_id: the padding id (the model's; defaults to the tokenizer's).
        comma_backtrack: how near the end of a full chunk its last comma must be for the text after it to move
            to the next chunk (0: never move).

    Raises:
        InputError: the prompt's syntax cannot be read, or it needs more than ``MAX_CHUNKS`` chunks.

    Example:
        >>> from sd_keras.tokenizer import CLIPTokenizer
        >>> chunks = chunk_prompt("a cat BREAK a dog", CLIPTokenizer())
        >>> chunks.ids[:, :4].tolist()
        [[49406, 320, 2368, 49407], [49406, 320, 1929, 49407]]
    """
    parsed = parse_prompt(prompt)
    capacity = tokenizer.context_length - 2
    comma = tokenizer.token_to_id(_COMMA)
    chunks = []  # (tokens, weights) of the finished chunks
    tokens, weights = [], []
    last_comma = -1

    def finish():
        nonlocal tokens, weights, last_comma
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for text, weight in parsed.pieces:
        if weight is None:  # BREAK
            finish()
            continue
        for token in tokenizer.encode(text):
            if token == comma:
                last_comma = len(tokens)
            elif (comma_backtrack and len(tokens) == capacity and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                moved = slice(last_comma + 1, None)
                rest_tokens, rest_weights = tokens[moved], weights[moved]
                del tokens[moved], weights[moved]
                finish()
                tokens, weights = rest_tokens, rest_weights
            if len(tokens) == capacity:
                finish()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        finish()
    if len(chunks) > MAX_CHUNKS:
        raise InputError(f"prompt: {len(chunks)} chunks of {capacity} tokens; at most {MAX_CHUNKS} "
                         f"({MAX_CHUNKS * capacity} tokens) are read")
    pad = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    ids = np.full((len(chunks), tokenizer.context_length), pad, np.int32)
    token_weights = np.ones((len(chunks), tokenizer.context_length), np.float32)
    for row, (chunk_tokens, chunk_weights) in enumerate(chunks):
        ids[row, 0] = tokenizer.start_token_id
        ids[row, 1:len(chunk_tokens) + 1] = chunk_tokens
        ids[row, len(chunk_tokens) + 1] = tokenizer.end_token_id
        token_weights[row, 1:len(chunk_weights) + 1] = chunk_weights
    return PromptChunks(ids, token_weights, parsed.loras)


def chunk_count(num_chunks) -> int:
    """The chunk count a context of ``num_chunks`` chunks is padded to: the next of ``CHUNK_COUNTS``.

    Example:
        >>> [chunk_count(n) for n in (1, 2, 3, 5, 8)]
        [1, 2, 4, 8, 8]
    """
    for count in CHUNK_COUNTS:
        if num_chunks <= count:
            return count
    raise InputError(f"prompt: {num_chunks} chunks; at most {MAX_CHUNKS} are read")


def apply_emphasis(hidden, weights):
    """AUTOMATIC1111's emphasis on one batch of chunks: scale each token's hidden state by its weight, then restore
    each row's mean.

    Args:
        hidden: ``(batch, 77, D)`` text-encoder output.
        weights: ``(batch, 77)`` token weights.

    Returns:
        ``(batch, 77, D)`` float32; rows whose weights are all 1 are returned unchanged.
    """
    hidden = np.asarray(hidden, np.float32)
    weights = np.asarray(weights, np.float32)
    result = hidden.copy()
    for row in range(hidden.shape[0]):
        if np.all(weights[row] == 1.0):
            continue
        original_mean = hidden[row].mean(dtype=np.float64)
        weighted = hidden[row].astype(np.float64) * weights[row][:, None]
        new_mean = weighted.mean()
        # a zero mean after weighting (everything weighted 0) cannot be rescaled: keep the weighted states
        scale = original_mean / new_mean if new_mean != 0 else 1.0
        result[row] = (weighted * scale).astype(np.float32)
    return result


def encode_chunks(chunked, encode, num_chunks, empty):
    """``(len(chunked), num_chunks * 77, D)`` contexts: every prompt's chunks, padded with ``empty`` chunks.

    Chunk ``k`` of every prompt goes through ``encode`` in one call (``(batch, 77)`` ids, the shape the text
    encoder is compiled for); a position where every prompt has run out of chunks reuses one encoding of the
    empty prompt.

    Args:
        chunked: ``PromptChunks`` of each prompt of the batch.
        encode: ``(batch, 77)`` int32 ids -> ``(batch, 77, D)`` hidden states.
        num_chunks: chunks per context (at least the longest prompt's).
        empty: ``PromptChunks`` of the empty prompt (one chunk).
    """
    parts, empty_hidden = [], None
    for index in range(num_chunks):
        present = [chunks.num_chunks > index for chunks in chunked]
        if not any(present):
            if empty_hidden is None:
                empty_hidden = np.asarray(encode(empty.ids), np.float32)
            parts.append(np.repeat(empty_hidden, len(chunked), axis=0))
            continue
        ids = np.stack([chunks.ids[index] if has else empty.ids[0] for chunks, has in zip(chunked, present)])
        weights = np.stack([chunks.weights[index] if has else empty.weights[0]
                            for chunks, has in zip(chunked, present)])
        parts.append(apply_emphasis(encode(ids), weights))
    return np.concatenate(parts, axis=1)


def prompt_contexts(prompts, negative_prompts, tokenizer, encode, *, pad_token_id=None,
                    comma_backtrack=COMMA_BACKTRACK) -> PromptContexts:
    """Contexts for prompts and negative prompts read with AUTOMATIC1111's syntax (see the module docstring).

    Args:
        prompts: list of prompts (one per image, or one for all).
        negative_prompts: list of negative prompts (``[""]`` for none).
        tokenizer: a ``CLIPTokenizer``.
        encode: ``(batch, 77)`` int32 ids -> ``(batch, 77, D)`` hidden states (the text encoder).
        pad_token_id: the model's padding id (defaults to the tokenizer's).

    Example:
        >>> import numpy as np
        >>> from sd_keras.tokenizer import CLIPTokenizer
        >>> fake_encoder = lambda ids: np.repeat(ids[..., None].astype(np.float32), 4, axis=-1)
        >>> contexts = prompt_contexts(["a cat " * 50], [""], CLIPTokenizer(), fake_encoder)
        >>> contexts.context.shape, contexts.unconditional.shape
        ((1, 154, 4), (1, 154, 4))
    """
    options = dict(pad_token_id=pad_token_id, comma_backtrack=comma_backtrack)
    chunked = [chunk_prompt(prompt, tokenizer, **options) for prompt in prompts]
    negative = [chunk_prompt(prompt, tokenizer, **options) for prompt in negative_prompts]
    empty = chunk_prompt("", tokenizer, **options)
    count = chunk_count(max(chunks.num_chunks for chunks in chunked + negative))
    return PromptContexts(
        encode_chunks(chunked, encode, count, empty),
        encode_chunks(negative, encode, count, empty),
        tuple(lora for chunks in chunked + negative for lora in chunks.loras),
    )


# --- generation (``sd_keras.generator.Generator``) ------------------------------------------------------------
def check_prompt_syntax(value):
    """``value`` if it names a prompt syntax (None: plain text, KerasCV's reading); InputError otherwise."""
    if value is not None and value not in PROMPT_SYNTAXES:
        raise InputError(f"prompt_syntax must be None (plain text) or one of {', '.join(PROMPT_SYNTAXES)}, "
                         f"got {value!r}")
    return value


def match_lengths(context, unconditional, empty_context):
    """Pad the shorter of ``context`` and ``unconditional`` (``(B, L, D)`` each) with chunks of the empty prompt
    (``empty_context``, ``(1, 77, D)``) to the other's length; equal lengths are returned as they are."""
    lengths = {context.shape[1], unconditional.shape[1]}
    if len(lengths) == 1:
        return context, unconditional
    target = max(lengths)
    chunk = empty_context.shape[1]

    def pad(values):
        missing = target - values.shape[1]
        if missing % chunk:
            raise InputError(f"contexts of {context.shape[1]} and {unconditional.shape[1]} tokens cannot be "
                             f"matched with chunks of {chunk}")
        filler = np.tile(empty_context, (values.shape[0], missing // chunk, 1))
        return np.concatenate([values, filler.astype(values.dtype)], axis=1)

    return pad(context) if context.shape[1] < target else context, (
        pad(unconditional) if unconditional.shape[1] < target else unconditional)


def syntax_contexts(generator, prompts, negative_prompts):
    """``Generator._contexts`` with AUTOMATIC1111's syntax: ``(context, unconditional)``, either list None to skip
    it. Both get the same chunk count when both are given; ``<lora:...>`` tags of the prompts are merged into the
    model (see ``sync_prompt_loras``) before the text is encoded. Sets ``last_truncated`` to False: nothing is cut.
    """
    tokenizer, pad = generator.tokenizer, generator.config.pad_token_id

    def encode(ids):
        return np.asarray(generator._encode_tokens(np.asarray(ids, np.int32)), np.float32)

    chunked = [chunk_prompt(prompt, tokenizer, pad_token_id=pad) for prompt in prompts or ()]
    negative = [chunk_prompt(prompt, tokenizer, pad_token_id=pad) for prompt in negative_prompts or ()]
    for chunks in negative:
        if chunks.loras:
            raise InputError(f"negative_prompt: <lora:{chunks.loras[0].name}:...> tags are read from the prompt "
                             "only")
    if prompts is not None:
        loras = {lora for chunks in chunked for lora in chunks.loras}
        sync_prompt_loras(generator, sorted(loras, key=lambda lora: (lora.name, lora.weight)))
        generator.last_truncated = False
    empty = chunk_prompt("", tokenizer, pad_token_id=pad)
    count = chunk_count(max([chunks.num_chunks for chunks in chunked + negative] or [1]))

    def contexts(texts, chunks):
        if len(set(texts)) == 1 and len(texts) > 1:  # one prompt for the whole batch: encoded once
            return np.repeat(encode_chunks(chunks[:1], encode, count, empty), len(texts), axis=0)
        return encode_chunks(chunks, encode, count, empty)

    context = contexts(prompts, chunked) if prompts is not None else None
    unconditional = contexts(negative_prompts, negative) if negative_prompts is not None else None
    return context, unconditional


def lora_names(folder):
    """The LoRA names (file names without suffix) in ``folder``, sorted; ``LORA_SUFFIXES`` only."""
    try:
        entries = os.listdir(folder)
    except OSError as error:
        raise InputError(f"LoRA folder {folder}: cannot be read ({error.strerror or error})") from None
    return sorted(os.path.splitext(entry)[0] for entry in entries
                  if entry.endswith(LORA_SUFFIXES) and os.path.isfile(os.path.join(folder, entry)))


def find_lora(name, folder):
    """The file of ``<lora:name>`` in ``folder``: ``name`` plus one of ``LORA_SUFFIXES``, a regular file directly
    inside the folder (a name with a path separator or ``..`` is refused, so a prompt cannot reach other files).

    Raises:
        InputError: no folder, a name that is not a plain file name, or no such LoRA (the message lists the
            folder's LoRAs).
    """
    if folder is None:
        raise InputError(f"prompt: <lora:{name}> needs a LoRA folder (lora_dir= in Python, --lora-dir in the CLI "
                         "and the server)")
    if not os.path.isdir(folder):
        raise InputError(f"LoRA folder {folder}: no such folder")
    if name in (".", "..") or any(separator and separator in name for separator in (os.sep, os.altsep, "/")):
        raise InputError(f"prompt: <lora:{name}>: a LoRA name is a file name in the LoRA folder, without folders")
    for suffix in LORA_SUFFIXES:
        path = os.path.join(folder, name + suffix)
        if os.path.isfile(path):
            return path
    available = lora_names(folder)
    shown = ", ".join(available[:20]) + (f" and {len(available) - 20} more" if len(available) > 20 else "")
    raise InputError(f"prompt: <lora:{name}>: no {name}{{{','.join(LORA_SUFFIXES)}}} in the LoRA folder {folder} "
                     f"(it holds {shown or 'no LoRA files'})")


def sync_prompt_loras(generator, loras):
    """Make the LoRAs merged for prompt tags exactly ``loras`` (``LoraReference`` list): those asked for by the
    previous prompt and not by this one are taken out, new ones merged (``sd_keras.weights.lora.apply_lora``, the
    reader and checks of ``--lora``). LoRAs merged otherwise (``--lora``, ``apply_lora``) are left alone.

    Works alike for SD 1.x / 2.x (``StableDiffusion``) and SDXL (``StableDiffusionXL``: kohya ``lora_te1_`` /
    ``lora_te2_`` / ``lora_unet_`` and diffusers / PEFT files, merged into both text encoders and the UNet).

    Raises:
        InputError: a tag names no file of the LoRA folder, there is no LoRA folder, the file is not a LoRA of this
            model (e.g. an SD 1.x LoRA on SDXL: the message names the tag, the file and the model class), or the
            engine cannot merge LoRAs (an exported bundle).
    """
    if loras and not getattr(generator, "can_merge_lora", False):
        raise InputError("prompt: <lora:...> tags need a Keras model (a preset or checkpoint), not an exported "
                         "bundle")
    wanted = tuple((find_lora(lora.name, generator.lora_dir), lora.weight) for lora in loras)
    current = getattr(generator, "_prompt_loras", ())
    if wanted == tuple((applied.path, applied.scale) for applied in current):
        return
    from sd_keras.weights.lora import apply_lora

    for applied in reversed(current):
        applied.remove()
    generator._prompt_loras = ()
    applied = []
    try:
        for lora, (path, weight) in zip(loras, wanted):
            try:
                applied.append(apply_lora(generator, path, weight))
            except (ValueError, OSError) as error:  # InputError too: a file of the other model family
                # the file by its name only: the folder stays private (the server's)
                message = str(error).replace(path, os.path.basename(path))
                raise InputError(f"prompt: <lora:{lora.name}:{lora.weight:g}> ({os.path.basename(path)}) does not "
                                 f"fit this {type(generator).__name__} model: {message}") from None
    except BaseException:
        for done in reversed(applied):
            done.remove()
        raise
    generator._prompt_loras = tuple(applied)
