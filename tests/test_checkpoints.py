"""Checkpoint loading against diffusers: tiny random diffusers models saved as a diffusers folder and as original
single files (.safetensors, .ckpt) load into sd_keras models that compute what diffusers computes."""

import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import diffusers_models as dm
import sd_keras
from sd_keras import cli, models
from sd_keras.errors import InputError
from sd_keras.models import timestep_embedding
from sd_keras.pipeline import StableDiffusion
from sd_keras.weights import key_maps, saved
from sd_keras.weights.checkpoints import SafetensorsFile, dotted_unet_name, open_checkpoint, printing_notes
from sd_keras.weights.pickle_reader import CheckpointFormatError, TorchCheckpoint, UnsafeCheckpointError

ATOL = 1e-4  # float32 parity with diffusers (observed differences are a few 1e-6)


def _files(kind, tmp_path_factory):
    models = dm.build(kind)
    root = tmp_path_factory.mktemp(kind)
    return {"models": models, "folder": dm.save_diffusers_folder(models, str(root / "diffusers")),
            "safetensors": dm.save_original_safetensors(models, str(root / f"{kind}.safetensors")),
            "ckpt": dm.save_original_ckpt(models, str(root / f"{kind}.ckpt")), "root": root}


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return _files("sd1", tmp_path_factory)


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    return _files("sd2", tmp_path_factory)


@pytest.fixture(scope="module")
def inpaint(tmp_path_factory):
    return _files("inpaint", tmp_path_factory)


def component_outputs(sd, seed=0):
    """Outputs of the four sd_keras models and the diffusers reference on the same random inputs."""
    rng = np.random.default_rng(seed)
    config = sd.config
    tokens = rng.integers(0, config.text_encoder.vocab_size, (2, 77)).astype("int32")
    positions = np.tile(np.arange(77, dtype="int32"), (2, 1))
    latent = rng.standard_normal((2, 8, 8, config.unet.in_channels)).astype("float32")
    timesteps = np.array([3.0, 721.0], "float32")
    context = rng.standard_normal((2, 77, config.unet.context_dim)).astype("float32")
    z = rng.standard_normal((1, 8, 8, 4)).astype("float32")
    image = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    embedding = np.asarray(timestep_embedding(timesteps, config.unet.timestep_dim))
    return {
        "text_encoder": np.asarray(sd.text_encoder({"tokens": tokens, "positions": positions})),
        "diffusion_model": np.asarray(sd.diffusion_model({"latent": latent, "timestep_embedding": embedding,
                                                          "context": context})),
        # sd_keras's decoder divides by the scaling factor first, diffusers' vae.decode does not
        "decoder": np.asarray(sd.decoder(z * config.vae.scaling_factor)),
        "image_encoder": np.asarray(sd.image_encoder(image)),
    }, {"tokens": tokens, "latent": latent, "timesteps": timesteps, "context": context, "z": z, "image": image}


def reference_outputs(models, inputs):
    return {
        "text_encoder": dm.text_output(models, inputs["tokens"]),
        "diffusion_model": dm.unet_output(models, inputs["latent"], inputs["timesteps"], inputs["context"]),
        "decoder": dm.decoder_output(models, inputs["z"]),
        "image_encoder": dm.encoder_output(models, inputs["image"]),
    }


def assert_parity(sd, models, components=None):
    ours, inputs = component_outputs(sd)
    theirs = reference_outputs(models, inputs)
    for component in components or ours:
        assert ours[component].shape == theirs[component].shape, component
        assert np.abs(theirs[component]).max() > 0.1, component  # a meaningful signal, not all zeros
        np.testing.assert_allclose(ours[component], theirs[component], atol=ATOL, rtol=0, err_msg=component)


