"""LoRA in sd_keras against PEFT / diffusers: the same LoRA gives the same UNet and text encoder outputs, in the
diffusers (PEFT), attention-processor and kohya formats, and removing it restores the weights exactly."""

import argparse
import os

import numpy as np
import pytest

import diffusers_models as dm
from sd_keras import cli
from sd_keras.models import timestep_embedding
from sd_keras.pipeline import StableDiffusion
from sd_keras.weights import saved
from sd_keras.cli.arguments import apply_lora_arguments
from sd_keras.weights.lora import apply_lora, parse_lora_spec, read_lora, remove_lora

ATOL = 1e-4
RANK, ALPHA = 4, 8.0


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, 49408, (2, 77)).astype("int32"),
            "latent": rng.standard_normal((2, 8, 8, 4)).astype("float32"),
            "timesteps": np.array([5.0, 640.0], "float32"),
            "context": rng.standard_normal((2, 77, 128)).astype("float32")}


def torch_outputs(models, inputs):
    return {"unet": dm.unet_output(models, inputs["latent"], inputs["timesteps"], inputs["context"]),
            "text": dm.text_output(models, inputs["tokens"])}


def keras_outputs(sd, inputs):
    positions = np.tile(np.arange(77, dtype="int32"), (2, 1))
    embedding = np.asarray(timestep_embedding(inputs["timesteps"], sd.config.unet.timestep_dim))
    return {"unet": np.asarray(sd.diffusion_model({"latent": inputs["latent"], "timestep_embedding": embedding,
                                                   "context": inputs["context"]})),
            "text": np.asarray(sd.text_encoder({"tokens": inputs["tokens"], "positions": positions}))}


def assert_outputs_close(ours, theirs):
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=ATOL, rtol=0, err_msg=name)


def weights(sd):
    return {component: saved.model_tensors(getattr(sd, component)) for component in ("text_encoder",
                                                                                   "diffusion_model")}


def assert_weights_equal(a, b):
    for component in a:
        for key in a[component]:
            np.testing.assert_array_equal(a[component][key], b[component][key], err_msg=f"{component}/{key}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    inputs = make_inputs()
    base = dm.build("sd1")
    folder = dm.save_diffusers_folder(base, str(root / "model"))
    with_lora = dm.build("sd1")
    states = dm.add_peft_lora(with_lora, rank=RANK, alpha=ALPHA)
    sd = StableDiffusion.from_checkpoint(folder)
    return {
        "root": root, "inputs": inputs, "folder": folder, "states": states, "sd": sd,
        "base_weights": weights(sd),
        "base_outputs": torch_outputs(base, inputs),
        "lora_outputs": torch_outputs(with_lora, inputs),  # PEFT's own forward with the adapter
        "peft": dm.save_peft_lora(states, str(root / "peft"), rank=RANK, alpha=ALPHA),
        "kohya": dm.save_kohya_lora(states, str(root / "kohya.safetensors"), alpha=ALPHA),
    }


def test_base_model_matches_before_any_lora(setup):
    assert_outputs_close(keras_outputs(setup["sd"], setup["inputs"]), setup["base_outputs"])


def test_diffusers_peft_file_and_exact_removal(setup):
    sd = setup["sd"]
    lora = read_lora(setup["peft"])
    assert lora.components == ["text_encoder", "diffusion_model"]
    conv = [module for (_, module) in lora.pairs["diffusion_model"] if module.endswith("resnets.0.conv1")]
    assert conv, "the LoRA covers ResBlock 3x3 convolutions"
    applied = apply_lora(sd, lora)
    ours = keras_outputs(sd, setup["inputs"])
    assert np.abs(ours["unet"] - setup["base_outputs"]["unet"]).max() > 0.05  # the LoRA changes the output
    assert_outputs_close(ours, setup["lora_outputs"])
    remove_lora(sd, applied)
    assert_weights_equal(weights(sd), setup["base_weights"])
    with pytest.raises(ValueError, match="already removed"):
        applied.remove()


def test_kohya_file_matches_diffusers_kohya_loader_and_scale(setup):
    from diffusers import StableDiffusionPipeline

    reference = dm.build("sd1")
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(setup["kohya"])
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=reference["unet"])
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, text_encoder=reference["text_encoder"],
                                                        prefix="text_encoder")
    sd = setup["sd"]
    applied = apply_lora(sd, setup["kohya"])
    assert_outputs_close(keras_outputs(sd, setup["inputs"]), torch_outputs(reference, setup["inputs"]))
    remove_lora(sd, applied)
    # scale 0.5 on alpha 8 == the same LoRA trained with alpha 4
    half = dm.build("sd1")
    dm.add_peft_lora(half, rank=RANK, alpha=ALPHA / 2)
    applied = apply_lora(sd, setup["kohya"], scale=0.5)
    assert_outputs_close(keras_outputs(sd, setup["inputs"]), torch_outputs(half, setup["inputs"]))
    remove_lora(sd, applied)
    assert_weights_equal(weights(sd), setup["base_weights"])


