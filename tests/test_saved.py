import json
import os

import numpy as np
import pytest

from sd_keras import models
from sd_keras.errors import InputError
from sd_keras.pipeline import StableDiffusion
from sd_keras.weights import saved


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return tiny_sd  # the session's tiny model (conftest.py)


def test_roundtrip_gives_identical_images(sd, tmp_path):
    folder = sd.save_pretrained(str(tmp_path / "model"))
    assert sorted(os.listdir(folder)) == ["config.json", "decoder.safetensors", "diffusion_model.safetensors",
                                          "image_encoder.safetensors", "text_encoder.safetensors"]
    loaded = StableDiffusion.from_checkpoint(folder)
    assert loaded.config == sd.config
    args = dict(num_steps=2, seed=3, height=64, width=64)
    np.testing.assert_array_equal(loaded.text_to_image("a cat", **args), sd.text_to_image("a cat", **args))
    assert [p for p in os.listdir(tmp_path) if p != "model"] == []  # no temporary folder left


def test_overwrite_is_atomic_and_fp16_storage_loads(sd, tmp_path):
    folder = str(tmp_path / "model")
    sd.save_pretrained(folder)
    sd.save_pretrained(folder, weight_dtype="float16")
    loaded = StableDiffusion.from_checkpoint(folder)
    for a, b in zip(loaded.diffusion_model.get_weights(), sd.diffusion_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert os.listdir(tmp_path) == ["model"]


def test_mismatched_weights_leave_model_unchanged(sd, tmp_path):
    folder = sd.save_pretrained(str(tmp_path / "model"))
    with open(os.path.join(folder, "config.json")) as f:
        data = json.load(f)
    data["config"]["unet"]["block_out_channels"] = [64, 64]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="diffusion_model.safetensors"):
        StableDiffusion.from_checkpoint(folder)
    from sd_keras import models

    model = models.build_decoder(sd.config)
    before = [w.copy() for w in model.get_weights()]
    tensors = saved.model_tensors(sd.decoder)
    tensors.pop(next(iter(tensors)))
    with pytest.raises(ValueError, match="missing"):
        saved.assign_tensors(model, tensors)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": saved.FORMAT, "format_version": 99}))
    with pytest.raises(InputError, match="format_version 99"):
        saved.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"format": saved.FORMAT, "format_version": 1,
                                                      "config": {"name": "x", "unet": {"channels": [1]}}}))
    with pytest.raises(InputError, match="config.json: 'config' is not a valid model config"):
        saved.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"format": saved.FORMAT, "format_version": 1,
                                                      "family": "sd-9", "config": {"name": "x"}}))
    with pytest.raises(InputError, match="unknown model family 'sd-9'"):
        saved.load(str(tmp_path))
    with pytest.raises(InputError, match="no packaged weights"):
        saved.load_packaged("nothing-here")


def test_load_returns_the_config_and_lazy_weights(sd, tmp_path):
    folder = sd.save_pretrained(str(tmp_path / "model"))
    os.remove(os.path.join(folder, "image_encoder.safetensors"))  # optional
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["family"] == "sd"  # the registry's family: another family's folder says its own
    config, weights = saved.load(folder)
    assert config == sd.config and sorted(weights) == ["decoder", "diffusion_model", "text_encoder"]
    parts = models.build_all(config, weights)
    assert parts["image_encoder"] is None
    for name in weights:
        assert all(np.array_equal(a, b) for a, b in zip(parts[name].get_weights(), getattr(sd, name).get_weights()))
    os.remove(os.path.join(folder, "decoder.safetensors"))
    with pytest.raises(InputError, match="missing decoder.safetensors"):
        saved.load(folder)
