"""SDXL models and checkpoints against diffusers: tiny random SDXL models (two encoders of different widths,
transformer depth (1, 2, 3) per level, 3 attention heads, a refiner, a 9-channel UNet) saved as diffusers folders
and as original single files load into sd_keras models that compute what diffusers computes."""

import dataclasses
import json
import os
import types

import numpy as np
import pytest
import torch

import diffusers_sdxl as dx
from sd_keras import models
from sd_keras.config_sdxl import SDXLConfig, SDXLRefinerConfig, get_sdxl_config, sdxl_config_from_dict
from sd_keras.errors import InputError
from sd_keras.models import timestep_embedding
from sd_keras.models.sdxl import build_sdxl_unet, encode_prompt_embeddings, tiny_sdxl_config
from sd_keras.weights import key_maps, sdxl_key_maps
from sd_keras.weights.sdxl import is_sdxl_checkpoint, load_sdxl_checkpoint, open_sdxl_checkpoint

RTOL = 1e-4  # max |difference| / max |reference|


def assert_close(actual, expected, rtol=RTOL, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = np.max(np.abs(expected))
    assert scale > 1e-3, what  # a reference of zeros would prove nothing
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"


def _files(kind, tmp_path_factory):
    torch_models = dx.build(kind)
    root = tmp_path_factory.mktemp(f"sdxl_{kind}")
    return {"models": torch_models, "folder": dx.save_diffusers_folder(torch_models, str(root / "diffusers")),
            "single": dx.save_original_safetensors(torch_models, str(root / f"{kind}.safetensors")), "root": root}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _files("base", tmp_path_factory)


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return _files("refiner", tmp_path_factory)


@pytest.fixture(scope="module")
def base_parts(base):
    config, weights = load_sdxl_checkpoint(base["folder"])
    return config, models.build_all(config, weights)


def _time_ids(batch, count):
    rows = [[1024.0, 768.0, 0.0, 64.0, 1023.0, 1023.0], [512.0, 512.0, 16.0, 0.0, 896.0, 1152.0]]
    if count == 5:  # refiner: original size, crop, aesthetic score
        rows = [[1024.0, 768.0, 0.0, 64.0, 6.0], [512.0, 512.0, 16.0, 0.0, 2.5]]
    return np.asarray(rows[:batch], np.float32)


def check_components(config, parts, torch_models, rtol=RTOL, vae=True):
    """Every sd_keras component against diffusers / transformers on the same inputs."""
    rng = np.random.default_rng(0)
    ids = dx.tokens(2)
    positions = np.tile(np.arange(77, dtype="int32"), (2, 1))
    hidden_1, hidden_2, pooled = dx.text_outputs(torch_models, ids)
    if parts.get("text_encoder") is not None:
        assert_close(parts["text_encoder"]({"tokens": ids.astype("int32"), "positions": positions}), hidden_1,
                     rtol, "text_encoder penultimate")
    out = parts["text_encoder_2"]({"tokens": ids.astype("int32"), "positions": positions})
    assert_close(out["hidden_states"], hidden_2, rtol, "text_encoder_2 penultimate")
    assert_close(out["pooled"], pooled, rtol, "text_encoder_2 pooled")
    encoders = [parts[name] for name in ("text_encoder", "text_encoder_2") if parts.get(name) is not None]
    context, keras_pooled = encode_prompt_embeddings(encoders, [ids.astype("int32")] * len(encoders), positions)
    reference_context = np.concatenate([h for h in (hidden_1, hidden_2) if h is not None], axis=-1)
    assert_close(context, reference_context, rtol, "context")
    latent = rng.standard_normal((2, 8, 8, config.unet.in_channels)).astype("float32")
    timesteps = np.array([3.0, 721.0], "float32")
    time_ids = _time_ids(2, config.unet.num_time_ids)
    reference = dx.unet_output(torch_models, latent, timesteps, reference_context.astype("float32"), pooled,
                               time_ids)
    actual = parts["diffusion_model"]({
        "latent": latent, "timestep_embedding": np.asarray(timestep_embedding(timesteps, config.unet.timestep_dim)),
        "context": np.asarray(context), "text_embeds": np.asarray(keras_pooled), "time_ids": time_ids})
    assert_close(actual, reference, rtol, "diffusion_model")
    if not vae:
        return
    z = rng.standard_normal((1, 8, 8, 4)).astype("float32")
    with torch.no_grad():
        decoded = torch_models["vae"].decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample.numpy()
    assert_close(parts["decoder"](z * config.vae.scaling_factor), decoded.transpose(0, 2, 3, 1), rtol, "decoder")
    image = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    with torch.no_grad():
        mean = torch_models["vae"].encode(torch.from_numpy(image.transpose(0, 3, 1, 2))).latent_dist.mean
    assert_close(parts["image_encoder"](image), (mean * 0.13025).numpy().transpose(0, 2, 3, 1), rtol,
                 "image_encoder")


def _variables(parts):
    return {(name, key): np.asarray(v) for name, model in parts.items() if model is not None
            for key, v in models.variables(model).items()}


# ------------------------------------------------------------------------------------------------ configs
def test_presets_have_the_published_shapes():
    base, refiner = get_sdxl_config("sd-xl"), get_sdxl_config("sd-xl-refiner")
    assert (base.unet.context_dim, base.unet.addition_input_dim, base.vae.scaling_factor) == (2048, 2816, 0.13025)
    assert (refiner.unet.context_dim, refiner.unet.addition_input_dim) == (1280, 2560)
    assert isinstance(refiner, SDXLRefinerConfig) and refiner.is_refiner and not base.is_refiner
    for config in (base, refiner, get_sdxl_config("sd-xl-inpainting")):
        assert sdxl_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="unet.context_dim 2048 != the text encoders' widths"):
        dataclasses.replace(base, text_encoder=dataclasses.replace(base.text_encoder, width=1024, num_heads=16))
    with pytest.raises(InputError, match="transformer_depth"):
        dataclasses.replace(base.unet, transformer_depth=(1, 2))
    with pytest.raises(InputError, match="unknown SDXL preset 'sd-xxl'"):
        get_sdxl_config("sd-xxl")


