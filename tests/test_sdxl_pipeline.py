"""SDXL generation (sd_keras.pipeline_sdxl.StableDiffusionXL) against diffusers' SDXL pipelines on tiny random
models: a whole short generation with the same initial latents (Euler, DDIM) and the base -> refiner hand-off
(``denoising_end`` / ``denoising_start``); the compiled loop's reuse, inpainting and bad input."""

import numpy as np
import pytest

from sd_keras.errors import InputError
from sd_keras.pipeline_sdxl import pack, split_index, timestep_cutoff, unpack

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers_sdxl as dx  # noqa: E402

STEPS = 4
PROMPT = "a red circle on a blue square"
MAX_LEVEL_DIFFERENCE = 2  # out of 255


# ----------------------------------------------------------------------------------------- pure helpers (fast)
def test_split_index_follows_diffusers_cutoff():
    from sd_keras.schedulers import get_sampler

    scheduler = get_sampler("Euler", 10)
    assert timestep_cutoff(0.8) == 200
    expected = int(np.sum(np.asarray(scheduler.timesteps) >= 200))
    assert split_index(scheduler, 0.8) == expected
    assert 0 < expected < 10
    assert split_index(scheduler, 0.9999) == 10  # a cutoff of 0: every step runs in the base model


def test_encoded_text_packs_the_pooled_row():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 154, 16)).astype(np.float32)
    pooled = rng.standard_normal((2, 12)).astype(np.float32)
    encoded = pack(hidden, pooled)
    assert encoded.shape == (2, 155, 16)
    assert np.all(encoded[:, 0, 12:] == 0)
    back_hidden, back_pooled = unpack(encoded, 12)
    np.testing.assert_array_equal(back_hidden, hidden)
    np.testing.assert_array_equal(back_pooled, pooled)


# --------------------------------------------------------------------------------- models (slow: builds them)
@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """Tiny diffusers SDXL base and refiner with CLIP's vocabulary (so real prompts tokenize into them), saved as
    diffusers folders and loaded by sd_keras."""
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dx, "VOCAB", 49408)  # start 49406, end 49407: CLIP's ids
        base, refiner = dx.build("base"), dx.build("refiner", seed=1)
    root = tmp_path_factory.mktemp("sdxl_pipeline")
    base_folder = dx.save_diffusers_folder(base, str(root / "base"))
    refiner_folder = dx.save_diffusers_folder(refiner, str(root / "refiner"))
    return {"base": base, "refiner": refiner,
            "xl": StableDiffusionXL.from_checkpoint(base_folder),
            "refiner_xl": StableDiffusionXL.from_checkpoint(refiner_folder)}


def _reference_embeddings(engine, torch_models, prompt):
    """(prompt_embeds, pooled) of ``prompt`` by the transformers encoders, from sd_keras's token ids (each
    encoder with its own padding, as diffusers' two tokenizers pad)."""
    ids = [torch.from_numpy(i.astype(np.int64)) for i in engine._encoder_ids(engine.tokenize([prompt]))]
    encoders = [torch_models[name] for name in ("text_encoder", "text_encoder_2") if torch_models[name] is not None]
    hidden, pooled = [], None
    with torch.no_grad():
        for encoder, encoder_ids in zip(encoders, ids):
            out = encoder(encoder_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", pooled)
    return torch.cat(hidden, dim=-1), pooled


def _diffusers_scheduler(name, sampler):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1, timestep_spacing=sampler.timestep_spacing, prediction_type="epsilon")
    if name == "DDIM":
        return DDIMScheduler(**common, set_alpha_to_one=True, clip_sample=False)
    return EulerDiscreteScheduler(**common)