# ---------------------------------------------------------------------------------------------- parity
def test_timestep_embedding_matches_diffusers_unet():
    from diffusers.models.embeddings import get_timestep_embedding

    timesteps = torch.tensor([0.0, 1.0, 500.0, 999.0])
    theirs = get_timestep_embedding(timesteps, 320, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    # same formula ([cos, sin], frequencies exp(-ln(10000) k / half)); float32 rounding of t * frequency
    # (t up to 999) alone leaves differences of about t * 6e-8
    np.testing.assert_allclose(np.asarray(timestep_embedding(timesteps.numpy(), 320)), theirs, atol=1e-4)


def test_sd1_diffusers_folder(sd1):
    sd = StableDiffusion.from_checkpoint(sd1["folder"])
    config = sd.config
    assert config.pad_token_id == 49407 and config.prediction_type == "epsilon"
    assert config.image_size == (64, 64)  # unet sample_size 8 x the VAE's 8x
    assert config.unet.num_heads == 8 and not config.unet.linear_proj
    assert config.unet.attention_levels == (True, False) and config.unet.context_dim == 128
    assert not config.unet.gelu_approximate and config.unet.transformer_norm_eps == 1e-6
    assert config.vae.norm_eps == 1e-6 and config.text_encoder.activation == "quick_gelu"
    assert_parity(sd, sd1["models"])


def assert_same_weights(a, b):
    import dataclasses

    assert dataclasses.replace(a.config, name="") == dataclasses.replace(b.config, name="")  # names follow paths
    for component in ("text_encoder", "diffusion_model", "decoder", "image_encoder"):
        ours, theirs = saved.model_tensors(getattr(a, component)), saved.model_tensors(getattr(b, component))
        assert ours.keys() == theirs.keys(), component
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{component}/{key}")


def test_sd1_single_file(sd1):
    sd = StableDiffusion.from_checkpoint(sd1["safetensors"])
    assert sd.config.image_size == (512, 512) and sd.config.pad_token_id == 49407
    assert sd.config.text_encoder.num_layers == 2 and sd.config.text_encoder.num_heads == 2
    assert_parity(sd, sd1["models"])
    # the training-style .ckpt (state_dict + global_step + epoch) holds the same tensors
    assert_same_weights(StableDiffusion.from_checkpoint(sd1["ckpt"]), sd)


def test_load_checkpoint_returns_the_config_and_weights_that_fill_the_registry_s_models(sd1, monkeypatch):
    from sd_keras.weights import checkpoints

    closed = []
    close = checkpoints.Checkpoint.close
    monkeypatch.setattr(checkpoints.Checkpoint, "close", lambda self: (closed.append(self.path), close(self)))
    config, weights = checkpoints.load_checkpoint(sd1["ckpt"])
    assert config.unet.context_dim == 128 and list(weights) == list(models.COMPONENTS)
    assert weights.source == sd1["ckpt"] and any("prediction type epsilon" in note for _, note in weights.notes)
    assert not closed
    parts = models.build_all(config, weights, dtype="mixed_bfloat16")
    assert closed == [sd1["ckpt"]]  # the files are released once every model is filled
    assert models.built_with(parts["diffusion_model"], "mixed_bfloat16")
    expected = StableDiffusion.from_checkpoint(sd1["ckpt"])
    for name, model in parts.items():
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), getattr(expected, name).get_weights()))


def test_sd2_diffusers_folder(sd2):
    sd = StableDiffusion.from_checkpoint(sd2["folder"])
    config = sd.config
    assert config.pad_token_id == 0  # tokenizer/special_tokens_map.json pads with "!"
    assert config.prediction_type == "v_prediction"  # scheduler/scheduler_config.json
    assert config.unet.head_size == 64 and config.unet.num_heads is None and config.unet.linear_proj
    assert config.unet.layers_per_block == 2 and config.text_encoder.activation == "gelu"
    assert_parity(sd, sd2["models"])


@pytest.mark.slow
def test_sd2_single_file_open_clip(sd2):
    sd = StableDiffusion.from_checkpoint(sd2["safetensors"])
    config = sd.config
    # the file holds 4 OpenCLIP layers; SD 2 conditions on the penultimate one
    assert config.text_encoder.num_layers == 3 and config.text_encoder.activation == "gelu"
    assert config.pad_token_id == 0 and config.prediction_type == "epsilon" and config.image_size == (512, 512)
    assert config.unet.head_size == 64 and config.unet.linear_proj
    assert_parity(sd, sd2["models"])
    assert_same_weights(StableDiffusion.from_checkpoint(sd2["ckpt"]), sd)


def test_sd2_single_file_v_prediction_argument(sd2):
    with open_checkpoint(sd2["safetensors"], prediction_type="v_prediction") as checkpoint:
        assert checkpoint.config.prediction_type == "v_prediction"
        assert checkpoint.config.image_size == (768, 768)  # the SD 2.x 768-v models
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        open_checkpoint(sd2["safetensors"], prediction_type="sample")


