"""``export_bundle`` given a model spec: the model is loaded by a worker process that records, writes the
converters' inputs and takes the gates' Keras references, and exits; the converters and the gates run while no
process holds the model. The bundle must be the one the in-process export writes, byte for
byte; errors in a worker reach the caller as the same exception; nothing is left beside the destination."""

import json
import os

import pytest

from sd_keras.cli.export import WORKER_BYTES, exports_in_workers
from sd_keras.errors import InputError
from sd_keras.export import exporter

PROMPT = "a red circle on a white background"


def _leftovers(folder, keep):
    return sorted(name for name in os.listdir(folder) if name not in keep)


# -- fast: which exports use workers --------------------------------------------------------------------------------
def test_exports_in_workers_for_large_models_only(tmp_path):
    assert exports_in_workers("sd-xl") and exports_in_workers("sd-xl-refiner")
    assert not exports_in_workers("tiny-xl") and not exports_in_workers("tiny")
    small = tmp_path / "small.safetensors"
    small.write_bytes(b"\0" * 1024)
    assert not exports_in_workers(str(small))
    large = tmp_path / "large.safetensors"
    with open(large, "wb") as handle:  # sparse: the size is what counts
        handle.truncate(WORKER_BYTES)
    assert exports_in_workers(str(large))
    folder = tmp_path / "diffusers" / "unet"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not exports_in_workers(str(tmp_path / "diffusers"))
    with open(folder / "diffusion_pytorch_model.safetensors", "wb") as handle:
        handle.truncate(WORKER_BYTES // 2)
    (tmp_path / "diffusers" / "text_encoder").mkdir()
    with open(tmp_path / "diffusers" / "text_encoder" / "model.safetensors", "wb") as handle:
        handle.truncate(WORKER_BYTES // 2)
    assert exports_in_workers(str(tmp_path / "diffusers"))
    with pytest.raises(InputError, match="unknown model"):
        exports_in_workers(str(tmp_path / "missing"))


def test_a_bundle_spec_is_refused_before_any_work(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "sd_keras.bundle", "format_version": 1}))
    with pytest.raises(InputError, match="already an exported bundle"):
        exporter.export_bundle(str(bundle), str(tmp_path / "out"))
    assert _leftovers(tmp_path, {"bundle"}) == []


# -- slow: worker processes ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_tiny_xl(tmp_path_factory):
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    model = StableDiffusionXL.from_preset("tiny-xl")
    folder = str(tmp_path_factory.mktemp("saved") / "tiny-xl")
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.slow
def test_saved_sdxl_folder_loads_as_sdxl(saved_tiny_xl):
    import numpy as np

    import sd_keras
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    model, folder = saved_tiny_xl
    loaded = sd_keras.load(folder)
    assert isinstance(loaded, StableDiffusionXL) and loaded.config == model.config
    for name in ("text_encoder", "text_encoder_2", "diffusion_model", "decoder"):
        for ours, theirs in zip(getattr(model, name).weights, getattr(loaded, name).weights):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(InputError, match="saved model: prediction_type=, loras= and vae="):
        StableDiffusionXL.from_checkpoint(folder, prediction_type="v_prediction")


@pytest.mark.slow
def test_spec_export_writes_the_in_process_bundle(saved_tiny_xl, tmp_path):
    """int8 with the UNet in parts, the quality gates on: the same files as the in-process export, with every
    stage that needs the model in a worker."""
    model, folder = saved_tiny_xl
    settings = dict(quantization="int8", calibration_prompts=[PROMPT], calibration_steps=2, parity_samples=2,
                    latency_runs=1, gate_prompts=1, gate_steps=2, max_part_bytes=600_000, random_weights=True)
    in_process = exporter.export_bundle(model, str(tmp_path / "in_process"), **settings)
    lines = []
    workers = exporter.export_bundle(folder, str(tmp_path / "workers"), log=lines.append, **settings)
    assert in_process["passed"] and workers["passed"]
    assert any("prepare: recording 1 trajectories" in line for line in lines)
    assert any("prepare: computing the Keras references" in line for line in lines)
    assert any("converting diffusion_model part 2/" in line for line in lines)
    assert any(line.endswith("checking parity with the Keras model") and "prepare:" not in line for line in lines)
    names = sorted(os.listdir(tmp_path / "in_process"))
    assert names == sorted(os.listdir(tmp_path / "workers"))
    assert len([name for name in names if name.startswith("diffusion_model_part")]) > 1
    for name in names:
        if name.endswith((".tflite", ".txt")):
            assert (tmp_path / "in_process" / name).read_bytes() == (tmp_path / "workers" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / kind / "manifest.json").read_text()) for kind in ("in_process", "workers")]
    for manifest in manifests:
        manifest.pop("quality_gates")  # measured against each process's own Keras model
    assert manifests[0] == manifests[1]
    assert set(workers["quality"]["component_snr"]) == set(in_process["quality"]["component_snr"])
    for name, entry in workers["components"].items():
        assert entry["parity"]["psnr_db"] == pytest.approx(in_process["components"][name]["parity"]["psnr_db"],
                                                           abs=1.0), name
    assert _leftovers(tmp_path, {"in_process", "workers"}) == []


@pytest.mark.slow
def test_an_error_in_a_worker_reaches_the_caller_and_leaves_nothing(tmp_path):
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    refiner = str(tmp_path / "refiner")
    StableDiffusionXL.from_preset("tiny-xl-refiner").save_pretrained(refiner)
    with pytest.raises(InputError, match="only SDXL base models export"):
        exporter.export_bundle(refiner, str(tmp_path / "out"), quantization="int8")
    assert _leftovers(tmp_path, {"refiner"}) == []


@pytest.mark.slow
def test_int4_on_a_dimension_the_block_size_does_not_divide_is_an_export_error(saved_tiny_xl, tmp_path):
    """tiny-xl's added-embedding layer takes 144 inputs, which int4's 32-wide blocks do not divide."""
    from sd_keras.export.bundle import ExportError

    model, _ = saved_tiny_xl
    with pytest.raises(ExportError, match="int4 weights failed: .*not divisible by block size 32"):
        exporter.export_bundle(model, str(tmp_path / "out"), quantization="int4", calibration_prompts=[PROMPT],
                               calibration_steps=1, quality_gates=False, end_to_end=False)
    assert _leftovers(tmp_path, set()) == []


def test_a_quantizer_error_without_a_message_is_named_by_its_type_and_place(tmp_path, monkeypatch):
    """The quantizer's native code can raise a bare ``RuntimeError()``: the export error names the type and where it
    was raised instead of ending in an empty message."""
    from sd_keras.export import litert, quantize
    from sd_keras.export.bundle import ExportError

    def calibration_fails(*args, **kwargs):
        raise RuntimeError()

    monkeypatch.setattr(quantize, "quantize_w8a16", calibration_fails)
    with pytest.raises(ExportError, match=r"^unet part 3: int16 activations \(w8a16\) failed: RuntimeError without a "
                                          r"message \(at test_export_workers\.py:\d+ in calibration_fails\)$"):
        litert._to_w8a16(str(tmp_path / "part.tflite"), [], "unet part 3", "serving_default")
    monkeypatch.setattr(quantize, "quantize_int4", lambda *args: (_ for _ in ()).throw(ValueError("bad  block\nsize")))
    (tmp_path / "part.tflite").write_bytes(b"float")
    with pytest.raises(ExportError, match=r"int4 weights failed: ValueError: bad block size \(at "):
        litert._to_int4(str(tmp_path / "part.tflite"), "unet part 3")
