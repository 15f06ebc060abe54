"""Quantized exports: fp16, int8-full, w8a16 and int4 converted once each on the decoder and checked against
Keras; a bundle with a mode per component (int8 UNet, w8a16 text encoder, fp16 decoder) through the CLI (fp32 is
tested in test_export.py).

Thresholds are the export's own gates (``verify.GATES``), which hold on the tiny preset's random weights.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sd_keras.export import litert, quantize, verify
from sd_keras.export.runner import BundleRunner


DECODER_MODES = ("fp16", "int8-full", "w8a16", "int4")
DECODER_FACTS = {}  # mode -> what export_components reported for the decoder (filled by the fixture)


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    return tiny_sd  # the session's tiny model (conftest.py)


@pytest.fixture(scope="module")
def records(tiny):
    return quantize.record_trajectories(tiny, prompts=["a red circle", "a blue square"], num_steps=3)


@pytest.fixture(scope="module")
def decoders(tiny, records, tmp_path_factory):
    """The decoder in each mode of DECODER_MODES: {mode: path}; one export call per mode."""
    folder = tmp_path_factory.mktemp("decoders")
    paths = {}
    for mode in DECODER_MODES:
        target = folder / mode
        target.mkdir()
        result = litert.export_components({"decoder": tiny.decoder}, tiny.config, (64, 64), mode, str(target),
                                          representative=records)
        paths[mode] = str(target / result["decoder"]["file"])
        DECODER_FACTS[mode] = result["decoder"]
    return paths


@pytest.mark.slow
def test_records_come_from_real_trajectories(tiny, records):
    unet = records["diffusion_model"]
    assert len(unet) == 2 * 3  # prompts x steps
    assert unet[0]["latent"].shape == (2, 8, 8, 4) and unet[0]["context"].shape == (2, 77, 32)
    assert np.array_equal(unet[0]["latent"][0], unet[0]["latent"][1])  # the guidance pair shares the latent
    assert not np.array_equal(unet[0]["timestep_embedding"], unet[1]["timestep_embedding"])
    assert len(records["text_encoder"]) == 3 and records["text_encoder"][0]["tokens"].dtype == np.int32
    assert [feed["latent"].shape for feed in records["decoder"]] == [(1, 8, 8, 4)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", DECODER_MODES)
def test_decoder_parity_per_mode(tiny, records, decoders, mode):
    entry = litert.component_signatures(tiny.config, (64, 64))["decoder"]
    parity = verify.compare_component(tiny.decoder, "decoder", decoders[mode], entry, records["decoder"])
    gates = verify.check_gates(parity, verify.GATES[mode]["component"])
    assert all(gate["passed"] for gate in gates), (mode, parity)
    assert parity["finite"]


@pytest.mark.slow
def test_quantized_files_are_smaller(tiny, decoders):
    sizes = {mode: os.path.getsize(path) for mode, path in decoders.items()}
    float32_bytes = litert.weight_bytes(tiny.decoder)  # the fp32 file is this plus the graph (~10 %)
    assert sizes["fp16"] < 0.65 * float32_bytes
    assert sizes["int8-full"] < 0.5 * float32_bytes
    assert sizes["int4"] < sizes["int8-full"]
    assert sizes["w8a16"] < 0.5 * float32_bytes  # int8 weights


@pytest.mark.slow
def test_weight_types_per_mode(decoders):
    from ai_edge_litert.interpreter import Interpreter

    def weight_dtypes(path):
        interpreter = Interpreter(model_path=path)
        return {detail["dtype"].__name__ for detail in interpreter.get_tensor_details()}

    assert "float16" in weight_dtypes(decoders["fp16"])
    assert "int8" in weight_dtypes(decoders["int8-full"])
    assert "int4" in weight_dtypes(decoders["int4"]) or "int8" in weight_dtypes(decoders["int4"])
    assert {"int8", "int16"} <= weight_dtypes(decoders["w8a16"])


@pytest.mark.slow
def test_w8a16_keeps_float_inputs_and_outputs_and_beats_int8_activations(tiny, records, decoders):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=decoders["w8a16"]).get_signature_runner("decoder")
    assert runner.get_input_details()["latent"]["dtype"] == np.float32
    assert runner.get_output_details()["image"]["dtype"] == np.float32
    entry = litert.component_signatures(tiny.config, (64, 64))["decoder"]
    wide, narrow = (verify.compare_component(tiny.decoder, "decoder", decoders[mode], entry, records["decoder"])
                    for mode in ("w8a16", "int8-full"))
    assert wide["psnr_db"] > narrow["psnr_db"] + 6, (wide, narrow)


@pytest.mark.slow
@pytest.mark.parametrize("component", ["diffusion_model", "text_encoder"])
def test_w8a16_profiler_calibration_writes_the_file_of_keeping_every_tensor(tiny, records, tmp_path, monkeypatch,
                                                                           component):
    """w8a16 calibrates inside the interpreter (ai-edge-quantizer's profiler-based mode, which keeps no intermediate
    tensor): on the UNet (softmax, sigmoid, norms) and the text encoder (gathers, the causal mask's select), the file
    is byte for byte the one of its default mode, which keeps every tensor of the run for Python to read."""
    folder = tmp_path / "fp32"
    folder.mkdir()
    result = litert.export_components({component: getattr(tiny, component)}, tiny.config, (64, 64), "fp32",
                                      str(folder))
    source = folder / result[component]["file"]
    signature = litert.component_signatures(tiny.config, (64, 64))[component]["signature"]
    feeds = records[component]
    assert quantize.W8A16_CALIBRATION == "CALIBRATION_PROFILER_BASED"
    profiled = quantize.quantize_w8a16(source, tmp_path / "profiled.tflite", feeds, signature)
    monkeypatch.setattr(quantize, "W8A16_CALIBRATION", "CALIBRATION_PRESERVE_ALL_TENSORS")
    kept = quantize.quantize_w8a16(source, tmp_path / "kept.tflite", feeds, signature)
    assert profiled == kept
    assert (tmp_path / "profiled.tflite").read_bytes() == (tmp_path / "kept.tflite").read_bytes()
    assert os.path.getsize(tmp_path / "profiled.tflite") < 0.6 * os.path.getsize(source)  # int8 weights


@pytest.mark.slow
def test_integer_only_describes_the_file(decoders):
    """``integer_only`` comes from the written file's ops: float ops (the norms' NEG/SQUARE between DEQUANTIZE
    and QUANTIZE) make it false and are listed, whatever the converter was asked for."""
    found = quantize.float_ops(decoders["int8-full"])
    result = DECODER_FACTS["int8-full"]
    assert result["float_ops"] == found and result["integer_only"] is (not found)
    assert DECODER_FACTS["w8a16"]["float_ops"] == quantize.float_ops(decoders["w8a16"])
    assert found and set(found) <= {"NEG", "SQUARE", "SQUARED_DIFFERENCE", "TILE", "MUL", "RSQRT", "MEAN", "ADD",
                                    "SUB", "DEQUANTIZE", "QUANTIZE"}, found
    assert quantize.float_ops(decoders["fp16"]).get("CONV_2D", 0) > 0


@pytest.mark.parametrize("spec, message", [
    ("vae=int8", "unknown component 'vae'"),
    ("unet=int3", "unknown mode 'int3' for unet"),
    ("int8,fp16", "two modes for the unnamed components"),
    ("unet=int8,diffusion_model=fp16", "diffusion_model is given twice"),
    ("", "must be a mode"),
])
def test_quantization_spec_errors_name_the_cause(spec, message):
    with pytest.raises(ValueError, match=message):
        quantize.parse_spec(spec)


def test_quantization_spec_gives_each_component_a_mode():
    plan = quantize.parse_spec("unet=int8, text_encoder=fp16,decoder=fp16")
    assert plan == {"text_encoder": "fp16", "text_encoder_2": "fp32", "diffusion_model": "int8", "decoder": "fp16",
                    "image_encoder": "fp32"}
    assert quantize.parse_spec("w8a16") == dict.fromkeys(quantize.COMPONENTS, "w8a16")
    assert quantize.parse_spec("fp16,unet=int8")["image_encoder"] == "fp16"
    assert quantize.spec_name(quantize.parse_spec("int8")) == "int8"
    assert quantize.spec_name(plan, ("text_encoder", "diffusion_model", "decoder")) == \
        "text_encoder=fp16,diffusion_model=int8,decoder=fp16"
    # a bundle is gated no stricter than its least precise component
    assert verify.image_gates(["fp16", "int8", "int4"]) == {"psnr_db": (">=", 20.0)}
    assert verify.image_gates(["fp32"]) == {"max_abs_diff": ("<=", 2)}


@pytest.mark.slow
def test_converter_in_its_own_process_writes_the_same_model(tiny, records, decoders, tmp_path):
    # Large models convert in a child process holding only the SavedModel; forced here on the small decoder,
    # with calibration data passed through a file (int8-full).
    from ai_edge_litert.interpreter import Interpreter

    signature = litert.component_signatures(tiny.config, (64, 64))["decoder"]
    path = str(tmp_path / "decoder.tflite")
    facts = litert.convert_component(tiny.decoder, "decoder", signature, "int8-full", path,
                                     representative=records["decoder"], isolate=True)
    assert facts["integer_only"] is not None and not facts["large_model_layout"]
    assert sorted(os.listdir(tmp_path)) == ["decoder.tflite"]
    outputs = []
    for model_path in (path, decoders["int8-full"]):
        runner = Interpreter(model_path=model_path).get_signature_runner(signature["signature"])
        outputs.append(runner(latent=records["decoder"][1]["latent"])["image"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    with pytest.raises(litert.ExportError, match="decoder: int8-full needs representative data"):
        litert.convert_component(tiny.decoder, "decoder", signature, "int8-full", path, isolate=True)


@pytest.mark.slow
def test_int8_full_widens_activations_that_int8_cannot_hold(tiny, records, decoders, tmp_path, monkeypatch):
    # Force the measurement to fall short: the decoder and the text encoder (int32 tokens and positions, and
    # LayerNorms whose SQUARED_DIFFERENCE has no int16 kernel) are replaced by their w8a16 files, closer to Keras
    # than their int8-activation files.
    from ai_edge_litert.interpreter import Interpreter

    monkeypatch.setattr(quantize, "INT8_ACTIVATIONS_MIN_PSNR_DB", 1000.0)
    models = {"decoder": tiny.decoder, "text_encoder": tiny.text_encoder}
    result = litert.export_components(models, tiny.config, (64, 64), "int8-full", str(tmp_path),
                                      representative=records)
    decoder, text = result["decoder"], result["text_encoder"]
    assert decoder["activations"] == "int16" and 0 < decoder["int8_activations_psnr_db"] < 1000
    dtypes = {d["dtype"].__name__ for d in Interpreter(model_path=str(tmp_path / decoder["file"])).get_tensor_details()}
    assert {"int16", "int8"} <= dtypes
    signatures = litert.component_signatures(tiny.config, (64, 64))
    wide = verify.compare_component(tiny.decoder, "decoder", str(tmp_path / decoder["file"]), signatures["decoder"],
                                    records["decoder"])
    narrow = verify.compare_component(tiny.decoder, "decoder", decoders["int8-full"], signatures["decoder"],
                                      records["decoder"])
    assert wide["psnr_db"] > narrow["psnr_db"] + 6, (wide, narrow)
    assert text["activations"] == "int16" and text["int16_activations_psnr_db"] > text["int8_activations_psnr_db"]
    assert text["integer_only"] is False and "SQUARED_DIFFERENCE" in text["float_ops"]
    interpreter = Interpreter(model_path=str(tmp_path / text["file"]))
    inputs = interpreter.get_signature_runner("text_encoder").get_input_details()
    assert inputs["positions"]["dtype"] == np.int32 and inputs["tokens"]["dtype"] == np.int32
    parity = verify.compare_component(tiny.text_encoder, "text_encoder", str(tmp_path / text["file"]),
                                      signatures["text_encoder"], records["text_encoder"])
    assert parity["finite"] and parity["cosine"] >= verify.GATES["w8a16"]["component"]["cosine"][1]


@pytest.mark.slow
def test_flex_ops_fail_with_their_names(tmp_path):
    # Needs TensorFlow in the process: run under KERAS_BACKEND=tensorflow whatever the test backend.
    script = textwrap.dedent(f"""
        import keras
        from keras import ops
        from sd_keras.config import get_config
        from sd_keras.export import litert
        signature = litert.component_signatures(get_config("tiny"), (64, 64))["decoder"]
        latent = keras.Input((8, 8, 4))
        image = keras.layers.Lambda(lambda x: ops.erfinv(ops.tanh(x)))(keras.layers.UpSampling2D(8)(latent))
        model = keras.Model(latent, keras.layers.Conv2D(3, 1)(image))
        try:
            litert.convert_component(model, "decoder", signature, "fp32", {str(tmp_path / "x.tflite")!r})
        except litert.ExportError as error:
            print("ERROR:", error)
    """)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "ERROR: decoder: the model needs TensorFlow ops that LiteRT has no builtin kernel for: Erfinv" in \
        result.stdout, result.stderr[-2000:]
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.slow
def test_cli_per_component_export_and_generation(tiny, tmp_path):
    out = tmp_path / "tiny-mixed"
    result = subprocess.run([sys.executable, "-m", "sd_keras.cli", "export", "-m", "tiny", "-o", str(out),
                             "--quantize", "unet=int8,text_encoder=w8a16,decoder=fp16", "--size", "64x64",
                             "--no-image-encoder", "--calibration-steps", "2", "--latency-runs", "1", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "diffusion_model (int8):" in result.stdout and "text_encoder (w8a16):" in result.stdout
    assert "end-to-end image vs Keras" in result.stdout
    with open(out / "report.json") as handle:
        report = json.load(handle)
    with open(out / "manifest.json") as handle:
        manifest = json.load(handle)
    expected = {"text_encoder": "w8a16", "diffusion_model": "int8", "decoder": "fp16"}
    name = "text_encoder=w8a16,diffusion_model=int8,decoder=fp16"
    assert report["passed"] and report["quantization"] == name and manifest["quantization"] == name
    assert set(manifest["components"]) == set(expected)
    for component, entry in report["components"].items():
        assert entry["quantization"] == manifest["components"][component]["quantization"] == expected[component]
        assert entry["parity"]["cosine"] >= verify.GATES[expected[component]]["component"]["cosine"][1], component
    text = manifest["components"]["text_encoder"]
    assert text["activations"] == "int16" and text["integer_only"] is False and text["float_ops"]
    image_gates = {metric: list(gate) for metric, gate in verify.image_gates(expected.values()).items()}
    assert report["thresholds"]["image"] == image_gates == {"psnr_db": [">=", 25.0]}  # JSON: lists
    unet_fp32_bytes = litert.weight_bytes(tiny.diffusion_model)
    assert report["components"]["diffusion_model"]["size_bytes"] < 0.4 * unet_fp32_bytes
    # random weights: the image PSNR is reported, not enforced
    assert report["end_to_end"]["psnr_db"] > 0 and not report["end_to_end"]["gates"][0]["enforced"]
    # quality gates over full 20-step trajectories: quantized modes' SNR floors are reported for random weights,
    # fp16's is enforced
    quality = report["quality"]
    assert "quality gates (component_snr, image_statistics" in result.stdout
    assert manifest["quality_gates"]["gates_run"] == quality["gates_run"] == ["component_snr", "image_statistics"]
    assert quality["component_snr"]["diffusion_model"]["inputs"] == 20 * len(quality["prompts"])
    assert [gate["enforced"] for gate in quality["component_snr"]["diffusion_model"]["gates"]] == [False, True]
    assert quality["component_snr"]["decoder"]["gates"][0]["enforced"]
    assert quality["component_snr"]["decoder"]["mean_db"] >= verify.SNR_MEAN_MIN_DB["fp16"]
    runner = BundleRunner(str(out))
    assert runner.image_encoder is None
    with pytest.raises(ValueError, match="no image_encoder"):
        runner.image_to_image("x", np.zeros((64, 64, 3), np.uint8), num_steps=2)
    image = runner.text_to_image("a red circle", num_steps=2, seed=1)
    assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8


def test_snr_floors_of_quantized_modes_are_enforced_for_trained_weights():
    snr = {"diffusion_model": {"worst_db": 3.0, "mean_db": 12.0}, "decoder": {"worst_db": 40.0, "mean_db": 45.0}}
    plan = quantize.parse_spec("unet=int8,decoder=fp16")
    trained = verify.snr_gates(snr, plan, random_weights=False)
    assert [(gate["metric"], gate["passed"], gate["enforced"]) for gate in trained["diffusion_model"]] == [
        ("mean_db", False, True), ("worst_db", True, True)]
    assert trained["decoder"][0]["threshold"] == verify.SNR_MEAN_MIN_DB["fp16"] and not trained["decoder"][0]["passed"]
    random = verify.snr_gates(snr, plan, random_weights=True)
    assert not random["diffusion_model"][0]["enforced"] and random["decoder"][0]["enforced"]
    nan = verify.snr_gates({"decoder": {"worst_db": float("nan"), "mean_db": float("nan")}}, plan,
                           random_weights=True)
    assert [gate["passed"] for gate in nan["decoder"]] == [False, False]


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)


def _float_file(function, path):
    """Write the float .tflite of a ``tf.function`` (its ``serving_default`` signature) to ``path``."""
    import tensorflow as tf

    module = tf.Module()
    module.function = function
    saved = str(path) + ".savedmodel"
    tf.saved_model.save(module, saved, signatures={"serving_default": function})
    with open(path, "wb") as handle:
        handle.write(tf.lite.TFLiteConverter.from_saved_model(saved).convert())
    return path


def _convolution_file(path, channels, seed=0):
    """A float .tflite of one 3x3 convolution (channels -> channels, with a bias) on an 8x8 input."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    kernel = tf.constant(rng.standard_normal((3, 3, channels, channels)).astype(np.float32) * 0.02)
    bias = tf.constant(rng.standard_normal(channels).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, channels], tf.float32, name="x")])
    def convolution(x):
        return {"y": tf.nn.conv2d(x, kernel, 1, "SAME") + bias}

    return _float_file(convolution, path)


