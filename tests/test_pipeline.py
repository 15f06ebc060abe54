"""The generation API on the tiny preset: compilation, seeds, image conditioning, bad input."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from sd_keras import noise
from sd_keras.pipeline import DEFAULT_SAMPLER, StableDiffusion
from sd_keras.schedulers import get_sampler

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return tiny_sd  # the session's tiny model (conftest.py)


def test_second_call_does_not_retrace_and_new_weights_do_not_recompile(sd):
    sd.text_to_image("a red circle", num_steps=3, seed=1, **SIZE)
    traces = sd._loop.trace_count
    encode_traces, decode_traces = sd._text_encoder_fn.trace_count, sd._decoder_fn.trace_count
    first = sd.text_to_image("a blue square", num_steps=3, seed=2, **SIZE)
    assert sd._loop.trace_count == traces
    assert (sd._text_encoder_fn.trace_count, sd._decoder_fn.trace_count) == (encode_traces, decode_traces)
    old = sd.diffusion_model.get_weights()
    try:
        sd.diffusion_model.set_weights([w * 0.5 for w in old])
        changed = sd.text_to_image("a blue square", num_steps=3, seed=2, **SIZE)
        assert sd._loop.trace_count == traces  # weights are arguments of the compiled program
        assert not np.array_equal(first, changed)
    finally:
        sd.diffusion_model.set_weights(old)
    sd.text_to_image("a blue square", num_steps=3, seed=2, height=128, width=64)
    assert sd._loop.trace_count == traces + 1  # a new shape is a new program


# DDIM (deterministic) and Euler a (fresh noise at every step) in the fast tier; the other deterministic samplers
# (one compiled loop per sampler and batch size, ~10 s each on a 2-core CPU) in the slow tier. test_schedulers.py
# checks every sampler's steps against diffusers without a model.
@pytest.mark.parametrize("sampler", ["DDIM", pytest.param("Euler", marks=pytest.mark.slow), "Euler a",
                                     pytest.param("DPM++ 2M", marks=pytest.mark.slow),
                                     pytest.param("DPM++ 2M Karras", marks=pytest.mark.slow)])
def test_batch_image_i_equals_single_generation_with_seed_plus_i(sd, sampler):
    batch = sd.text_to_image("a green triangle", batch_size=3, num_steps=4, seed=10, sampler=sampler, **SIZE)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    for i in range(3):
        single = sd.text_to_image("a green triangle", num_steps=4, seed=10 + i, sampler=sampler, **SIZE)
        assert np.abs(batch[i].astype(int) - single[0].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])


def test_generate_image_with_diffusion_noise_matches_manual_loop(sd):
    """KerasCV's two-step API: encode_text then generate_image with explicit noise."""
    context = sd.encode_text("a cat")
    assert context.shape == (1, 77, sd.config.text_encoder.width)
    latent_noise = noise.gaussian(3, (1, 8, 8, 4))
    images = sd.generate_image(context, num_steps=3, diffusion_noise=latent_noise, **SIZE)
    # the same generation written out step by step with the un-compiled model
    unconditional = sd.encode_text("")
    scheduler = get_sampler(DEFAULT_SAMPLER, 3)
    from sd_keras.models.layers import timestep_embedding

    latent = latent_noise
    for i, t in enumerate(scheduler.timesteps):
        emb = keras.ops.convert_to_numpy(keras.ops.repeat(
            timestep_embedding(keras.ops.convert_to_tensor([float(t)]), sd._loop.timestep_dim), 2, axis=0))
        out = sd.diffusion_model({"latent": np.concatenate([latent, latent]), "timestep_embedding": emb,
                                  "context": np.concatenate([unconditional, context])})
        out = keras.ops.convert_to_numpy(out)
        eps = out[:1] + 7.5 * (out[1:] - out[:1])
        latent, _ = scheduler.step(latent, eps, i, scheduler.initial_state(latent))
        latent = keras.ops.convert_to_numpy(latent)
    decoded = keras.ops.convert_to_numpy(sd.decoder(latent))
    expected = np.clip((decoded + 1) / 2 * 255, 0, 255).astype(np.uint8)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_progress_reports_every_step(sd):
    seen = []
    sd.text_to_image("x", num_steps=5, seed=0, progress=seen.append, **SIZE)
    assert sorted(seen) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_progress_inside_the_loop_reports_every_few_steps_and_covers_all(monkeypatch):
    # A report from inside the compiled loop stops a GPU until the host has it: at most MAX_PROGRESS_REPORTS of
    # them per generation, and the callback still hears of every step, in order.
    from sd_keras import backend
    from sd_keras import loop as loop_lib

    monkeypatch.setattr(backend, "CPU_GRAPH_MIN_PARAMS", 1)  # TensorFlow: the graph path, progress inside the loop
    monkeypatch.setattr(backend, "compilation_cache_dir", lambda: None)  # JAX: progress inside the loop
    model = StableDiffusion.from_preset("tiny")
    reports = []
    on_step = model._loop._on_step
    model._loop._on_step = lambda i: (reports.append(int(i)), on_step(i))
    seen = []
    model.text_to_image("x", num_steps=25, seed=0, progress=seen.append, **SIZE)
    assert seen == list(range(1, 26))
    assert loop_lib.progress_interval(25) == 7 and loop_lib.progress_interval(4) == 1
    assert loop_lib.progress_interval(23) == 6
    assert reports == [6, 13, 20, 24]  # step indices: every seventh step, and a shorter last chunk
    reports.clear(), seen.clear()
    model.text_to_image("x", num_steps=23, seed=0, progress=seen.append, **SIZE)
    assert seen == list(range(1, 24)) and reports == [5, 11, 17, 22]
    # Once a generation of this shape has been timed, reports are at least MIN_PROGRESS_SECONDS apart. With
    # progress the program compiles first, on its own, so even a first run times its steps; a run without
    # progress that compiles is not timed.
    timings = model._loop._seconds_per_step
    assert len(timings) == 2 and all(0 < seconds < 60 for seconds in timings.values())  # 25 and 23 steps
    timings.clear()
    model.text_to_image("x", num_steps=23, seed=0, **SIZE)  # compiles the program without progress: not timed
    assert not timings
    model.text_to_image("x", num_steps=23, seed=0, **SIZE)
    assert len(timings) == 1 and 0 < next(iter(timings.values())) < 60
    timings.update({key: 0.001 for key in timings})  # a fast generation: one report at the end
    reports.clear(), seen.clear()
    model.text_to_image("x", num_steps=23, seed=0, progress=seen.append, **SIZE)
    assert seen == list(range(1, 24)) and reports == [22]
    assert loop_lib.progress_interval(50, 0.007) == 36 and loop_lib.progress_interval(50, 0.5) == 13
    assert loop_lib.progress_interval(1, None) == 1


