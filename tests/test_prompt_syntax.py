"""AUTOMATIC1111 prompt syntax: the parser, 75-token chunks, emphasis, and contexts.

Expected parses are AUTOMATIC1111's documented ones (the wiki's "Attention/emphasis" and "BREAK" sections and the
examples documented with its parser). ``compel`` is an independent oracle where its conventions match
AUTOMATIC1111's: per-token weights of equivalent prompts (compel writes ``(red)1.3`` for ``(red:1.3)``), and
unweighted long prompts cut into 75-token chunks, encoded chunk by chunk and concatenated, with the shorter of
prompt and negative prompt padded with empty-prompt chunks. Where they differ, compel is not compared:

- compel applies a weight ``w`` as ``empty + (z - empty) * w`` (and weights below 1 by blending with the prompt
  without those words); AUTOMATIC1111 multiplies ``z`` by ``w`` and restores the mean;
- compel's ``-`` is 0.9, AUTOMATIC1111's ``[word]`` 1/1.1;
- compel cuts long prompts at sentence, phrase or word ends (``SplitLongTextMode``) or at 75 tokens (``BRUTAL``);
  AUTOMATIC1111 moves text back only to a comma among a full chunk's last 20 tokens.
"""

import numpy as np
import pytest

from sd_keras.errors import InputError
from sd_keras.prompt_syntax import BREAK, LoraReference, extract_loras, parse_emphasis, parse_prompt
from sd_keras.prompts import (CHUNK_COUNTS, MAX_CHUNKS, apply_emphasis, chunk_count, chunk_prompt,
                              match_lengths, prompt_contexts, sync_prompt_loras)
from sd_keras.tokenizer import CLIPTokenizer, PromptTruncatedWarning


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


# --- parser: AUTOMATIC1111's documented results ---------------------------------------------------------------
@pytest.mark.parametrize("prompt, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # the wiki's table: (word) x1.1, ((word)) x1.21, [word] /1.1, (word:1.5), (word:0.25), \(word\)
    ("a (word)", [("a ", 1.0), ("word", 1.1)]),
    ("a ((word))", [("a ", 1.0), ("word", 1.2100000000000002)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
    ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    ("a \\(word\\)", [("a (word)", 1.0)]),
])
def test_documented_parses(prompt, expected):
    assert parse_emphasis(prompt) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("(a (b:1.5) c)", [("a ", 1.1), ("b", 1.5 * 1.1), (" c", 1.1)]),  # nesting multiplies
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("([a])", [("a", 1.0)]),
    ("( cat : 1.25 )", [(" cat ", 1.25)]),  # spaces around the number
    ("(cat:-1)", [("cat", -1.0)]),
    ("(cat:.5)", [("cat", 0.5)]),
    ("a) b] c", [("a) b] c", 1.0)]),  # closing brackets with none open are text
    ("cat:1.2) dog", [("cat:1.2) dog", 1.0)]),  # a weight outside round brackets is text
    ("[cat:1.2]", [("cat:1.2", 1 / 1.1)]),  # weights only close round brackets
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)]),
    ("a \\\\ b \\x", [("a \\ b \\x", 1.0)]),  # \\ is one backslash; other backslashes stay
    ("", [("", 1.0)]),
])
def test_emphasis_rules(prompt, expected):
    parsed = parse_emphasis(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected], rel=1e-12)


@pytest.mark.parametrize("prompt, expected", [
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a\nBREAK,b", [("a", 1.0), BREAK, (",b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
    ("aBREAK b break c Break", [("aBREAK b break c Break", 1.0)]),  # upper case, a word of its own
    ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
])
def test_break(prompt, expected):
    assert parse_emphasis(prompt) == expected