@pytest.mark.slow
def test_sd2_file_written_by_diffusers_conversion_script(sd2, tmp_path):
    """diffusers' convert_diffusers_to_original_stable_diffusion.py writes only the text encoder's layers (23 for
    SD 2) and no text_projection: every layer is used, unlike Stability's files (one more, unused layer)."""
    models = sd2["models"]
    path = dm.save_original_safetensors(models, str(tmp_path / "converted.safetensors"), open_clip="diffusers_script")
    ckpt = dm.save_original_ckpt(models, str(tmp_path / "converted.ckpt"), global_step=None,
                                 open_clip="diffusers_script", with_junk=False)
    with open_checkpoint(path) as checkpoint:
        notes = " ".join(note for _, note in checkpoint.notes)
    assert "3 of the file's 3 layers" in notes and "no text_projection" in notes
    with open_checkpoint(sd2["safetensors"]) as checkpoint:  # Stability's layout: 4 layers, the last unused
        assert "3 of the file's 4 layers" in " ".join(note for _, note in checkpoint.notes)
    sd = StableDiffusion.from_checkpoint(path)
    assert sd.config.text_encoder.num_layers == models["text_encoder"].config.num_hidden_layers == 3
    assert_parity(sd, models)
    assert_same_weights(StableDiffusion.from_checkpoint(ckpt), sd)
    assert_same_weights(StableDiffusion.from_checkpoint(sd2["safetensors"]), sd)


class _ShapesOnly:
    """A reader of tensor names and shapes only (enough for architecture inference)."""

    def __init__(self, shapes):
        self.path, self._shapes = "shapes.safetensors", shapes

    def keys(self):
        return list(self._shapes)

    def shape(self, key):
        return self._shapes[key]


@pytest.mark.parametrize("width,layers,projection,used", [
    (1024, 24, True, 23),  # Stability's SD 2 files: the whole OpenCLIP ViT-H/14 text tower
    (1024, 24, False, 23),  # the same with text_projection pruned
    (1024, 23, False, 23),  # diffusers' conversion script
    (128, 4, True, 3), (128, 4, False, 4)])
def test_open_clip_layer_count(width, layers, projection, used):
    from sd_keras.weights.checkpoints import ComponentSource, open_clip_layers

    shapes = {"cond_stage_model.model.token_embedding.weight": (49408, width)}
    shapes.update({f"cond_stage_model.model.transformer.resblocks.{i}.ln_1.weight": (width,) for i in range(layers)})
    if projection:
        shapes["cond_stage_model.model.text_projection"] = (width, width)
    assert open_clip_layers(ComponentSource(_ShapesOnly(shapes), "cond_stage_model.model.")) == (layers, used)


@pytest.fixture(scope="module")
def sd2_wide(tmp_path_factory):
    """An SD 2-like model with the 1024-wide context of SD 2.x (small vocabulary: a small file)."""
    models = dm.build("sd2", context_width=1024)
    root = tmp_path_factory.mktemp("sd2_wide")
    return {"models": models, "safetensors": dm.save_original_safetensors(models, str(root / "v.safetensors")),
            "base_ckpt": dm.save_original_ckpt(models, str(root / "base.ckpt"), global_step=875000),
            "v_ckpt": dm.save_original_ckpt(models, str(root / "v.ckpt"), global_step=110000), "root": root}


def test_sd2_prediction_type_inferred_like_diffusers(sd2_wide, sd1, sd2, caplog):
    caplog.set_level(logging.INFO, logger="sd_keras.checkpoints")
    with open_checkpoint(sd2_wide["safetensors"]) as checkpoint:  # no global_step: a 768-v model
        assert checkpoint.config.prediction_type == "v_prediction" and checkpoint.config.image_size == (768, 768)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "v_prediction (inferred" in warnings[0].getMessage()
    assert "v.safetensors" in warnings[0].getMessage() and "--prediction-type epsilon" in warnings[0].getMessage()
    with open_checkpoint(sd2_wide["v_ckpt"]) as checkpoint:
        assert checkpoint.config.prediction_type == "v_prediction"
    with open_checkpoint(sd2_wide["base_ckpt"]) as checkpoint:  # global_step 875000: the 512 base model
        assert checkpoint.config.prediction_type == "epsilon" and checkpoint.config.image_size == (512, 512)
        assert "global_step 875000" in checkpoint.notes[0][1]
    with open_checkpoint(sd2_wide["safetensors"], prediction_type="epsilon") as checkpoint:  # the override
        assert checkpoint.config.prediction_type == "epsilon" and checkpoint.config.image_size == (512, 512)
        assert checkpoint.notes[0][1] == "prediction type epsilon (given)"
    for narrow in (sd1["safetensors"], sd2["safetensors"]):  # not a 1024-wide context: epsilon
        with open_checkpoint(narrow) as checkpoint:
            assert checkpoint.config.prediction_type == "epsilon"


