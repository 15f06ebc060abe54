"""Samplers against diffusers' schedulers (CPU torch) and KerasCV's DDIM loop, on both Keras backends.

Parity is checked on fixed random latents and a fixed sequence of fake model outputs fed to both sides. Our
schedule is float64 on the host while diffusers builds ᾱ in float32, so σ near t = 0 differs by up to ~1.3e-5
relative (the float32 rounding of 1 - ᾱ); tolerances below are stated relative to each tensor's scale.
"""

import math

import keras
import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)
from diffusers.schedulers import scheduling_euler_ancestral_discrete
from keras import ops

from sd_keras.schedulers import (SAMPLER_ALIASES, SAMPLER_NAMES, DDIMSampler, DPMPP2MSampler, EulerAncestralSampler,
                                 EulerSampler, NoiseSchedule, get_sampler)
from sd_keras.schedulers.base import STEP_TABLES

# SD 1.x's scheduler_config.json, as every diffusers SD pipeline loads it.
SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)
STEP_COUNTS = [1, 4, 20, 50]
DIFFUSERS_NAMES = ["DDIM", "Euler", "Euler Karras", "Euler a", "Euler a Karras", "DPM++ 2M", "DPM++ 2M Karras"]
LATENT_SHAPE = (2, 8, 8, 4)
STEP_TOLERANCE = 5e-6  # max |ours - diffusers| over max |diffusers|, per step
# diffusers turns its torch ᾱ into numpy through a path NumPy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def diffusers_scheduler(name, num_steps, spacing, prediction_type="epsilon"):
    """diffusers' scheduler for one of our names, with SD's config, after set_timesteps(num_steps)."""
    karras = name.endswith("Karras")
    base = name.removesuffix(" Karras")
    common = dict(SD_CONFIG, timestep_spacing=spacing, prediction_type=prediction_type)
    if base == "DDIM":
        scheduler = DDIMScheduler(**common, set_alpha_to_one=True, clip_sample=False)
    elif base == "Euler":
        scheduler = EulerDiscreteScheduler(**common, use_karras_sigmas=karras)
    elif base == "Euler a":
        scheduler = EulerAncestralDiscreteScheduler(**common)
    else:
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                use_karras_sigmas=karras)
    scheduler.set_timesteps(num_steps)
    if base == "Euler a" and karras:
        # diffusers' ancestral class has no Karras option: give it the Karras σ of diffusers' Euler.
        euler = diffusers_scheduler("Euler Karras", num_steps, spacing, prediction_type)
        scheduler.sigmas, scheduler.timesteps = euler.sigmas.clone(), euler.timesteps.clone()
    return scheduler


def fixed_inputs(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    initial = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
    outputs = rng.standard_normal((num_steps,) + LATENT_SHAPE).astype(np.float32)
    step_noise = rng.standard_normal((num_steps,) + LATENT_SHAPE).astype(np.float32)
    return initial, outputs, step_noise


@pytest.fixture
def injected_noise(monkeypatch):
    """Makes diffusers' ancestral step draw the given noise arrays in order instead of torch random numbers."""
    def inject(noise_arrays):
        queue = iter(noise_arrays)
        monkeypatch.setattr(scheduling_euler_ancestral_discrete, "randn_tensor",
                            lambda *args, **kwargs: torch.from_numpy(next(queue)))
    return inject


def run_diffusers(scheduler, latent, outputs, start=0, reblend=None):
    """diffusers' loop from step `start`; returns per-step (model input, next latent[, re-blend target])."""
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    latent = torch.from_numpy(latent)
    records = []
    for i, timestep in enumerate(scheduler.timesteps[start:], start=start):
        model_input = scheduler.scale_model_input(latent, timestep)
        latent = scheduler.step(torch.from_numpy(outputs[i]), timestep, latent).prev_sample
        record = [model_input.numpy(), latent.numpy()]
        if reblend is not None and i + 1 < len(scheduler.timesteps):
            original, noise = (torch.from_numpy(a) for a in reblend)
            record.append(scheduler.add_noise(original, noise, scheduler.timesteps[i + 1:i + 2]).numpy())
        records.append(record)
    return records


def run_ours(sampler, latent, outputs, step_noise, start=0):
    state = sampler.initial_state(latent)
    records = []
    for i in range(start, sampler.num_steps):
        model_input = keras.ops.convert_to_numpy(sampler.scale_model_input(latent, i))
        latent, state = sampler.step(latent, outputs[i], i, state, step_noise[i])
        records.append([model_input, keras.ops.convert_to_numpy(latent)])
    return records


def assert_scaled_close(actual, expected, tolerance=STEP_TOLERANCE, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(actual - expected).max()) / scale
    assert error <= tolerance, f"{what}: scaled error {error:.3g} > {tolerance:.3g}"


def assert_sigmas_match(ours, theirs):
    # 1e-6 relative for σ >= 1; below that the float32 rounding of diffusers' 1 - ᾱ dominates (see module doc).
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)