def test_lora_tags_are_taken_out():
    parsed = parse_prompt("a <lora:film grain:0.8>(cat:1.2)<lora:fluffy> BREAK x <lora:neg:-0.5>")
    assert parsed.loras == (LoraReference("film grain", 0.8), LoraReference("fluffy", 1.0),
                            LoraReference("neg", -0.5))
    assert parsed.pieces == (("a ", 1.0), ("cat", 1.2), BREAK, ("x ", 1.0))
    assert extract_loras("no tags (here)") == ("no tags (here)", ())


@pytest.mark.parametrize("prompt, cause", [
    ("(cat:1.2.3)", "'1.2.3' is not a number"),
    ("<lora:x:strong>", "'strong' is not a number"),
    ("<lora: :1>", "has no LoRA name"),
    ("<lora:x:0.8:0.5>", "separate text-encoder and UNet weights"),
    ("<hypernet:x:1>", "extra network of kind 'hypernet'"),
])
def test_bad_syntax_is_an_input_error(prompt, cause):
    with pytest.raises(InputError, match="prompt: .*" + cause.replace("(", r"\(").replace(".", r"\.")):
        parse_prompt(prompt)


# --- chunks ---------------------------------------------------------------------------------------------------
def test_a_plain_short_prompt_is_the_tokenizer_row(tokenizer):
    for prompt in ("a photo of a cat", "", "word " * 75):
        chunks = chunk_prompt(prompt, tokenizer)
        np.testing.assert_array_equal(chunks.ids, tokenizer.tokenize(prompt))
        assert np.all(chunks.weights == 1.0)
    chunks = chunk_prompt("a cat", tokenizer, pad_token_id=0)  # SD 2.x checkpoints pad with 0
    np.testing.assert_array_equal(chunks.ids, tokenizer.tokenize("a cat", pad_token_id=0))


def test_token_weights_follow_the_pieces(tokenizer):
    chunks = chunk_prompt("a (red hat:1.3) on [a cat]", tokenizer)
    content = slice(1, 1 + len(tokenizer.encode("a red hat on a cat")))
    np.testing.assert_array_equal(chunks.ids[0, content], tokenizer.encode("a red hat on a cat"))
    np.testing.assert_allclose(chunks.weights[0, content], [1, 1.3, 1.3, 1, 1 / 1.1, 1 / 1.1], rtol=1e-7)
    assert chunks.weights[0, 0] == 1.0 and np.all(chunks.weights[0, content.stop:] == 1.0)


def test_pieces_are_tokenized_one_by_one(tokenizer):
    # "(cat)s" is "cat" then "s": AUTOMATIC1111 tokenizes each piece of equal weight on its own
    chunks = chunk_prompt("(cat)s", tokenizer)
    assert chunks.ids[0, 1:3].tolist() == tokenizer.encode("cat") + tokenizer.encode("s") != tokenizer.encode("cats")


def test_long_prompts_are_cut_into_75_token_chunks(tokenizer):
    words = [f"w{i}" for i in range(100)]  # "w12" is three tokens: 290 tokens, no comma
    ids = [token for word in words for token in tokenizer.encode(word)]
    assert len(ids) == 290
    chunks = chunk_prompt(" ".join(words), tokenizer)
    assert chunks.num_chunks == 4
    content = [chunks.ids[row, 1:76].tolist() for row in range(3)] + [chunks.ids[3, 1:1 + 290 - 225].tolist()]
    assert sum(content, []) == ids  # nothing lost, in order, cut at exactly 75 (words may be split)
    assert np.all(chunks.ids[:, 0] == tokenizer.start_token_id)
    assert np.all(chunks.ids[:3, 76] == tokenizer.end_token_id) and chunks.ids[3, 1 + 65] == tokenizer.end_token_id


