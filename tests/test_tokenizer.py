"""CLIP tokenizer: parity with KerasCV's SimpleTokenizer and transformers' CLIPTokenizer.

Reference followed: KerasCV, on every input. The pipeline promises KerasCV's images for KerasCV's
prompts, so ids must equal ``SimpleTokenizer.encode``; KerasCV's cleanup is also OpenAI CLIP's minus ftfy.
transformers' ``CLIPTokenizer`` (5.x, backed by the Rust ``tokenizers``; it never calls ftfy, installed
or not) agrees except in documented ways, each entry of ``tests/data/tokenizer_prompts.json`` saying
which:

* ``cleanup``: transformers does not HTML-unescape, does not strip U+001C..U+001F at the ends and
  lowercases character by character (final sigma stays σ; Python's ``str.lower`` writes ς). Feeding it
  our cleaned text gives our ids.
* ``nfc``: transformers NFC-normalizes; KerasCV keeps decomposed accents. Our ids of the NFC text equal
  transformers' ids.
* ``split``: the pieces differ: transformers cuts literal special tokens out anywhere and matches its
  pattern case-sensitively (U+017F long s, U+0345). BPE of our pieces still agrees with its BPE model.

Regenerate the golden ids (from KerasCV) with ``python tests/test_tokenizer.py --regenerate``.
"""

import doctest
import gzip
import hashlib
import html
import json
import random
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import regex

import sd_keras.tokenizer as tokenizer_module
from sd_keras.tokenizer import (
    DEFAULT_MERGES_PATH,
    MERGES_SHA256,
    CLIPTokenizer,
    PromptTruncatedWarning,
    bytes_to_unicode,
    clean_text,
    pre_tokenize,
    read_merges,
)

GOLDEN_PATH = Path(__file__).parent / "data" / "tokenizer_prompts.json"
SHIPPED_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
GOLDEN = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
PROMPTS = GOLDEN["prompts"]


def _prompt_id(entry):
    return f"{PROMPTS.index(entry):02d}-{entry['note'].split()[0]}"


# --- references -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def keras_cv_tokenizer():
    from keras_cv.models.stable_diffusion import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(DEFAULT_MERGES_PATH))


def _reference_vocabulary():
    """CLIP's vocabulary built from the merges file here, independently of sd_keras."""
    kept = [b for b in range(256) if chr(b).isprintable() and chr(b) not in " \xad"]
    table = {byte: chr(byte) for byte in kept}
    table.update({byte: chr(256 + n) for n, byte in enumerate(b for b in range(256) if b not in table)})
    lines = gzip.decompress(DEFAULT_MERGES_PATH.read_bytes()).decode("utf-8").split("\n")[1:48895]
    symbols = list(table.values())
    vocab = symbols + [s + "</w>" for s in symbols] + [l.replace(" ", "") for l in lines]
    return table, lines, vocab + ["<|startoftext|>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def reference_vocabulary():
    return _reference_vocabulary()


@pytest.fixture(scope="module")
def transformers_files(tmp_path_factory, reference_vocabulary):
    _, merges, vocab = reference_vocabulary
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def transformers_tokenizer(transformers_files):
    from transformers import CLIPTokenizer as TransformersCLIPTokenizer

    return TransformersCLIPTokenizer.from_pretrained(str(transformers_files))


def _transformers_ids(reference, text):
    return reference(text).input_ids[1:-1]


# --- shipped data and vocabulary ------------------------------------------------------------------------


def test_shipped_merges_file_is_clips_with_license():
    assert hashlib.sha256(DEFAULT_MERGES_PATH.read_bytes()).hexdigest() == SHIPPED_SHA256 == MERGES_SHA256
    license_text = (DEFAULT_MERGES_PATH.parent / "LICENSE-CLIP-BPE.txt").read_text(encoding="utf-8")
    assert "open_clip" in license_text and "MIT" in license_text and "OpenAI" in license_text
    assert GOLDEN["merges_sha256"] == SHIPPED_SHA256


def test_vocabulary_matches_clip_construction(tokenizer, keras_cv_tokenizer, reference_vocabulary):
    table, _, vocab = reference_vocabulary
    assert bytes_to_unicode() == table
    assert list(bytes_to_unicode()) == list(table)  # order is the id order
    assert [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)] == vocab == keras_cv_tokenizer.vocab
    assert tokenizer.vocab_size == 49408
    assert tokenizer.token_to_id("<|startoftext|>") == tokenizer.start_token_id == 49406
    assert tokenizer.token_to_id("<|endoftext|>") == tokenizer.end_token_id == 49407
    assert tokenizer.token_to_id("cat</w>") == 2368