# -- timesteps, sigmas, model input scaling and full runs against diffusers ----------------------------------
CASES = [(name, spacing) for name in DIFFUSERS_NAMES
         for spacing in (["leading"] if name == "DDIM" else ["linspace", "leading"])]


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("name,spacing", CASES)
def test_tables_match_diffusers(name, spacing, num_steps):
    sampler = get_sampler(name, num_steps, timestep_spacing=spacing)
    reference = diffusers_scheduler(name, num_steps, spacing)
    expected_timesteps = reference.timesteps.numpy().astype(np.float64)
    assert sampler.timesteps.dtype == np.float32 and sampler.timesteps.shape == (num_steps,)
    if "Karras" in name and name.startswith("Euler"):
        # fractional timesteps found by interpolating log σ of the float32 vs float64 schedule
        np.testing.assert_allclose(sampler.timesteps, expected_timesteps, atol=2e-3)
    else:
        np.testing.assert_array_equal(sampler.timesteps, expected_timesteps)
    assert_sigmas_match(sampler.init_noise_sigma, float(reference.init_noise_sigma))
    if name == "DDIM":
        alphas = reference.alphas_cumprod.numpy()
        np.testing.assert_allclose(sampler.alphas, alphas[reference.timesteps.numpy()], rtol=1e-6)
        assert sampler.alphas_prev[-1] == 1.0
        np.testing.assert_array_equal(sampler.alphas_prev[:-1], sampler.alphas[1:])
    elif "Karras" in name:
        assert sampler.sigmas.shape == (num_steps + 1,) and sampler.sigmas[-1] == 0.0
        # Karras σ interpolate σ^(1/7) towards σ_min, which carries diffusers' float32 error of σ_min (1.3e-5
        # relative) into every level; with our σ_min and σ_max, diffusers' own ramp gives our levels exactly.
        np.testing.assert_allclose(sampler.sigmas, reference.sigmas.numpy(), rtol=1.5e-5)
        ours = sampler.sigmas[:-1].astype(np.float64)
        karras_owner = EulerDiscreteScheduler(**SD_CONFIG)  # diffusers' ancestral class lacks the ramp
        ramp = karras_owner._convert_to_karras(in_sigmas=torch.tensor([ours[0], ours[-1]], dtype=torch.float64),
                                            num_inference_steps=num_steps)
        np.testing.assert_allclose(ours, ramp, rtol=1e-6)
    else:
        assert sampler.sigmas.dtype == np.float32 and sampler.sigmas.shape == (num_steps + 1,)
        assert_sigmas_match(sampler.sigmas, reference.sigmas.numpy())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("name,spacing", CASES)
def test_steps_match_diffusers(name, spacing, num_steps, prediction_type, injected_noise):
    sampler = get_sampler(name, num_steps, timestep_spacing=spacing, prediction_type=prediction_type)
    reference = diffusers_scheduler(name, num_steps, spacing, prediction_type)
    initial, outputs, step_noise = fixed_inputs(num_steps)
    injected_noise(step_noise)
    theirs = run_diffusers(reference, initial * np.float32(float(reference.init_noise_sigma)), outputs)
    ours = run_ours(sampler, initial * np.float32(sampler.init_noise_sigma), outputs, step_noise)
    for i, ((our_input, our_latent), (their_input, their_latent)) in enumerate(zip(ours, theirs)):
        assert_scaled_close(our_input, their_input, what=f"model input of step {i}")
        assert_scaled_close(our_latent, their_latent, what=f"latent after step {i}")


