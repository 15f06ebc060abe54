"""``<lora:name:weight>`` prompt tags on SDXL (``StableDiffusionXL``), as on SD 1.x: a tag at weight w gives the
image of the LoRA merged at w (``apply_lora``, and the LoRA fused while the checkpoint loads), in the Python API,
the CLI and the server; an unknown name or a LoRA of the other family is a clear error."""

import numpy as np
import pytest

from sd_keras.errors import InputError
from sd_keras.prompts import sync_prompt_loras

GENERATE = dict(num_steps=2, unconditional_guidance_scale=5.0, seed=3, sampler="Euler", height=64, width=64)


def _random_kohya_lora(model, path, prefixes, seed=0):
    """A kohya LoRA (rank 2, alpha 2) on the attention projections that ``model`` has, written from the module
    names sd_keras maps; ``prefixes``: {component: kohya prefix}."""
    import safetensors.numpy

    from sd_keras.weights.lora import _module_index, _variables

    rng = np.random.default_rng(seed)
    tensors = {}
    for component, prefix in prefixes.items():
        variables = _variables(getattr(model, component))
        for module, target in _module_index(component, model.config)["kohya"].items():
            layer, is_conv = target
            if is_conv or f"{layer}/kernel" not in variables or not module.endswith(("q_proj", "v_proj", "to_q",
                                                                                     "to_v")):
                continue
            fan_in, fan_out = variables[f"{layer}/kernel"].shape
            tensors[f"{prefix}{module}.lora_down.weight"] = rng.normal(0, 1 / np.sqrt(fan_in), (2, fan_in))
            tensors[f"{prefix}{module}.lora_up.weight"] = rng.normal(0, 0.5, (fan_out, 2))
            tensors[f"{prefix}{module}.alpha"] = np.array(2.0)
    safetensors.numpy.save_file({k: v.astype(np.float32) for k, v in tensors.items()}, path)
    return path


@pytest.fixture(scope="module")
def xl():
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    return StableDiffusionXL.from_preset("tiny-xl")


@pytest.fixture(scope="module")
def lora_dir(xl, tmp_path_factory, tiny_sd):
    """``style.safetensors``: a kohya SDXL LoRA (``lora_te1_``, ``lora_te2_``, ``lora_unet_``) of ``tiny-xl``;
    ``sd1.safetensors``: a kohya SD 1.x LoRA (``lora_te_``, ``lora_unet_``) of the ``tiny`` SD model."""
    folder = tmp_path_factory.mktemp("xl_loras")
    _random_kohya_lora(xl, str(folder / "style.safetensors"),
                       {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "diffusion_model": "lora_unet_"})
    _random_kohya_lora(tiny_sd, str(folder / "sd1.safetensors"),
                       {"text_encoder": "lora_te_", "diffusion_model": "lora_unet_"}, seed=1)
    return folder


@pytest.fixture
def a1111(xl, lora_dir):
    xl.prompt_syntax, xl.lora_dir = "a1111", str(lora_dir)
    yield xl
    sync_prompt_loras(xl, [])
    xl.prompt_syntax, xl.lora_dir = None, None


@pytest.mark.slow  # builds tiny-xl and compiles its loop (about 15 s)
def test_sdxl_lora_tag_is_the_lora_merged_at_its_weight(a1111, lora_dir):
    from sd_keras.weights.lora import apply_lora

    xl = a1111
    plain = xl.text_to_image("a red circle", **GENERATE)
    tagged = xl.text_to_image("a red circle <lora:style:0.7>", **GENERATE)
    assert np.abs(tagged.astype(int) - plain).max() > 10  # the LoRA changes the image
    assert [(lora.path, lora.scale) for lora in xl._prompt_loras] == [(str(lora_dir / "style.safetensors"), 0.7)]
    np.testing.assert_array_equal(xl.text_to_image("a red circle", **GENERATE), plain)  # taken out exactly
    applied = apply_lora(xl, str(lora_dir / "style.safetensors"), 0.7)  # what --lora style.safetensors:0.7 does
    try:
        np.testing.assert_array_equal(xl.text_to_image("a red circle", **GENERATE), tagged)
    finally:
        applied.remove()
    half = xl.text_to_image("a red circle <lora:style:0.35>", **GENERATE)  # the weight is the merge scale
    assert np.abs(half.astype(int) - tagged).max() > 0 and np.abs(half.astype(int) - plain).max() > 0


@pytest.mark.slow  # builds tiny-xl
def test_sdxl_lora_tag_errors_name_the_cause(a1111, xl):
    with pytest.raises(InputError, match=r"<lora:nope>: no nope\{.safetensors,.ckpt,.pt\} in the LoRA folder "
                                         r".* \(it holds sd1, style\)"):
        xl.text_to_image("a cat <lora:nope>", **GENERATE)
    with pytest.raises(InputError, match=r"prompt: <lora:sd1:0.5> \(sd1.safetensors\) does not fit this "
                                         r"StableDiffusionXL model: .*a LoRA for another architecture"):
        xl.text_to_image("a cat <lora:sd1:0.5>", **GENERATE)
    assert xl._prompt_loras == ()  # nothing was merged
    sync_prompt_loras(xl, [])
    xl.prompt_syntax, xl.lora_dir = None, None
    with pytest.raises(InputError, match=r"<lora:style> needs a LoRA folder \(lora_dir="):
        xl.prompt_syntax = "a1111"
        xl.text_to_image("a cat <lora:style>", **GENERATE)