def test_a_fast_generation_reports_once_through_the_program_it_already_has(monkeypatch):
    # Progress from inside the loop (JAX without the persistent cache; TensorFlow's graph path): the first run of a
    # shape reports as it goes. Once timed as fast, a generation reports once, at the end, through that program:
    # no second program is compiled for the same work.
    from sd_keras import backend

    monkeypatch.setattr(backend, "CPU_GRAPH_MIN_PARAMS", 1)
    monkeypatch.setattr(backend, "compilation_cache_dir", lambda: None)
    model = StableDiffusion.from_preset("tiny")
    reports = []
    on_step = model._loop._on_step
    model._loop._on_step = lambda i: (reports.append(int(i)), on_step(i))
    seen = []
    first = model.text_to_image("x", num_steps=9, seed=0, progress=seen.append, **SIZE)
    assert seen == list(range(1, 10)) and reports == [2, 5, 8]
    compilations, traces = model.programs.compilations, model._loop.trace_count
    timings = model._loop._seconds_per_step
    assert len(timings) == 1
    timings.update({key: 0.001 for key in timings})  # a fast generation: one report, at the end
    reports.clear(), seen.clear()
    second = model.text_to_image("x", num_steps=9, seed=0, progress=seen.append, **SIZE)
    assert seen == list(range(1, 10)) and reports == [8]
    assert (model.programs.compilations, model._loop.trace_count) == (compilations, traces)
    np.testing.assert_array_equal(first, second)
    # without progress, the program without reports is compiled as before
    model.text_to_image("x", num_steps=9, seed=0, **SIZE)
    assert model._loop.trace_count == traces + 1


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_progress_in_chunks_gives_the_same_image(dtype, monkeypatch):
    # On a GPU/TPU (and TensorFlow's XLA) progress comes from running the loop a few steps per call instead of
    # from inside it; forced here on the CPU. Mixed precision: the weights are cast once for all chunks.
    from sd_keras import backend

    model = StableDiffusion.from_config("tiny", dtype=dtype)
    reference = model.text_to_image("x", num_steps=7, seed=3, **SIZE)
    monkeypatch.setattr(backend, "supports_loop_callback", lambda num_params=None: False)
    seen = []
    image = model.text_to_image("x", num_steps=7, seed=3, progress=seen.append, **SIZE)
    assert seen == list(range(1, 8))
    assert np.abs(image.astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's choice between XLA and a graph")
def test_tensorflow_cpu_runs_large_models_as_a_graph_with_progress_inside(sd, monkeypatch):
    from sd_keras import backend

    params = sum(int(np.prod(w.shape)) for w in sd.diffusion_model.weights)
    assert backend.tf_uses_xla(params) and not backend.supports_loop_callback(params)  # small: XLA
    assert not backend.tf_uses_xla(860_000_000) and backend.supports_loop_callback(860_000_000)  # SD 1.x: graph
    seen = []
    reference = sd.text_to_image("x", num_steps=4, seed=0, progress=seen.append, **SIZE)
    assert seen == [1, 2, 3, 4]  # XLA: one step per call
    monkeypatch.setattr(backend, "CPU_GRAPH_MIN_PARAMS", 1)  # every model counts as large
    graph = StableDiffusion.from_preset("tiny")  # its programs are made now: graph, progress inside the loop
    seen = []
    image = graph.text_to_image("x", num_steps=4, seed=0, progress=seen.append, **SIZE)
    assert seen == [1, 2, 3, 4] and graph._loop._num_params == params
    assert np.abs(image.astype(int) - reference.astype(int)).max() <= 2
    monkeypatch.setenv("SD_KERAS_TF_XLA", "1")
    assert backend.tf_uses_xla(860_000_000)


def test_image_to_image_and_strength_limits(sd):
    euler = dict(num_steps=2, sampler="Euler a")  # the loop test_generator.py compiles for the session's model
    image = sd.text_to_image("a red circle", seed=0, **euler, **SIZE)[0]
    out = sd.image_to_image("a blue circle", image, strength=0.5, seed=0, **euler, **SIZE)
    assert out.shape == (1, 64, 64, 3)
    same_as_decode = sd.image_to_image("a blue circle", image, strength=0.0, seed=0, **euler, **SIZE)
    expected = sd.decode(sd._image_latent(image, 64, 64, 1))
    np.testing.assert_array_equal(same_as_decode, expected)


def test_inpaint_with_plain_unet_keeps_known_latent(sd):
    """After the last step the known region is exactly the original latent (re-blended each step)."""
    from sd_keras import loop as loop_lib

    scheduler = get_sampler("Euler", 4)
    original = noise.gaussian(1, (1, 8, 8, 4))
    initial = noise.gaussian(2, (1, 8, 8, 4))
    mask = np.zeros((1, 8, 8, 1), np.float32)
    mask[:, :4] = 1.0
    context = sd.encode_text("a cat")
    latent = np.asarray(scheduler.add_noise(original, initial, 0), np.float32)
    out = sd._loop(scheduler, context, sd.encode_text(""), latent, guidance_scale=5.0, mode=loop_lib.BLEND,
                   extra={"original": original, "noise": initial, "mask": mask})
    np.testing.assert_allclose(out[:, 4:], original[:, 4:], atol=1e-5)
    assert np.abs(out[:, :4] - original[:, :4]).max() > 1e-2
    image = sd.text_to_image("x", num_steps=2, seed=0, sampler="Euler a", **SIZE)[0]
    pixel_mask = np.zeros((64, 64), np.uint8)
    pixel_mask[:32] = 255
    # the same sampler and steps as above: the blending loop compiled once
    assert sd.inpaint("a dog", image, pixel_mask, num_steps=4, seed=1, sampler="Euler", **SIZE).shape == (1, 64, 64, 3)


@pytest.mark.slow
def test_nine_channel_unet_inpaints():
    from sd_keras import models
    from sd_keras.config import get_config
    import dataclasses

    base = get_config("tiny")
    config = dataclasses.replace(base, unet=dataclasses.replace(base.unet, in_channels=9))
    keras.utils.set_random_seed(0)
    sd = StableDiffusion(config, models.build_text_encoder(config), models.build_diffusion_model(config),
                         models.build_decoder(config), models.build_image_encoder(config))
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = sd.inpaint("a cat", image, mask, num_steps=3, seed=1, **SIZE)
    assert out.shape == (1, 64, 64, 3)
    assert sd.text_to_image("a cat", num_steps=2, seed=1, **SIZE).shape == (1, 64, 64, 3)


def test_nan_result_raises(sd):
    old = sd.decoder.get_weights()
    try:
        sd.decoder.set_weights([np.full_like(w, np.nan) for w in old])
        with pytest.raises(FloatingPointError, match="NaN"):
            sd.text_to_image("x", num_steps=1, seed=0, **SIZE)
    finally:
        sd.decoder.set_weights(old)


def test_long_prompt_is_truncated_with_warning(sd):
    with pytest.warns(UserWarning):
        sd.text_to_image("cat " * 100, num_steps=1, seed=0, **SIZE)
    assert sd.last_truncated
    sd.text_to_image("", num_steps=1, seed=0, **SIZE)  # empty prompt: unconditional generation
    assert not sd.last_truncated


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=10**6), "num_steps"),
    (dict(unconditional_guidance_scale=float("nan")), "guidance"),
    (dict(unconditional_guidance_scale=-1.0), "guidance"),
    (dict(height=100), "height=100 .*64 or 128"),
    (dict(width=65), "width"),
    (dict(sampler="Heun++"), "sampler"),
    (dict(batch_size=0), "batch_size"),
    (dict(seed=1.5), "seed"),
])
def test_bad_input_names_the_argument(sd, kwargs, argument):
    call = dict(num_steps=2, seed=0, **SIZE)
    call.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        sd.text_to_image("x", **call)