def test_text_after_a_near_comma_moves_to_the_next_chunk(tokenizer):
    # 70 tokens, a comma, then 6 more: the chunk fills at "e" and the 4 tokens after the comma move on
    chunks = chunk_prompt("a " * 70 + ", b c d e f g", tokenizer)
    assert tokenizer.decode(chunks.ids[0, 1:], skip_special_tokens=True) == ("a " * 70).strip() + " ,"
    assert tokenizer.decode(chunks.ids[1, 1:], skip_special_tokens=True) == "b c d e f g"
    # a comma 21 tokens before the end is too far: cut at 75 tokens
    chunks = chunk_prompt("a " * 54 + ", " + "b " * 30, tokenizer)
    assert chunks.ids[0, 75] == tokenizer.encode("b")[0] and chunks.ids[1, 1:11].tolist() == [321] * 10
    # no backtrack asked for
    chunks = chunk_prompt("a " * 70 + ", b c d e f g", tokenizer, comma_backtrack=0)
    assert tokenizer.decode(chunks.ids[1, 1:], skip_special_tokens=True) == "f g"


def test_break_starts_a_chunk(tokenizer):
    chunks = chunk_prompt("a cat BREAK (a dog:1.5) BREAK", tokenizer)
    assert chunks.num_chunks == 2  # a BREAK at the end adds no empty chunk
    assert chunks.ids[1, :4].tolist() == [tokenizer.start_token_id, *tokenizer.encode("a dog"),
                                          tokenizer.end_token_id]
    assert chunks.weights[1, 1:3].tolist() == [1.5, 1.5]
    assert chunk_prompt("a BREAK BREAK b", tokenizer).num_chunks == 3  # an empty chunk between
    assert chunk_prompt("BREAK", tokenizer).num_chunks == 1