def test_unet_table_names_every_layer_the_builder_makes():
    entries = key_maps.expand_modules(sdxl_key_maps.UNET, get_sdxl_config("sd-xl").unet, "original")
    assert len({e.keras for e in entries}) == len(entries) and len({e.source for e in entries}) == len(entries)
    assert sum("transformer_block" in e.keras and e.keras.endswith("/attn1/q_proj") for e in entries) == 70
    unet = dataclasses.replace(tiny_sdxl_config().unet, block_out_channels=(64, 64, 64))  # depth (0, 2, 3)
    built = {key.rsplit("/", 1)[0] for key in models.variables(build_sdxl_unet(unet))}
    entries = key_maps.expand_modules(sdxl_key_maps.UNET, unet, "diffusers")
    assert {e.keras for e in entries if not e.optional} <= built <= {e.keras for e in entries}
    assert "mid_attn/transformer_block_2/ff_out" in built and "add_embedding_2" in built


# ------------------------------------------------------------------------------------------- diffusers
@pytest.mark.slow  # builds every component of a tiny SDXL (10-60 s on 2 cores)
def test_diffusers_folder_components_match_diffusers(base, base_parts):
    config, parts = base_parts
    assert isinstance(config, SDXLConfig)
    assert config.unet.transformer_depth == (0, 2, 3) and config.unet.attention_heads(192) == (3, 64)
    assert (config.text_encoder.width, config.text_encoder_2.width, config.text_encoder_2.projection_dim) == (
        64, 128, 96)
    assert config.pad_token_ids == (49407, 0) and config.force_zeros_for_empty_prompt
    assert config.image_size == (64, 64) and config.unet.num_time_ids == 6
    check_components(config, parts, base["models"])


@pytest.mark.slow  # builds every component of a tiny SDXL (10-60 s on 2 cores)
def test_single_file_loads_the_same_weights(base, base_parts):
    config, parts = base_parts
    single_config, weights = load_sdxl_checkpoint(base["single"])
    assert single_config.unet == config.unet and single_config.vae == config.vae
    assert single_config.text_encoder == config.text_encoder
    assert single_config.text_encoder_2 == config.text_encoder_2
    assert single_config.image_size == (1024, 1024)
    single_parts = models.build_all(single_config, weights)
    expected, actual = _variables(parts), _variables(single_parts)
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