# -- DDIM against KerasCV ------------------------------------------------------------------------------------
def keras_cv_alphas_cumprod():
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD
    return np.array(_ALPHAS_CUMPROD, np.float64)


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
def test_ddim_matches_keras_cv_update(num_steps):
    """The KerasCV update on the "leading" timesteps (KerasCV < 0.9: np.arange(1, 1000, 1000 // num_steps))."""
    alphas_cumprod = keras_cv_alphas_cumprod()
    np.testing.assert_allclose(NoiseSchedule().alphas_cumprod, alphas_cumprod, rtol=2e-7)
    timesteps = np.arange(1, 1000, 1000 // num_steps)
    sampler = DDIMSampler(num_steps)
    np.testing.assert_array_equal(sampler.timesteps, timesteps[::-1])

    initial, outputs, _ = fixed_inputs(num_steps, seed=1)
    alphas = [alphas_cumprod[t] for t in timesteps]
    alphas_prev = [1.0] + alphas[:-1]
    latent = initial
    for step, index in enumerate(range(len(timesteps))[::-1]):
        a_t, a_prev = alphas[index], alphas_prev[index]
        pred_x0 = (latent - math.sqrt(1 - a_t) * outputs[step]) / math.sqrt(a_t)
        latent = (outputs[step] * math.sqrt(1.0 - a_prev) + math.sqrt(a_prev) * pred_x0).astype(np.float32)
    ours = run_ours(sampler, initial, outputs, [None] * num_steps)
    assert_scaled_close(ours[-1][1], latent)


class _FakeModel:
    """Stands in for KerasCV's sub-models: returns fixed outputs and records what it is given."""

    def __init__(self, outputs=None):
        self.outputs, self.calls = outputs, []

    def predict_on_batch(self, inputs):
        self.calls.append(inputs)
        if self.outputs is None:  # text encoder: any context will do
            return np.zeros((1, 77, 768), np.float32)
        # the unconditional and conditional calls of one step get the same output, so guidance returns it
        return self.outputs[(len(self.calls) - 1) // 2]


@pytest.mark.parametrize("num_steps", [1, 4, 7, 20, 50])
def test_ddim_keras_cv_matches_keras_cv_generate_image(num_steps):
    """"DDIM KerasCV" against a real KerasCV 0.9 generate_image call, its sub-models replaced by fakes."""
    from keras_cv.models import StableDiffusion

    initial, outputs, _ = fixed_inputs(num_steps, seed=2)
    initial = initial[:1]
    model = StableDiffusion(img_height=128, img_width=128, jit_compile=False)
    model._text_encoder = _FakeModel()
    model._diffusion_model = _FakeModel(outputs[:, :1])
    decoder = model._decoder = _FakeModel(np.zeros((1, 8, 8, 3), np.float32))
    timesteps_seen = []
    embed = model._get_timestep_embedding
    model._get_timestep_embedding = lambda t, batch: (timesteps_seen.append(t), embed(t, batch))[1]
    model.generate_image(np.zeros((77, 768), np.float32), batch_size=1, num_steps=num_steps,
                         unconditional_guidance_scale=7.5, diffusion_noise=initial)
    expected = keras.ops.convert_to_numpy(decoder.calls[-1])

    sampler = get_sampler("DDIM KerasCV", num_steps)
    assert sampler.name == "DDIM KerasCV"
    np.testing.assert_array_equal(sampler.timesteps, np.array(timesteps_seen, np.float32))
    ours = run_ours(sampler, initial * np.float32(sampler.init_noise_sigma), outputs[:, :1], [None] * num_steps)
    assert_scaled_close(ours[-1][1], expected)


# -- image-to-image and inpainting ---------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [0.0, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("name", DIFFUSERS_NAMES)
def test_img2img_start_and_run_match_diffusers(name, strength, injected_noise):
    num_steps = 20
    spacing = "leading" if name == "DDIM" else "linspace"
    sampler = get_sampler(name, num_steps)
    reference = diffusers_scheduler(name, num_steps, spacing)
    # StableDiffusionImg2ImgPipeline.get_timesteps
    init_timestep = min(int(num_steps * strength), num_steps)
    t_start = max(num_steps - init_timestep, 0)
    start = sampler.start_index(strength)
    assert start == t_start
    np.testing.assert_allclose(sampler.timesteps[start:], reference.timesteps[t_start:].numpy(), atol=2e-3)

    original, outputs, step_noise = fixed_inputs(num_steps, seed=3)
    noise = step_noise[0]
    noised = keras.ops.convert_to_numpy(sampler.add_noise(original, noise, start))
    if start == num_steps:
        np.testing.assert_array_equal(noised, original)
        return
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(t_start)
    expected = reference.add_noise(torch.from_numpy(original), torch.from_numpy(noise),
                                   reference.timesteps[t_start:t_start + 1]).numpy()
    assert_scaled_close(noised, expected, what="noised original")

    # The run from the middle: DPM++ 2M must begin with a first-order step.
    injected_noise(step_noise[start:])
    reference = diffusers_scheduler(name, num_steps, spacing)
    theirs = run_diffusers(reference, expected, outputs, start=t_start)
    ours = run_ours(sampler, noised, outputs, step_noise, start=start)
    assert len(ours) == len(theirs) == num_steps - start
    assert_scaled_close(ours[-1][1], theirs[-1][1], what="final latent")


@pytest.mark.parametrize("name", DIFFUSERS_NAMES)
def test_inpaint_reblend_targets_match_diffusers(name, injected_noise):
    """StableDiffusionInpaintPipeline (4-channel UNet) re-noises the original to timesteps[i + 1] after step i."""
    num_steps = 8
    spacing = "leading" if name == "DDIM" else "linspace"
    sampler = get_sampler(name, num_steps)
    reference = diffusers_scheduler(name, num_steps, spacing)
    original, outputs, step_noise = fixed_inputs(num_steps, seed=4)
    injected_noise(step_noise)
    records = run_diffusers(reference, original * np.float32(float(reference.init_noise_sigma)), outputs,
                            reblend=(original, step_noise[0]))
    for i, record in enumerate(records[:-1]):
        ours = keras.ops.convert_to_numpy(sampler.add_noise(original, step_noise[0], i + 1))
        assert_scaled_close(ours, record[2], what=f"re-blend target after step {i}")
    clean = keras.ops.convert_to_numpy(sampler.add_noise(original, step_noise[0], num_steps))
    np.testing.assert_array_equal(clean, original)


# -- the tables are the whole algorithm ----------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_tables_alone_reproduce_step(name):
    """A port that knows only tables() and the formulas of base.py gets the same latents as step()."""
    num_steps = 12
    sampler = get_sampler(name, num_steps, prediction_type="v_prediction")
    tables = sampler.tables()
    for key in STEP_TABLES:
        assert key in tables and tables[key].dtype == np.float32, key
    for key in ("timesteps", "model_input_scale", "denoise_latent", "denoise_output", "step_latent",
                "step_denoised", "step_previous_denoised", "step_noise"):
        assert tables[key].shape == (num_steps,), key
    for key in ("sigmas", "signal_scale", "noise_scale"):
        assert tables[key].shape == (num_steps + 1,), key
    assert tables["init_noise_sigma"].shape == ()

    initial, outputs, step_noise = fixed_inputs(num_steps, seed=5)
    start = 3  # a later first step exercises the "no previous denoised yet" rule
    latent = initial
    previous = None
    for i in range(start, num_steps):
        model_input = latent * tables["model_input_scale"][i]
        output = outputs[i] + 0.1 * model_input  # an output that depends on the input, like a model's
        denoised = tables["denoise_latent"][i] * latent + tables["denoise_output"][i] * output
        previous = denoised if previous is None else previous
        latent = (tables["step_latent"][i] * latent + tables["step_denoised"][i] * denoised
                  + tables["step_previous_denoised"][i] * previous + tables["step_noise"][i] * step_noise[i])
        previous = denoised

    ours, state = initial, sampler.initial_state(initial)
    for i in range(start, num_steps):
        output = outputs[i] + 0.1 * keras.ops.convert_to_numpy(sampler.scale_model_input(ours, i))
        ours, state = sampler.step(ours, output, i, state, step_noise[i])
    assert_scaled_close(keras.ops.convert_to_numpy(ours), latent, tolerance=1e-6)


# -- compiled loops with a traced step index -----------------------------------------------------------------
def _compile(function):
    if keras.backend.backend() == "jax":
        import jax
        return jax.jit(function)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return tf.function(function, jit_compile=True)
    raise AssertionError(f"untested backend {keras.backend.backend()}")


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_step_in_compiled_fori_loop_matches_python_loop(name):
    num_steps, start = 6, 1
    sampler = get_sampler(name, num_steps)
    initial, outputs, step_noise = fixed_inputs(num_steps, seed=6)
    original = outputs[0]
    latent0 = initial * np.float32(sampler.init_noise_sigma)

    def fake_model(model_input, i):
        return ops.take(ops.convert_to_tensor(outputs), i, axis=0) + 0.1 * model_input

    def loop(latent, noise, first):
        def body(i, carry):
            latent, state = carry
            output = fake_model(sampler.scale_model_input(latent, i), i)
            latent, state = sampler.step(latent, output, i, state, ops.take(noise, i, axis=0))
            # a plain-UNet inpainting re-blend of half the latent, with i + 1 reaching num_steps at the end
            known = sampler.add_noise(original, ops.take(noise, 0, axis=0), i + 1)
            latent = ops.concatenate([latent[:1], known[1:]], axis=0)
            return latent, state
        return ops.fori_loop(first, num_steps, body, (latent, sampler.initial_state(latent)))[0]

    compiled = keras.ops.convert_to_numpy(_compile(loop)(latent0, step_noise, np.int32(start)))

    latent, state = latent0, sampler.initial_state(latent0)
    for i in range(start, num_steps):
        output = fake_model(sampler.scale_model_input(latent, i), i)
        latent, state = sampler.step(latent, output, i, state, step_noise[i])
        known = sampler.add_noise(original, step_noise[0], i + 1)
        latent = ops.concatenate([latent[:1], known[1:]], axis=0)
    expected = keras.ops.convert_to_numpy(latent)
    np.testing.assert_array_equal(compiled[1:], original[1:])  # the last re-blend is the clean original
    assert_scaled_close(compiled, expected, tolerance=1e-6)


def test_step_casts_half_precision_outputs_to_float32():
    sampler = EulerSampler(4)
    initial, outputs, _ = fixed_inputs(4, seed=7)
    latent, _ = sampler.step(initial.astype(np.float16), outputs[0].astype(np.float16), 0,
                             sampler.initial_state(initial))
    assert keras.backend.standardize_dtype(latent.dtype) == "float32"
    expected, _ = sampler.step(initial.astype(np.float16).astype(np.float32),
                               outputs[0].astype(np.float16).astype(np.float32), 0, sampler.initial_state(initial))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(latent), keras.ops.convert_to_numpy(expected))


# -- names and options ---------------------------------------------------------------------------------------
def test_names_aliases_and_options():
    assert SAMPLER_NAMES == ["DDIM", "DDIM KerasCV", "Euler", "Euler Karras", "Euler a", "Euler a Karras",
                             "DPM++ 2M", "DPM++ 2M Karras"]
    for name in SAMPLER_NAMES:
        assert get_sampler(name, 10).name == name
        assert get_sampler(name.upper(), 10).name == name
    assert isinstance(get_sampler("  dpm++   2m  karras ", 10), DPMPP2MSampler)
    expected_classes = {"DDIMScheduler": DDIMSampler, "EulerDiscreteScheduler": EulerSampler,
                        "EulerAncestralDiscreteScheduler": EulerAncestralSampler,
                        "DPMSolverMultistepScheduler": DPMPP2MSampler}
    for alias, cls in expected_classes.items():
        sampler = get_sampler(alias.lower(), 10)
        assert type(sampler) is cls and sampler.name == SAMPLER_ALIASES[alias]
    assert get_sampler("Euler", 10, karras=True).name == "Euler Karras"
    assert get_sampler("DPM++ 2M Karras", 10, karras=True).karras
    assert [get_sampler(n, 10).needs_noise for n in ("Euler a", "Euler a Karras", "Euler", "DDIM", "DPM++ 2M")] == \
        [True, True, False, False, False]
    schedule = NoiseSchedule(prediction_type="v_prediction")
    assert get_sampler("Euler", 10, schedule=schedule).prediction_type == "v_prediction"
    assert get_sampler("Euler", 10, schedule=schedule, prediction_type="epsilon").prediction_type == "epsilon"


def test_samplers_are_immutable():
    sampler = get_sampler("DPM++ 2M", 10)
    with pytest.raises(AttributeError):
        sampler.num_steps = 20
    with pytest.raises(ValueError):
        sampler.timesteps[0] = 5.0
    tables = sampler.tables()
    tables["sigmas"][0] = -1.0
    assert sampler.tables()["sigmas"][0] > 0


@pytest.mark.parametrize("call,argument", [
    (lambda: get_sampler("Heun", 20), "sampler name"),
    (lambda: get_sampler(None, 20), "sampler name"),
    (lambda: get_sampler("DDIM", 0), "num_steps"),
    (lambda: get_sampler("Euler", 10**6), "num_steps"),
    (lambda: get_sampler("DDIM", 1000), "num_steps"),
    (lambda: get_sampler("DPM++ 2M", 1000), "num_steps"),
    (lambda: get_sampler("Euler", 2.5), "num_steps"),
    (lambda: get_sampler("Euler", True), "num_steps"),
    (lambda: get_sampler("DDIM", 20, karras=True), "karras"),
    (lambda: get_sampler("Euler Karras", 20, karras=False), "karras"),
    (lambda: get_sampler("Euler", 20, prediction_type="sample"), "prediction_type"),
    (lambda: get_sampler("Euler", 20, timestep_spacing="trailing"), "timestep_spacing"),
    (lambda: get_sampler("DDIM KerasCV", 20, timestep_spacing="leading"), "timestep_spacing"),
    (lambda: get_sampler("Euler", 20, schedule="sd"), "schedule"),
    (lambda: get_sampler("DDIM", 20).start_index(1.5), "strength"),
    (lambda: get_sampler("DDIM", 20).start_index(float("nan")), "strength"),
    (lambda: get_sampler("DDIM", 20).start_index(-0.1), "strength"),
    (lambda: get_sampler("DDIM", 20).start_index("0.5"), "strength"),
    (lambda: get_sampler("Euler a", 4).step(np.zeros(LATENT_SHAPE), np.zeros(LATENT_SHAPE), 0, None), "noise"),
    (lambda: get_sampler("Euler", 4).scale_model_input(np.zeros(LATENT_SHAPE), 4), "step index"),
    (lambda: get_sampler("Euler", 4).add_noise(np.zeros(LATENT_SHAPE), np.zeros(LATENT_SHAPE), 5), "step index"),
    (lambda: NoiseSchedule(beta_start=0.0), "beta_start"),
    (lambda: NoiseSchedule(num_train_timesteps=1), "num_train_timesteps"),
])
def test_bad_input_raises_value_error_naming_it(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_start_index_bounds():
    sampler = get_sampler("Euler", 50)
    assert sampler.start_index(1.0) == 0
    assert sampler.start_index(1) == 0
    assert sampler.start_index(0.0) == 50
    assert sampler.start_index(0.75) == 13
    assert sampler.start_index(np.float32(0.5)) == 25