def test_chunk_counts(tokenizer):
    assert [chunk_count(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
    assert chunk_count(MAX_CHUNKS) == MAX_CHUNKS == CHUNK_COUNTS[-1]
    with pytest.raises(InputError, match="prompt: 33 chunks"):
        chunk_prompt("cat " * (75 * MAX_CHUNKS + 1), tokenizer)


# --- emphasis and contexts ------------------------------------------------------------------------------------
def test_emphasis_scales_then_restores_the_mean():
    rng = np.random.default_rng(0)
    hidden = rng.normal(0.3, 1.0, (2, 77, 8)).astype(np.float32)
    weights = np.ones((2, 77), np.float32)
    weights[0, 3:5] = 1.5
    out = apply_emphasis(hidden, weights)
    np.testing.assert_array_equal(out[1], hidden[1])  # all weights 1: untouched
    scaled = hidden[0].astype(np.float64) * weights[0][:, None]
    np.testing.assert_allclose(out[0], scaled * (hidden[0].mean(dtype=np.float64) / scaled.mean()), rtol=1e-6)
    assert out[0].mean() == pytest.approx(hidden[0].mean(), rel=1e-5)
    assert out[0, 3, 0] / out[0, 0, 0] == pytest.approx(1.5 * hidden[0, 3, 0] / hidden[0, 0, 0], rel=1e-5)


def _fake_encoder(ids):
    """A deterministic "text encoder" whose rows depend on every token (so chunks and order are visible)."""
    ids = np.asarray(ids, np.float64)
    mixed = np.cumsum(ids, axis=1) % 997.0
    return np.stack([mixed, ids / 49407.0, np.sin(ids)], axis=-1).astype(np.float32)


def test_contexts_concatenate_chunks_and_pad_to_the_same_count(tokenizer):
    long_prompt = "cat " * 80 + "BREAK bird"  # 3 chunks (75 + 5 + 1 tokens) -> padded to 4
    contexts = prompt_contexts([long_prompt, "a fish"], ["blurry"], tokenizer, _fake_encoder)
    assert contexts.context.shape == (2, 4 * 77, 3) and contexts.unconditional.shape == (1, 4 * 77, 3)
    chunks = chunk_prompt(long_prompt, tokenizer)
    empty = _fake_encoder(tokenizer.tokenize(""))[0]
    for index in range(3):
        np.testing.assert_array_equal(contexts.context[0, 77 * index:77 * (index + 1)],
                                      _fake_encoder(chunks.ids[index:index + 1])[0])
    np.testing.assert_array_equal(contexts.context[0, 3 * 77:], empty)
    np.testing.assert_array_equal(contexts.context[1, :77], _fake_encoder(tokenizer.tokenize("a fish"))[0])
    for index in range(1, 4):
        np.testing.assert_array_equal(contexts.context[1, 77 * index:77 * (index + 1)], empty)
        np.testing.assert_array_equal(contexts.unconditional[0, 77 * index:77 * (index + 1)], empty)
    # a one-chunk prompt without syntax: exactly the plain tokenizer's context
    plain = prompt_contexts(["a photo of a cat"], [""], tokenizer, _fake_encoder)
    np.testing.assert_array_equal(plain.context, _fake_encoder(tokenizer.tokenize("a photo of a cat")))
    np.testing.assert_array_equal(plain.unconditional, _fake_encoder(tokenizer.tokenize("")))


def test_match_lengths_appends_empty_chunks():
    empty = np.arange(6, dtype=np.float32).reshape(1, 3, 2)  # "chunks" of 3 tokens
    short = np.full((2, 3, 2), -1.0, np.float32)
    long = np.full((1, 9, 2), -2.0, np.float32)
    padded, same = match_lengths(short, long, empty)
    assert same is long and padded.shape == (2, 9, 2)
    np.testing.assert_array_equal(padded[:, :3], short)
    for start in (3, 6):
        np.testing.assert_array_equal(padded[:, start:start + 3], np.repeat(empty, 2, axis=0))
    assert match_lengths(short, short, empty) == (short, short)
    with pytest.raises(InputError, match="contexts of 3 and 7 tokens cannot be matched with chunks of 3"):
        match_lengths(short, long[:, :7], empty)


def test_contexts_collect_lora_tags(tokenizer):
    contexts = prompt_contexts(["a cat <lora:fluffy:0.7>"], ["<lora:sharp>"], tokenizer, _fake_encoder)
    assert contexts.loras == (LoraReference("fluffy", 0.7), LoraReference("sharp", 1.0))
    np.testing.assert_array_equal(contexts.context, _fake_encoder(tokenizer.tokenize("a cat ")))


# --- compel as an oracle --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compel_parts(tmp_path_factory, tokenizer):
    """A transformers CLIP tokenizer with this tokenizer's vocabulary and a tiny random CLIP text model."""
    import json

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers import CLIPTokenizer as TransformersCLIPTokenizer

    folder = tmp_path_factory.mktemp("clip_tokenizer")
    vocab = [tokenizer.id_to_token(index) for index in range(tokenizer.vocab_size)]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    tokenizer.save_merges(folder / "merges.txt")
    reference = TransformersCLIPTokenizer.from_pretrained(str(folder), model_max_length=77,
                                                          pad_token="<|endoftext|>")
    torch.manual_seed(0)
    text_model = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                              num_attention_heads=4, num_hidden_layers=2,
                                              max_position_embeddings=77)).eval()

    def encode(ids):
        with torch.no_grad():
            return text_model(torch.from_numpy(np.asarray(ids, np.int64))).last_hidden_state.numpy()

    return reference, text_model, encode


@pytest.mark.once
@pytest.mark.parametrize("ours, theirs", [
    ("a (red:1.3) cat", "a (red)1.3 cat"),
    ("a (red) cat", "a red+ cat"),
    ("a ((red hat)) on a cat", "a ((red hat)1.1)1.1 on a cat"),
    ("a (red (cat:1.5) hat) on", "a (red (cat)1.5 hat)1.1 on"),
    ("a [blue] sky", f"a (blue){1 / 1.1!r} sky"),
    ("photo, (masterpiece:1.2), best quality", "photo, (masterpiece)1.2, best quality"),
])
def test_token_weights_match_compel(compel_parts, tokenizer, ours, theirs):
    from compel import Compel

    reference, text_model, _ = compel_parts
    compel = Compel(tokenizer=reference, text_encoder=text_model)
    fragments = compel.parse_prompt_string(theirs).prompts[0].children
    ids, weights, _ = compel.conditioning_provider.get_token_ids_and_expand_weights(
        [fragment.text for fragment in fragments], [fragment.weight for fragment in fragments], device="cpu")
    chunks = chunk_prompt(ours, tokenizer)
    np.testing.assert_array_equal(chunks.ids[0], ids.numpy())
    np.testing.assert_allclose(chunks.weights[0], weights.numpy(), rtol=1e-6)