@pytest.mark.slow  # builds every component of a tiny SDXL (10-60 s on 2 cores)
def test_refiner_folder_and_single_file(refiner):
    config, weights = load_sdxl_checkpoint(refiner["folder"])
    assert isinstance(config, SDXLRefinerConfig) and config.text_encoder is None
    assert config.unet.num_time_ids == 5 and config.pad_token_ids == (0,)
    assert not config.force_zeros_for_empty_prompt
    with weights:
        parts = {name: models.build(name, config, weights=weights[name])
                 for name in ("text_encoder_2", "diffusion_model")}
    assert "text_encoder" not in weights
    check_components(config, parts, refiner["models"], vae=False)
    with open_sdxl_checkpoint(refiner["single"]) as single:
        assert single.config.unet == config.unet and isinstance(single.config, SDXLRefinerConfig)
        assert single.components == ["text_encoder_2", "diffusion_model", "decoder", "image_encoder"]
        encoder = single.build("text_encoder_2")
    for key, value in _variables({"text_encoder_2": encoder}).items():
        np.testing.assert_array_equal(value, _variables(parts)[key], err_msg=str(key))


@pytest.mark.slow  # builds every component of a tiny SDXL (10-60 s on 2 cores)
def test_inpainting_unet_has_nine_input_channels(tmp_path):
    torch_models = dx.build("inpaint", seed=3)
    folder = dx.save_diffusers_folder(torch_models, str(tmp_path / "inpaint"))
    config, weights = load_sdxl_checkpoint(folder)
    assert config.unet.in_channels == 9
    with weights:
        unet = models.build("diffusion_model", config, weights=weights["diffusion_model"])
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((2, 8, 8, 9)).astype("float32")
    context = rng.standard_normal((2, 77, 192)).astype("float32")
    pooled = rng.standard_normal((2, 96)).astype("float32")
    timesteps = np.array([999.0, 1.0], "float32")
    reference = dx.unet_output(torch_models, latent, timesteps, context, pooled, _time_ids(2, 6))
    actual = unet({"latent": latent, "timestep_embedding": np.asarray(timestep_embedding(timesteps, 64)),
                   "context": context, "text_embeds": pooled, "time_ids": _time_ids(2, 6)})
    assert_close(actual, reference, what="9-channel diffusion_model")


@pytest.mark.slow  # builds every component of a tiny SDXL (10-60 s on 2 cores)
def test_fp16_variant_folder(tmp_path, base, base_parts):
    folder = dx.save_diffusers_folder(base["models"], str(tmp_path / "fp16"), variant="fp16")
    assert os.path.exists(os.path.join(folder, "unet", "diffusion_pytorch_model.fp16.safetensors"))
    config, weights = load_sdxl_checkpoint(folder)
    assert config == dataclasses.replace(base_parts[0], name="fp16")
    with weights:
        parts = {name: models.build(name, config, weights=weights[name]) for name in ("text_encoder_2", "decoder")}
    loaded = _variables(parts)
    assert len(loaded) == 53 + len(models.variables(base_parts[1]["decoder"]))
    for key, value in loaded.items():
        expected = _variables({key[0]: base_parts[1][key[0]]})[key]
        np.testing.assert_array_equal(value, expected.astype(np.float16).astype(np.float32), err_msg=str(key))


