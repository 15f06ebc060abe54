"""Golden vectors for the Kotlin port in ``android_demo/core``, and the Unicode/HTML tables it ships.

The Android app re-implements the host side of a generation (tokenizer, samplers, seeded noise, the sampling loop
with classifier-free guidance, uint8 conversion) in pure Kotlin. This module writes what the Python library computes
for a fixed set of inputs as small JSON files; the Kotlin unit tests read them and must agree exactly (token ids,
integers) or within 1e-5 (floats). ``tests/test_golden.py`` regenerates them and compares with the committed copies,
so they cannot drift from the library.

Fixtures (``write_golden``):

    tokenizer.json          clean_text, pre_tokenize, encode and tokenize of every prompt in
                            tests/data/tokenizer_prompts.json plus port-specific edge cases, and inputs that must fail
    samplers.json           every ``Sampler.tables()`` entry of every sampler for 1, 4, 20 and 50 steps (epsilon; the
                            tables that differ for v-prediction; a non-default schedule), and step counts that must fail
    noise.json              SplitMix64 outputs, ``gaussian`` values and a ``latent_noise`` batch for several seeds,
                            including negative and >= 2**63 ones
    timestep_embedding.json ``timestep_embedding`` rows the UNet input is built from
    trajectories.json       one full generation per sampler with fake models (defined in the file's description)
    pixels.json             ``to_uint8`` of decoder outputs around and outside [-1, 1]
    tiling.json             ``sd_keras.tiling``: tile grids, feather weights and a blended tiled run of a tile-dependent
                            function (defined in the file's description)
    sdxl.json               SDXL bundles (format_version 2): the per-encoder re-padding of token rows
                            (``StableDiffusionXL._encoder_ids``), the time ids of micro-conditioning
                            (``StableDiffusionXL._time_ids``) and the ``added_embedding`` built from them and a
                            pooled embedding, and whole short generations with fake text encoders and UNet (defined in
                            the file's description): both rows' concatenated contexts and added embeddings (the
                            force-zeros unconditional row included), the latent after each step and the pixels

Tables (``write_text_tables``), shipped as resources of the Kotlin core so that it follows this Python's Unicode
database and ``html.unescape`` exactly on any JVM or Android version:

    unicode_data.txt        general-category classes, ``str.lower`` mappings, Cased/Case_Ignorable (for the final
                            sigma rule), ``str.isspace`` and CLIP's White_Space sets
    html_entities.txt       ``html.entities.html5`` plus the numeric-reference fix-ups of ``html.unescape``

Example:
    >>> from sd_keras.export.golden import write_golden
    >>> paths = write_golden("android_demo/core/src/test/resources/golden")   # doctest: +SKIP

or ``sd-keras golden -o android_demo/core/src/test/resources/golden --tables
android_demo/core/src/main/resources/org/sdkeras/core``.
"""

from __future__ import annotations

import html
import html.entities
import json
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from sd_keras import files
from sd_keras import noise as noise_lib
from sd_keras import tiling
from sd_keras.pipeline import to_uint8
from sd_keras.schedulers import SAMPLER_NAMES, NoiseSchedule, get_sampler
from sd_keras.tokenizer import WHITE_SPACE, CLIPTokenizer, PromptTruncatedWarning, clean_text, pre_tokenize

__all__ = [
    "write_golden",
    "write_text_tables",
    "FIXTURE_NAMES",
    "TABLE_NAMES",
    "STEP_COUNTS",
    "fake_text_encoder",
    "fake_diffusion_model",
    "fake_decoder",
    "host_trajectory",
    "sdxl_added_embedding",
    "sdxl_host_trajectory",
]

_REPO = Path(__file__).resolve().parent.parent
PROMPTS_PATH = _REPO / "tests" / "data" / "tokenizer_prompts.json"
FIXTURE_NAMES = ("tokenizer.json", "samplers.json", "noise.json", "timestep_embedding.json", "trajectories.json",
                 "pixels.json", "tiling.json", "sdxl.json")
TABLE_NAMES = ("unicode_data.txt", "html_entities.txt")
STEP_COUNTS = (1, 4, 20, 50)
# The only tables the prediction type changes (it is folded into the denoiser coefficients).
PREDICTION_TABLES = ("denoise_latent", "denoise_output")
# A schedule unlike SD's, to check that the port reads every field of the manifest's "schedule".
CUSTOM_SCHEDULE = NoiseSchedule(num_train_timesteps=500, beta_start=0.0001, beta_end=0.02, steps_offset=0)

# Prompts that exercise parts of the port the shared prompt list reaches only lightly.
EXTRA_PROMPTS = (
    ("&amp &ampfoo &AMP; &amp;lt; &amp;#38;amp;", "legacy entities without ';', double unescape"),
    ("&notin; &notit; &noti &not", "longest legacy prefix"),
    ("&#0; &#128; &#x80; &#xD800; &#x110000; &#1114111; &#65534; &#11;", "numeric references html.unescape fixes up"),
    ("&#X41;&#x4a&#65&#;&#x;& amp;&&amp;&", "numeric reference spellings and lone ampersands"),
    ("&" + "a" * 40 + "; &\u00e9; &amp\r;", "names longer than 32, non-ASCII names, CR inside a name"),
    ("\u03a3 \u0391\u03a3 \u0391\u03a3. \u0391.\u03a3 \u0391\u03a3'\u0391 \u0391\u03a3\u0391 a\u03a3\u0345",
     "final sigma contexts"),
    ("\u0130 \u01c5 \u1f88 \u212b \u2c2f \U00010400\U00010428", "one-to-many, titlecase and supplementary lowercasing"),
    ("<|\u017ftartoftext|> it'\u017f \u017f'\u017f", "long s spells special tokens and contractions"),
    ("x\u0345y \u0345\u0345 a\u0345'\u0345s", "U+0345 is dropped"),
    ("\U0001d573\U0001d58a\U0001d591 \U0001d7d9\U0001d7da \u216b\u2179", "supplementary letters and numbers"),
    ("\ue000\U000e0080\U0010fffd \u0378", "private use and unassigned code points"),
    ("a\u1680b\u180ec\u200bd\u2060e\ufeff", "space-like characters that are not White_Space"),
    ("\u00ad\u00a0soft\u00adhyphen", "soft hyphen and no-break space"),
)
ERROR_PROMPTS = (
    ("\ud800x", "a lone surrogate is not valid Unicode text"),
    ("&#" + "1" * 4301 + ";", "a decimal reference over 4300 digits: Python's int() refuses it"),
)