def _run_file(path, x):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner(x=x)["y"]


def _snr(expected, got):
    return 10 * np.log10(np.mean(expected**2) / np.mean((expected - got) ** 2))


def _weight_types(path):
    from ai_edge_litert.interpreter import Interpreter

    return {detail["dtype"] for detail in Interpreter(model_path=str(path)).get_tensor_details()
            if len(detail["shape"]) == 4 and detail["shape"][1] == 3
            and len(detail["quantization_parameters"]["scales"]) == detail["shape"][0]}  # per output channel


def test_weights_quantized_in_slices_are_the_files_of_the_whole(tmp_path, monkeypatch):
    """Handing the quantizer a convolution's weights in slices (see QUANTIZER_CHUNKED_BYTES) writes the same int4 and
    w8a16 files, byte for byte, as handing it the whole weight."""
    source = _convolution_file(tmp_path / "float.tflite", 24)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 8, 8, 24)).astype(np.float32)} for i in range(2)]
    whole = {"int4": quantize.quantize_int4(source, tmp_path / "int4.tflite"),
             "w8a16": quantize.quantize_w8a16(source, tmp_path / "w8a16.tflite", feeds, "serving_default")}
    monkeypatch.setattr(quantize, "QUANTIZER_CHUNKED_BYTES", 3 * 3 * 24 * 4 * 5)  # 5 output channels a slice
    sliced = {"int4": quantize.quantize_int4(source, tmp_path / "int4_sliced.tflite"),
              "w8a16": quantize.quantize_w8a16(source, tmp_path / "w8a16_sliced.tflite", feeds, "serving_default")}
    assert whole["w8a16"] == sliced["w8a16"]
    for mode in ("int4", "w8a16"):
        assert (tmp_path / f"{mode}.tflite").read_bytes() == (tmp_path / f"{mode}_sliced.tflite").read_bytes()