@pytest.mark.once
def test_long_prompt_contexts_match_compel(compel_parts, tokenizer):
    import torch
    from compel import Compel, SplitLongTextMode

    reference, text_model, encode = compel_parts
    compel = Compel(tokenizer=reference, text_encoder=text_model, truncate_long_prompts=False,
                    split_long_text_mode=SplitLongTextMode.BRUTAL)
    prompt = " ".join(f"w{i}" for i in range(10, 70))  # 180 tokens: 3 chunks, no comma
    with torch.no_grad():
        conditioning = compel.build_conditioning_tensor(prompt)
        negative = compel.build_conditioning_tensor("")
        conditioning, negative = compel.pad_conditioning_tensors_to_same_length([conditioning, negative])
    assert conditioning.shape == (1, 3 * 77, 32)
    contexts = prompt_contexts([prompt], [""], tokenizer, encode)  # 3 chunks -> 4 (CHUNK_COUNTS)
    np.testing.assert_allclose(contexts.context[:, :3 * 77], conditioning.numpy(), atol=1e-5)
    np.testing.assert_allclose(contexts.unconditional[:, :3 * 77], negative.numpy(), atol=1e-5)
    np.testing.assert_allclose(contexts.context[:, 3 * 77:], negative.numpy()[:, :77], atol=1e-5)


# --- generation on the tiny model -----------------------------------------------------------------------------
GENERATE = dict(num_steps=2, seed=3, height=64, width=64)


@pytest.fixture
def tiny(tiny_sd):
    """The session's tiny model; tests that change it (syntax, LoRA folder, merged LoRAs) put it back."""
    return tiny_sd


@pytest.fixture
def a1111(tiny):
    """The tiny model reading prompts with AUTOMATIC1111's syntax for one test."""
    tiny.prompt_syntax = "a1111"
    yield tiny
    sync_prompt_loras(tiny, [])  # LoRAs merged for a prompt's tags come out
    tiny.prompt_syntax, tiny.lora_dir = None, None


def _words(count, changed_at=None):
    """``count`` one-token words; the word at index ``changed_at`` replaced by another one-token word."""
    words = ["cat"] * count
    if changed_at is not None:
        words[changed_at] = "dog"
    return " ".join(words)


def test_the_python_api_reads_plain_text_by_default(tiny):
    assert tiny.prompt_syntax is None  # KerasCV's reading: "(cat:1.2)" is text
    context = tiny.encode_text("a (cat:1.2)")
    np.testing.assert_array_equal(context, tiny._encode_tokens(tiny.tokenize("a (cat:1.2)")))
    with pytest.raises(InputError, match="prompt_syntax must be None .* or one of a1111, got 'A1111'"):
        tiny.prompt_syntax = "A1111"
        try:
            tiny.encode_text("a cat")
        finally:
            tiny.prompt_syntax = None


def test_unit_weight_and_plain_prompts_are_unchanged(tiny, a1111):
    plain = tiny.text_to_image("a red cat", **GENERATE)
    tiny.prompt_syntax = None
    np.testing.assert_array_equal(plain, tiny.text_to_image("a red cat", **GENERATE))  # one chunk: today's path
    tiny.prompt_syntax = "a1111"
    np.testing.assert_array_equal(tiny.text_to_image("a red (cat:1.0)", **GENERATE), plain)
    assert np.abs(tiny.text_to_image("a red (cat:1.6)", **GENERATE).astype(int) - plain).max() > 0


