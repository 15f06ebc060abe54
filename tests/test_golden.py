"""The golden vectors of the Kotlin port (android_demo/core) stay what the Python library computes.

``sd-keras golden`` regenerates the fixtures and the Unicode/HTML tables; they must equal the committed copies
(integers and text exactly, floats to float32 rounding), so a change in the tokenizer, the samplers or the noise
that is not carried over to Kotlin fails here, and the Kotlin tests (tests/test_android_core.py) then show where
the port differs. The trajectory fixture is also checked against the compiled sampling loop of the pipeline.
"""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from sd_keras.cli import main
from sd_keras.export import golden
from sd_keras.loop import DenoisingLoop
from sd_keras.schedulers import get_sampler
from sd_keras.tokenizer import CLIPTokenizer

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
TABLES = REPO / "android_demo" / "core" / "src" / "main" / "resources" / "org" / "sdkeras" / "core"
REGENERATE = ("sd-keras golden -o android_demo/core/src/test/resources/golden "
              "--tables android_demo/core/src/main/resources/org/sdkeras/core")

# float32 exp differs in the last bit between TensorFlow, JAX and numpy; at t = 999 that moves the embedding by
# 6e-5 (see TimestepEmbeddingGoldenTest), so the embedding fixture depends on the backend that wrote it.
EMBEDDING_TOLERANCE = 1e-4
FLOAT_TOLERANCE = 1e-6


def _differences(expected, actual, path, tolerance, found):
    if len(found) >= 20:
        return
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or list(expected) != list(actual):
            found.append(f"{path}: keys {list(actual) if isinstance(actual, dict) else actual!r:.80} "
                         f"!= {list(expected)}")
            return
        for key in expected:
            _differences(expected[key], actual[key], f"{path}.{key}", tolerance, found)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            found.append(f"{path}: length {len(actual) if isinstance(actual, list) else '-'} != {len(expected)}")
            return
        for index, (want, got) in enumerate(zip(expected, actual)):
            _differences(want, got, f"{path}[{index}]", tolerance, found)
    elif isinstance(expected, float) or isinstance(actual, float):
        if not (isinstance(actual, (int, float)) and not isinstance(actual, bool)
                and math.isclose(actual, expected, rel_tol=tolerance, abs_tol=tolerance)):
            found.append(f"{path}: {actual!r} != {expected!r}")
    elif expected != actual or type(expected) is not type(actual):
        found.append(f"{path}: {actual!r:.120} != {expected!r:.120}")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    assert main(["golden", "-o", str(out / "fixtures"), "--tables", str(out / "tables")]) == 0
    return out


@pytest.mark.parametrize("name", golden.FIXTURE_NAMES)
def test_committed_fixture_is_what_the_library_computes(regenerated, name):
    committed_path = FIXTURES / name
    assert committed_path.is_file(), f"{committed_path} is missing; run {REGENERATE}"
    committed = json.loads(committed_path.read_text(encoding="utf-8"))
    fresh = json.loads((regenerated / "fixtures" / name).read_text(encoding="utf-8"))
    tolerance = EMBEDDING_TOLERANCE if name == "timestep_embedding.json" else FLOAT_TOLERANCE
    found = []
    _differences(fresh, committed, name, tolerance, found)
    assert not found, f"{name} no longer matches the library; run {REGENERATE} and update the Kotlin port:\n" + \
        "\n".join(found)


@pytest.mark.parametrize("name", golden.TABLE_NAMES)
def test_committed_tables_are_what_python_computes(regenerated, name):
    committed = (TABLES / name).read_text(encoding="utf-8")
    fresh = (regenerated / "tables" / name).read_text(encoding="utf-8")
    assert committed == fresh, f"{name} differs from this Python's tables; run {REGENERATE}"