def test_bad_image_input(sd, tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="strength"):
        sd.image_to_image("x", image, strength=1.5, num_steps=2, **SIZE)
    with pytest.raises(ValueError, match="mask size"):
        sd.inpaint("x", image, np.zeros((32, 32), np.uint8), num_steps=2, **SIZE)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot read image"):
        sd.image_to_image("x", str(bad), num_steps=2, **SIZE)


@pytest.mark.slow
def test_same_seed_same_image_on_the_other_backend(sd, tmp_path):
    here = sd.text_to_image("a red circle", num_steps=3, seed=5, sampler="Euler a", **SIZE)
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    out = tmp_path / "other.npy"
    code = ("import numpy as np, sd_keras; sd = sd_keras.StableDiffusion.from_preset('tiny'); "
            f"np.save({str(out)!r}, sd.text_to_image('a red circle', num_steps=3, seed=5, sampler='Euler a', "
            "height=64, width=64))")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "KERAS_BACKEND": other})
    assert np.abs(np.load(out).astype(int) - here.astype(int)).max() <= 2


@pytest.mark.slow
def test_bfloat16_stores_and_runs_the_unet_in_bfloat16_with_float32_sampling():
    half = StableDiffusion.from_preset("tiny", dtype="bfloat16")
    assert {l.dtype_policy.name for l in half.diffusion_model.layers if l.weights} == {"bfloat16"}
    assert {str(w.dtype) for w in half.diffusion_model.weights} == {"bfloat16"}  # half the memory of float32
    assert {str(w.dtype) for w in half.decoder.weights} == {"float32"}  # the VAE stays float32
    full = StableDiffusion.from_preset("tiny")
    a = half.generate_image(half.encode_text("a cat"), num_steps=2, seed=1, return_latent=True, **SIZE)
    b = full.generate_image(full.encode_text("a cat"), num_steps=2, seed=1, return_latent=True, **SIZE)
    assert a.dtype == np.float32  # the loop's latent stays float32
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(b).max()
    with pytest.raises(ValueError, match="dtype"):
        StableDiffusion.from_preset("tiny", dtype="int8")