def test_convolutions_of_more_than_32_mib_quantize_to_int4_and_w8a16(tmp_path):
    """A 3x3 convolution of 1024 channels (37.7 MB of float32 weights, as in the SD and SDXL UNets' lowest levels):
    ai-edge-quantizer's own path for weights over 32 MiB fails on it; the export's int4 and w8a16 complete, with
    the weights stored per output channel as 4 bits (packed; the file under a sixth of the float one) and 8 bits, and
    the output near the float file's."""
    source = _convolution_file(tmp_path / "float.tflite", 1024)
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 1024)).astype(np.float32)
    expected = _run_file(source, x)
    quantize.quantize_int4(source, tmp_path / "int4.tflite")
    quantize.quantize_w8a16(source, tmp_path / "w8a16.tflite", [{"x": x}], "serving_default")
    for mode, weight_type, min_snr_db in (("int4", np.int8, 12.0), ("w8a16", np.int8, 30.0)):
        path = tmp_path / f"{mode}.tflite"
        assert os.path.getsize(path) < os.path.getsize(source) / (6 if mode == "int4" else 3)
        assert _weight_types(path) == {weight_type}
        got = _run_file(path, x)
        snr = 10 * np.log10(np.mean(expected**2) / np.mean((expected - got) ** 2))
        assert snr >= min_snr_db, (mode, snr)