def test_fixtures_cover_the_issue():
    tokenizer = json.loads((FIXTURES / "tokenizer.json").read_text(encoding="utf-8"))
    shared = json.loads((REPO / "tests" / "data" / "tokenizer_prompts.json").read_text(encoding="utf-8"))
    texts = [p["text"] for p in tokenizer["prompts"]]
    assert all(p["text"] in texts for p in shared["prompts"])
    assert any(p["truncated"] for p in tokenizer["prompts"]) and tokenizer["errors"]
    samplers = json.loads((FIXTURES / "samplers.json").read_text(encoding="utf-8"))
    covered = {(e["sampler"], e["steps"], e["prediction_type"]) for e in samplers["entries"]}
    from sd_keras.schedulers import SAMPLER_NAMES

    assert covered == {(name, steps, kind) for name in SAMPLER_NAMES for steps in golden.STEP_COUNTS
                       for kind in ("epsilon", "v_prediction")}
    noise = json.loads((FIXTURES / "noise.json").read_text(encoding="utf-8"))
    seeds = [case["seed"] for case in noise["gaussian"]]
    assert min(seeds) < 0 and max(seeds) >= 2**63
    trajectories = json.loads((FIXTURES / "trajectories.json").read_text(encoding="utf-8"))
    assert {case["sampler"] for case in trajectories["cases"]} == set(SAMPLER_NAMES)


def test_runner_embedding_rows_are_exact():
    """The bundle runner's embedding is backend-independent: the committed ``runner_rows`` (which the Kotlin port
    must equal bit for bit) are exactly what it computes, including t = 999 where float32 libraries differ."""
    from sd_keras.export.runner import timestep_embedding

    fixture = json.loads((FIXTURES / "timestep_embedding.json").read_text(encoding="utf-8"))
    assert np.array_equal(np.array([row["t"] for row in fixture["runner_rows"]], np.float32),
                          np.array(golden.RUNNER_EMBEDDING_TIMESTEPS, np.float32))
    for row in fixture["runner_rows"]:
        computed = timestep_embedding(np.array([row["t"]], np.float32), fixture["dim"])[0]
        np.testing.assert_array_equal(computed, np.array(row["values"], np.float32), err_msg=f"t = {row['t']}")


def test_golden_decoder_output_rounds_like_the_pipeline():
    from sd_keras.pipeline import to_uint8

    pixels = json.loads((FIXTURES / "pixels.json").read_text(encoding="utf-8"))
    np.testing.assert_array_equal(to_uint8(np.array(pixels["inputs"], np.float32)), pixels["outputs"])