def test_keras_cv_preset_offline_error_names_files_and_folder(tmp_path, monkeypatch):
    from sd_keras import presets
    from sd_keras.weights import download

    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(download, "_download", lambda remote, dest, *options: (_ for _ in ()).throw(
        download.urllib.error.URLError("network is unreachable")))
    with pytest.raises(download.WeightsUnavailableError) as info:
        StableDiffusion.from_preset("sd-v1")
    message = str(info.value)
    for remote in presets.keras_cv_files("sd-v1"):
        assert remote.url in message and remote.name in message
    assert str(tmp_path / "sd-v1") in message
    with pytest.raises(ValueError, match="no-such-preset"):
        StableDiffusion.from_preset("no-such-preset")


def test_prompt_must_be_text_and_a_prompt_list_sets_the_batch(sd):
    for bad in (None, 3, [], ["a", None]):
        with pytest.raises(ValueError, match="prompt must be a string or a non-empty list of strings"):
            sd.text_to_image(bad, num_steps=2, **SIZE)
    with pytest.raises(ValueError, match="prompt must be"):
        sd.encode_text(None)
    with pytest.raises(ValueError, match="negative_prompt must be"):
        sd.text_to_image("a cat", negative_prompt=7, num_steps=2, **SIZE)
    prompts = ["a red circle", "a blue square"]
    # one compiled program (batch 2, 2 steps, Euler a) serves every generation below and the save test
    euler = dict(num_steps=2, sampler="Euler a")
    batch = sd.text_to_image(prompts, seed=4, **euler, **SIZE)
    assert batch.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(sd.generate_image(sd.encode_text(prompts), seed=4, **euler, **SIZE), batch)
    repeated = sd.text_to_image(["a red circle"], batch_size=2, seed=4, **euler, **SIZE)  # one is repeated
    assert np.abs(repeated[0].astype(int) - batch[0].astype(int)).max() <= 1  # batch-1 vs batch-2 text rounding
    assert sd.text_to_image("a cat", ["x", "y"], seed=4, **euler, **SIZE).shape[0] == 2  # negative prompts
    with pytest.raises(ValueError, match=r"list of 2 but batch_size=3"):
        sd.text_to_image(prompts, batch_size=3, num_steps=2, **SIZE)
    with pytest.raises(ValueError, match="2 prompts but 3 negative prompts"):
        sd.text_to_image(prompts, ["x", "y", "z"], num_steps=2, **SIZE)
    image = np.zeros((64, 64, 3), np.uint8)
    assert sd.image_to_image(prompts, image, strength=0.0, num_steps=2, seed=1, **SIZE).shape[0] == 2
    mask = np.full((64, 64), 255, np.uint8)
    with pytest.raises(ValueError, match=r"list of 2 but batch_size=1"):
        sd.inpaint(prompts, image, mask, batch_size=1, num_steps=2, **SIZE)
    with pytest.raises(ValueError, match="prompt must be"):
        sd.image_to_image(None, image, num_steps=2, **SIZE)