def test_is_sdxl_checkpoint(base, tmp_path):
    assert is_sdxl_checkpoint(base["folder"]) and is_sdxl_checkpoint(base["single"])
    from safetensors.numpy import save_file

    path = str(tmp_path / "sd.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 3, 3), np.float32)}, path)
    assert not is_sdxl_checkpoint(path)


def _plan_arrays(checkpoint):
    """Every tensor each plan would assign, keyed by (component, Keras variable), read with numpy only."""
    arrays = {}
    for name, plan in checkpoint.plans.items():
        for entry in plan.entries:
            if entry.optional and entry.source not in plan.source:
                continue
            value = np.asarray(plan.source.read(entry.source), np.float32)
            target = (None,) * (2 if entry.transform in "qkv" and value.ndim == 2 else value.ndim)
            arrays[(name, entry.keras)] = np.squeeze(key_maps.TRANSFORMS[entry.transform](value, target))
    return arrays


def test_single_file_and_folder_give_the_same_tensors(base):
    """The original-layout tables (fused OpenCLIP q/k/v, transposed text_projection, label_emb, depth-3
    transformer stacks) put every tensor where the diffusers-layout tables put it."""
    with open_sdxl_checkpoint(base["folder"]) as folder, open_sdxl_checkpoint(base["single"]) as single:
        assert single.config.unet == folder.config.unet and single.config.encoders == folder.config.encoders
        assert single.components == folder.components
        expected, actual = _plan_arrays(folder), _plan_arrays(single)
    assert set(actual) == set(expected) and len(actual) > 800
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


@pytest.mark.slow  # 3-8 s
def test_text_encoders_match_transformers(base):
    """Penultimate hidden states of both encoders and the pooled, projected output."""
    config, weights = load_sdxl_checkpoint(base["folder"])
    with weights:
        parts = {name: models.build(name, config, weights=weights[name])
                 for name in ("text_encoder", "text_encoder_2")}
    ids = dx.tokens(2, seed=5, pad=0)  # padded with "!" (0), as SDXL's second tokenizer pads
    positions = np.tile(np.arange(77, dtype="int32"), (2, 1))
    hidden_1, hidden_2, pooled = dx.text_outputs(base["models"], ids)
    assert_close(parts["text_encoder"]({"tokens": ids.astype("int32"), "positions": positions}), hidden_1)
    out = parts["text_encoder_2"]({"tokens": ids.astype("int32"), "positions": positions})
    assert_close(out["hidden_states"], hidden_2)
    assert_close(out["pooled"], pooled)


def test_a_separate_vae_replaces_the_checkpoints(base, tmp_path):
    """vae=: a diffusers VAE folder or a VAE file in the original names (as sdxl-vae-fp16-fix ships them)."""
    from safetensors.torch import save_file

    other = dx.build_vae(torch.Generator().manual_seed(11))
    folder = str(tmp_path / "vae")
    other.save_pretrained(folder)
    original = {dx._vae_key(k, 4): (v[:, :, None, None] if ".attentions." in k and v.ndim == 2 else v)
                for k, v in other.state_dict().items()}
    single = str(tmp_path / "sdxl_vae.safetensors")
    save_file({k: v.contiguous() for k, v in original.items()}, single)
    with open_sdxl_checkpoint(base["folder"]) as plain:
        unchanged = _plan_arrays(plain)
    reference = None
    for vae in (folder, single):
        config, weights = load_sdxl_checkpoint(base["folder"], vae=vae)
        with weights:
            arrays = _plan_arrays(types.SimpleNamespace(plans=dict(weights)))
        assert config.vae.scaling_factor == 0.13025
        decoder = {k: v for k, v in arrays.items() if k[0] in ("decoder", "image_encoder")}
        assert len(decoder) > 100
        np.testing.assert_array_equal(decoder[("decoder", "conv_in/kernel")],
                                      np.squeeze(other.decoder.conv_in.weight.detach().numpy().transpose(2, 3, 1, 0)))
        assert not np.array_equal(decoder[("decoder", "conv_in/kernel")], unchanged[("decoder", "conv_in/kernel")])
        np.testing.assert_array_equal(arrays[("diffusion_model", "conv_in/kernel")],
                                      unchanged[("diffusion_model", "conv_in/kernel")])
        if reference is not None:
            for key, value in reference.items():
                np.testing.assert_array_equal(decoder[key], value, err_msg=str(key))
        reference = decoder
    with pytest.raises(InputError, match="no such VAE file or folder"):
        load_sdxl_checkpoint(base["folder"], vae=str(tmp_path / "missing.safetensors"))


# ---------------------------------------------------------------------------------------------- key accounting
def _rewrite(source, path, change):
    from safetensors.torch import load_file, save_file

    state = load_file(source)
    change(state)
    save_file(state, path)
    return path


def test_unknown_and_missing_tensors_are_named(base, tmp_path):
    extra = _rewrite(base["single"], str(tmp_path / "extra.safetensors"), lambda s: s.update(
        {"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.lora_up.weight": torch.zeros(1)}))
    with pytest.raises(InputError, match=r"1 tensor\(s\) sd_keras does not know.*lora_up"):
        open_sdxl_checkpoint(extra)
    missing = _rewrite(base["single"], str(tmp_path / "missing.safetensors"), lambda s: s.pop(
        "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_fc.bias"))
    with pytest.raises(InputError, match=r"text_encoder_2 is missing 1 tensor.*resblocks\.1\.mlp\.c_fc\.bias"):
        open_sdxl_checkpoint(missing)
    stray = _rewrite(base["single"], str(tmp_path / "stray.safetensors"), lambda s: s.update(
        {"conditioner.embedders.2.emb.weight": torch.zeros(1)}))
    with pytest.raises(InputError, match=r"belong to no SDXL component.*embedders\.2\.emb\.weight"):
        open_sdxl_checkpoint(stray)
    no_vae = _rewrite(base["single"], str(tmp_path / "no_vae.safetensors"), lambda s: [
        s.pop(k) for k in list(s) if k.startswith("first_stage_model.")])
    with pytest.raises(InputError, match=r"without VAE \(first_stage_model"):
        open_sdxl_checkpoint(no_vae)


def test_bad_diffusers_configs_are_named(base, tmp_path):
    import shutil

    folder = str(tmp_path / "bad")
    shutil.copytree(base["folder"], folder)
    path = os.path.join(folder, "unet", "config.json")
    with open(path) as f:
        config = json.load(f)
    config["projection_class_embeddings_input_dim"] += 3
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(InputError, match=r"unet/config.json: unet projection_class_embeddings_input_dim 147"):
        open_sdxl_checkpoint(folder)
    config["projection_class_embeddings_input_dim"] -= 3
    config["addition_embed_type"] = "text"
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(InputError, match="addition_embed_type='text'"):
        open_sdxl_checkpoint(folder)


# ------------------------------------------------------------------------------------------------------ LoRA
@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """A base model with a random PEFT LoRA (UNet incl. add_embedding, both encoders) in diffusers' and kohya's
    files, and the torch models with the LoRA active (what diffusers computes once it is fused)."""
    torch_models = dx.build("base", seed=7)
    root = tmp_path_factory.mktemp("sdxl_lora")
    folder = dx.save_diffusers_folder(torch_models, str(root / "diffusers"))
    states = dx.add_peft_lora(torch_models, rank=4, alpha=6.0)
    return {"models": torch_models, "folder": folder,
            "peft": dx.save_peft_lora(states, str(root / "peft"), rank=4, alpha=6.0),
            "kohya": dx.save_kohya_lora(states, torch_models["unet"].config, str(root / "kohya.safetensors"),
                                        alpha=6.0)}


@pytest.mark.slow  # its fixture builds and saves a tiny SDXL with a LoRA (about 10 s)
def test_sdxl_lora_files_name_every_module(lora_files):
    """kohya (lora_te1_/lora_te2_, sgm UNet names) and PEFT files resolve to sd_keras layers."""
    from sd_keras.weights.lora import _module_index, read_lora

    with open_sdxl_checkpoint(lora_files["folder"]) as checkpoint:
        config = checkpoint.config
    for kind in ("kohya", "peft"):
        lora = read_lora(lora_files[kind])
        assert lora.components == ["text_encoder", "text_encoder_2", "diffusion_model"]
        for component in lora.components:
            index = _module_index(component, config)
            targets = [index[naming].get(module) for naming, module in lora.pairs[component]]
            assert None not in targets, (kind, component)
        unused = [m for (n, m) in lora.pairs["text_encoder"] if "layers_2_" in m or "layers.2." in m]
        assert len(unused) == 6  # the last CLIP ViT-L layer: named by the file, not used by SDXL
        assert any("label_emb_0_0" in m or "add_embedding.linear_1" in m for _, m in lora.pairs["diffusion_model"])


@pytest.mark.slow  # builds a tiny SDXL twice (about 30 s)
@pytest.mark.parametrize("kind", ["kohya", "peft"])
def test_sdxl_lora_matches_diffusers_with_the_lora_fused(lora_files, kind):
    config, weights = load_sdxl_checkpoint(lora_files["folder"], loras=[(lora_files[kind], 1.0)])
    with weights:
        parts = {name: models.build(name, config, weights=weights[name])
                 for name in ("text_encoder", "text_encoder_2", "diffusion_model")}
    check_components(config, parts, lora_files["models"], vae=False)


@pytest.mark.slow
def test_apply_and_remove_sdxl_lora(lora_files):
    """apply_lora / remove_lora on a model set with two text encoders: applied = loaded with the LoRA, removed =
    the original weights bit for bit."""
    import types

    from sd_keras.weights.lora import apply_lora, remove_lora

    config, weights = load_sdxl_checkpoint(lora_files["folder"])
    with weights:
        parts = {name: models.build(name, config, weights=weights[name])
                 for name in ("text_encoder", "text_encoder_2", "diffusion_model")}
    holder = types.SimpleNamespace(config=config, **parts)
    before = _variables(parts)
    applied = apply_lora(holder, lora_files["kohya"], 1.0)
    check_components(config, parts, lora_files["models"], vae=False)
    refiner = types.SimpleNamespace(config=tiny_sdxl_config(refiner=True), text_encoder=None,
                                    text_encoder_2=parts["text_encoder_2"], diffusion_model=None)
    with pytest.raises(InputError if issubclass(InputError, ValueError) else ValueError,
                       match="has text_encoder weights and this model has no text_encoder"):
        apply_lora(refiner, lora_files["kohya"], 1.0)
    remove_lora(holder, applied)
    for key, value in _variables(parts).items():
        np.testing.assert_array_equal(value, before[key], err_msg=str(key))


# --------------------------------------------------------------------------------------------------- presets
def test_preset_files_are_pinned_official_files():
    from sd_keras.weights import sdxl_presets

    for name, filename, repo in (("sd-xl", "sd_xl_base_1.0.safetensors", "stable-diffusion-xl-base-1.0"),
                                 ("sd-xl-refiner", "sd_xl_refiner_1.0.safetensors",
                                  "stable-diffusion-xl-refiner-1.0")):
        (remote,) = sdxl_presets.preset_files(name)
        assert remote.name == filename and len(remote.sha256) == 64 and int(remote.sha256, 16)
        assert remote.url.startswith(f"https://huggingface.co/stabilityai/{repo}/resolve/")
        assert remote.url.endswith("/" + filename) and "/main/" not in remote.url  # a pinned revision
    with pytest.raises(InputError, match="unknown SDXL preset 'sd-xl-turbo'"):
        sdxl_presets.preset_files("sd-xl-turbo")


def test_preset_load_checks_sha256_and_architecture(base, tmp_path, monkeypatch):
    """A cached file loads after its sha256 check; one of another architecture under the preset's name is refused;
    a file whose sha256 differs is refused."""
    import shutil

    from sd_keras.weights import download, sdxl_presets

    monkeypatch.setenv("SD_KERAS_CACHE", str(tmp_path))
    os.makedirs(tmp_path / "sd-xl")
    shutil.copy(base["single"], tmp_path / "sd-xl" / "sd_xl_base_1.0.safetensors")
    assert sdxl_presets.cached("sd-xl") and not sdxl_presets.cached("sd-xl-refiner")
    with pytest.raises(download.HashMismatchError):
        sdxl_presets.load("sd-xl", progress=False)
    tiny = download.RemoteFile("sd_xl_base_1.0.safetensors", "https://example.invalid/x",
                               download.sha256_of(base["single"]))
    monkeypatch.setitem(sdxl_presets.SDXL_WEIGHTS, "sd-xl", tiny)
    shutil.copy(base["single"], tmp_path / "sd-xl" / "sd_xl_base_1.0.safetensors")
    with pytest.raises(InputError, match="its architecture is not the sd-xl preset's"):
        sdxl_presets.load("sd-xl", progress=False)


# ------------------------------------------------------------------------------------ the loaders' entry point
def test_checkpoint_entry_point_detects_sdxl(base):
    """open_checkpoint / load_checkpoint read SDXL instead of refusing it; StableDiffusion (SD 1.x / 2.x
    generation) refuses an SDXL model before building anything."""
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.weights.checkpoints import load_checkpoint, open_checkpoint

    with open_checkpoint(base["single"]) as checkpoint:
        assert isinstance(checkpoint.config, SDXLConfig) and "text_encoder_2" in checkpoint.components
    config, weights = load_checkpoint(base["folder"])
    with weights:
        assert isinstance(config, SDXLConfig) and set(weights) == {"text_encoder", "text_encoder_2",
                                                                    "diffusion_model", "decoder", "image_encoder"}
    with pytest.raises(InputError, match="ema=True / --ema: an SDXL checkpoint"):
        open_checkpoint(base["single"], ema=True)
    with pytest.raises(InputError, match="an sdxl model: StableDiffusion generates with SD 1.x / 2.x"):
        StableDiffusion.from_checkpoint(base["folder"])


@pytest.mark.slow  # builds every component twice
def test_convert_writes_a_saved_sdxl_folder(base, base_parts, tmp_path):
    from sd_keras.weights import saved
    from sd_keras.weights.checkpoints import convert_checkpoint

    out = convert_checkpoint(base["folder"], str(tmp_path / "xl"))
    config, weights = saved.load(out)
    assert config == base_parts[0]
    parts = models.build_all(config, weights)
    expected = _variables(base_parts[1])
    for key, value in _variables(parts).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
    assert set(_variables(parts)) == set(expected)