def _fake_keras_unet():
    """trajectories.json's fake noise predictor as a Keras model with the diffusion model's signature."""
    height, width, channels = golden.TRAJECTORY_LATENT_SHAPE
    dim = golden.TRAJECTORY_EMBEDDING_DIM
    latent = keras.Input((height, width, channels), name="latent")
    embedding = keras.Input((dim,), name="timestep_embedding")
    context = keras.Input((77, golden.TRAJECTORY_CONTEXT_DIM), name="context")
    sin_t = ops.reshape(embedding[:, dim // 2], (-1, 1, 1, 1))
    shift = ops.reshape(context[:, 1, 0], (-1, 1, 1, 1))
    output = (0.1 * latent + 0.01 * sin_t) + shift
    return keras.Model({"latent": latent, "timestep_embedding": embedding, "context": context}, output)


def test_trajectories_equal_the_compiled_pipeline_loop():
    """The fixture's host loop (what Kotlin and the bundle runner do) equals the pipeline's compiled loop."""
    from sd_keras import noise as noise_lib

    trajectories = json.loads((FIXTURES / "trajectories.json").read_text(encoding="utf-8"))
    loop = DenoisingLoop(_fake_keras_unet())
    tokenizer = CLIPTokenizer()
    shape = tuple(trajectories["latent_shape"])
    for case in trajectories["cases"]:
        sampler = get_sampler(case["sampler"], trajectories["steps"], prediction_type=case["prediction_type"])
        contexts = golden.fake_text_encoder(tokenizer.tokenize([case["negative_prompt"], case["prompt"]]))
        initial, step_noise = noise_lib.latent_noise(case["seed"], 1, shape,
                                                     sampler.num_steps if sampler.needs_noise else 0)
        latent = loop(sampler, contexts[1:], contexts[:1], initial * np.float32(sampler.init_noise_sigma),
                      step_noise if sampler.needs_noise else None, guidance_scale=trajectories["guidance_scale"])
        expected = np.array(case["latents"][-1], np.float32).reshape(latent.shape)
        np.testing.assert_allclose(latent, expected, rtol=1e-5, atol=1e-5, err_msg=case["sampler"])



def _fake_keras_sdxl_unet(context_width, num_time_ids):
    """sdxl.json's fake UNet as a Keras model with the SDXL UNet's inputs: the added embedding is built inside, by
    the UNet's own ``TimeIdsEmbedding`` (``add_time_proj``), from ``text_embeds`` and ``time_ids``."""
    from sd_keras.models.layers import TimeIdsEmbedding

    height, width, channels = golden.SDXL_LATENT_SHAPE
    dim, d = golden.TRAJECTORY_EMBEDDING_DIM, golden.SDXL_TIME_EMBED_DIM
    inputs = {"latent": keras.Input((height, width, channels), name="latent"),
              "timestep_embedding": keras.Input((dim,), name="timestep_embedding"),
              "context": keras.Input((77, context_width), name="context"),
              "text_embeds": keras.Input((golden.SDXL_POOLED_DIM,), name="text_embeds"),
              "time_ids": keras.Input((num_time_ids,), name="time_ids")}
    added = ops.concatenate([inputs["text_embeds"], TimeIdsEmbedding(d)(inputs["time_ids"])], axis=-1)

    def row(values):
        return ops.reshape(values, (-1, 1, 1, 1))

    context = inputs["context"]
    out = 0.1 * inputs["latent"] + row(0.01 * inputs["timestep_embedding"][:, dim // 2])
    out = out + row(context[:, 1, 0])
    out = out + row(context[:, 76, context_width - golden.SDXL_CONTEXT_DIMS[1]])
    out = out + row(0.1 * added[:, 0])
    out = out + row(0.01 * added[:, golden.SDXL_POOLED_DIM + 4 * d + d // 2])
    return keras.Model(inputs, out)


def test_sdxl_added_embedding_is_the_unet_time_ids_layer():
    """The host recipe of added_embedding (sdxl.json, what Kotlin computes bit for bit) is the SDXL UNet's
    ``TimeIdsEmbedding`` (add_time_proj) after the pooled embedding, within float32 exp/cos/sin rounding."""
    from sd_keras.models.layers import TimeIdsEmbedding

    fixture = json.loads((FIXTURES / "sdxl.json").read_text(encoding="utf-8"))
    assert {len(case["time_ids"]) for case in fixture["added_embedding"]} == {5, 6}  # refiner and base
    for case in fixture["added_embedding"]:
        dim = case["addition_time_embed_dim"]
        ids = np.array([case["negative_time_ids"], case["time_ids"]], np.float32)
        keras_rows = np.concatenate([np.array(case["pooled"], np.float32),
                                     np.asarray(TimeIdsEmbedding(dim)(ids))], axis=-1)
        np.testing.assert_allclose(np.array(case["added"], np.float32), keras_rows, atol=2e-4)


@pytest.mark.slow  # compiles one loop per case (about 5 s)
def test_sdxl_trajectories_equal_the_compiled_pipeline_loop():
    """sdxl.json's host loop (what Kotlin and the bundle runner do: added_embedding made on the host) equals the
    pipeline's compiled loop with SDXL's added conditioning (pooled + time ids through the Keras TimeIdsEmbedding)."""
    from sd_keras import noise as noise_lib

    fixture = json.loads((FIXTURES / "sdxl.json").read_text(encoding="utf-8"))
    shape = tuple(fixture["latent_shape"])
    pooled_dim = fixture["pooled_dim"]
    for case in fixture["cases"]:
        width = sum(golden.SDXL_CONTEXT_DIMS[0] if e == "text_encoder" else golden.SDXL_CONTEXT_DIMS[1]
                    for e in case["encoders"])
        time_ids = golden._sdxl_time_ids(case["micro_conditioning"])
        loop = DenoisingLoop(_fake_keras_sdxl_unet(width, len(time_ids[0])))
        sampler = get_sampler(case["sampler"], fixture["steps"])
        contexts = np.array(case["contexts"], np.float32).reshape(2, 77, width)
        pooled = np.array(case["added"], np.float32).reshape(2, -1)[:, :pooled_dim]
        initial, step_noise = noise_lib.latent_noise(case["seed"], 1, shape,
                                                     sampler.num_steps if sampler.needs_noise else 0)
        added = {"text_embeds": pooled[1:], "uncond_text_embeds": pooled[:1], "time_ids": time_ids[0][None],
                 "uncond_time_ids": time_ids[1][None]}
        latent = loop(sampler, contexts[1:], contexts[:1], initial * np.float32(sampler.init_noise_sigma),
                      step_noise if sampler.needs_noise else None, guidance_scale=fixture["guidance_scale"],
                      added=added)
        expected = np.array(case["latents"][-1], np.float32).reshape(latent.shape)
        np.testing.assert_allclose(latent, expected, rtol=1e-4, atol=1e-4, err_msg=case["sampler"])


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)