def test_kohya_with_original_unet_names(setup, tmp_path):
    """Some kohya files name UNet modules after the original UNet (input_blocks_1_1_proj_in...)."""
    from safetensors.numpy import load_file, save_file

    unet_config = dm.build("sd1")["unet"].config
    tensors = load_file(setup["kohya"])
    dotted_names = {m.replace(".", "_"): m for (_, m) in read_lora(setup["peft"]).pairs["diffusion_model"]}
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("lora_unet_"):
            module, _, suffix = key[len("lora_unet_"):].partition(".")
            original = dm._unet_key(dotted_names[module] + ".weight", unet_config)[: -len(".weight")]
            key = "lora_unet_" + original.replace(".", "_") + "." + suffix
        renamed[key] = value
    assert any(key.startswith("lora_unet_input_blocks_1_1_") for key in renamed)
    path = str(tmp_path / "ldm_names.safetensors")
    save_file(renamed, path)
    sd = setup["sd"]
    applied = apply_lora(sd, path)
    assert_outputs_close(keras_outputs(sd, setup["inputs"]), setup["lora_outputs"])
    remove_lora(sd, applied)


def test_attention_processor_format(setup, tmp_path):
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    reference = dm.build("sd1")
    states = dm.add_peft_lora(reference, rank=RANK, alpha=RANK, seed=5, unet_targets=targets, text_targets=None)
    path = dm.save_attn_procs_lora(states, str(tmp_path / "pytorch_lora_weights.safetensors"))
    sd = setup["sd"]
    applied = apply_lora(sd, path)
    assert read_lora(path).components == ["diffusion_model"]
    assert_outputs_close(keras_outputs(sd, setup["inputs"]), torch_outputs(reference, setup["inputs"]))
    remove_lora(sd, applied)
    assert_weights_equal(weights(sd), setup["base_weights"])


def test_stacked_loras_remove_in_any_order(setup):
    sd = setup["sd"]
    first = apply_lora(sd, setup["peft"], scale=0.7)
    second = apply_lora(sd, setup["kohya"], scale=-0.3)
    remove_lora(sd, first)
    only_second = weights(sd)
    remove_lora(sd, second)
    assert_weights_equal(weights(sd), setup["base_weights"])
    alone = apply_lora(sd, setup["kohya"], scale=-0.3)
    assert_weights_equal(weights(sd), only_second)  # removing one == never having applied it
    remove_lora(sd, alone)
    assert_weights_equal(weights(sd), setup["base_weights"])