def test_calibration_check_reads_names_without_allocating_and_still_refuses_missing_ranges(tmp_path, monkeypatch):
    """w8a16 replaces ai-edge-quantizer's check that every tensor was calibrated (its interpreter allocates every
    intermediate tensor, which fails for the last SDXL UNet part at 1024x1024) by one that allocates nothing: the
    file is the one the quantizer's own check lets through, a missing range is still refused, and the quantizer is
    left as it was."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    source = _convolution_file(tmp_path / "float.tflite", 16)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 8, 8, 16)).astype(np.float32)} for i in range(2)]
    original = quantizer.Quantizer._ensure_model_qsv_sufficient
    check = quantize._calibration_check_without_tensors.check
    quantize.quantize_w8a16(source, tmp_path / "light.tflite", feeds, "serving_default")
    assert quantizer.Quantizer._ensure_model_qsv_sufficient is original
    allocations = []
    creating = tfl_interpreter_utils.create_tfl_interpreter
    monkeypatch.setattr(tfl_interpreter_utils, "create_tfl_interpreter",
                        lambda *args, **kwargs: allocations.append(kwargs) or creating(*args, **kwargs))
    monkeypatch.setattr(quantize, "_calibration_check_without_tensors", contextlib.nullcontext)
    quantize.quantize_w8a16(source, tmp_path / "own_check.tflite", feeds, "serving_default")
    assert any(kwargs.get("preserve_all_tensors", True) for kwargs in allocations)  # the quantizer's own check ran
    assert (tmp_path / "light.tflite").read_bytes() == (tmp_path / "own_check.tflite").read_bytes()

    engine = quantizer.Quantizer(str(source))
    names = [tensor["name"] for tensor in Interpreter(model_path=str(source)).get_tensor_details()]
    assert check(engine, {name: {"min": np.zeros(1), "max": np.ones(1)} for name in names}) is None
    with pytest.raises(ValueError, match=f"Missing QSVs \\(min/max\\) for tensor {re.escape(names[-1])} in "
                                         "Signature 'serving_default'"):
        check(engine, {name: ({} if name == names[-1] else {"min": np.zeros(1), "max": np.ones(1)})
                       for name in names})


def _im2col_file(path, size=512, channels=168, kernel=7):
    """A float .tflite of a 1x1 convolution (channels -> channels) and a ``kernel`` x ``kernel`` one (channels -> 4)
    on a ``size`` x ``size`` input: the second's int16 im2col buffer, size^2 x kernel^2 x channels elements, is over
    2^31 - 1 at the defaults (2,157,969,408), as the SDXL decoder's last block is at 1024x1024."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pointwise = tf.constant(rng.standard_normal((1, 1, channels, channels)).astype(np.float32) * 0.1)
    wide = tf.constant(rng.standard_normal((kernel, kernel, channels, 4)).astype(np.float32) * 0.01)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, channels], tf.float32, name="x")])
    def convolutions(x):
        return {"y": tf.nn.conv2d(tf.nn.conv2d(x, pointwise, 1, "SAME"), wide, 1, "SAME")}

    return _float_file(convolutions, path)