@pytest.mark.slow  # builds tiny-xl and the tiny SD model
def test_sd1_model_refuses_an_sdxl_lora_tag(tiny_sd, lora_dir):
    tiny_sd.prompt_syntax, tiny_sd.lora_dir = "a1111", str(lora_dir)
    try:
        with pytest.raises(InputError, match=r"prompt: <lora:style:1> \(style.safetensors\) does not fit this "
                                             r"StableDiffusion model: .*text_encoder_2"):
            tiny_sd.text_to_image("a cat <lora:style>", num_steps=1, height=64, width=64)
    finally:
        sync_prompt_loras(tiny_sd, [])
        tiny_sd.prompt_syntax, tiny_sd.lora_dir = None, None


@pytest.mark.slow  # the CLI builds tiny-xl again
def test_cli_sdxl_lora_tag(a1111, lora_dir, tmp_path, capsys):
    from PIL import Image

    from sd_keras import cli

    common = ["generate", "-m", "tiny-xl", "--steps", "2", "--cfg-scale", "5", "--sampling-method", "Euler",
              "-W", "64", "-H", "64", "-s", "3", "--no-progress", "--lora-dir", str(lora_dir)]
    assert cli.main([*common, "-p", "a cat <lora:sd1>", "-o", str(tmp_path / "x.png")]) == 2
    assert "does not fit this StableDiffusionXL model" in capsys.readouterr().err
    prompt = "a (cat:1.2) <lora:style:0.7>"
    assert cli.main([*common, "-p", prompt, "-o", str(tmp_path / "a.png")]) == 0
    written = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    expected = a1111.text_to_image(prompt, **GENERATE)[0]
    assert np.abs(written.astype(int) - expected).max() <= 1


@pytest.mark.slow  # a server with its worker thread
def test_server_sdxl_lora_tag(a1111, lora_dir):
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sd_keras.server.app import ServerSettings, create_app

    settings = ServerSettings(models={"xl": "tiny-xl"}, model="xl", lora_dir=str(lora_dir))
    body = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 5.0, "seed": 3}
    prompt = "a (cat:1.2) <lora:style:0.7>"
    with TestClient(create_app(settings, loader=lambda spec, dtype: a1111)) as client:
        refused = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a cat <lora:sd1:0.5>"})
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "does not fit this StableDiffusionXL model" in detail and str(lora_dir) not in detail
        answer = client.post("/sdapi/v1/txt2img", json={**body, "prompt": prompt})
        assert answer.status_code == 200, answer.text
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
    expected = a1111.text_to_image(prompt, **GENERATE)[0]
    assert np.abs(served.astype(int) - expected).max() <= 1


@pytest.mark.slow  # a server with its worker thread, and the tiny refiner
def test_server_refiner_reads_the_prompt_without_lora_tags(a1111, lora_dir):
    """The tag's LoRA is the base model's: the refiner (no CLIP ViT-L, other UNet) continues without it."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sd_keras.pipeline_sdxl import StableDiffusionXL
    from sd_keras.server.app import ServerSettings, create_app

    refiner = StableDiffusionXL.from_preset("tiny-xl-refiner")
    settings = ServerSettings(models={"xl": "tiny-xl", "xl-refiner": "tiny-xl-refiner"}, model="xl",
                              lora_dir=str(lora_dir))
    body = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 5.0, "seed": 3,
            "prompt": "a cat <lora:style:0.7>", "refiner_checkpoint": "xl-refiner", "refiner_switch_at": 0.5}
    loader = {"tiny-xl": a1111, "tiny-xl-refiner": refiner}
    with TestClient(create_app(settings, loader=lambda spec, dtype: loader[spec])) as client:
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
    assert refiner.prompt_syntax == "a1111" and getattr(refiner, "_prompt_loras", ()) == ()
    options = dict(GENERATE, height=None, width=None)
    latent = a1111.text_to_image("a cat <lora:style:0.7>", denoising_end=0.5, return_latent=True, **GENERATE)
    expected = refiner.image_to_image("a cat ", latent, denoising_start=0.5, **options)[0]
    assert np.abs(served.astype(int) - expected).max() <= 1


# ------------------------------------------------- against the LoRA fused while a diffusers SDXL folder loads
@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A tiny diffusers SDXL folder (CLIP's vocabulary) and a random LoRA of it in kohya's and PEFT's files."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    import shutil

    import diffusers_sdxl as dx

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dx, "VOCAB", 49408)
        models = dx.build("base", seed=7)
    root = tmp_path_factory.mktemp("xl_fused")
    folder = dx.save_diffusers_folder(models, str(root / "model"))
    states = dx.add_peft_lora(models, rank=4, alpha=6.0)
    loras = root / "loras"
    loras.mkdir()
    dx.save_kohya_lora(states, models["unet"].config, str(loras / "kohya_style.safetensors"), alpha=6.0)
    shutil.copy(dx.save_peft_lora(states, str(root / "peft"), rank=4, alpha=6.0), loras / "peft_style.safetensors")
    return {"folder": folder, "loras": loras}


@pytest.mark.slow  # builds a tiny diffusers SDXL and loads it three times (about 40 s)
def test_sdxl_lora_tag_matches_the_lora_fused_at_load(fused):
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    tagged = StableDiffusionXL.from_checkpoint(fused["folder"])
    tagged.prompt_syntax, tagged.lora_dir = "a1111", str(fused["loras"])
    plain = tagged.text_to_image("a red circle", **GENERATE)
    for name in ("kohya_style", "peft_style"):
        image = tagged.text_to_image(f"a red circle <lora:{name}:0.6>", **GENERATE)
        assert np.abs(image.astype(int) - plain).max() > 10, name
        loaded = StableDiffusionXL.from_checkpoint(fused["folder"],
                                                   loras=[(str(fused["loras"] / f"{name}.safetensors"), 0.6)])
        expected = loaded.text_to_image("a red circle", **GENERATE)
        assert np.abs(image.astype(int) - expected).max() <= 1, name