def _base_pipeline(torch_models, scheduler):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(vae=torch_models["vae"], text_encoder=torch_models["text_encoder"],
                                     text_encoder_2=torch_models["text_encoder_2"], tokenizer=None,
                                     tokenizer_2=None, unet=torch_models["unet"], scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def _initial_latents(seed, batch=1):
    from sd_keras import noise

    initial, _ = noise.latent_noise(seed, batch, (8, 8, 4), 0)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(initial, np.float32).transpose(0, 3, 1, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Euler", "DDIM"])
def test_text_to_image_matches_diffusers(sdxl, name):
    xl = sdxl["xl"]
    images = xl.text_to_image(PROMPT, num_steps=STEPS, unconditional_guidance_scale=5.0, seed=11, sampler=name,
                              height=64, width=64)
    scheduler = xl._scheduler(name, STEPS)
    embeds, pooled = _reference_embeddings(xl, sdxl["base"], PROMPT)
    with torch.no_grad():
        reference = _base_pipeline(sdxl["base"], _diffusers_scheduler(name, scheduler))(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=STEPS, guidance_scale=5.0,
            latents=_initial_latents(11), height=64, width=64, output_type="np").images
    difference = np.abs(images.astype(np.float64) - reference * 255.0)
    assert reference.std() > 0.01  # an image, not a constant
    assert difference.max() <= MAX_LEVEL_DIFFERENCE, f"{name}: max difference {difference.max():.2f}/255"


@pytest.mark.slow
def test_refiner_hand_off_matches_diffusers(sdxl):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    xl, refiner = sdxl["xl"], sdxl["refiner_xl"]
    latent = xl.text_to_image(PROMPT, num_steps=STEPS, unconditional_guidance_scale=5.0, seed=5, sampler="Euler",
                              height=64, width=64, denoising_end=0.6, return_latent=True)
    scheduler = xl._scheduler("Euler", STEPS)
    embeds, pooled = _reference_embeddings(xl, sdxl["base"], PROMPT)
    with torch.no_grad():
        base_latent = _base_pipeline(sdxl["base"], _diffusers_scheduler("Euler", scheduler))(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=STEPS, guidance_scale=5.0,
            latents=_initial_latents(5), height=64, width=64, denoising_end=0.6, output_type="latent").images
    base_latent = base_latent.numpy().transpose(0, 2, 3, 1)
    scale = np.abs(base_latent).max()
    assert np.abs(latent - base_latent).max() <= 1e-3 * scale
    assert 0 < split_index(scheduler, 0.6) < STEPS  # the hand-off is inside the schedule

    images = refiner.image_to_image(PROMPT, latent, num_steps=STEPS, unconditional_guidance_scale=5.0, seed=5,
                                    sampler="Euler", denoising_start=0.6)
    embeds, pooled = _reference_embeddings(refiner, sdxl["refiner"], PROMPT)
    negative, negative_pooled = _reference_embeddings(refiner, sdxl["refiner"], "")
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=sdxl["refiner"]["vae"], text_encoder=None, text_encoder_2=sdxl["refiner"]["text_encoder_2"],
        tokenizer=None, tokenizer_2=None, unet=sdxl["refiner"]["unet"],
        scheduler=_diffusers_scheduler("Euler", scheduler), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    with torch.no_grad():
        reference = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
                         negative_pooled_prompt_embeds=negative_pooled,
                         image=torch.from_numpy(np.ascontiguousarray(latent.transpose(0, 3, 1, 2))),
                         num_inference_steps=STEPS, guidance_scale=5.0, denoising_start=0.6,
                         output_type="np").images
    difference = np.abs(images.astype(np.float64) - reference * 255.0)
    assert difference.max() <= MAX_LEVEL_DIFFERENCE, f"refiner: max difference {difference.max():.2f}/255"
    xl.text_to_image(PROMPT, num_steps=STEPS, seed=5, height=64, width=64, denoising_end=0.6)
    assert "Refiner switch at: 0.6" in xl.generation_parameters()


@pytest.mark.slow
def test_one_program_per_shape_negative_pooled_and_metadata(sdxl, tmp_path):
    from sd_keras import metadata

    xl = sdxl["xl"]
    xl.text_to_image("a cat", num_steps=2, seed=1, height=64, width=64)
    traces = xl._loop.trace_count
    images = xl.text_to_image(["a dog", "a bird"], negative_prompt="blurry", num_steps=2, seed=2, height=64,
                              width=64)
    again = xl.text_to_image(["a dog", "a bird"], num_steps=2, seed=2, height=64, width=64, batch_size=2)
    assert xl._loop.trace_count == traces + 1  # batch 2 is a new shape; the other calls reuse programs
    assert not np.array_equal(images, again)  # the negative prompt counts
    # seeds are portable: image 1 of the batch is the single generation with seed + 1
    single = xl.text_to_image("a bird", num_steps=2, seed=3, height=64, width=64)
    assert np.abs(single.astype(int) - again[1].astype(int)).max() <= 1
    # a negative prompt has its own pooled embedding; the empty one is zeros (force_zeros_for_empty_prompt)
    _, unconditional = xl._contexts(None, ["blurry"])
    _, empty = xl._contexts(None, [""])
    assert np.abs(unconditional[:, 0]).max() > 0 and not np.any(empty)
    path, = xl.save(single, str(tmp_path / "xl.png"))
    text = metadata.read_parameters(path)
    assert "Seed: 3" in text and "Model: " in text and "Size: 64x64" in text


@pytest.mark.slow
def test_inpaint_with_a_nine_channel_unet_and_image_to_image():
    from sd_keras.generator import CONCAT
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    xl = StableDiffusionXL.from_preset("tiny-xl-inpainting")
    assert xl._inpaint_mode() == CONCAT
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = xl.inpaint("a cat", image, mask, num_steps=2, seed=1, sampler="Euler a")
    assert out.shape == (1, 64, 64, 3)
    out = xl.image_to_image("a cat", image, strength=0.5, num_steps=2, seed=1, sampler="DPM++ 2M")
    assert out.shape == (1, 64, 64, 3)


@pytest.mark.slow
def test_bad_input_names_the_argument(sdxl):
    xl = sdxl["xl"]
    with pytest.raises(InputError, match="denoising_end"):
        xl.text_to_image("a cat", num_steps=2, height=64, width=64, denoising_end=1.5)
    with pytest.raises(InputError, match="original_size"):
        xl.text_to_image("a cat", num_steps=2, height=64, width=64, original_size=(64,))
    with pytest.raises(InputError, match="encoded_text"):
        xl.generate_image(np.zeros((1, 77, 192), np.float32), num_steps=2, height=64, width=64)
    with pytest.raises(InputError, match="denoising_start"):
        sdxl["refiner_xl"].image_to_image("a cat", np.zeros((1, 8, 8, 4), np.float32), denoising_start=0)
    with pytest.raises(InputError, match="latent"):
        sdxl["refiner_xl"].image_to_image("a cat", np.zeros((1, 8, 8, 3), np.float32), denoising_start=0.5)


@pytest.mark.slow
def test_server_runs_the_refiner_after_the_base(sdxl):
    import base64
    import io
    import json

    import httpx
    from PIL import Image
    from test_server import in_process_server

    from sd_keras.server.app import ServerSettings, create_app

    def loader(spec, dtype):
        return {"base-spec": sdxl["xl"], "refiner-spec": sdxl["refiner_xl"]}[spec]

    settings = ServerSettings(models={"xl": "base-spec", "xl-refiner": "refiner-spec"}, model="xl")
    body = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 5.0, "seed": 5, "sampler_name": "Euler",
            "width": 64, "height": 64, "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 0.6}
    with in_process_server(create_app(settings, loader=loader)) as url, httpx.Client(base_url=url,
                                                                                     timeout=600) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        bad = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "no-such"})
        assert bad.status_code == 422 and "refiner_checkpoint" in bad.text
        bad = client.post("/sdapi/v1/txt2img", json={**body, "refiner_switch_at": 1.5})
        assert bad.status_code == 422
    result = response.json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB"))
    assert "Refiner: xl-refiner" in json.loads(result["info"])["infotexts"][0]
    latent = sdxl["xl"].text_to_image(PROMPT, num_steps=STEPS, unconditional_guidance_scale=5.0, seed=5,
                                      sampler="Euler", height=64, width=64, denoising_end=0.6, return_latent=True)
    expected = sdxl["refiner_xl"].image_to_image(PROMPT, latent, num_steps=STEPS, unconditional_guidance_scale=5.0,
                                                 seed=5, sampler="Euler", denoising_start=0.6)[0]
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.slow
def test_generate_cli_runs_an_sdxl_model(tmp_path):
    from sd_keras import metadata
    from sd_keras.cli import main

    out = tmp_path / "xl.png"
    assert main(["generate", "-m", "tiny-xl", "-p", "a red (circle:1.2)", "--steps", "2", "-s", "4", "-o",
                 str(out)]) in (0, None)
    text = metadata.read_parameters(str(out))
    assert "Size: 64x64" in text and "Seed: 4" in text and "tiny-xl" in text  # the model's native size
    assert main(["generate", "-m", "tiny-xl", "-p", "x", "--steps", "2", "-W", "100", "-o", str(out)]) == 2