def test_keras_cv_constructor_form_loads_the_published_preset_at_the_given_size(sd, monkeypatch):
    import sd_keras
    from sd_keras.pipeline import StableDiffusionV2

    loaded = []

    def fake_from_preset(cls, name, *, dtype="float32"):
        loaded.append((cls.__name__, name, dtype))
        return sd  # the tiny model stands in for KerasCV's weights

    monkeypatch.setattr(StableDiffusion, "from_preset", classmethod(fake_from_preset))
    model = sd_keras.StableDiffusion(img_width=256, img_height=128, jit_compile=True)
    assert loaded[-1] == ("StableDiffusion", "sd-v1", "float32")
    assert isinstance(model, StableDiffusion) and model.config.image_size == (128, 256) and model.jit_compile
    assert model.diffusion_model is sd.diffusion_model and sd.config.image_size == (64, 64)  # sd is untouched
    model = sd_keras.StableDiffusionV2(320, 200, False)  # positional, as KerasCV allows; rounded as KerasCV rounds
    assert loaded[-1] == ("StableDiffusionV2", "sd-v2", "float32")
    assert isinstance(model, StableDiffusionV2) and model.config.image_size == (256, 256) and not model.jit_compile
    assert sd_keras.StableDiffusion().config.image_size == (512, 512)  # KerasCV's defaults
    with pytest.raises(ValueError, match="img_height=32 rounds to 0"):
        sd_keras.StableDiffusion(img_height=32)
    with pytest.raises(TypeError, match="two values for img_width"):
        sd_keras.StableDiffusion(512, 512, img_width=512)
    with pytest.raises(TypeError, match="ModelConfig"):
        sd_keras.StableDiffusion("sd-v1")
    with pytest.raises(ValueError, match="KerasCV's constructor form"):
        StableDiffusion(sd.config, sd.text_encoder, sd.diffusion_model, sd.decoder, img_height=512)
    assert len(loaded) == 3  # bad arguments fail before any weights are loaded