def test_bad_loras_change_nothing(setup, tmp_path):
    from safetensors.numpy import load_file, save_file

    sd = setup["sd"]
    tensors = load_file(setup["kohya"])
    unknown = dict(tensors)
    unknown["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = np.zeros((4, 32), np.float32)
    unknown["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = np.zeros((32, 4), np.float32)
    save_file(unknown, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(ValueError, match="unknown.safetensors: LoRA module 'down_blocks_7_attentions_0_proj_in' "
                                         "matches no layer"):
        apply_lora(sd, str(tmp_path / "unknown.safetensors"))
    wrong = dict(tensors)
    key = next(k for k in wrong if k.endswith("attn2_to_k.lora_down.weight"))
    wrong[key] = np.zeros((RANK, 77), np.float32)  # a LoRA for another context width
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="wrong.safetensors: LoRA .*attn2_to_k"):
        apply_lora(sd, str(tmp_path / "wrong.safetensors"))
    save_file({"model.diffusion_model.out.2.weight": np.zeros((4, 4), np.float32)},
              str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(ValueError, match="checkpoint.safetensors: no LoRA weights"):
        apply_lora(sd, str(tmp_path / "checkpoint.safetensors"))
    save_file({"lora_unet_x.hada_w1_a": np.zeros((4, 4), np.float32)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ValueError, match="LoHa"):
        apply_lora(sd, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ValueError, match="scale"):
        apply_lora(sd, setup["kohya"], scale=float("nan"))
    assert_weights_equal(weights(sd), setup["base_weights"])


def test_lora_option_of_the_cli(setup, tmp_path, capsys):
    assert parse_lora_spec("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_spec("style.safetensors:0.6") == ("style.safetensors", 0.6)
    assert parse_lora_spec("dir:with:colons/style.safetensors") == ("dir:with:colons/style.safetensors", 1.0)
    assert parse_lora_spec("a.safetensors:-1") == ("a.safetensors", -1.0)
    out = str(tmp_path / "merged")
    assert cli.main(["convert", setup["folder"], "-o", out, "--lora", f"{setup['kohya']}:0.5",
                     "--lora", setup["peft"]]) == 0
    merged = weights(StableDiffusion.from_checkpoint(out))
    sd = setup["sd"]
    args = argparse.Namespace(lora=[f"{setup['kohya']}:0.5", setup["peft"]])
    applied = apply_lora_arguments(sd, args)
    assert len(applied) == 2
    assert_weights_equal(merged, weights(sd))
    for lora in reversed(applied):
        lora.remove()
    assert_weights_equal(weights(sd), setup["base_weights"])
    assert cli.main(["convert", setup["folder"], "-o", out, "--lora", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors: no such file" in capsys.readouterr().err
    assert os.path.isdir(out)  # the earlier output is left as it was


def test_trainer_lora_file_merges_like_keras_enable_lora(tmp_path):
    # `sd-keras train` with lora_rank writes sd_keras's own format; merged by --lora it must compute what the
    # adapted Keras layers compute, and come out again exactly.
    from safetensors.numpy import load_file, save_file

    from sd_keras import train

    trained, sd = StableDiffusion.from_preset("tiny"), StableDiffusion.from_preset("tiny")
    train.enable_lora(trained.diffusion_model, 2, alpha=3.0, targets=("q_proj", "v_proj", "out_proj"))
    rng = np.random.default_rng(0)
    for layer in train.lora.dense_layers(trained.diffusion_model):
        if layer.lora_enabled:  # B starts at zero: give it values so the adapter changes something
            layer.lora_kernel_b.assign(rng.normal(0, 0.2, layer.lora_kernel_b.shape).astype("float32"))
    path = train.save_lora(trained.diffusion_model, str(tmp_path / "lora.safetensors"), "tiny")
    unet = sd.config.unet
    feed = {"latent": rng.standard_normal((2, 8, 8, unet.in_channels)).astype("float32"),
            "timestep_embedding": np.asarray(timestep_embedding(np.array([10.0, 700.0], "float32"),
                                                                unet.timestep_dim)),
            "context": rng.standard_normal((2, 77, unet.context_dim)).astype("float32")}
    expected = np.asarray(trained.diffusion_model(feed))
    before = weights(sd)
    assert not np.allclose(np.asarray(sd.diffusion_model(feed)), expected, atol=1e-3)
    (applied,) = apply_lora_arguments(sd, argparse.Namespace(lora=[f"{path}:1.0"]))
    np.testing.assert_allclose(np.asarray(sd.diffusion_model(feed)), expected, atol=1e-5, rtol=0)
    assert set(applied.deltas["diffusion_model"]) == {key.rsplit(".", 1)[0] + "/kernel"
                                                      for key in load_file(path) if key.endswith(".lora_a")}
    applied.remove()
    assert_weights_equal(weights(sd), before)
    # a layer the model does not have, and a file missing a factor: refused, nothing changed
    tensors = load_file(path)
    first = next(key for key in tensors if key.endswith(".lora_a"))
    renamed = {("no_such_block/q_proj.lora_" + key[-1] if key.startswith(first[:-7]) else key): value
               for key, value in tensors.items()}
    metadata = {"format": "sd_keras.lora", "format_version": "1", "rank": "2", "alpha": "3.0", "model": "tiny"}
    save_file(renamed, str(tmp_path / "other.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="'no_such_block/q_proj' is not a layer of this model's diffusion_model"):
        apply_lora(sd, str(tmp_path / "other.safetensors"))
    save_file({first: tensors[first]}, str(tmp_path / "half.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="has no matching lora_b tensor"):
        read_lora(str(tmp_path / "half.safetensors"))
    assert_weights_equal(weights(sd), before)