@pytest.mark.slow
def test_convolutions_whose_int16_im2col_litert_refuses_stay_float(tmp_path, monkeypatch):
    """LiteRT refuses to prepare an int16-activation convolution whose im2col buffer has more than 2^31 - 1 elements
    (the SDXL decoder at 1024x1024 was refused so). w8a16 keeps exactly those convolutions float: the file prepares
    and runs near the float one, the 1x1 convolution stays int16, and the manifest fact counts the float one. The
    same file quantized without that rule is refused by LiteRT, naming the limit."""
    from ai_edge_litert.interpreter import Interpreter

    source = _im2col_file(tmp_path / "float.tflite")
    x = np.random.default_rng(1).standard_normal((1, 512, 512, 168)).astype(np.float32)
    float_model = Interpreter(model_path=str(source))
    found = quantize.oversized_int16_convolutions(float_model)
    assert len(found) == 1
    elements = 512 * 512 * 7 * 7 * 168
    assert quantize.oversized_int16_convolutions(float_model, limit=elements) == []
    assert quantize.oversized_int16_convolutions(float_model, limit=elements - 1) == found

    path = tmp_path / "w8a16.tflite"
    assert quantize.quantize_w8a16(source, path, [{"x": x}], "serving_default")["im2col_float"] == found
    quantized = Interpreter(model_path=str(path))
    quantized.allocate_tensors()
    tensors = {tensor["index"]: tensor for tensor in quantized.get_tensor_details()}
    inputs = {tuple(tensors[op["inputs"][1]]["shape"][1:3]): tensors[op["inputs"][0]]["dtype"]
              for op in quantized._get_ops_details() if op["op_name"] == "CONV_2D"}
    assert inputs == {(1, 1): np.int16, (7, 7): np.float32}
    expected, got = _run_file(source, x), _run_file(path, x)
    snr = 10 * np.log10(np.mean(expected**2) / np.mean((expected - got) ** 2))
    assert snr >= 30.0, snr

    facts = litert._to_w8a16(str(_im2col_file(tmp_path / "again.tflite")), [{"x": x}], "decoder", "serving_default")
    assert facts["im2col_float_convolutions"] == 1 and facts["float_ops"]["CONV_2D"] == 1

    monkeypatch.setattr(quantize, "oversized_int16_convolutions", lambda interpreter: [])
    refused = tmp_path / "refused.tflite"
    assert quantize.quantize_w8a16(source, refused, [{"x": x}], "serving_default")["im2col_float"] == []
    with pytest.raises(RuntimeError, match=r"im2col elements \(2157969408\) exceed the 32-bit integer limit"):
        Interpreter(model_path=str(refused)).allocate_tensors()