@pytest.mark.parametrize("cls_name, preset", [("StableDiffusion", "sd-v1"), ("StableDiffusionV2", "sd-v2")])
def test_keras_cv_constructor_form_offline_names_the_presets_files(cls_name, preset, tmp_path, monkeypatch):
    import sd_keras
    from sd_keras import presets
    from sd_keras.weights import download

    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(download, "_download", lambda remote, dest, *options: (_ for _ in ()).throw(
        download.urllib.error.URLError("network is unreachable")))
    with pytest.raises(download.WeightsUnavailableError) as info:
        getattr(sd_keras, cls_name)(img_width=512, img_height=512, jit_compile=True)
    message = str(info.value)
    for remote in presets.keras_cv_files(preset):
        assert remote.url in message and remote.name in message
    assert str(tmp_path / preset) in message


def test_save_writes_pngs_with_each_images_parameters(sd, tmp_path):
    from PIL import Image

    from sd_keras import metadata

    fresh = StableDiffusion(sd.config, sd.text_encoder, sd.diffusion_model, sd.decoder, sd.image_encoder)
    with pytest.raises(ValueError, match="no generation"):
        fresh.save(np.zeros((1, 64, 64, 3), np.uint8), str(tmp_path / "x.png"))
    images = sd.text_to_image(["a red circle", "a blue square"], negative_prompt="green, blurry", num_steps=2,
                              unconditional_guidance_scale=5.5, seed=17, sampler="Euler a", **SIZE)
    paths = sd.save(images, str(tmp_path / "new folder" / "out_%d.png"))
    assert paths == [str(tmp_path / "new folder" / f"out_{i}.png") for i in range(2)]
    for i, (path, prompt) in enumerate(zip(paths, ["a red circle", "a blue square"])):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), images[i])
        parsed = metadata.parse_parameters(metadata.read_parameters(path))
        assert parsed == {"prompt": prompt, "negative_prompt": "green, blurry", "Steps": "2", "Sampler": "Euler a",
                          "CFG scale": "5.5", "Seed": str(17 + i), "Size": "64x64", "Model": "tiny"}
    with pytest.raises(ValueError, match="got 1 image"):
        sd.save(images[:1], str(tmp_path / "one.png"))
    with pytest.raises(ValueError, match="one %d"):
        sd.save(images, str(tmp_path / "out_%d_%d.png"))
    edited = sd.image_to_image("a cat", images[0], strength=0.0, num_steps=2, seed=3, **SIZE)  # decode only
    (path,) = sd.save(edited, str(tmp_path / "edited.png"))
    parsed = metadata.parse_parameters(metadata.read_parameters(path))
    assert (parsed["prompt"], parsed["Seed"], parsed["Denoising strength"]) == ("a cat", "3", "0")
    assert parsed["negative_prompt"] == "" and parsed["Sampler"] == DEFAULT_SAMPLER


def test_presets_cached_says_whether_a_preset_loads_without_download(tmp_path, monkeypatch):
    from sd_keras import presets
    from sd_keras.weights import download

    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    assert presets.cached("tiny") and presets.cached("shapes")
    files = presets.keras_cv_files("sd-v2")
    for remote in files[:-1]:
        (tmp_path / "sd-v2").mkdir(exist_ok=True)
        (tmp_path / "sd-v2" / remote.name).write_bytes(b"x")
    assert not presets.cached("sd-v2")
    (tmp_path / "sd-v2" / files[-1].name).write_bytes(b"x")
    assert presets.cached("sd-v2") and not presets.cached("sd-v1")
    with pytest.raises(ValueError, match="no-such-preset"):
        presets.cached("no-such-preset")
