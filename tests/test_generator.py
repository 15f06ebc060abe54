"""One generation API over two engines: the same checks, seeds and results from the Keras pipeline and the bundle.

Every test runs against the session's tiny ``StableDiffusion`` (the Keras engine) and a tiny fp32 bundle exported
from it (the LiteRT engine, ``BundleRunner``). The bundle is exported once per session; exporting takes longer
than the fast tier allows, so its half of the tests is in the slow tier (``--slow``).
"""

import numpy as np
import pytest

from sd_keras import metadata
from sd_keras.errors import InputError
from sd_keras.generator import Generator

SIZE = dict(height=64, width=64)
PROMPT = "a red circle"
# one sampler and step count throughout: the Keras engine compiles one loop per batch size for the whole module
RUN = dict(num_steps=2, sampler="Euler a", **SIZE)


@pytest.fixture(scope="session")
def keras_engine(tiny_sd):
    return tiny_sd  # the session's tiny model: its compiled programs serve the other modules too


@pytest.fixture(scope="session")
def bundle_engine(keras_engine, tmp_path_factory):
    from sd_keras.export.runner import BundleRunner
    from sd_keras.export.exporter import export_bundle

    path = tmp_path_factory.mktemp("generator") / "tiny-fp32"
    export_bundle(keras_engine, str(path), quantization="fp32", calibration_prompts=[PROMPT], calibration_steps=2,
                  latency_runs=1, quality_gates=False)
    return BundleRunner(str(path))


@pytest.fixture(params=["keras", pytest.param("bundle", marks=pytest.mark.slow)])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def test_both_engines_are_generators(engine):
    assert isinstance(engine, Generator)
    assert engine.latent_channels == 4 and engine.unet_in_channels == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_steps=0), "num_steps must be in"),
    (dict(num_steps=2.0), "num_steps must be an integer"),
    (dict(unconditional_guidance_scale=float("nan")), "unconditional_guidance_scale must be finite"),
    (dict(height=100), "height=100 is not a multiple of 64"),
    (dict(sampler="Heun++"), "sampler name 'Heun\\+\\+' is unknown"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(prompt=3), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a", "b"], batch_size=3), "prompt is a list of 2 but batch_size=3"),
    (dict(negative_prompt=["a", "b", "c"], batch_size=2), "negative_prompt is a list of 3 but batch_size=2"),
    (dict(prompt=["a", "b"], negative_prompt=["a", "b", "c"]), "2 prompts but 3 negative prompts"),
])
def test_the_same_bad_input_is_the_same_input_error(engine, kwargs, message, monkeypatch):
    call = dict(prompt=PROMPT, num_steps=2, seed=0, **SIZE)
    call.update(kwargs)

    def no_work(*args, **kwargs):
        raise AssertionError("a network ran before the arguments were checked")

    for primitive in ("_encode_tokens", "_denoise", "_decode"):
        monkeypatch.setattr(engine, primitive, no_work)
    with pytest.raises(InputError, match=message):
        engine.text_to_image(call.pop("prompt"), **call)


def test_image_arguments_are_checked_alike(engine):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InputError, match="strength must be a number in"):
        engine.image_to_image(PROMPT, image, strength=1.5, num_steps=2, **SIZE)
    with pytest.raises(InputError, match="image must be an"):
        engine.image_to_image(PROMPT, np.zeros((2, 2, 2, 2)), num_steps=2, **SIZE)


@pytest.mark.slow
def test_seeds_batches_and_results(engine, tmp_path):
    batch = engine.text_to_image(PROMPT, batch_size=2, seed=5, **RUN)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8
    assert engine.last_seed == 5
    single = engine.text_to_image(PROMPT, seed=6, **RUN)
    assert np.abs(batch[1].astype(int) - single[0].astype(int)).max() <= 1  # image i uses seed s + i
    drawn = engine.text_to_image(PROMPT, seed=None, **RUN)
    assert isinstance(engine.last_seed, int)
    again = engine.text_to_image(PROMPT, seed=engine.last_seed, **RUN)
    np.testing.assert_array_equal(drawn, again)
    # the results of the last generation: PNG metadata with each image's own seed
    paths = engine.save(engine.text_to_image([PROMPT, "a blue square"], seed=9, **RUN), str(tmp_path / "out_%d.png"))
    from PIL import Image

    with Image.open(paths[1]) as saved:
        parsed = metadata.parse_parameters(saved.text["parameters"])
    assert parsed["prompt"] == "a blue square"
    assert (parsed["Seed"], parsed["Steps"], parsed["Sampler"]) == ("10", "2", "Euler a")


def test_encode_text_then_generate_image_is_text_to_image(engine):
    expected = engine.text_to_image(PROMPT, seed=3, **RUN)
    context = engine.encode_text(PROMPT)
    assert context.shape == (1, 77, engine.config.text_encoder.width)
    np.testing.assert_array_equal(engine.generate_image(context, seed=3, **RUN), expected)
    assert engine.last_seed == 3


def test_strength_zero_gives_back_the_decoded_image_and_reports_the_seed(engine):
    image = engine.text_to_image(PROMPT, seed=0, **RUN)[0]
    engine.last_seed = None
    same = engine.image_to_image(PROMPT, image, strength=0.0, seed=4, **RUN)
    assert engine.last_seed == 4
    np.testing.assert_array_equal(same, engine.decode(engine._image_latent(image, 64, 64, 1)))


def test_a_long_prompt_is_reported_truncated(engine):
    with pytest.warns(UserWarning):
        engine.text_to_image("cat " * 100, seed=0, **RUN)
    assert engine.last_truncated
    engine.text_to_image(PROMPT, seed=0, **RUN)
    assert not engine.last_truncated


def test_nan_from_the_decoder_is_an_error(engine, monkeypatch):
    monkeypatch.setattr(engine, "_decode", lambda latent: np.full(latent.shape[:1] + (64, 64, 3), np.nan))
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        engine.text_to_image(PROMPT, seed=0, **RUN)