@pytest.mark.slow
def test_cli_prints_the_inferred_prediction_type(sd2_wide, tmp_path, capsys):
    out = str(tmp_path / "v")
    assert cli.main(["convert", sd2_wide["safetensors"], "-o", out]) == 0
    err = capsys.readouterr().err
    assert "sd-keras: " in err and "prediction type v_prediction (inferred" in err
    assert saved.read_config(out).prediction_type == "v_prediction"
    out = str(tmp_path / "eps")
    assert cli.main(["convert", sd2_wide["safetensors"], "-o", out, "--prediction-type", "epsilon"]) == 0
    assert "prediction type epsilon (given)" in capsys.readouterr().err
    assert saved.read_config(out).prediction_type == "epsilon"


def test_ema_unet_names():
    assert dotted_unet_name("input_blocks110in_layers0weight") == "input_blocks.11.0.in_layers.0.weight"
    assert dotted_unet_name("input_blocks00bias") == "input_blocks.0.0.bias"
    assert (dotted_unet_name("middle_block1transformer_blocks0attn2to_out0weight")
            == "middle_block.1.transformer_blocks.0.attn2.to_out.0.weight")
    assert dotted_unet_name("output_blocks82convweight") == "output_blocks.8.2.conv.weight"
    assert (dotted_unet_name("input_blocks41transformer_blocks0ffnet0projbias")
            == "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.bias")
    assert dotted_unet_name("time_embed2weight") == "time_embed.2.weight"
    assert dotted_unet_name("somethingelse") is None


@pytest.fixture(scope="module")
def ema_files(sd1, tmp_path_factory):
    """sd1 files with an EMA UNet (other random weights) next to the non-EMA one, or alone."""
    ema_models = dm.build("sd1", seed=7)
    root = tmp_path_factory.mktemp("ema")
    return {"ema_models": ema_models,
            "both": dm.save_original_safetensors(sd1["models"], str(root / "both.safetensors"),
                                                 ema_unet=ema_models["unet"]),
            "only": dm.save_original_ckpt(sd1["models"], str(root / "only.ckpt"), ema_unet=ema_models["unet"],
                                          ema_only=True)}


