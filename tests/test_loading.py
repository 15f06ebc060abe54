"""``sd_keras.load(spec)``: presets, checkpoint paths and bundle folders, and the errors for anything else."""

import pytest

import sd_keras
from sd_keras import presets
from sd_keras.errors import InputError
from sd_keras.loading import BUNDLE, CHECKPOINT, PRESET, spec_kind


def test_a_preset_loads_as_the_keras_pipeline():
    sd = sd_keras.load("tiny", dtype="float32")
    assert isinstance(sd, sd_keras.StableDiffusion) and sd.config.name == "tiny"


@pytest.mark.once
def test_spec_kind_tells_presets_bundles_and_checkpoints_apart_without_loading(tmp_path):
    for name in presets.names():
        assert spec_kind(name) == PRESET
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert spec_kind(str(bundle)) == BUNDLE
    assert spec_kind(bundle) == BUNDLE  # a path object
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    assert spec_kind(str(checkpoint), prediction_type="epsilon", ema=True) == CHECKPOINT
    assert spec_kind(str(tmp_path)) == CHECKPOINT  # a folder without a manifest: a saved or diffusers model


@pytest.mark.once
@pytest.mark.parametrize("spec, options, message", [
    ("no-such-model", {}, "unknown model 'no-such-model': not a preset (sd-v1, sd-v2, tiny, shapes"),
    ("no-such-model", {}, ") and no such file or folder"),
    ("tiny", {"ema": True}, "tiny: a preset: --prediction-type / --ema"),
    ("sd-v1", {"prediction_type": "epsilon"}, "sd-v1: a preset: --prediction-type / --ema"),
    ("{bundle}", {"ema": True}, "an exported bundle: --prediction-type / --ema"),
    ("", {}, "model: expected a preset name, checkpoint path or bundle folder, got ''"),
    (None, {}, "model: expected a preset name, checkpoint path or bundle folder, got None"),
])
def test_bad_specs_are_input_errors_naming_the_cause(tmp_path, spec, options, message):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    if spec == "{bundle}":
        spec = str(bundle)
    with pytest.raises(InputError) as info:
        sd_keras.load(spec, **options)  # refused before anything is loaded
    assert message in str(info.value)
    assert "\n" not in str(info.value)