# Trajectory set-up: tiny latents, fake models (see _TRAJECTORY_DESCRIPTION).
TRAJECTORY_LATENT_SHAPE = (4, 4, 4)
TRAJECTORY_STEPS = 5
TRAJECTORY_GUIDANCE = 7.5
TRAJECTORY_CONTEXT_DIM = 4
TRAJECTORY_EMBEDDING_DIM = 32
_TRAJECTORY_CASES = (
    ("DDIM", "epsilon", 0, "a red circle", ""),
    ("DDIM KerasCV", "epsilon", 1, "a red circle", ""),
    ("Euler", "epsilon", 42, "a red circle", "blurry, lowres"),
    ("Euler Karras", "epsilon", -7, "a red circle", ""),
    ("Euler a", "epsilon", 2**33 + 5, "two blue squares", ""),
    ("Euler a Karras", "epsilon", 123456789, "a red circle", "green"),
    ("DPM++ 2M", "epsilon", 2**63 + 11, "a red circle", ""),
    ("DPM++ 2M Karras", "epsilon", 7, "a red circle", ""),
    ("DDIM", "v_prediction", 3, "a red circle", ""),
    ("DPM++ 2M Karras", "v_prediction", 4, "a yellow triangle", ""),
)
_TRAJECTORY_DESCRIPTION = (
    "One generation per case with fake models, float32 throughout. Text encoder: context[p, d] = float32(ids[p]) * "
    "1e-6 for every channel d < {dim} (ids: the 77 padded token ids of the prompt or negative prompt). Diffusion "
    "model (batch 2: row 0 unconditional, row 1 conditional): eps[b] = (0.1 * latent[b] + 0.01 * "
    "timestep_embedding[b][{half}]) + context[b][1][0], elementwise, where timestep_embedding[b][{half}] = sin(t) "
    "(embedding dim {emb}). Guidance: uncond + scale * (cond - uncond). Decoder: image[y, x, c] = 0.25 * "
    "latent[y, x, c] for c < 3, then to_uint8. Latents start as gaussian noise of the seed times init_noise_sigma; "
    "ancestral samplers draw one latent of noise per step from the same stream. 'latents' holds the latent after "
    "each step; 'pixels' the final uint8 image (H, W, 3) in C order."
).format(dim=TRAJECTORY_CONTEXT_DIM, half=TRAJECTORY_EMBEDDING_DIM // 2, emb=TRAJECTORY_EMBEDDING_DIM)

NOISE_SEEDS = (0, 1, 42, 1234, -1, -12345, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 10**20)
NOISE_COUNT = 9  # odd: the last Box-Muller sine is dropped
EMBEDDING_TIMESTEPS = (0.0, 1.0, 20.5, 500.0, 999.0)
EMBEDDING_DIM = 320
# every DDIM/Euler timestep of 20-step schedules and fractional ones (Euler "linspace", Karras)
RUNNER_EMBEDDING_TIMESTEPS = (0.0, 1.0, 20.5, 52.578946, 261.0, 500.0, 737.4211, 946.7368, 981.0, 999.0)


# --- JSON output -----------------------------------------------------------------------------------------------


class _Raw(str):
    """A number already formatted for JSON."""


def _float32(value):
    # The shortest text that reads back as the same float32, so fixtures stay small and exact.
    text = str(np.float32(value))
    if not np.isfinite(np.float32(value)):
        raise ValueError(f"golden values must be finite, got {text}")
    return _Raw(text)


def _floats(array):
    return [_float32(v) for v in np.asarray(array, np.float32).ravel()]


def _dump(value, indent=0):
    """JSON with one object key per line and every list of scalars on one line (readable diffs)."""
    pad = " " * indent
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad} {json.dumps(key)}: {_dump(item, indent + 1)}' for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(item, (dict, list, tuple)) for item in value):
            return "[" + ",".join(_dump(item) for item in value) + "]"
        items = [pad + " " + _dump(item, indent + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return json.dumps(value, ensure_ascii=False)
        except UnicodeEncodeError:  # lone surrogates: only an escape can carry them
            return json.dumps(value, ensure_ascii=True)
    if isinstance(value, (bool, np.bool_)) or value is None:
        return json.dumps(bool(value) if value is not None else None)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    raise TypeError(f"cannot write {type(value).__name__} to a golden file; format floats with _float32")


def _write_atomic(path, text):
    return files.write_text(Path(path), text)


# --- fixtures ----------------------------------------------------------------------------------------------------


def _tokenizer_fixture(tokenizer):
    with open(PROMPTS_PATH, encoding="utf-8") as handle:
        shared = json.load(handle)
    cases = [(p["text"], p["note"]) for p in shared["prompts"]] + list(EXTRA_PROMPTS)
    prompts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)  # truncation is recorded in the fixture
        for index, (text, note) in enumerate(cases):
            prompts.append(_tokenizer_entry(tokenizer, index, text, note))
    errors = []
    for text, reason in ERROR_PROMPTS:
        try:
            tokenizer.encode(text)
        except ValueError as error:
            errors.append({"text": text, "reason": reason, "python_error": str(error)[:120]})
        else:
            raise AssertionError(f"tokenizer accepted {reason}")
    return {
        "description": (
            "CLIP tokenizer (sd_keras.tokenizer) outputs: 'clean' = clean_text(text), 'pieces' = "
            "pre_tokenize(clean), 'ids' = encode(text) (no start/end, no limit), 'num_tokens'/'truncated' from "
            "tokenize_with_info, 'padded' = tokenize(text) row (pad 49407) and 'padded_pad0' (pad 0) where given. "
            "'errors': texts encode must reject."
        ),
        "merges_sha256": shared["merges_sha256"],
        "unidata_version": unicodedata.unidata_version,
        "context_length": tokenizer.context_length,
        "prompts": prompts,
        "errors": errors,
    }


def _tokenizer_entry(tokenizer, index, text, note):
    cleaned = clean_text(text)
    info = tokenizer.tokenize_with_info([text])
    entry = {
        "text": text,
        "note": note,
        "clean": cleaned,
        "pieces": pre_tokenize(cleaned),
        "ids": tokenizer.encode(text),
        "num_tokens": int(info.num_tokens[0]),
        "truncated": bool(info.truncated[0]),
    }
    # Full padded rows for a few prompts (the rest follow from "ids" and the documented layout).
    if index < 3 or entry["truncated"]:
        entry["padded"] = [int(v) for v in info.ids[0]]
        entry["padded_pad0"] = [int(v) for v in tokenizer.tokenize([text], pad_token_id=0)[0]]
    return entry


def _schedule_dict(schedule):
    return {
        "num_train_timesteps": schedule.num_train_timesteps,
        "beta_start": _Raw(repr(float(schedule.beta_start))),
        "beta_end": _Raw(repr(float(schedule.beta_end))),
        "beta_schedule": "scaled_linear",
        "steps_offset": schedule.steps_offset,
    }


def _sampler_entry(name, steps, prediction_type, schedule, keys=None):
    sampler = get_sampler(name, steps, schedule=schedule, prediction_type=prediction_type)
    tables = sampler.tables()
    keys = sorted(tables) if keys is None else keys
    return {
        "sampler": name,
        "steps": steps,
        "prediction_type": prediction_type,
        "needs_noise": bool(sampler.needs_noise),
        "is_multistep": bool(sampler.is_multistep),
        "tables": {key: (_float32(tables[key]) if tables[key].ndim == 0 else _floats(tables[key])) for key in keys},
    }


def _samplers_fixture():
    default = NoiseSchedule()
    entries = []
    for name in SAMPLER_NAMES:
        for steps in STEP_COUNTS:
            entries.append(_sampler_entry(name, steps, "epsilon", default))
            entries.append(_sampler_entry(name, steps, "v_prediction", default, PREDICTION_TABLES))
    custom = [_sampler_entry(name, 4, "epsilon", CUSTOM_SCHEDULE) for name in SAMPLER_NAMES]
    errors = []
    for name, steps in (("DDIM", 1000), ("DDIM", 0), ("Euler a", 1001), ("DPM++ 2M", 1000), ("Euler", -3),
                        ("Euler Karras", 1001)):
        try:
            get_sampler(name, steps)
        except ValueError as error:
            errors.append({"sampler": name, "steps": steps, "python_error": str(error)})
        else:
            raise AssertionError(f"{name} accepted {steps} steps")
    return {
        "description": (
            "sd_keras.schedulers tables() (float32) for every sampler. 'entries' use the default schedule; "
            "epsilon entries hold every table, v_prediction entries only the tables the prediction type changes. "
            "'custom_entries' use 'custom_schedule'. 'errors': (sampler, steps) that get_sampler rejects. The "
            "step formulas that read these tables are in sd_keras/schedulers/base.py."
        ),
        "schedule": _schedule_dict(default),
        "custom_schedule": _schedule_dict(CUSTOM_SCHEDULE),
        "entries": entries,
        "custom_entries": custom,
        "errors": errors,
    }


def _noise_fixture():
    splitmix = {}
    for seed in (0, 1, -1, 2**63):
        splitmix[str(seed)] = [int(v) for v in noise_lib._splitmix64(seed, 4)]
    gaussian = [{"seed": seed, "values": _floats(noise_lib.gaussian(seed, (NOISE_COUNT,)))} for seed in NOISE_SEEDS]
    initial, extra = noise_lib.latent_noise(5, 2, (2, 2, 4), num_extra_draws=3)
    return {
        "description": (
            "sd_keras.noise: 'splitmix64' = the first raw 64-bit outputs (unsigned) for a seed; 'gaussian' = "
            f"gaussian(seed, ({NOISE_COUNT},)); 'latent_noise' = latent_noise(seed, batch, shape, extra_draws) as "
            "flat C-order float32 arrays (initial: (batch, *shape), extra: (extra_draws, batch, *shape))."
        ),
        "splitmix64": splitmix,
        "gaussian": gaussian,
        "latent_noise": {"seed": 5, "batch": 2, "shape": [2, 2, 4], "extra_draws": 3, "initial": _floats(initial),
                         "extra": _floats(extra)},
    }


def _embedding_fixture():
    from sd_keras.export.runner import timestep_embedding as runner_embedding
    from sd_keras.models.layers import timestep_embedding

    rows = np.asarray(timestep_embedding(np.array(EMBEDDING_TIMESTEPS, np.float32), EMBEDDING_DIM))
    runner_rows = runner_embedding(np.array(RUNNER_EMBEDDING_TIMESTEPS, np.float32), EMBEDDING_DIM)
    return {
        "description": "sd_keras.models.layers.timestep_embedding(t, dim): [cos(t * f_k), sin(t * f_k)], float32 "
                       "('rows', within an ulp of float32 exp/cos/sin of the Keras backend that wrote it); "
                       "'runner_rows': sd_keras.export.runner.timestep_embedding (float64 exp/cos/sin rounded to "
                       "float32), which the Kotlin port must equal bit for bit.",
        "dim": EMBEDDING_DIM,
        "rows": [{"t": _float32(t), "values": _floats(row)} for t, row in zip(EMBEDDING_TIMESTEPS, rows)],
        "runner_rows": [{"t": _float32(t), "values": _floats(row)}
                        for t, row in zip(RUNNER_EMBEDDING_TIMESTEPS, runner_rows)],
    }


def fake_text_encoder(ids):
    """(B, 77) token ids -> (B, 77, D) float32 context: ``float32(id) * 1e-6`` in every channel."""
    ids = np.asarray(ids)
    return np.repeat((ids.astype(np.float32) * np.float32(1e-6))[..., None], TRAJECTORY_CONTEXT_DIM, axis=-1)


def fake_diffusion_model(latent, t_embedding, context):
    """The trajectories' noise predictor: ``(0.1 * latent + 0.01 * sin(t)) + context[:, 1, 0]`` per row (numpy)."""
    sin_t = np.asarray(t_embedding, np.float32)[:, TRAJECTORY_EMBEDDING_DIM // 2]
    shift = np.asarray(context, np.float32)[:, 1, 0]
    latent = np.asarray(latent, np.float32)
    return (np.float32(0.1) * latent + (np.float32(0.01) * sin_t)[:, None, None, None]) + shift[:, None, None, None]


def fake_decoder(latent):
    """(B, h, w, 4) latent -> (B, h, w, 3) "image" in the decoder's [-1, 1] convention: ``0.25 * latent[..., :3]``."""
    return np.float32(0.25) * np.asarray(latent, np.float32)[..., :3]


def host_trajectory(sampler, tokenizer, prompt, negative_prompt, seed, guidance_scale=TRAJECTORY_GUIDANCE):
    """Run one fake generation step by step with the library's sampler maths; return (latents per step, pixels).

    This is the host loop the bundle runner and the Android app perform: batch-2 UNet call (unconditional row
    first), guidance, ``sampler.step``. ``tests/test_golden.py`` checks it against the compiled ``DenoisingLoop``.
    """
    from sd_keras.models.layers import timestep_embedding

    ids = tokenizer.tokenize([negative_prompt, prompt])
    contexts = fake_text_encoder(ids)
    initial, step_noise = noise_lib.latent_noise(
        seed, 1, TRAJECTORY_LATENT_SHAPE, sampler.num_steps if sampler.needs_noise else 0)
    latent = initial * np.float32(sampler.init_noise_sigma)
    state = sampler.initial_state(latent)
    guidance = np.float32(guidance_scale)
    latents = []
    for i in range(sampler.num_steps):
        t = np.float32(sampler.timesteps[i])
        embedding = np.repeat(np.asarray(timestep_embedding(np.array([t]), TRAJECTORY_EMBEDDING_DIM)), 2, axis=0)
        model_input = np.asarray(sampler.scale_model_input(latent, i), np.float32)
        outputs = fake_diffusion_model(np.concatenate([model_input, model_input]), embedding, contexts)
        unconditional, conditional = outputs[:1], outputs[1:]
        prediction = unconditional + guidance * (conditional - unconditional)
        noise = step_noise[i] if sampler.needs_noise else None
        latent, state = sampler.step(latent, prediction, i, state, noise)
        latent = np.asarray(latent, np.float32)
        latents.append(latent)
    pixels = to_uint8(fake_decoder(latent))
    return latents, pixels


def _trajectories_fixture(tokenizer):
    cases = []
    for name, prediction_type, seed, prompt, negative in _TRAJECTORY_CASES:
        sampler = get_sampler(name, TRAJECTORY_STEPS, prediction_type=prediction_type)
        latents, pixels = host_trajectory(sampler, tokenizer, prompt, negative, seed)
        cases.append({
            "sampler": name,
            "prediction_type": prediction_type,
            "seed": seed,
            "prompt": prompt,
            "negative_prompt": negative,
            "latents": [_floats(latent) for latent in latents],
            "pixels": [int(v) for v in pixels.ravel()],
        })
    return {
        "description": _TRAJECTORY_DESCRIPTION,
        "latent_shape": list(TRAJECTORY_LATENT_SHAPE),
        "steps": TRAJECTORY_STEPS,
        "guidance_scale": _Raw(repr(TRAJECTORY_GUIDANCE)),
        "context_dim": TRAJECTORY_CONTEXT_DIM,
        "timestep_embedding_dim": TRAJECTORY_EMBEDDING_DIM,
        "pad_id": tokenizer.pad_token_id,
        "cases": cases,
    }


def _pixels_fixture():
    # Multiples of 1/1024 are exact in float32 and in decimal, so both sides start from the same inputs.
    values = np.array([-3.0, -1.0009765625, -1.0, -0.9990234375, -0.5, -0.0078125, 0.0, 0.0009765625, 0.00390625,
                       0.5, 0.9921875, 0.998046875, 0.9990234375, 1.0, 1.0009765625, 2.5], np.float32)
    ramp = (np.arange(-1100, 1101, 7, dtype=np.float32) / np.float32(1024.0)).astype(np.float32)
    inputs = np.concatenate([values, ramp])
    return {
        "description": "sd_keras.pipeline.to_uint8: uint8(clip(((x + 1) / 2) * 255, 0, 255)), float32 maths.",
        "inputs": _floats(inputs),
        "outputs": [int(v) for v in to_uint8(inputs)],
    }


TILING_GRIDS = ((100, 40, 8, 1), (40, 40, 8, 1), (30, 40, 8, 1), (41, 40, 8, 1), (512, 192, 32, 1), (66, 24, 16, 2),
                (2048, 192, 32, 1), (1000, 128, 24, 8), (97, 16, 15, 1))
TILING_WEIGHTS = ((8, 0, 8), (6, 4, 0), (10, 0, 0), (768, 128, 96), (12, 12, 12), (5, 3, 2))
TILING_RUN = dict(height=21, width=30, scale=2, tile=12, overlap=6)


def _tiling_run_function(tile):
    """Depends on the tile it sees: nearest x2 of ``x`` plus the tile's mean (so only blending hides seams)."""
    up = np.repeat(np.repeat(tile, 2, axis=1), 2, axis=2)
    return up + tile.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)


def _tiling_fixture():
    run = TILING_RUN
    image = ((np.arange(run["height"] * run["width"]) * 37 % 1024) / 1024).astype(np.float32)
    image = image.reshape(1, run["height"], run["width"], 1)
    out = tiling.tiled_apply(_tiling_run_function, image, run["scale"], tile=run["tile"], overlap=run["overlap"])
    return {
        "description": "sd_keras.tiling: tile_starts(length, tile, overlap, align), feather_weights(size, "
                       "shared_before, shared_after), and tiled_apply of f on a (height, width) one-channel image "
                       "(x[i] = (i * 37 % 1024) / 1024, row-major) at the given scale, tile and overlap, where f of a "
                       "tile is its nearest-neighbour x2 enlargement plus the tile's mean.",
        "grids": [{"length": length, "tile": tile, "overlap": overlap, "align": align,
                   "starts": tiling.tile_starts(length, tile, overlap, align)}
                  for length, tile, overlap, align in TILING_GRIDS],
        "weights": [{"size": size, "before": before, "after": after,
                     "values": _floats(tiling.feather_weights(size, before, after))}
                    for size, before, after in TILING_WEIGHTS],
        "run": {**run, "input": _floats(image.ravel()), "output": _floats(out.ravel())},
    }


# --- SDXL ------------------------------------------------------------------------------------------------------

SDXL_PAD_IDS = (49407, 0)  # CLIP ViT-L, OpenCLIP ViT-bigG (SDXLConfig.pad_token_ids)
SDXL_CONTEXT_DIMS = (3, 5)
SDXL_POOLED_DIM = 4
SDXL_TIME_EMBED_DIM = 8
SDXL_LATENT_SHAPE = (4, 4, 4)
SDXL_IMAGE_SIZE = (32, 32)
SDXL_STEPS = 4
SDXL_GUIDANCE = 5.0
SDXL_REPADDING_PROMPTS = ("a red circle", "a cat <|endoftext|> a dog", "", "<|endoftext|>",
                          " ".join(["word"] * 80) + " <|endoftext|> tail")
SDXL_ADDED_CASES = (
    ({"original_size": [1024, 1024], "crops_coords_top_left": [0, 0], "target_size": [1024, 1024]}, 256, 16),
    ({"original_size": [768, 1344], "crops_coords_top_left": [64, 32], "target_size": [832, 1216]}, 256, 16),
    ({"original_size": [1024, 1024], "crops_coords_top_left": [0, 0], "aesthetic_score": 6.0,
      "negative_aesthetic_score": 2.5}, 256, 16),
    ({"original_size": [32, 32], "crops_coords_top_left": [0, 0], "target_size": [32, 32]}, SDXL_TIME_EMBED_DIM,
     SDXL_POOLED_DIM),
)
BASE_MICRO = {"original_size": list(SDXL_IMAGE_SIZE), "crops_coords_top_left": [0, 0],
              "target_size": list(SDXL_IMAGE_SIZE)}
# (encoders, sampler, seed, prompt, negative prompt, force_zeros_for_empty_prompt, micro_conditioning)
_SDXL_CASES = (
    (("text_encoder", "text_encoder_2"), "Euler", 42, "a red circle", "", True, BASE_MICRO),
    (("text_encoder", "text_encoder_2"), "DDIM", 7, "a cat <|endoftext|> a dog", "blurry", True,
     {"original_size": [1024, 768], "crops_coords_top_left": [16, 8], "target_size": list(SDXL_IMAGE_SIZE)}),
    (("text_encoder", "text_encoder_2"), "Euler a", 2**33 + 5, "two blue squares", "", False, BASE_MICRO),
    (("text_encoder_2",), "DPM++ 2M Karras", 3, "a red circle", "", False,
     {"original_size": list(SDXL_IMAGE_SIZE), "crops_coords_top_left": [0, 0], "aesthetic_score": 6.0,
      "negative_aesthetic_score": 2.5}),
)
_SDXL_DESCRIPTION = (
    "SDXL bundles (export/BUNDLE.md 'SDXL bundles'). 'repadding': tokenize(text) padded with {pad0} ('ids') and "
    "StableDiffusionXL._encoder_ids of it for pad ids {pads} ('encoder_ids', one row per pad id: every position "
    "after the first end token 49407 set to the pad id). 'added_embedding': StableDiffusionXL._time_ids of the "
    "'micro_conditioning' (manifest form; 'time_ids' conditional row, 'negative_time_ids' unconditional) and "
    "added = concat(pooled, emb(time_ids[0]), ..., emb(time_ids[n-1])), emb(v) = [cos(v f_k), sin(v f_k)], f_k = "
    "exp(-ln(10000) k / (d/2)) as sd_keras.export.runner.added_embedding makes it (bit-exact recipe), d = "
    "'addition_time_embed_dim'. 'cases': one generation each, float32 throughout, latent {latent}, image {image}, "
    "{steps} steps, guidance {guidance}. Token rows: one tokenize of each prompt padded with {pad0}, re-padded per "
    "encoder with its pad id (encoders listed in 'encoders', pads in 'pad_ids'). Fake text_encoder (width {w1}): "
    "context[p, d] = (float32(ids[p]) * 1e-6) * float32(d + 1). Fake text_encoder_2 (width {w2}): context[p, d] = "
    "float32(ids[p]) * 2e-6 + float32(d) * 1e-3; pooled[j] = float32(ids[j + 1]) * 1e-5 + float32(ids[76]) * "
    "1e-6 (j < {pooled}). UNet context: the encoders' contexts concatenated per token in 'encoders' order; with "
    "'force_zeros_for_empty_prompt' an empty negative prompt gives a zero context and zero pooled (encoders not "
    "run). Fake UNet (batch 2, row 0 unconditional): eps[b] = (((((0.1 * latent[b] + 0.01 * sin_t) + ctx[b][1][0]) "
    "+ ctx[b][76][W - {w2}]) + 0.1 * added[b][0]) + 0.01 * added[b][P + 4 d + d / 2]), elementwise, with sin_t = "
    "timestep_embedding[b][{half}] (embedding dim {emb}), W the context width, P the pooled width. Guidance, "
    "sampler, noise and decoder (0.25 * latent[..., :3], to_uint8) as trajectories.json. 'contexts' (2, 77, W) and "
    "'added' (2, P + n d) are the UNet's text inputs (unconditional row first); 'latents' the latent after each "
    "step; 'pixels' the final uint8 image. 'manifest_text': an SDXL manifest.json as export.bundle.build_manifest "
    "writes it for these widths (placeholder hashes)."
).format(pad0=SDXL_PAD_IDS[0], pads=list(SDXL_PAD_IDS), latent=list(SDXL_LATENT_SHAPE), image=list(SDXL_IMAGE_SIZE),
         steps=SDXL_STEPS, guidance=SDXL_GUIDANCE, w1=SDXL_CONTEXT_DIMS[0], w2=SDXL_CONTEXT_DIMS[1],
         pooled=SDXL_POOLED_DIM, half=TRAJECTORY_EMBEDDING_DIM // 2, emb=TRAJECTORY_EMBEDDING_DIM)


def _sdxl_self(pad_ids=SDXL_PAD_IDS, micro=None):
    """The attributes ``StableDiffusionXL._encoder_ids`` and ``_time_ids`` read, without building a model."""
    from types import SimpleNamespace

    micro = micro or {}
    num_time_ids = 5 if "aesthetic_score" in micro else 6
    call = {key: (tuple(value) if isinstance(value, list) else value) for key, value in micro.items()}
    return SimpleNamespace(_call=call, config=SimpleNamespace(pad_token_ids=tuple(pad_ids),
                                                               unet=SimpleNamespace(num_time_ids=num_time_ids)))


def _sdxl_time_ids(micro):
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    height, width = SDXL_IMAGE_SIZE
    positive, negative = StableDiffusionXL._time_ids(_sdxl_self(micro=micro), 1, height, width)
    return positive[0], negative[0]


def _micro_json(micro):
    return {key: (_Raw(repr(float(value))) if isinstance(value, float) else value) for key, value in micro.items()}


def sdxl_added_embedding(pooled, time_ids, dim):
    """(B, P) pooled + (B, n) time ids -> (B, P + n * dim): the bundle UNet's ``added_embedding`` as the bundle
    runner makes it (``sd_keras.export.runner.added_embedding``)."""
    from sd_keras.export.runner import added_embedding

    return added_embedding(pooled, time_ids, dim)


def _sdxl_fake_encoders(ids, encoders):
    """The fake encoders of ``_SDXL_DESCRIPTION`` on re-padded rows: (contexts in order, pooled)."""
    contexts, pooled = [], None
    for name, rows in zip(encoders, ids):
        values = rows.astype(np.float32)
        if name == "text_encoder":
            width = SDXL_CONTEXT_DIMS[0]
            channel = np.arange(width, dtype=np.float32) + np.float32(1)
            contexts.append((values * np.float32(1e-6))[..., None] * channel)
        else:
            width = SDXL_CONTEXT_DIMS[1]
            channel = np.arange(width, dtype=np.float32) * np.float32(1e-3)
            contexts.append((values * np.float32(2e-6))[..., None] + channel)
            pooled = (values[:, 1:SDXL_POOLED_DIM + 1] * np.float32(1e-5)
                      + (values[:, 76] * np.float32(1e-6))[:, None])
    return [c.astype(np.float32) for c in contexts], pooled.astype(np.float32)


def _sdxl_fake_unet(latent, t_embedding, context, added):
    sin_t = np.asarray(t_embedding, np.float32)[:, TRAJECTORY_EMBEDDING_DIM // 2]
    width = context.shape[-1]
    dim = SDXL_TIME_EMBED_DIM
    latent = np.asarray(latent, np.float32)

    def rows(values):
        return np.asarray(values, np.float32)[:, None, None, None]

    out = np.float32(0.1) * latent + rows(np.float32(0.01) * sin_t)
    out = out + rows(context[:, 1, 0])
    out = out + rows(context[:, 76, width - SDXL_CONTEXT_DIMS[1]])
    out = out + rows(np.float32(0.1) * added[:, 0])
    out = out + rows(np.float32(0.01) * added[:, SDXL_POOLED_DIM + 4 * dim + dim // 2])
    return out.astype(np.float32)


def sdxl_text_inputs(tokenizer, encoders, prompt, negative_prompt, force_zeros, micro):
    """The UNet's (2, 77, W) contexts and (2, P + n d) added embeddings (unconditional row first) with the fake
    encoders: one token row per prompt, re-padded per encoder (``StableDiffusionXL._encoder_ids``)."""
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    pads = [SDXL_PAD_IDS[0] if name == "text_encoder" else SDXL_PAD_IDS[1] for name in encoders]
    ids = tokenizer.tokenize([negative_prompt, prompt], pad_token_id=pads[0])
    contexts, pooled = _sdxl_fake_encoders(StableDiffusionXL._encoder_ids(_sdxl_self(pads), ids), encoders)
    context = np.concatenate(contexts, axis=-1)
    if force_zeros and negative_prompt == "":
        context[0] = 0
        pooled[0] = 0
    positive, negative = _sdxl_time_ids(micro)
    added = sdxl_added_embedding(pooled, np.stack([negative, positive]), SDXL_TIME_EMBED_DIM)
    return context, added


def sdxl_host_trajectory(sampler, tokenizer, encoders, prompt, negative_prompt, seed, force_zeros, micro):
    """One fake SDXL generation step by step (the host loop of the bundle runner and the Android app)."""
    context, added = sdxl_text_inputs(tokenizer, encoders, prompt, negative_prompt, force_zeros, micro)
    initial, step_noise = noise_lib.latent_noise(seed, 1, SDXL_LATENT_SHAPE,
                                                 sampler.num_steps if sampler.needs_noise else 0)
    latent = initial * np.float32(sampler.init_noise_sigma)
    state = sampler.initial_state(latent)
    latents = []
    from sd_keras.export.runner import timestep_embedding as runner_embedding

    for i in range(sampler.num_steps):
        t = np.float32(sampler.timesteps[i])
        embedding = np.repeat(runner_embedding(np.array([t], np.float32), TRAJECTORY_EMBEDDING_DIM), 2, axis=0)
        model_input = np.asarray(sampler.scale_model_input(latent, i), np.float32)
        outputs = _sdxl_fake_unet(np.concatenate([model_input, model_input]), embedding, context, added)
        unconditional, conditional = outputs[:1], outputs[1:]
        prediction = unconditional + np.float32(SDXL_GUIDANCE) * (conditional - unconditional)
        noise = step_noise[i] if sampler.needs_noise else None
        latent, state = sampler.step(latent, prediction, i, state, noise)
        latent = np.asarray(latent, np.float32)
        latents.append(latent)
    return context, added, latents, to_uint8(fake_decoder(latent))


def _sdxl_manifest():
    """An SDXL manifest as the exporter writes it (``export.bundle.build_manifest``) for the fixture's widths; file
    hashes are placeholders (the Kotlin test parses it, it opens no files)."""
    from sd_keras.export.bundle import build_manifest
    from sd_keras.schedulers import SAMPLER_NAMES

    height, width, channels = SDXL_LATENT_SHAPE
    d1, d2 = SDXL_CONTEXT_DIMS
    added = SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED_DIM

    def spec(name, *shape, dtype="float32"):
        return {"name": name, "shape": list(shape), "dtype": dtype}

    def entry(name, inputs, outputs):
        return {"file": f"{name}.tflite", "sha256": "0" * 64, "quantization": "fp32", "signature": name,
                "inputs": inputs, "outputs": outputs, "large_model_layout": False}

    tokens = [spec("tokens", 1, 77, dtype="int32"), spec("positions", 1, 77, dtype="int32")]
    components = {
        "text_encoder": entry("text_encoder", tokens, [spec("context", 1, 77, d1)]),
        "text_encoder_2": entry("text_encoder_2", tokens, [spec("context", 1, 77, d2),
                                                           spec("pooled", 1, SDXL_POOLED_DIM)]),
        "diffusion_model": entry("diffusion_model", [
            spec("latent", 2, height, width, channels), spec("timestep_embedding", 2, TRAJECTORY_EMBEDDING_DIM),
            spec("context", 2, 77, d1 + d2), spec("added_embedding", 2, added)],
            [spec("model_output", 2, height, width, channels)]),
        "decoder": entry("decoder", [spec("latent", 1, height, width, channels)],
                         [spec("image", 1, height * 8, width * 8, 3)]),
    }
    token_spec = {"file": "merges.txt", "sha256": "0" * 64, "context_length": 77, "start_id": 49406,
                  "end_id": 49407, "pad_id": SDXL_PAD_IDS[0]}
    schedule = NoiseSchedule()
    return build_manifest(
        model="golden-xl", image_size=(height * 8, width * 8), latent_size=SDXL_LATENT_SHAPE,
        latent_scale_factor=0.13025, prediction_type="epsilon",
        schedule={key: (float(value) if isinstance(value, _Raw) else value)
                  for key, value in _schedule_dict(schedule).items()},
        default_sampler="Euler", samplers=SAMPLER_NAMES, timestep_embedding_dim=TRAJECTORY_EMBEDDING_DIM,
        tokenizer=token_spec, components=components, quantization="fp32",
        sdxl={"tokenizer_2": dict(token_spec, pad_id=SDXL_PAD_IDS[1]), "pooled_dim": SDXL_POOLED_DIM,
              "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
              "micro_conditioning": {"original_size": [height * 8, width * 8], "crops_coords_top_left": [0, 0],
                                     "target_size": [height * 8, width * 8]},
              "force_zeros_for_empty_prompt": True})


def _sdxl_fixture(tokenizer):
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    repadding = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        for text in SDXL_REPADDING_PROMPTS:
            ids = tokenizer.tokenize([text], pad_token_id=SDXL_PAD_IDS[0])
            rows = StableDiffusionXL._encoder_ids(_sdxl_self(), ids)
            repadding.append({"text": text, "ids": [int(v) for v in ids[0]],
                              "encoder_ids": [[int(v) for v in row[0]] for row in rows]})
    added_cases = []
    for micro, dim, pooled_dim in SDXL_ADDED_CASES:
        positive, negative = _sdxl_time_ids(micro)
        pooled = (np.arange(2 * pooled_dim, dtype=np.float32) * np.float32(0.37) % np.float32(2.0)
                  - np.float32(1.0)).reshape(2, pooled_dim)
        added = sdxl_added_embedding(pooled, np.stack([negative, positive]), dim)
        added_cases.append({"micro_conditioning": _micro_json(micro), "addition_time_embed_dim": dim,
                            "time_ids": _floats(positive), "negative_time_ids": _floats(negative),
                            "pooled": [_floats(row) for row in pooled], "added": [_floats(row) for row in added]})
    cases = []
    for encoders, name, seed, prompt, negative, force_zeros, micro in _SDXL_CASES:
        sampler = get_sampler(name, SDXL_STEPS)
        context, added, latents, pixels = sdxl_host_trajectory(sampler, tokenizer, encoders, prompt, negative, seed,
                                                               force_zeros, micro)
        cases.append({
            "encoders": list(encoders),
            "pad_ids": [SDXL_PAD_IDS[0] if e == "text_encoder" else SDXL_PAD_IDS[1] for e in encoders],
            "sampler": name,
            "seed": seed,
            "prompt": prompt,
            "negative_prompt": negative,
            "force_zeros_for_empty_prompt": force_zeros,
            "micro_conditioning": _micro_json(micro),
            "contexts": _floats(context),
            "added": _floats(added),
            "latents": [_floats(latent) for latent in latents],
            "pixels": [int(v) for v in pixels.ravel()],
        })
    return {
        "description": _SDXL_DESCRIPTION,
        "pad_ids": list(SDXL_PAD_IDS),
        "repadding": repadding,
        "added_embedding": added_cases,
        "latent_shape": list(SDXL_LATENT_SHAPE),
        "image_size": list(SDXL_IMAGE_SIZE),
        "steps": SDXL_STEPS,
        "guidance_scale": _Raw(repr(SDXL_GUIDANCE)),
        "context_dims": list(SDXL_CONTEXT_DIMS),
        "pooled_dim": SDXL_POOLED_DIM,
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
        "timestep_embedding_dim": TRAJECTORY_EMBEDDING_DIM,
        "cases": cases,
        "manifest_text": json.dumps(_sdxl_manifest(), default=str),
    }


def write_golden(out_dir):
    """Write every golden fixture (``FIXTURE_NAMES``) into ``out_dir``; returns the written paths.

    Example:
        >>> write_golden("/tmp/golden")[0].name   # doctest: +SKIP
        'tokenizer.json'
    """
    out_dir = Path(out_dir)
    tokenizer = CLIPTokenizer()
    builders = {
        "tokenizer.json": lambda: _tokenizer_fixture(tokenizer),
        "samplers.json": _samplers_fixture,
        "noise.json": _noise_fixture,
        "timestep_embedding.json": _embedding_fixture,
        "trajectories.json": lambda: _trajectories_fixture(tokenizer),
        "pixels.json": _pixels_fixture,
        "tiling.json": _tiling_fixture,
        "sdxl.json": lambda: _sdxl_fixture(tokenizer),
    }
    return [_write_atomic(out_dir / name, _dump(builders[name]()) + "\n") for name in FIXTURE_NAMES]


# --- tables shipped with the Kotlin core ---------------------------------------------------------------------------


def _runs(classify):
    """(start, label) where the label of consecutive code points changes; surrogates get label 'S'."""
    runs, previous = [], None
    for code_point in range(sys.maxunicode + 1):
        label = "S" if 0xD800 <= code_point <= 0xDFFF else classify(chr(code_point))
        if label != previous:
            runs.append((code_point, label))
            previous = label
    return runs


def _category_class(char):
    major = unicodedata.category(char)[0]
    return major if major in "LN" else "O"


def _case_class(char):
    # CPython's str.lower writes U+03A3 as final sigma when a Cased character precedes it (skipping Case_Ignorable
    # ones) and none follows. Probing that rule reads both properties as this Python has them:
    # "A" + c + "Σ" is final iff c is ignorable or cased; "AΣ" + c is final iff c is ignorable or not cased.
    # Only a non-ignorable character's Cased property can matter.
    before = ("A" + char + "\u03a3").lower().endswith("\u03c2")
    after = ("A\u03a3" + char).lower()[1] == "\u03c2"
    if before and after:
        return "I"
    return "C" if before else "N"


def _unicode_table():
    lines = [
        "# Unicode data for the CLIP tokenizer port: written by sd_keras.export.golden from Python's unicodedata; "
        "do not edit.",
        f"unicode {unicodedata.unidata_version}",
        "# class <start> <L|N|O|S>: general category major class (letter, number, other; S = surrogates) "
        "from <start> up to the next line's start",
    ]
    lines += [f"class {start:x} {label}" for start, label in _runs(_category_class)]
    lines.append("# case <start> <C|I|N>: Cased (and not Case_Ignorable), Case_Ignorable, neither")
    lines += [f"case {start:x} {label}" for start, label in _runs(_case_class)]
    lines.append("# lower <code point> <code points...>: str.lower of the character alone, where it changes")
    for code_point in range(sys.maxunicode + 1):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        char = chr(code_point)
        lowered = char.lower()
        if lowered != char:
            lines.append(f"lower {code_point:x} " + " ".join(f"{ord(c):x}" for c in lowered))
    spaces = [code_point for code_point in range(sys.maxunicode + 1)
              if not 0xD800 <= code_point <= 0xDFFF and chr(code_point).isspace()]
    lines.append("# isspace: str.isspace (what str.strip removes); white_space: CLIP's White_Space set")
    lines.append("isspace " + " ".join(f"{c:x}" for c in spaces))
    lines.append("white_space " + " ".join(f"{ord(c):x}" for c in sorted(WHITE_SPACE)))
    return "\n".join(lines) + "\n"


def _html_table():
    lines = [
        "# HTML5 character references as Python's html.unescape resolves them: written by sd_keras.export.golden; "
        "do not edit.",
        "# entity <name> <code points...>: html.entities.html5 (names with and without ';')",
    ]
    for name, value in sorted(html.entities.html5.items()):
        lines.append(f"entity {name} " + " ".join(f"{ord(c):x}" for c in value))
    lines.append("# charref <number> <code points...>: numeric references replaced by another character")
    for number, value in sorted(html._invalid_charrefs.items()):
        lines.append(f"charref {number:x} " + " ".join(f"{ord(c):x}" for c in value))
    lines.append("# dropped: numeric references that become nothing")
    lines.append("dropped " + " ".join(f"{c:x}" for c in sorted(html._invalid_codepoints)))
    return "\n".join(lines) + "\n"


def write_text_tables(out_dir):
    """Write the resource tables of the Kotlin core (``TABLE_NAMES``) into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    return [_write_atomic(out_dir / "unicode_data.txt", _unicode_table()),
            _write_atomic(out_dir / "html_entities.txt", _html_table())]