def test_module_doctests():
    with pytest.warns(PromptTruncatedWarning):  # the tokenize_with_info example truncates on purpose
        result = doctest.testmod(tokenizer_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


@pytest.mark.slow
def test_tokenizer_imports_no_framework():
    # Loaded by path so that only the tokenizer module itself is judged, not the package's __init__.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('clip_tokenizer', {str(tokenizer_module.__file__)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert module.CLIPTokenizer().encode('a cat') == [320, 2368]\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'regex') if m in sys.modules))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


# --- golden corpus ------------------------------------------------------------------------------------------


def test_corpus_covers_required_cases():
    notes = {entry["note"] for entry in PROMPTS}
    assert len(PROMPTS) >= 60
    for required in ("CJK", "Cyrillic", "Arabic / Hebrew", "emoji", "HTML entities", "whitespace", "contractions",
                     "empty", "very long words", "weights / emphasis syntax", "digits and numbers"):
        assert required in notes
    assert any(entry["text"] == "" for entry in PROMPTS)


@pytest.mark.parametrize("entry", PROMPTS, ids=_prompt_id)
def test_corpus_ids_equal_golden_and_keras_cv(entry, tokenizer, keras_cv_tokenizer):
    ids = tokenizer.encode(entry["text"])
    assert ids == entry["ids"]
    assert [49406, *ids, 49407] == keras_cv_tokenizer.encode(entry["text"])


@pytest.mark.parametrize("entry", PROMPTS, ids=_prompt_id)
def test_corpus_ids_versus_transformers(entry, tokenizer, transformers_tokenizer, reference_vocabulary):
    text, ids, relation = entry["text"], entry["ids"], entry["transformers"]
    theirs = _transformers_ids(transformers_tokenizer, text)
    if relation == "same":
        assert ids == theirs
        return
    assert ids != theirs, "documented disagreement no longer happens; mark the entry 'same'"
    if relation == "cleanup":
        assert _transformers_ids(transformers_tokenizer, clean_text(text)) == ids
    elif relation == "nfc":
        assert tokenizer.encode(unicodedata.normalize("NFC", text)) == theirs
    elif relation == "split":
        assert _bpe_with_transformers(transformers_tokenizer, reference_vocabulary, text) == ids
    else:
        raise AssertionError(f"unknown relation {relation!r}")


def _bpe_with_transformers(reference, reference_vocabulary, text):
    """Ids from transformers' BPE model applied to our pieces: checks BPE apart from splitting."""
    table = reference_vocabulary[0]
    ids = []
    for piece in pre_tokenize(clean_text(text)):
        if piece in ("<|startoftext|>", "<|endoftext|>"):
            ids.append(reference.convert_tokens_to_ids(piece))
        else:
            symbols = "".join(table[byte] for byte in piece.encode("utf-8"))
            ids.extend(token.id for token in reference.backend_tokenizer.model.tokenize(symbols))
    return ids


def test_bpe_matches_transformers_bpe_model_on_all_pieces(transformers_tokenizer, reference_vocabulary):
    for entry in PROMPTS:
        assert _bpe_with_transformers(transformers_tokenizer, reference_vocabulary, entry["text"]) == entry["ids"]


# --- cleanup and splitting, beyond the corpus ----------------------------------------------------------------


def _keras_cv_clean(text):
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import basic_clean, whitespace_clean

    return whitespace_clean(basic_clean(text)).lower()


def _assigned_code_points():
    return [
        chr(code) for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF and unicodedata.category(chr(code)) != "Cn"
    ]


def test_pre_tokenize_equals_clip_pattern_on_every_code_point():
    # Characters this Python's Unicode database does not know are out of scope (see pre_tokenize).
    characters = _assigned_code_points()
    separated = " ".join(characters)
    assert pre_tokenize(separated) == CLIP_PATTERN.findall(separated)
    joined = "".join(characters)
    assert pre_tokenize(joined) == CLIP_PATTERN.findall(joined)
    lowered = joined.lower()
    assert pre_tokenize(lowered) == CLIP_PATTERN.findall(lowered)


FUZZ_ALPHABET = (
    list("aAsStTrReEvVmMlLdD'’!?.,:;()[]{}<>|/\\-_=+*&#%0123456789 \t\n")
    + ["<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "'s", "'ll", "&amp;", "&lt;", "&#39;", "&quot;", "&nbsp;"]
    + ["\u017f", "\u0345", "\x1c", "\x1f", "\x00", "\xa0", "\u3000", "\u200b", "\u200d", "\u0301", "ß", "ẞ", "İ", "Σ"]
    + ["é", "中", "猫", "ж", "Ж", "ع", "١", "½", "Ⅻ", "😀", "🐈", "🏽", "️", "ﬁ", "Ａ", "４"]
)


def test_random_texts_match_keras_cv(tokenizer, keras_cv_tokenizer):
    rng = random.Random(20240131)
    for _ in range(1500):
        text = "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 24)))
        assert clean_text(text) == _keras_cv_clean(text), repr(text)
        assert [49406, *tokenizer.encode(text), 49407] == keras_cv_tokenizer.encode(text), repr(text)


def test_clean_text_examples():
    assert clean_text("  A &amp;amp; B\t\t\nC  ") == "a & b c"
    assert clean_text("x\u00a0\u2003y") == "x y"
    assert clean_text("\x1ca\x1cb\x1c") == "a\x1cb"
    assert clean_text("ΟΔΟΣ") == "οδος"
    assert clean_text("cafe\u0301") == "cafe\u0301"


def test_pre_tokenize_rules():
    assert pre_tokenize("it's 2024!!") == ["it", "'s", "2", "0", "2", "4", "!!"]
    assert pre_tokenize("!'s a<|endoftext|>b") == ["!'", "s", "a", "<|endoftext|>", "b"]
    assert pre_tokenize("it'\u017f x\u0345y") == ["it", "'\u017f", "x", "y"]
    assert pre_tokenize("😀👍🏽 東京") == ["😀👍🏽", "東京"]


# --- decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", PROMPTS[::4], ids=_prompt_id)
def test_decode_matches_references(entry, tokenizer, keras_cv_tokenizer, transformers_tokenizer):
    ids = [49406, *entry["ids"], 49407]
    text = tokenizer.decode(ids)
    assert text == transformers_tokenizer.decode(ids)
    assert text == keras_cv_tokenizer.decode(ids).strip()
    assert tokenizer.decode(entry["ids"], skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)


def test_decode_round_trip_and_errors(tokenizer):
    row = tokenizer("A photo of a Cat, 8k")[0]
    assert tokenizer.decode(row, skip_special_tokens=True) == "a photo of a cat , 8 k"
    assert tokenizer.decode([]) == ""
    with pytest.raises(ValueError, match="token id at position 1 49408 is outside"):
        tokenizer.decode([320, 49408])
    with pytest.raises(TypeError, match="must be an int, got float"):
        tokenizer.decode([320.0])
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.decode(tokenizer(["a", "b"]))


# --- padding, batches, truncation ------------------------------------------------------------------------


class _CapturingTextEncoder:
    def __init__(self):
        self.tokens = []

    def predict_on_batch(self, inputs):
        self.tokens.append(np.asarray(inputs["tokens"]))
        return np.zeros((1, 77, 8), "float32")


@pytest.mark.parametrize("version", ["StableDiffusion", "StableDiffusionV2"])
def test_padding_matches_keras_cv_pipeline(version, tokenizer, keras_cv_tokenizer):
    import keras_cv
    from keras_cv.src.models.stable_diffusion.constants import _UNCONDITIONAL_TOKENS

    pipeline = getattr(keras_cv.models, version)(img_height=128, img_width=128, jit_compile=False)
    pipeline._tokenizer = keras_cv_tokenizer
    pipeline._text_encoder = encoder = _CapturingTextEncoder()
    prompts = [entry["text"] for entry in PROMPTS if len(entry["ids"]) <= 75]
    for prompt in prompts:
        pipeline.encode_text(prompt)
    expected = np.concatenate(encoder.tokens)
    ours = tokenizer(prompts)
    assert ours.dtype == np.int32 and ours.shape == (len(prompts), 77)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(tokenizer("")[0], _UNCONDITIONAL_TOKENS)
    # Where KerasCV refuses a long prompt, we truncate.
    long_prompt = next(entry["text"] for entry in PROMPTS if len(entry["ids"]) > 75)
    with pytest.raises(ValueError, match="too long"):
        pipeline.encode_text(long_prompt)


def test_pad_zero_and_truncation_match_transformers(tokenizer, transformers_files):
    from transformers import CLIPTokenizer as TransformersCLIPTokenizer

    # With "!" registered as its pad token, transformers also cuts "!" out of the text as a special token,
    # so prompts containing "!" are left out here; the padding rule is what this test compares.
    entries = [entry for entry in PROMPTS if entry["transformers"] == "same" and "!" not in entry["text"]]
    prompts = [entry["text"] for entry in entries]
    assert any(len(entry["ids"]) > 75 for entry in entries)
    for pad_token, pad_token_id in (("<|endoftext|>", 49407), ("!", 0)):  # SD 1.x and SD 2.x (diffusers) configs
        reference = TransformersCLIPTokenizer.from_pretrained(str(transformers_files), pad_token=pad_token)
        expected = reference(prompts, padding="max_length", max_length=77, truncation=True).input_ids
        with pytest.warns(PromptTruncatedWarning):
            ours = tokenizer(prompts, pad_token_id=pad_token_id)
        np.testing.assert_array_equal(ours, expected)
        with pytest.warns(PromptTruncatedWarning):
            configured = CLIPTokenizer(pad_token_id=pad_token_id)(prompts)
        np.testing.assert_array_equal(configured, expected)


def test_truncation_warns_and_flags(tokenizer):
    long_entry = next(entry for entry in PROMPTS if len(entry["ids"]) > 75)
    with pytest.warns(PromptTruncatedWarning, match=rf"prompt 1 has {len(long_entry['ids'])} tokens .* reads 75"):
        result = tokenizer.tokenize_with_info(["a cat", long_entry["text"], ""])
    assert result.truncated.tolist() == [False, True, False] and result.any_truncated
    assert result.num_tokens.tolist() == [2, len(long_entry["ids"]), 0]
    assert result.ids[1].tolist() == [49406, *long_entry["ids"][:75], 49407]
    with pytest.warns(PromptTruncatedWarning):
        plain = tokenizer(long_entry["text"])
    assert type(plain) is np.ndarray
    np.testing.assert_array_equal(plain[0], result.ids[1])

    exactly_full = "cat " * 75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = tokenizer.tokenize_with_info(exactly_full)
    assert not full.any_truncated and full.ids[0, -1] == 49407 and full.ids[0, -2] == 2368
    with pytest.warns(PromptTruncatedWarning, match="dropped the last 1: 'cat'"):
        tokenizer(exactly_full + "cat")


def test_batches_and_small_context(tokenizer):
    single = tokenizer("a cat")
    assert single.shape == (1, 77) and single[0, :4].tolist() == [49406, 320, 2368, 49407]
    assert (single[0, 4:] == 49407).all()
    batch = tokenizer(("a cat", "", "a dog"))
    np.testing.assert_array_equal(batch[0], single[0])
    assert batch[1, :2].tolist() == [49406, 49407] and batch.shape == (3, 77)
    np.testing.assert_array_equal(tokenizer.tokenize(["a cat"]), single)
    assert tokenizer([]).shape == (0, 77)
    short = CLIPTokenizer(context_length=4, pad_token_id=0)
    with pytest.warns(PromptTruncatedWarning):
        assert short("a cat dog").tolist() == [[49406, 320, 2368, 49407]]
    assert short("a").tolist() == [[49406, 320, 49407, 0]]


def test_bad_input_errors(tokenizer):
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tokenizer.encode(b"a cat")
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str, got int"):
        tokenizer(["a cat", 3])
    with pytest.raises(TypeError, match="prompts must be a str or a list of str, got NoneType"):
        tokenizer(None)
    with pytest.raises(ValueError, match="pad_token_id 49408 is outside"):
        tokenizer("a", pad_token_id=49408)
    with pytest.raises(ValueError, match="pad_token_id -1 is outside"):
        CLIPTokenizer(pad_token_id=-1)
    with pytest.raises(ValueError, match="context_length must be an int >= 2"):
        CLIPTokenizer(context_length=1)
    with pytest.raises(ValueError, match=r"lone surrogate U\+D83D at index 2"):
        tokenizer.encode("a \ud83d cat")


# --- merges files -----------------------------------------------------------------------------------------


def test_from_file_reads_gzip_and_plain_text(tmp_path, tokenizer):
    plain = tokenizer.save_merges(tmp_path / "merges.txt")
    packed = tokenizer.save_merges(tmp_path / "sub" / "merges.txt.gz")
    assert plain.read_text(encoding="utf-8").startswith("#version: 0.2\ni n\nt h\n")
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert tokenizer.save_merges(tmp_path / "again.txt.gz").read_bytes() == packed.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["again.txt.gz", "merges.txt", "merges.txt.gz", "sub"]
    text = "(masterpiece:1.2), 東京タワー, it's 😀"
    for path in (plain, packed, DEFAULT_MERGES_PATH):
        assert CLIPTokenizer.from_file(path).encode(text) == tokenizer.encode(text)
    assert read_merges(plain) == read_merges(DEFAULT_MERGES_PATH)


def test_read_merges_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="merges file not found: .*missing.txt"):
        read_merges(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\ni n\nt h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has 2 merges; CLIP's vocabulary needs 48894"):
        CLIPTokenizer.from_file(short)
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("#version: 0.2\ni n\nthree symbols here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: expected two symbols"):
        read_merges(malformed)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"#version: 0.2\ni n\n")[:12])
    with pytest.raises(ValueError, match="not a valid gzip file"):
        read_merges(broken)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"#version: 0.2\n\xe9 n\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_merges(latin)


# --- golden file maintenance -----------------------------------------------------------------------------------


def _regenerate_golden():
    """Recompute every entry's ids with KerasCV and rewrite the golden file (texts and notes are kept)."""
    from keras_cv.models.stable_diffusion import SimpleTokenizer

    reference = SimpleTokenizer(bpe_path=str(DEFAULT_MERGES_PATH))
    for entry in PROMPTS:
        entry["ids"] = reference.encode(entry["text"])[1:-1]
    header = {key: value for key, value in GOLDEN.items() if key != "prompts"}
    header["merges_sha256"] = hashlib.sha256(DEFAULT_MERGES_PATH.read_bytes()).hexdigest()
    lines = [json.dumps(entry, ensure_ascii=False) for entry in PROMPTS]
    body = json.dumps(header, ensure_ascii=False, indent=1)[:-2]
    GOLDEN_PATH.write_text(body + ',\n "prompts": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n", encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    _regenerate_golden()


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)
