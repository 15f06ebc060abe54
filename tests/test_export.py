"""LiteRT export: the fp32 bundle against the Keras pipeline, the bundle format, the runner, bad input.

The bundle is exported once per module (tiny preset, 64x64). Under JAX the conversion itself runs in a
TensorFlow subprocess, so these tests cover both paths.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from sd_keras.export import bundle as bundle_lib
from sd_keras.export import exporter, litert, quantize, verify
from sd_keras.export.runner import BundleRunner, denoise, timestep_embedding
from sd_keras.pipeline import DEFAULT_SAMPLER
from sd_keras.schedulers import SAMPLER_NAMES, get_sampler

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    return tiny_sd  # the session's tiny model (conftest.py)


@pytest.fixture(scope="module")
def fp32_bundle(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "new" / "tiny-fp32"  # a missing parent folder is created
    report = exporter.export_bundle(tiny, str(path), quantization="fp32", calibration_prompts=[PROMPT, "a dog"],
                                      calibration_steps=3, latency_runs=1)
    return str(path), report


@pytest.fixture(scope="module")
def runner(fp32_bundle):
    return BundleRunner(fp32_bundle[0])


def flip_byte(path, offset=1000):
    """Change one byte in place (a corrupted copy of the same size)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def copy_bundle(source, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


# -- the export and its report -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_fp32_components_match_keras_within_gate(fp32_bundle):
    path, report = fp32_bundle
    assert report["passed"] and report["failures"] == []
    assert set(report["components"]) == {"text_encoder", "diffusion_model", "decoder", "image_encoder"}
    for name, entry in report["components"].items():
        assert entry["parity"]["max_abs_rel"] <= 1e-4, name
        assert entry["parity"]["samples"] >= 2, name
        assert entry["files"] == [f"{name}.tflite"]
        assert entry["size_bytes"] == os.path.getsize(os.path.join(path, entry["files"][0]))
        assert entry["latency"]["median_ms"] > 0 and entry["latency"]["delegate"] == "XNNPACK"
    image = report["end_to_end"]
    assert image["max_abs_diff"] <= 2 and all(gate["passed"] for gate in image["gates"])
    with open(os.path.join(path, "report.json")) as handle:
        assert json.load(handle)["passed"] is True


@pytest.mark.slow
def test_manifest_schema_and_signatures(fp32_bundle, tiny):
    path, _ = fp32_bundle
    with open(os.path.join(path, "manifest.json")) as handle:
        manifest = json.load(handle)
    required = {"format", "format_version", "model", "image_size", "latent_size", "latent_scale_factor",
                "prediction_type", "schedule", "default_sampler", "samplers", "timestep_embedding_dim", "tokenizer",
                "components"}
    assert required <= set(manifest)
    assert manifest["format"] == "sd_keras.bundle" and manifest["format_version"] == 1
    assert manifest["model"] == "tiny" and manifest["image_size"] == [64, 64] and manifest["latent_size"] == [8, 8, 4]
    assert manifest["latent_scale_factor"] == pytest.approx(0.18215)
    assert manifest["schedule"] == {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                    "beta_schedule": "scaled_linear", "steps_offset": 1}
    assert manifest["default_sampler"] == DEFAULT_SAMPLER and manifest["samplers"] == SAMPLER_NAMES
    assert manifest["timestep_embedding_dim"] == tiny.config.unet.timestep_dim
    token = manifest["tokenizer"]
    assert (token["context_length"], token["start_id"], token["end_id"], token["pad_id"]) == (77, 49406, 49407, 49407)
    assert token["sha256"] == bundle_lib.sha256_file(os.path.join(path, token["file"]))
    unet = manifest["components"]["diffusion_model"]
    assert unet["inputs"] == [{"name": "latent", "shape": [2, 8, 8, 4], "dtype": "float32"},
                              {"name": "timestep_embedding", "shape": [2, 32], "dtype": "float32"},
                              {"name": "context", "shape": [2, 77, 32], "dtype": "float32"}]
    from ai_edge_litert.interpreter import Interpreter

    for name, entry in manifest["components"].items():
        assert set(entry) >= {"file", "sha256", "quantization", "signature", "inputs", "outputs"}
        assert entry["sha256"] == bundle_lib.sha256_file(os.path.join(path, entry["file"]))
        interpreter = Interpreter(model_path=os.path.join(path, entry["file"]))
        signature = interpreter.get_signature_list()[entry["signature"]]
        assert sorted(signature["inputs"]) == sorted(spec["name"] for spec in entry["inputs"])
        assert signature["outputs"] == [entry["outputs"][0]["name"]]
        runner = interpreter.get_signature_runner(entry["signature"])
        details = runner.get_input_details()
        for spec in entry["inputs"]:
            assert list(details[spec["name"]]["shape"]) == spec["shape"], (name, spec)
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert not any("FLEX" in op or op.startswith("Flex") for op in ops), (name, ops)
    # the tokenizer of the bundle is the pipeline's tokenizer
    runner = BundleRunner(path)
    assert np.array_equal(runner.tokenizer.tokenize([PROMPT]), tiny.tokenizer.tokenize([PROMPT]))


@pytest.mark.slow
def test_export_keeps_convolutions_as_conv_2d(tiny, tmp_path, monkeypatch):
    # On a CPU-only TensorFlow, small convolutions run as matrix products (backend.conv_as_matmul); an export
    # must still write CONV_2D operators, which phones run well. Force the rule onto every convolution.
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from sd_keras import backend

    if keras.backend.backend() != "tensorflow":
        pytest.skip("conversion traces on TensorFlow")
    monkeypatch.setattr(backend, "CONV_MATMUL_MIN_DEPTH", 1)
    monkeypatch.setattr(backend, "CONV_MATMUL_MAX_ROWS", 10**9)
    config = tiny.config
    signature = litert.component_signatures(config, (64, 64))["decoder"]
    path = str(tmp_path / "decoder.tflite")
    litert.convert_component(tiny.decoder, "decoder", signature, "fp32", path)
    ops = [op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()]
    assert ops.count("CONV_2D") >= 5, ops


# -- the runner against the Keras pipeline -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", DEFAULT_SAMPLER])
def test_runner_image_equals_keras_pipeline(tiny, runner, sampler):
    settings = dict(negative_prompt="blurry", num_steps=4, unconditional_guidance_scale=7.5, seed=11,
                    sampler=sampler, height=64, width=64)
    reference = tiny.text_to_image(PROMPT, **settings)
    image = runner.text_to_image(PROMPT, **settings)
    assert image.dtype == np.uint8 and image.shape == (1, 64, 64, 3)
    assert int(np.abs(image.astype(int) - reference.astype(int)).max()) <= 2
    assert image.std() > 0  # not a blank image


@pytest.mark.slow
def test_runner_batch_uses_consecutive_seeds_and_reports_progress(runner):
    steps = []
    batch = runner.text_to_image(PROMPT, batch_size=2, num_steps=3, seed=5, sampler="Euler a",
                                 progress=steps.append)
    single = runner.text_to_image(PROMPT, num_steps=3, seed=6, sampler="Euler a")
    assert np.array_equal(batch[1], single[0]) and not np.array_equal(batch[0], batch[1])
    assert steps == sorted(steps) and steps[-1] == 3
    assert runner.last_seed == 6


@pytest.mark.slow
def test_runner_prompt_list_sets_the_batch_like_the_pipeline(runner):
    prompts = [PROMPT, "a blue square"]
    batch = runner.text_to_image(prompts, num_steps=2, seed=5, sampler="Euler")
    assert batch.shape[0] == 2
    assert np.array_equal(batch[1], runner.text_to_image(prompts[1], num_steps=2, seed=6, sampler="Euler")[0])
    with pytest.raises(ValueError, match="batch_size=3"):
        runner.text_to_image(prompts, batch_size=3, num_steps=2, seed=5)


KERAS_FREE_SCRIPT = """
import sys

class NoDeepLearningFrameworks:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch"):
            raise ImportError("the bundle runner imported " + name)

sys.meta_path.insert(0, NoDeepLearningFrameworks())
import numpy as np
from sd_keras.export.runner import BundleRunner

runner = BundleRunner(sys.argv[1])
image = runner.text_to_image(sys.argv[2], num_steps=3, seed=4, sampler="Euler a")
np.save(sys.argv[3], image)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("keras", "tensorflow", "jax")))
"""


@pytest.mark.slow
def test_runner_imports_and_generates_without_keras_or_tensorflow(fp32_bundle, runner, tmp_path):
    """The runner needs numpy, pillow and ai-edge-litert only: importing a framework fails in this process."""
    out = tmp_path / "image.npy"
    result = subprocess.run([sys.executable, "-c", KERAS_FREE_SCRIPT, fp32_bundle[0], PROMPT, str(out)],
                            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    expected = runner.text_to_image(PROMPT, num_steps=3, seed=4, sampler="Euler a")
    assert np.array_equal(np.load(out), expected)


@pytest.mark.slow
def test_runner_image_to_image_equals_keras_pipeline(tiny, runner):
    source = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # 4 steps of DPM++ 2M: the compiled loop of the text-to-image test is reused (start index is an argument)
    settings = dict(strength=0.6, num_steps=4, seed=3, sampler="DPM++ 2M")
    reference = tiny.image_to_image(PROMPT, source, **settings)
    image = runner.image_to_image(PROMPT, source, **settings)
    assert int(np.abs(image.astype(int) - reference.astype(int)).max()) <= 2


def test_numpy_timestep_embedding_matches_keras():
    from keras import ops

    from sd_keras.models.layers import timestep_embedding as keras_embedding

    # float32 exp differs by an ulp between libraries and t (up to 999) multiplies that error in the phase,
    # so cos/sin agree to ~t * 6e-8; the image tests show this is far below what moves a pixel.
    for t in (0.0, 1.0, 500.0, 981.0, 999.0, 437.25):
        expected = ops.convert_to_numpy(keras_embedding(np.array([t], np.float32), 320))
        np.testing.assert_allclose(timestep_embedding(np.array([t], np.float32), 320), expected, atol=1e-4)
    expected = ops.convert_to_numpy(keras_embedding(np.array([3.0], np.float32), 320))
    np.testing.assert_allclose(timestep_embedding(np.array([3.0], np.float32), 320), expected, atol=1e-6)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_numpy_loop_matches_keras_sampler_steps(name):
    # A fixed linear "UNet" isolates the update formula: the numpy loop against Sampler.step (keras.ops).
    from keras import ops

    sampler = get_sampler(name, 6)
    rng = np.random.default_rng(1)
    latent0 = rng.standard_normal((1, 4, 4, 4)).astype(np.float32) * np.float32(sampler.init_noise_sigma)
    noise = rng.standard_normal((6, 1, 4, 4, 4)).astype(np.float32)
    context = rng.standard_normal((1, 3, 2)).astype(np.float32)
    unconditional = np.zeros_like(context)

    def unet(latent, embedding, contexts):
        return 0.3 * latent + 0.01 * embedding[:, :4][:, None, None, :] + contexts[:, :1, :1, None] * 0.1

    result = denoise(sampler, unet, context, unconditional, latent0, noise, guidance_scale=3.0, timestep_dim=8)
    latent, state = latent0, sampler.initial_state(ops.convert_to_tensor(latent0))
    for i in range(sampler.num_steps):
        model_input = ops.convert_to_numpy(sampler.scale_model_input(latent, i))
        embedding = np.repeat(timestep_embedding(sampler.timesteps[i:i + 1], 8), 2, axis=0)
        output = unet(np.concatenate([model_input] * 2), embedding, np.concatenate([unconditional, context]))
        guided = output[:1] + 3.0 * (output[1:] - output[:1])
        latent, state = sampler.step(latent, guided, i, state, noise[i])
        latent = ops.convert_to_numpy(latent)
    np.testing.assert_allclose(result, latent, rtol=1e-5, atol=1e-5)


# -- reading bundles: bad input ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_bundle(tiny, tmp_path_factory):
    """The tiny UNet exported as parts of at most 1 MB of weights (sd-v1's is split at 1 GiB)."""
    path = tmp_path_factory.mktemp("bundles") / "tiny-int8-parts"
    report = exporter.export_bundle(tiny, str(path), quantization="int8", calibration_prompts=[PROMPT],
                                      calibration_steps=2, latency_runs=1, image_encoder=False,
                                      max_part_bytes=2**20)
    return str(path), report


def test_unet_parts_chain_to_the_whole_model(tiny):
    # The block sequence the parts are cut from computes exactly what the Keras UNet computes, whatever the cut.
    from sd_keras.export import unet_parts

    steps = unet_parts.unet_steps(tiny.diffusion_model, tiny.config.unet)
    assert sum(unet_parts.step_bytes(tiny.diffusion_model, step) for step in steps) == \
        litert.weight_bytes(tiny.diffusion_model)  # every weight belongs to exactly one step
    signature = litert.component_signatures(tiny.config, (64, 64))["diffusion_model"]
    rng = np.random.default_rng(3)
    feed = {spec["name"]: rng.standard_normal(spec["shape"]).astype("float32") for spec in signature["inputs"]}
    whole = np.asarray(tiny.diffusion_model.predict_on_batch(feed))
    for max_bytes in (10**9, 2**20, 1):
        parts = unet_parts.plan_parts(tiny.diffusion_model, steps, max_bytes)
        assert parts[0][0] == 0 and parts[-1][1] == len(steps)
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        interfaces = unet_parts.part_interfaces(steps, parts)
        _, outputs = unet_parts.trace_values(steps, parts, interfaces, feed)
        np.testing.assert_allclose(outputs[-1]["model_output"], whole, rtol=0, atol=1e-5)
        for produced in outputs:  # one tensor never leaves a part under two names (CompiledModel lists one)
            arrays = list(produced.values())
            assert not any(np.array_equal(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:]), \
                sorted(produced)
    assert len(unet_parts.plan_parts(tiny.diffusion_model, steps, 1)) == len(steps)


@pytest.mark.slow
def test_split_unet_bundle_generates_like_keras(tiny, split_bundle):
    path, report = split_bundle
    entry = bundle_lib.read_bundle(path).component("diffusion_model")
    assert "file" not in entry and len(entry["parts"]) >= 3
    assert [spec["name"] for spec in entry["parts"][0]["inputs"]] == ["latent", "timestep_embedding", "context"]
    assert [spec["name"] for spec in entry["parts"][-1]["outputs"]] == ["model_output"]
    produced = {"latent", "timestep_embedding", "context"}
    for part in entry["parts"]:  # each part reads only what the model inputs or earlier parts produced
        assert {spec["name"] for spec in part["inputs"]} <= produced, part["file"]
        produced |= {spec["name"] for spec in part["outputs"]}
        assert os.path.getsize(os.path.join(path, part["file"])) < 2**20
    from ai_edge_litert.compiled_model import CompiledModel

    for part in entry["parts"]:  # the Android app asks LiteRT's CompiledModel for every output by its name
        listed = CompiledModel.from_file(os.path.join(path, part["file"])).get_output_tensor_details(
            part["signature"])
        assert {spec["name"] for spec in part["outputs"]} <= set(listed), part["file"]
    unet = report["components"]["diffusion_model"]
    assert unet["files"] == [part["file"] for part in entry["parts"]]
    assert unet["parity"]["cosine"] >= 0.99 and report["passed"]
    settings = dict(num_steps=3, seed=5, sampler="Euler", height=64, width=64)
    image = BundleRunner(path).text_to_image(PROMPT, **settings)
    reference = tiny.text_to_image(PROMPT, **settings)
    assert image.shape == reference.shape and image.std() > 0
    assert report["end_to_end"]["psnr_db"] > 20  # int8 weights: close to Keras, not equal


@pytest.mark.slow
def test_modified_or_missing_part_is_named(split_bundle, tmp_path):
    copy = copy_bundle(split_bundle[0], tmp_path)
    flip_byte(copy / "diffusion_model_part1.tflite")
    with pytest.raises(bundle_lib.BundleError, match="diffusion_model part 1 file 'diffusion_model_part1.tflite' "
                                                     "was modified"):
        BundleRunner(copy)
    os.remove(copy / "diffusion_model_part2.tflite")
    with pytest.raises(bundle_lib.BundleError, match="'diffusion_model_part2.tflite' is missing"):
        bundle_lib.read_bundle(copy, verify_hashes=False)


@pytest.mark.slow
def test_missing_file_is_named(fp32_bundle, tmp_path):
    copy = copy_bundle(fp32_bundle[0], tmp_path)
    os.remove(copy / "decoder.tflite")
    with pytest.raises(bundle_lib.BundleError, match="decoder.*'decoder.tflite' is missing"):
        bundle_lib.read_bundle(copy)


@pytest.mark.slow
def test_modified_file_is_named(fp32_bundle, tmp_path):
    copy = copy_bundle(fp32_bundle[0], tmp_path)
    flip_byte(copy / "diffusion_model.tflite")
    with pytest.raises(bundle_lib.BundleError, match="diffusion_model.tflite' was modified .*sha256"):
        BundleRunner(copy)


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    ({"format_version": 3}, "format_version 3 is not supported"),
    ({"format_version": 2}, "format_version 2 needs family 'sdxl'"),
    ({"format": "other"}, "has format 'other'"),
    ({"components": {"text_encoder": {}, "decoder": {}}}, "'diffusion_model' is missing"),
])
def test_bad_manifest_is_named(fp32_bundle, tmp_path, edit, message):
    copy = copy_bundle(fp32_bundle[0], tmp_path)
    with open(copy / "manifest.json") as handle:
        manifest = json.load(handle)
    manifest.update(edit)
    with open(copy / "manifest.json", "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(bundle_lib.BundleError, match=message):
        bundle_lib.read_bundle(copy)


@pytest.mark.slow
def test_runner_rejects_other_sizes_and_inpainting(runner):
    from sd_keras.errors import InputError

    with pytest.raises(InputError, match="fixed size 64x64"):
        runner.text_to_image(PROMPT, num_steps=2, height=128, width=64)
    with pytest.raises(InputError, match="multiple of 64"):
        runner.text_to_image(PROMPT, num_steps=2, height=100, width=64)
    with pytest.raises(InputError, match="inpainting is not available from a bundle"):
        runner.inpaint(PROMPT, None, None)  # refused before the image is read


def _copy_verified_files(source):
    """A stand-in for the conversion that copies the verified files: what is tested is what follows it."""
    def copy_components(models, config, image_size, mode, output_dir, **kwargs):
        for name in models:
            shutil.copy(os.path.join(source, f"{name}.tflite"), output_dir)
        return {name: {"file": f"{name}.tflite", "large_model_layout": False, "integer_only": None}
                for name in models}
    return copy_components


@pytest.mark.slow
def test_failed_gate_leaves_no_bundle(tiny, fp32_bundle, tmp_path, monkeypatch):
    # The conversion is replaced by copying the verified files: what is tested is the gate and the staging.
    monkeypatch.setattr(litert, "export_components", _copy_verified_files(fp32_bundle[0]))
    monkeypatch.setitem(verify.GATES, "fp32", {"component": {"max_abs_rel": ("<=", 0.0)}, "image": {}})
    destination = tmp_path / "bundle"
    with pytest.raises(litert.ExportError, match=r"parity gate failed .*max_abs_rel"):
        exporter.export_bundle(tiny, str(destination), quantization="fp32", calibration_prompts=["x"],
                                 calibration_steps=1, end_to_end=False, latency_runs=1)
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.report.json"]
    with open(tmp_path / "bundle.report.json") as handle:
        assert json.load(handle)["passed"] is False


@pytest.mark.slow
def test_checks_side_by_side_and_without_latency_runs_give_the_same_parity(tiny, fp32_bundle, tmp_path,
                                                                            monkeypatch):
    import threading

    monkeypatch.setattr(litert, "export_components", _copy_verified_files(fp32_bundle[0]))
    settings = dict(quantization="fp32", calibration_prompts=[PROMPT], calibration_steps=2, end_to_end=False,
                    quality_gates=False)
    one = exporter.export_bundle(tiny, str(tmp_path / "one"), latency_runs=1, **settings)
    # two components must be in their parity checks at once, or the barrier breaks and the export fails
    barrier, compare = threading.Barrier(2, timeout=120), verify.compare_component
    threads = set()

    def compare_beside_another(*args, **kwargs):
        threads.add(threading.get_ident())
        if len(threads) <= 2:
            barrier.wait()
        return compare(*args, **kwargs)

    monkeypatch.setattr(verify, "compare_component", compare_beside_another)
    two = exporter.export_bundle(tiny, str(tmp_path / "two"), latency_runs=0, check_workers=2, **settings)
    assert two["passed"] and len(threads) == 2
    assert list(two["components"]) == list(one["components"])  # the manifest's order, whatever ended first
    for name, entry in two["components"].items():
        assert entry["parity"] == one["components"][name]["parity"], name
        assert entry["latency"]["runs"] == 0 and entry["latency"]["first_call_ms"] > 0, name
        assert "median_ms" not in entry["latency"] and one["components"][name]["latency"]["runs"] == 1
    with pytest.raises(ValueError, match="check_workers 1 or more, got 3 and 0"):
        exporter.export_bundle(tiny, str(tmp_path / "three"), check_workers=0)
    assert not (tmp_path / "three").exists()


@pytest.mark.slow
def test_bundle_is_shared_like_any_output(fp32_bundle):
    """Files 0644 and folders 0755 under umask 022 (mkstemp/mkdtemp made them 0600/0700); nothing left beside."""
    path, _ = fp32_bundle
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777 & ~umask
    for name in os.listdir(path):
        assert stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode) == 0o666 & ~umask, name
    assert os.listdir(os.path.dirname(path)) == ["tiny-fp32"]


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(bundle_lib.BundleError, match="not a bundle"):
        exporter.export_bundle(tiny, str(tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_unknown_mode_and_bad_size_fail_before_any_work(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown quantization mode 'int3'"):
        exporter.export_bundle(tiny, str(tmp_path / "b"), quantization="int3")
    with pytest.raises(ValueError, match="width=100"):
        exporter.export_bundle(tiny, str(tmp_path / "b"), image_size=(64, 100))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantize.check_mode("fp8")


# -- CLI ----------------------------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sd_keras.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int3"], "unknown quantization mode 'int3'"),
    (["--size", "100x64"], "width=100 is not a multiple of 64"),
    (["--size", "big"], "--size must be WIDTHxHEIGHT"),
    (["--max-part-mb", "-1"], "--max-part-mb must be 0 (never split) or a positive size"),
    (["--quantize", "vae=int8"], "unknown component 'vae'"),
    (["--quantize", "unet=int3,decoder=fp16"], "unknown mode 'int3' for unet"),
    (["--gate-prompts", "0"], "--gate-prompts must be at least 1"),
    (["--gate-steps", "0"], "--gate-steps must be at least 1"),
    (["--latency-runs", "-1"], "--latency-runs must be 0 or more"),
    (["--check-workers", "0"], "--check-workers must be at least 1"),
    (["--evaluate-prompts", "24"], "--evaluate-prompts must be SINGLE,DOUBLE"),
])
def test_cli_export_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    from sd_keras import cli

    assert cli.main(["export", "-m", "tiny", "-o", str(tmp_path / "b"), *args]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sd-keras: error:") and message in lines[0], lines
    assert not (tmp_path / "b").exists()


def test_cli_export_failure_inside_litert_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    """An interpreter or quantizer RuntimeError during the export is reported like a failed gate, not as a
    traceback."""
    from sd_keras import cli

    def refuse(*args, **kwargs):
        raise RuntimeError("tensorflow/lite/kernels/squared_difference.cc:\n SquaredDifference only supports "
                           "FLOAT32 and INT32 now, got int16.\nNode number 12 failed to prepare.")

    monkeypatch.setattr(exporter, "export_bundle", refuse)
    assert cli.main(["export", "-m", "tiny", "-o", str(tmp_path / "b"), "--quantize", "int8-full"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sd-keras: error:") and "SquaredDifference" in lines[0], lines


@pytest.mark.slow
def test_cli_generate_from_bundle_and_modified_bundle(fp32_bundle, tmp_path):
    from sd_keras import metadata

    out = tmp_path / "out.png"
    result = run_cli("generate", "-m", fp32_bundle[0], "-p", PROMPT, "--steps", "3", "-s", "9",
                     "--sampling-method", "Euler a", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "Seed: 9" in metadata.read_parameters(str(out))
    copy = copy_bundle(fp32_bundle[0], tmp_path)
    with open(copy / "merges.txt", "a") as handle:
        handle.write("x y\n")
    result = run_cli("generate", "-m", str(copy), "-p", PROMPT, "--steps", "2", "-o", str(tmp_path / "bad.png"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("sd-keras: error:")]
    assert len(lines) == 1 and "merges.txt' was modified" in lines[0], result.stderr


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)


# -- quality gates -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_quality_gates_replay_full_trajectories_in_report_and_manifest(fp32_bundle):
    path, report = fp32_bundle
    quality = report["quality"]
    assert quality["passed"] and quality["sampler"] == verify.GATE_SAMPLER and quality["num_steps"] == 20
    # random weights: the default number of held-out prompts for a conversion check; no evaluator for tiny
    assert len(quality["prompts"]) == verify.RANDOM_WEIGHTS_GATE_PROMPTS
    assert quality["gates_run"] == ["component_snr", "image_statistics"]
    snr = quality["component_snr"]
    assert snr["diffusion_model"]["inputs"] == 20 * len(quality["prompts"])  # every step of every trajectory
    assert snr["text_encoder"]["inputs"] == len(quality["prompts"]) + 1  # and the empty prompt
    for component, values in snr.items():
        assert values["mean_db"] >= verify.SNR_MEAN_MIN_DB["fp32"] and values["worst_db"] <= values["mean_db"]
        assert all(gate["passed"] and gate["enforced"] for gate in values["gates"]), component
    assert quality["image_statistics"]["max_mean_level_diff"] < 1.0
    with open(os.path.join(path, "manifest.json")) as handle:
        manifest = json.load(handle)
    summary = manifest["quality_gates"]
    assert summary["passed"] and summary["gates_run"] == quality["gates_run"] and summary["num_steps"] == 20
    assert summary["component_snr_db"]["decoder"] == {"worst": snr["decoder"]["worst_db"],
                                                      "mean": snr["decoder"]["mean_db"]}
    bundle_lib.read_bundle(path)  # the rewritten manifest still reads


def test_quality_metrics():
    assert verify.snr_db(np.ones(8), np.ones(8)) == verify.MAX_PSNR_DB
    assert verify.snr_db(np.ones(8), np.full(8, 1.1)) == pytest.approx(20.0)
    assert np.isnan(verify.snr_db(np.ones(2), np.array([1.0, np.nan])))
    keras = {"single_color": 1.0, "single_shape": 1.0, "single_background": 0.9}
    assert verify.accuracy_drops(keras, {"single_color": 0.96, "single_shape": 1.0, "single_background": 0.85}) == []
    assert verify.accuracy_drops(keras, {"single_color": 0.94, "single_shape": 1.0, "single_background": 0.9}) == [
        "single_color 0.940 vs Keras 1.000"]
    images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)).astype(np.uint8)
    darker = (images // 2).astype(np.uint8)
    stats = verify.image_statistics(images, darker)
    assert stats["max_mean_level_diff"] > 50 and stats["max_contrast_ratio"] < 0.6
    assert not all(gate["passed"] for gate in verify.check_gates(stats, verify.IMAGE_STATISTICS_GATES))


@pytest.mark.slow
def test_prompt_following_gate_refuses_a_bundle_below_keras(tiny, fp32_bundle, tmp_path, monkeypatch):
    """The same fp32 files pass prompt-following at the default 5-point margin and are refused (nothing
    written, the reason named) when the margin demands more than Keras scores; an SNR floor the files cannot
    reach refuses them too."""
    source = fp32_bundle[0]

    def copy_components(models, config, image_size, mode, output_dir, **kwargs):
        for name in models:
            shutil.copy(os.path.join(source, f"{name}.tflite"), output_dir)
        return {name: {"file": f"{name}.tflite", "large_model_layout": False, "integer_only": None}
                for name in models}

    monkeypatch.setattr(litert, "export_components", copy_components)
    reference = verify.quality_reference(tiny, prompts=1, num_steps=4, evaluate_prompts=(2, 1))
    assert len(reference["scenes"]) == 3 and reference["keras_prompt_following"]["single_color"] is not None
    settings = dict(quantization="fp32", calibration_prompts=["x"], calibration_steps=1, end_to_end=False,
                    latency_runs=1, image_encoder=False, quality_reference=reference)
    report = exporter.export_bundle(tiny, str(tmp_path / "kept"), **settings)
    following = report["quality"]["prompt_following"]
    assert report["quality"]["gates_run"] == ["component_snr", "prompt_following"]
    assert following["passed"] and following["bundle"] == following["keras"]  # fp32: the same images
    with open(tmp_path / "kept" / "manifest.json") as handle:
        assert json.load(handle)["quality_gates"]["prompt_following"]["single_color"]["keras"] is not None
    destination = tmp_path / "refused"
    with pytest.raises(litert.ExportError, match=r"quality gate failed .*bundle not written.*prompt-following "
                                                 r"single_color"):
        exporter.export_bundle(tiny, str(destination), max_accuracy_drop=-0.5, **settings)
    assert not destination.exists()
    with open(tmp_path / "refused.report.json") as handle:
        failed = json.load(handle)
    assert failed["passed"] is False and failed["quality"]["prompt_following"]["passed"] is False
    with pytest.raises(ValueError, match=r"quality_reference was measured at \[64, 64\], the export is \[128, 64\]"):
        exporter.export_bundle(tiny, str(destination), **dict(settings, image_size=(128, 64)))
    monkeypatch.setitem(verify.SNR_MEAN_MIN_DB, "fp32", 1000.0)
    with pytest.raises(litert.ExportError, match=r"quality gate failed .*diffusion_model SNR mean"):
        exporter.export_bundle(tiny, str(destination), **settings)
    assert not destination.exists()