@pytest.mark.slow
def test_ema_weights(sd1, ema_files, caplog):
    caplog.set_level(logging.INFO, logger="sd_keras.checkpoints")
    sd = StableDiffusion.from_checkpoint(ema_files["both"])  # both: the non-EMA weights, said loudly
    assert_parity(sd, sd1["models"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "non-EMA" in warning and "model_ema" in warning and "ema=True" in warning
    caplog.clear()
    ema = StableDiffusion.from_checkpoint(ema_files["both"], ema=True)
    assert_parity(ema, ema_files["ema_models"], ["diffusion_model"])
    assert any("UNet weights: EMA" in r.getMessage() for r in caplog.records)
    for component in ("text_encoder", "decoder", "image_encoder"):  # the EMA copy is the UNet's only
        for a, b in zip(getattr(ema, component).get_weights(), getattr(sd, component).get_weights()):
            np.testing.assert_array_equal(a, b)
    only = StableDiffusion.from_checkpoint(ema_files["only"])  # only EMA weights: loaded
    assert_same_weights(only, ema)
    with pytest.raises(ValueError, match=r"no EMA weights \(model_ema"):
        StableDiffusion.from_checkpoint(sd1["ckpt"], ema=True)  # model_ema.decay alone is not a UNet
    with pytest.raises(ValueError, match="model_ema"):
        StableDiffusion.from_checkpoint(sd1["folder"], ema=True)


def test_ema_only_file_errors_name_model_ema(sd1, tmp_path):
    state = dm.to_original_state_dict(sd1["models"], ema_unet=sd1["models"]["unet"], ema_only=True)
    from safetensors.torch import save_file

    del state["model_ema.diffusion_modelinput_blocks10in_layers2weight"]
    path = str(tmp_path / "cut.safetensors")
    save_file(state, path)
    with pytest.raises(ValueError, match=r"model_ema\.diffusion_modelinput_blocks10in_layers2weight"):
        StableDiffusion.from_checkpoint(path)
    state["model_ema.diffusion_modelinput_blocks10in_layers2weight"] = torch.zeros(2)  # a wrong shape
    save_file(state, path)
    with pytest.raises(ValueError, match=r"model_ema\.diffusion_modelinput_blocks10in_layers2weight"):
        StableDiffusion.from_checkpoint(path)


@pytest.mark.slow
def test_cli_ema_flag(sd1, ema_files, tmp_path, capsys):
    out = str(tmp_path / "ema")
    assert cli.main(["convert", ema_files["both"], "-o", out, "--ema"]) == 0
    assert "UNet weights: EMA" in capsys.readouterr().err
    assert_same_weights(StableDiffusion.from_checkpoint(out), StableDiffusion.from_checkpoint(ema_files["only"]))
    out = str(tmp_path / "plain")
    assert cli.main(["convert", ema_files["both"], "-o", out]) == 0
    assert "non-EMA (model.diffusion_model.*)" in capsys.readouterr().err
    message = _one_line_cli_error(["convert", sd1["safetensors"], "-o", str(tmp_path / "x"), "--ema"], capsys)
    assert "model_ema" in message
    assert cli.build_parser().parse_args(["generate", "-p", "x", "--ema"]).ema
    with pytest.raises(InputError, match="--ema .* apply to checkpoint"):
        sd_keras.load("tiny", ema=True)  # not silently ignored
    with printing_notes(sys.stderr):  # as generate -m FILE --ema reports it
        model = sd_keras.load(ema_files["both"], ema=True)
    assert "UNet weights: EMA" in capsys.readouterr().err
    assert_same_weights(model, StableDiffusion.from_checkpoint(ema_files["only"]))


@pytest.mark.parametrize("fmt", ["folder", "safetensors"])
def test_nine_channel_inpainting_unet(inpaint, fmt):
    sd = StableDiffusion.from_checkpoint(inpaint[fmt])
    assert sd.config.unet.in_channels == 9
    assert_parity(sd, inpaint["models"])


def test_bfloat16_safetensors(sd1, tmp_path):
    path = dm.save_original_safetensors(sd1["models"], str(tmp_path / "bf16.safetensors"), dtype=torch.bfloat16)
    reader = SafetensorsFile(path)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    from safetensors.torch import load_file

    expected = load_file(path)[key].float().numpy()
    np.testing.assert_array_equal(reader.read(key), expected)
    sd = StableDiffusion.from_checkpoint(path, dtype="bfloat16")  # bf16 variables: the file's values, unrounded
    assert {layer.dtype_policy.name for layer in sd.diffusion_model.layers if layer.weights} == {"bfloat16"}
    kernel = models.variables(sd.diffusion_model)
    np.testing.assert_array_equal(np.asarray(kernel["down_0_res_0/conv1/kernel"], np.float32),
                                  expected.transpose(2, 3, 1, 0))


@pytest.mark.slow
def test_ckpt_is_read_without_torch(sd1, sd2):
    """The .ckpt reader needs zipfile + numpy only: run it where importing torch fails."""
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from sd_keras.weights.pickle_reader import TorchCheckpoint\n"
        "from sd_keras.weights.checkpoints import SafetensorsFile\n"
        "for ckpt, st in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    a, b = TorchCheckpoint(ckpt), SafetensorsFile(st)\n"
        "    keys = [k for k in b.keys()]\n"
        "    assert sorted(keys) == sorted(a.keys()), 'keys differ'\n"
        "    for k in keys:\n"
        "        np.testing.assert_array_equal(a.read(k), b.read(k))\n"
        "print('ok', len(keys))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, sd1["ckpt"], sd1["safetensors"], sd2["ckpt"],
                             sd2["safetensors"]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_old_vae_names_sharded_unet_and_pickled_text_encoder(sd1, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = str(tmp_path / "old")
    shutil.copytree(sd1["folder"], folder)
    vae_file = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    tensors = load_file(vae_file)
    old = {}
    for key, value in tensors.items():
        for new_name, old_name in renames.items():
            if ".attentions.0" in key:
                key = key.replace(new_name, old_name)
        old[key] = value
    assert any(".query." in key for key in old)
    save_file(old, vae_file)
    unet_dir = os.path.join(folder, "unet")
    unet = load_file(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    keys = sorted(unet)
    shards = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: unet[k] for k in shard_keys}, os.path.join(unet_dir, name))
    with open(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {k: name for name, ks in shards.items() for k in ks}}, f)
    text_dir = os.path.join(folder, "text_encoder")  # pickled .bin weights (older diffusers folders)
    text = load_file(os.path.join(text_dir, "model.safetensors"))
    os.remove(os.path.join(text_dir, "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in text.items()}, os.path.join(text_dir, "pytorch_model.bin"))
    assert_same_weights(StableDiffusion.from_checkpoint(folder), StableDiffusion.from_checkpoint(sd1["folder"]))


def test_key_map_tables_cover_every_variable():
    from sd_keras.config import get_config

    config = get_config("tiny")
    tables = {"text_encoder": key_maps.TEXT_ENCODER_HF, "diffusion_model": key_maps.UNET,
              "decoder": key_maps.DECODER, "image_encoder": key_maps.IMAGE_ENCODER}
    assert set(tables) == set(models.COMPONENTS)
    for name, table in tables.items():
        part = getattr(config, models.COMPONENTS[name].config_field)
        variables = set(models.variables(models.build(name, config)))
        for layout in key_maps.LAYOUTS:
            entries = key_maps.expand_tensors(table, part, layout)
            targets = [entry.keras for entry in entries]
            assert len(targets) == len(set(targets)), (name, layout)
            assert len({entry.source for entry in entries}) == len(entries), (name, layout)
            assert {e.keras for e in entries if not e.optional} <= variables <= set(targets), (name, layout)


# ------------------------------------------------------------------------------------ convert and CLI
def test_convert_cli_roundtrip_and_generate(sd1, tmp_path):
    out = str(tmp_path / "converted")
    assert cli.main(["convert", sd1["ckpt"], "-o", out]) == 0
    assert saved.is_saved_folder(out)
    assert sorted(os.listdir(out)) == ["config.json", "decoder.safetensors", "diffusion_model.safetensors",
                                       "image_encoder.safetensors", "text_encoder.safetensors"]
    # `generate -m OUT` resolves the model with sd_keras.load
    converted = sd_keras.load(out)
    assert isinstance(converted, StableDiffusion)
    assert_same_weights(converted, StableDiffusion.from_checkpoint(sd1["ckpt"]))
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folder left


@pytest.mark.slow
def test_convert_prediction_type_flag_and_fp16(sd2, tmp_path):
    out = str(tmp_path / "v")
    assert cli.main(["convert", sd2["safetensors"], "-o", out, "--prediction-type", "v_prediction",
                     "--weight-dtype", "float16"]) == 0
    config = saved.read_config(out)
    assert config.prediction_type == "v_prediction" and config.image_size == (768, 768)
    from safetensors import safe_open

    with safe_open(os.path.join(out, "diffusion_model.safetensors"), "numpy") as f:
        assert f.get_slice("conv_in/kernel").get_dtype() == "F16"
    half = StableDiffusion.from_checkpoint(out)
    full = StableDiffusion.from_checkpoint(sd2["safetensors"])
    for a, b in zip(half.diffusion_model.get_weights(), full.diffusion_model.get_weights()):
        np.testing.assert_array_equal(a, b.astype(np.float16).astype(np.float32))


# ----------------------------------------------------------------------------------------------- bad input
def _one_line_cli_error(args, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sd-keras: error:")
    return err[0]


def test_truncated_files(sd1, tmp_path):
    for fmt in ("safetensors", "ckpt"):
        data = open(sd1[fmt], "rb").read()
        path = str(tmp_path / f"cut.{fmt}")
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(ValueError) as error:
            StableDiffusion.from_checkpoint(path)
        assert path in str(error.value)
        assert any(word in str(error.value) for word in ("truncated", "incomplete", "not a", "not fully"))


def test_not_a_checkpoint_and_unknown_layout(tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("just some text, not a model\n")
    with pytest.raises(CheckpointFormatError, match="notes.ckpt: not a checkpoint"):
        StableDiffusion.from_checkpoint(str(text))
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="fake.safetensors: not a readable safetensors file"):
        StableDiffusion.from_checkpoint(str(fake))
    from safetensors.numpy import save_file

    other = str(tmp_path / "classifier.safetensors")
    save_file({"backbone.layer1.weight": np.zeros((4, 4), np.float32)}, other)
    with pytest.raises(ValueError, match="classifier.safetensors: unknown key layout"):
        StableDiffusion.from_checkpoint(other)
    unet_only = str(tmp_path / "unet_only.safetensors")
    save_file({"model.diffusion_model.out.2.weight": np.zeros((4, 4, 3, 3), np.float32)}, unet_only)
    with pytest.raises(ValueError, match="no VAE .* and no text encoder"):
        StableDiffusion.from_checkpoint(unet_only)
    xl = str(tmp_path / "xl.safetensors")
    save_file({"conditioner.embedders.0.transformer.x": np.zeros(2, np.float32)}, xl)
    with pytest.raises(ValueError, match="SDXL"):
        StableDiffusion.from_checkpoint(xl)
    message = _one_line_cli_error(["convert", str(text), "-o", str(tmp_path / "out")], capsys)
    assert "notes.ckpt" in message
    assert not (tmp_path / "out").exists()
    message = _one_line_cli_error(["convert", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "o")], capsys)
    assert "missing.ckpt" in message
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    message = _one_line_cli_error(["convert", unet_only, "-o", str(precious)], capsys)
    assert "refusing to replace" in message and (precious / "notes.txt").read_text() == "keep me"


def test_architecture_mismatch_names_file_and_tensor(sd1, tmp_path):
    import shutil

    folder = str(tmp_path / "bad")
    shutil.copytree(sd1["folder"], folder)
    config_path = os.path.join(folder, "unet", "config.json")
    config = json.load(open(config_path))
    config["layers_per_block"] = 2  # the weights have 1 ResBlock per level
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors: diffusion_model is missing"):
        StableDiffusion.from_checkpoint(folder)
    config["layers_per_block"] = 1
    config["cross_attention_dim"] = 64
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="context_dim 64 != text_encoder.width 128"):
        StableDiffusion.from_checkpoint(folder)
    config["cross_attention_dim"] = 128
    config["upcast_attention"] = True  # harmless in float32
    config["class_embed_type"] = "timestep"
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="unet class_embed_type='timestep' is not supported"):
        StableDiffusion.from_checkpoint(folder)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    zipped = str(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(2)}, "x": _Evil(marker)}, zipped)
    assert zipfile.is_zipfile(zipped)
    with pytest.raises(UnsafeCheckpointError) as error:
        StableDiffusion.from_checkpoint(zipped)
    assert "evil.ckpt" in str(error.value) and "system" in str(error.value)
    with pytest.raises(UnsafeCheckpointError):
        TorchCheckpoint(zipped)
    raw = tmp_path / "evil.pt"  # a bare pickle (not torch's zip format) goes through torch's weights_only
    raw.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="evil.pt: refusing to load"):
        StableDiffusion.from_checkpoint(str(raw))
    message = _one_line_cli_error(["convert", zipped, "-o", str(tmp_path / "out")], capsys)
    assert "evil.ckpt" in message and "refusing" in message
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_checkpoint_modules_import_downward_only():
    """readers <- plans <- diffusers / single_file <- checkpoints (the entry); LoRA files read through readers,
    so lora.py and checkpoints.py no longer import each other."""
    import ast

    import sd_keras.weights as weights_package

    folder = os.path.dirname(weights_package.__file__)
    order = ["pickle_reader", "readers", "plans", "diffusers", "single_file", "checkpoints"]

    def imported(name):
        tree = ast.parse(open(os.path.join(folder, f"{name}.py")).read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sd_keras.weights."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.module == "sd_keras.weights":
                found.update(alias.name for alias in node.names)
        return found

    for rank, name in enumerate(order):
        upward = imported(name) & set(order[rank:])
        assert not upward, f"{name} imports {upward}"
    assert "checkpoints" not in imported("lora") and "lora" not in imported("readers")
    assert len(open(os.path.join(folder, "checkpoints.py")).read().splitlines()) < 300  # the entry stays small