def _mean_file(path, size):
    """A float .tflite that adds each channel's mean over a ``size`` x ``size`` image to half the image."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 8], tf.float32, name="x")])
    def mean(x):
        return {"y": x * 0.5 + tf.reduce_mean(x, axis=[1, 2], keepdims=True)}

    return _float_file(mean, path)


@pytest.mark.slow
def test_means_over_more_values_than_an_int16_sum_holds_stay_float(tmp_path, monkeypatch):
    """LiteRT's int16 MEAN sums its inputs in an int32: the mean of 512x512 values near 3 comes out wrong (GroupNorm
    reduces that many and more in the SD decoders at 512x512 and up). w8a16 keeps such reductions float, and only
    those: the file then matches the float one, and a 128x128 mean stays int16."""
    from ai_edge_litert.interpreter import Interpreter

    def mean_input_type(path):
        model = Interpreter(model_path=str(path))
        tensors = {tensor["index"]: tensor for tensor in model.get_tensor_details()}
        return [tensors[op["inputs"][0]]["dtype"] for op in model._get_ops_details() if op["op_name"] == "MEAN"]

    for size, kept in ((128, False), (512, True)):
        source = _mean_file(tmp_path / f"float_{size}.tflite", size)
        x = (np.random.default_rng(0).standard_normal((1, size, size, 8)) + 3).astype(np.float32)
        found = quantize.oversized_int16_reductions(Interpreter(model_path=str(source)))
        assert len(found) == int(kept)
        path = tmp_path / f"w8a16_{size}.tflite"
        assert quantize.quantize_w8a16(source, path, [{"x": x}], "serving_default")["reductions_float"] == found
        assert mean_input_type(path) == [np.float32 if kept else np.int16]
        assert _snr(_run_file(source, x), _run_file(path, x)) >= 60.0
    float_model = Interpreter(model_path=str(source))
    assert quantize.oversized_int16_reductions(float_model, limit=512 * 512) == []
    assert quantize.oversized_int16_reductions(float_model, limit=512 * 512 - 1) == found

    facts = litert._to_w8a16(str(_mean_file(tmp_path / "again.tflite", 512)), [{"x": x}], "decoder",
                              "serving_default")
    assert facts["float_reductions"] == 1 and facts["float_ops"]["MEAN"] == 1

    monkeypatch.setattr(quantize, "oversized_int16_reductions", lambda interpreter: [])
    overflowing = tmp_path / "overflowing.tflite"
    quantize.quantize_w8a16(source, overflowing, [{"x": x}], "serving_default")
    assert mean_input_type(overflowing) == [np.int16]
    assert _snr(_run_file(source, x), _run_file(overflowing, x)) < 10.0  # LiteRT's int16 sum overflowed


def _group_norm_file(path):
    """A float .tflite of a GroupNorm without scale (2 groups of 4 channels) on an 8x8x8 input."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 8], tf.float32, name="x")])
    def group_norm(x):
        groups = tf.reshape(x, [1, 8, 8, 2, 4])
        mean, variance = tf.nn.moments(groups, axes=[1, 2, 4], keepdims=True)
        return {"y": tf.reshape((groups - mean) * tf.math.rsqrt(variance + 1e-5), [1, 8, 8, 8])}

    return _float_file(group_norm, path)