def test_emphasis_in_the_context(tiny, a1111):
    context = tiny.encode_text("a (red:1.5) cat")
    ids = tiny.tokenize("a red cat")
    weights = np.ones(ids.shape, np.float32)
    weights[0, 2] = 1.5
    np.testing.assert_allclose(context, apply_emphasis(tiny._encode_tokens(ids), weights), rtol=1e-6, atol=1e-6)


def test_long_prompts_are_no_longer_truncated(tiny, a1111):
    base, changed = _words(120), _words(120, changed_at=100)
    assert len(tiny.tokenizer.encode(base)) == 120
    first = tiny.text_to_image(base, **GENERATE)
    assert not tiny.last_truncated
    assert np.abs(tiny.text_to_image(changed, **GENERATE).astype(int) - first).max() > 0
    tiny.prompt_syntax = None  # plain text: cut at 75 tokens, so word 100 changes nothing
    with pytest.warns(PromptTruncatedWarning, match="dropped the last 45"):
        np.testing.assert_array_equal(tiny.text_to_image(base, **GENERATE), tiny.text_to_image(changed, **GENERATE))


@pytest.mark.slow  # two eager UNet calls: about 10 s each on two busy cores
def test_the_unet_reads_contexts_of_any_length(tiny):
    rng = np.random.default_rng(1)
    unet = tiny.config.unet
    feed = {"latent": rng.standard_normal((1, 8, 8, unet.in_channels)).astype("float32"),
            "timestep_embedding": rng.standard_normal((1, unet.timestep_dim)).astype("float32")}
    context = rng.standard_normal((1, 77, unet.context_dim)).astype("float32")
    once = np.asarray(tiny.diffusion_model({**feed, "context": context}))
    # the same 77 tokens twice: every attention weight halves and the attended values are the same
    twice = np.asarray(tiny.diffusion_model({**feed, "context": np.concatenate([context, context], axis=1)}))
    np.testing.assert_allclose(twice, once, atol=1e-5)


@pytest.mark.slow  # compiles the loop for 2 and 4 chunks
def test_one_compiled_loop_per_chunk_count():
    from sd_keras.pipeline import StableDiffusion

    tiny = StableDiffusion.from_preset("tiny")  # its own compiled programs, counted from zero
    tiny.prompt_syntax = "a1111"
    loop = tiny._loop
    tiny.text_to_image(_words(100), **GENERATE)  # 2 chunks
    traced = loop.trace_count
    tiny.text_to_image(_words(140, changed_at=3), **GENERATE)  # 2 chunks: same program
    tiny.text_to_image("a short prompt", negative_prompt=_words(90), **GENERATE)  # 1 + 2 chunks -> 2
    assert loop.trace_count == traced
    tiny.text_to_image(_words(160), **GENERATE)  # 3 chunks -> 4: one new program
    assert loop.trace_count == traced + 1
    tiny.text_to_image(_words(290), **GENERATE)  # 4 chunks: that program again
    assert loop.trace_count == traced + 1