def test_norm_statistics_stay_float_so_a_near_constant_group_normalises(tmp_path, monkeypatch):
    """One int16 scale covers every group's variance: a group of small values (a skip connection concatenated to
    large ones, as in the SDXL UNet's up blocks) had its variance rounded to zero and came out garbage. w8a16 keeps
    the variance's MEAN and the + epsilon float."""
    from ai_edge_litert.interpreter import Interpreter

    source = _group_norm_file(tmp_path / "float.tflite")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    x[..., :4] *= 30.0  # variance about 900: the int16 step of the variances is then about 0.03
    x[..., 4:] *= 0.2  # variance about 0.04: a step or two
    model = Interpreter(model_path=str(source))
    ops = {op["index"]: op for op in model._get_ops_details()}
    names = {tensor["index"]: tensor["name"] for tensor in model.get_tensor_details()}
    found = quantize.norm_statistics(model)
    assert sorted(op["op_name"] for op in ops.values() if quantize._scope(op, names) in found) == ["ADD", "MEAN"]

    path = tmp_path / "w8a16.tflite"
    assert set(found) <= set(quantize.quantize_w8a16(source, path, [{"x": x}], "serving_default")["kept_float"])
    expected, got = _run_file(source, x), _run_file(path, x)
    assert _snr(expected[..., 4:], got[..., 4:]) >= 40.0 and _snr(expected[..., :4], got[..., :4]) >= 40.0

    monkeypatch.setattr(quantize, "norm_statistics", lambda interpreter: [])
    before = tmp_path / "before.tflite"
    quantize.quantize_w8a16(source, before, [{"x": x}], "serving_default")
    assert not _snr(expected[..., 4:], _run_file(before, x)[..., 4:]) >= 25.0  # the small group's scale is off