def test_batches_and_negative_prompts_share_a_chunk_count(tiny, a1111):
    context, unconditional = tiny._contexts(["a cat", _words(80)], ["blurry, " * 40] * 2)
    assert context.shape[:2] == unconditional.shape[:2] == (2, 154)
    repeated, _ = tiny._contexts(["a (cat:1.3)"] * 3, None)  # one prompt for a batch: encoded once
    np.testing.assert_array_equal(repeated, np.repeat(tiny._contexts(["a (cat:1.3)"], None)[0], 3, axis=0))
    context, unconditional = tiny._contexts(["a cat"], ["blurry BREAK sharp BREAK soft"])  # 1 and 3 -> 4
    assert context.shape[1] == unconditional.shape[1] == 4 * 77
    empty = tiny._encode_tokens(tiny.tokenize(""))
    np.testing.assert_allclose(context[:, 77:], np.tile(empty, (1, 3, 1)), atol=1e-6)
    # a context encoded on its own (encode_text) meets a longer negative prompt in generate_image
    short_negative = tiny.text_to_image("a cat", "blurry", **GENERATE)
    long_negative = tiny.generate_image(tiny.encode_text("a cat"), "blurry BREAK sharp", **GENERATE)
    assert np.abs(long_negative.astype(int) - short_negative).max() > 0


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A folder holding ``style.safetensors``, a LoRA of the tiny model's UNet attention (sd_keras's own format)."""
    from sd_keras import train
    from sd_keras.pipeline import StableDiffusion

    trained = StableDiffusion.from_preset("tiny")
    train.enable_lora(trained.diffusion_model, 2, alpha=3.0, targets=("q_proj", "v_proj", "out_proj"))
    rng = np.random.default_rng(0)
    for layer in train.lora.dense_layers(trained.diffusion_model):
        if layer.lora_enabled:  # B starts at zero: give it values so the LoRA changes something
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("loras")
    train.save_lora(trained.diffusion_model, str(folder / "style.safetensors"), "tiny")
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


def test_lora_tags_merge_for_their_prompt_only(tiny, a1111, lora_dir):
    from sd_keras.weights.lora import apply_lora

    plain = tiny.text_to_image("a cat", **GENERATE)
    with pytest.raises(InputError, match=r"<lora:style> needs a LoRA folder \(lora_dir="):
        tiny.text_to_image("a cat <lora:style:0.7>", **GENERATE)
    tiny.lora_dir = str(lora_dir)
    tagged = tiny.text_to_image("a cat <lora:style:0.7>", **GENERATE)
    assert np.abs(tagged.astype(int) - plain).max() > 0
    np.testing.assert_array_equal(tiny.text_to_image("a cat", **GENERATE), plain)  # no tag: taken out exactly
    applied = apply_lora(tiny, str(lora_dir / "style.safetensors"), 0.7)  # what --lora style.safetensors:0.7 does
    try:
        np.testing.assert_array_equal(tiny.text_to_image("a cat", **GENERATE), tagged)
    finally:
        applied.remove()
    with pytest.raises(InputError, match=r"<lora:nope>: no nope\{.safetensors,.ckpt,.pt\} in the LoRA folder "
                                         r".*loras.* \(it holds style\)"):
        tiny.text_to_image("a cat <lora:nope>", **GENERATE)
    for name in ("../style", "sub/style", ".."):
        with pytest.raises(InputError, match="a LoRA name is a file name in the LoRA folder, without folders"):
            tiny.text_to_image(f"a cat <lora:{name}>", **GENERATE)
    with pytest.raises(InputError, match="negative_prompt: <lora:style:...> tags are read from the prompt only"):
        tiny.text_to_image("a cat", "<lora:style>", **GENERATE)
    np.testing.assert_array_equal(tiny.text_to_image("a cat", **GENERATE), plain)


@pytest.mark.slow  # loads the tiny model twice and compiles its loop
def test_cli_reads_a1111_prompts_by_default(tiny, lora_dir, tmp_path, capsys):
    from PIL import Image

    from sd_keras import cli, metadata

    common = ["generate", "-m", "tiny", "--steps", "2", "-W", "64", "-H", "64", "-s", "3", "--no-progress"]
    assert cli.main([*common, "-p", "a cat <lora:nope>", "--lora-dir", str(lora_dir), "-o", str(tmp_path / "x.png")]) \
        == 2
    assert "(it holds style)" in capsys.readouterr().err
    prompt = "a (cat:1.6) <lora:style:0.7>"
    assert cli.main([*common, "-p", prompt, "--lora-dir", str(lora_dir), "-o", str(tmp_path / "a.png")]) == 0
    written = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert metadata.read_parameters(str(tmp_path / "a.png")).startswith(prompt + "\n")
    tiny.prompt_syntax, tiny.lora_dir = "a1111", str(lora_dir)
    try:
        expected = tiny.text_to_image(prompt, None, 1, 2, 7.0, 3, sampler="Euler a", height=64, width=64)[0]
    finally:
        sync_prompt_loras(tiny, [])
        tiny.prompt_syntax, tiny.lora_dir = None, None
    assert np.abs(written.astype(int) - expected).max() <= 1
    assert cli.main([*common, "-p", "a (cat:1.6)", "--prompt-syntax", "plain", "-o", str(tmp_path / "b.png")]) == 0
    plain_text = tiny.text_to_image("a (cat:1.6)", None, 1, 2, 7.0, 3, sampler="Euler a", height=64, width=64)[0]
    assert np.abs(np.asarray(Image.open(tmp_path / "b.png").convert("RGB")).astype(int) - plain_text).max() <= 1


@pytest.mark.slow  # a server with its worker thread
def test_server_reads_a1111_prompts_by_default(tiny, lora_dir):
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sd_keras.server.app import ServerSettings, create_app

    settings = ServerSettings(models={"tiny": "tiny"}, model="tiny", lora_dir=str(lora_dir))
    body = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 7.0, "seed": 3}
    try:
        with TestClient(create_app(settings, loader=lambda spec, dtype: tiny)) as client:
            refused = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a cat <lora:nope:0.5>"})
            assert refused.status_code == 422
            detail = refused.json()["detail"]
            assert "(it holds style)" in detail and str(lora_dir) not in detail  # the server's folders stay private
            assert client.post("/sdapi/v1/txt2img", json={**body, "prompt": "(cat:1.2.3)"}).status_code == 422
            answer = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a (cat:1.6) <lora:style:0.7>"})
            assert answer.status_code == 200
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
        assert tiny.prompt_syntax == "a1111" and tiny.lora_dir == str(lora_dir)
        expected = tiny.text_to_image("a (cat:1.6) <lora:style:0.7>", None, 1, 2, 7.0, 3, sampler="Euler",
                                      height=64, width=64)[0]
        assert np.abs(served.astype(int) - expected).max() <= 1
    finally:
        sync_prompt_loras(tiny, [])
        tiny.prompt_syntax, tiny.lora_dir = None, None


@pytest.mark.slow  # exports a LiteRT bundle
@pytest.mark.once  # LiteRT export runs on TensorFlow
def test_bundle_runner_reads_one_chunk_with_the_same_encoding(tiny, a1111, tmp_path):
    from sd_keras.export import exporter
    from sd_keras.export.runner import BundleRunner

    path = tmp_path / "tiny-fp32"
    exporter.export_bundle(tiny, str(path), quantization="fp32", image_encoder=False, calibration_prompts=["a cat"],
                           calibration_steps=2, parity_samples=2, latency_runs=1, quality_gates=False)
    runner = BundleRunner(str(path))
    assert runner.prompt_syntax is None
    runner.prompt_syntax = "a1111"
    # two chunks: the bundle's text encoder is called per chunk. (No emphasis here: the tiny model's random text
    # encoder ends in a layer norm without bias, so its outputs' mean is ~0 and the mean restoring is ill-posed.)
    prompt = "a red cat BREAK on a mat"
    np.testing.assert_allclose(runner.encode_text(prompt), tiny.encode_text(prompt), atol=1e-4)
    # its UNet was exported for 77 context tokens: a prompt of two chunks is refused, one chunk runs
    with pytest.raises(InputError, match="context"):
        runner.text_to_image(prompt, num_steps=2, seed=3)
    images = runner.text_to_image("a (red:1.4) [cat]", num_steps=2, seed=3)
    assert images.shape == (1, 64, 64, 3)
    with pytest.raises(InputError, match="tags need a Keras model"):
        runner.text_to_image("a cat <lora:style>", num_steps=2, seed=3)
