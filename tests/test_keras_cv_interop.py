"""Parity with KerasCV 0.9 at full size (sd-v1 and sd-v2, 128x128), KerasCV h5 loading, backend parity.

- ``from_keras_cv_models`` copies KerasCV's (randomly initialised) sub-models into ours: every sub-model (v1:
  all four; v2: text encoder and UNet, its VAE is v1's) matches KerasCV's output within 1e-5 relative, in fp32,
  on the backend the suite runs under, and KerasCV's flat weight order is its h5 (per-layer) order.
- KerasCV h5 files (v1 text encoder, decoder, image encoder) are written by keras_cv itself under tf_keras
  (``TF_USE_LEGACY_KERAS=1``, a subprocess), the layout of KerasCV's published files; ``load_keras_cv_h5``
  reads them with h5py and matches tf_keras' outputs. Wrong files and objects are refused untouched.
- The same weights give the same outputs on the other backend (a subprocess) within 1e-4.

Run as a script (``python tests/test_keras_cv_interop.py check FILE``) it is that other-backend check;
``... parity VERSION OUT`` computes the full-size KerasCV comparison (in a child process, see ``parity_report``).
"""
import dataclasses
import gc
import inspect
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from keras import ops

from sd_keras import models
from sd_keras.config import get_config
from sd_keras.errors import InputError
from sd_keras.weights.keras_cv import (COMPONENTS, KERAS_CV_WEIGHTS, from_keras_cv_models, keras_cv_h5_weights,
                                       load_keras_cv_h5, read_keras_h5)

SIZE = 128  # KerasCV image size for the parity models (latent 16x16)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.abs(actual - expected).max() / np.abs(expected).max()


def component_inputs(component, config, seed=0, size=SIZE):
    """Random numpy inputs of a sub-model in KerasCV's call format."""
    rng = np.random.default_rng(seed)
    text = config.text_encoder
    if component == "text_encoder":
        return {"tokens": rng.integers(0, text.vocab_size, (1, text.max_length)).astype("int32"),
                "positions": np.arange(text.max_length, dtype="int32")[None]}
    latent_size = size // config.vae.downsample_factor
    if component == "diffusion_model":
        return {"latent": rng.standard_normal((1, latent_size, latent_size, config.unet.in_channels), "float32"),
                "timestep_embedding": rng.standard_normal((1, config.unet.timestep_dim), "float32"),
                "context": rng.standard_normal((1, text.max_length, config.unet.context_dim), "float32")}
    if component == "decoder":
        return rng.standard_normal((1, latent_size, latent_size, config.vae.latent_channels), "float32")
    return rng.uniform(-1, 1, (1, size, size, config.vae.image_channels)).astype("float32")


def run(model, inputs):
    tensors = {k: ops.convert_to_tensor(v) for k, v in inputs.items()} if isinstance(inputs, dict) \
        else ops.convert_to_tensor(inputs)
    return ops.convert_to_numpy(model(tensors))


def perturb_vectors(model, rng):
    """Fresh Keras models have zero biases and unit gammas; make them distinct so a swap would show."""
    for variable in model.weights:
        if len(variable.shape) == 1:
            variable.assign(np.asarray(variable) + rng.normal(0, 0.1, variable.shape).astype("float32"))


# -- the same weights on the other backend -----------------------------------------------------------------

# The tiny preset covers SD 2's UNet options (Dense projections, fixed head size) and "tiny-sd1" SD 1's (1x1
# conv projections, fixed head count) plus V2's tanh-GELU text MLP; sd-v1's text encoder adds full-size
# numerics. The full-size models are compared with KerasCV on each backend below.
TINY_SD1 = dataclasses.replace(
    get_config("tiny"), name="tiny-sd1",
    text_encoder=dataclasses.replace(get_config("tiny").text_encoder, activation="gelu_tanh"),
    unet=dataclasses.replace(get_config("tiny").unet, num_heads=2, head_size=None, linear_proj=False))
CROSS_BACKEND_CASES = ([("tiny", c) for c in COMPONENTS] + [("tiny-sd1", "text_encoder"),
                       ("tiny-sd1", "diffusion_model"), ("sd-v1", "text_encoder")])


def cross_backend_results(case):
    """Outputs and per-weight sums of a model built with seed 0 (host-seeded init: same weights everywhere)."""
    preset, component = case
    config = TINY_SD1 if preset == "tiny-sd1" else get_config(preset)
    keras.utils.set_random_seed(0)
    model = models.build(component, config)
    inputs = component_inputs(component, config, seed=1, size=64)
    sums = np.array([np.asarray(w, np.float64).sum() for w in model.weights])
    output = run(model, inputs)
    del model
    gc.collect()
    return output, sums


def check_cross_backend(path):
    """The other-backend half: rebuild every case and compare with the first backend's results."""
    reference = np.load(path)
    failures = []
    for case in CROSS_BACKEND_CASES:
        key = "/".join(case)
        output, sums = cross_backend_results(case)
        if not np.array_equal(sums, reference[key + "/sums"]):
            failures.append(f"{key}: seed 0 gives other weights on {keras.backend.backend()}")
        error = relative_error(output, reference[key + "/output"])
        print(f"{key}: relative error {error:.2e} on {keras.backend.backend()}")
        if not error <= 1e-4:
            failures.append(f"{key}: relative error {error:.2e} > 1e-4")
    return failures


@pytest.mark.slow
def test_same_weights_same_outputs_on_the_other_backend(tmp_path):
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    path = tmp_path / "reference.npz"
    arrays = {}
    for case in CROSS_BACKEND_CASES:
        arrays["/".join(case) + "/output"], arrays["/".join(case) + "/sums"] = cross_backend_results(case)
    np.savez(path, **arrays)
    env = dict(os.environ, KERAS_BACKEND=other)
    result = subprocess.run([sys.executable, __file__, "check", str(path)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# -- KerasCV h5 files --------------------------------------------------------------------------------------

LEGACY_WRITER = r"""
import gc, json, sys
import numpy as np
import tensorflow as tf
from keras_cv.src.backend import config
assert not config.keras_3(), "expected keras_cv on tf_keras (TF_USE_LEGACY_KERAS=1)"
from keras_cv.src.models.stable_diffusion.decoder import Decoder
from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

out, size = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)

def perturb(model):
    for v in model.weights:
        if len(v.shape) == 1:
            v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype("float32"))
    return model

def h5_order_shapes(model):  # what tf_keras' save_weights writes, layer by layer
    return [[int(d) for d in w.shape] for layer in model.layers
            for w in layer.trainable_weights + layer.non_trainable_weights]

def release():  # one full-size model at a time: this runs beside the test process
    gc.collect()
    tf.keras.backend.clear_session()

results, shapes = {}, {}
for name, build in [("text_encoder", lambda: TextEncoder(77, download_weights=False)),
                    ("decoder", lambda: Decoder(size, size, download_weights=False)),
                    ("image_encoder", lambda: ImageEncoder(download_weights=False))]:
    model = perturb(build())
    model.save_weights(f"{out}/{name}.h5")
    x = np.load(f"{out}/inputs_{name}.npz")
    x = {k: x[k] for k in x.files} if name == "text_encoder" else x["x"]
    results[name] = model.predict_on_batch(x)
    shapes[name] = h5_order_shapes(model)
    del model
    release()
np.savez(f"{out}/outputs.npz", **results)
json.dump(shapes, open(f"{out}/shapes.json", "w"))
"""
H5_COMPONENTS = ("text_encoder", "decoder", "image_encoder")
H5_SIZE = 64  # image size of the h5 checks (the sd_keras models take any size; this keeps them quick)


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    """KerasCV v1 text encoder / decoder / image encoder h5 files written by keras_cv under tf_keras."""
    out = tmp_path_factory.mktemp("keras_cv_h5")
    config = get_config("sd-v1")
    for component in H5_COMPONENTS:
        inputs = component_inputs(component, config, seed=2, size=H5_SIZE)
        np.savez(out / f"inputs_{component}.npz", **(inputs if isinstance(inputs, dict) else {"x": inputs}))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", KERAS_BACKEND="tensorflow")  # tf_keras' ops come from TF
    result = subprocess.run([sys.executable, "-c", LEGACY_WRITER, str(out), str(H5_SIZE)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.keras_cv
@pytest.mark.parametrize("component", H5_COMPONENTS)
def test_load_keras_cv_h5_matches_keras_cv(legacy_files, component):
    path = legacy_files / f"{component}.h5"
    config = get_config("sd-v1")
    model = models.build(component, config)
    handle, entries = read_keras_h5(path)
    with handle:
        file_shapes = [list(dataset.shape) for _, dataset in entries]
    assert file_shapes == json.loads((legacy_files / "shapes.json").read_text())[component]
    load_keras_cv_h5(model, path, component)
    inputs = np.load(legacy_files / f"inputs_{component}.npz")
    inputs = {k: inputs[k] for k in inputs.files} if component == "text_encoder" else inputs["x"]
    error = relative_error(run(model, inputs), np.load(legacy_files / "outputs.npz")[component])
    assert error <= 1e-5, f"{component}: relative error {error:.2e}"


@pytest.mark.slow
@pytest.mark.keras_cv
def test_wrong_component_file_is_refused_and_nothing_is_assigned(legacy_files):
    model = models.build_image_encoder("sd-v1")
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"decoder\.h5.*image_encoder"):
        load_keras_cv_h5(model, legacy_files / "decoder.h5", "image_encoder")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.slow
@pytest.mark.keras_cv
def test_weights_that_do_not_fit_the_config_are_refused(legacy_files):
    model = models.build_text_encoder("tiny")
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"text_encoder\.h5: weight #0 .*\(49408, 768\).*\(49408, 32\)"):
        load_keras_cv_h5(model, legacy_files / "text_encoder.h5", "text_encoder")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def write_legacy_h5(path, model, root=None, chunk=None):
    """Our own model in the legacy layout, optionally under ``model_weights/`` with chunked attributes."""
    import h5py

    with h5py.File(path, "w") as handle:
        group = handle.create_group(root) if root else handle
        names = [layer.name.encode() for layer in model.layers]
        if chunk:
            for index in range(0, len(names), chunk):
                group.attrs[f"layer_names{index // chunk}"] = names[index:index + chunk]
        else:
            group.attrs["layer_names"] = names
        for layer in model.layers:
            layer_group = group.create_group(layer.name)
            layer_group.attrs["weight_names"] = [f"{w.path}:0".encode() for w in layer.weights]
            for weight in layer.weights:
                layer_group.create_dataset(f"{weight.path}:0", data=np.asarray(weight))


def test_load_keras_cv_h5_reads_model_weights_group_and_chunked_attributes(tmp_path):
    keras.utils.set_random_seed(0)
    source = models.build_decoder("tiny")
    path = tmp_path / "decoder.h5"
    write_legacy_h5(path, source, root="model_weights", chunk=7)
    keras.utils.set_random_seed(1)
    target = models.build_decoder("tiny")
    load_keras_cv_h5(target, path, "decoder")
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), target.get_weights()))


def test_keras_cv_h5_weights_fill_the_registry_s_models_under_a_policy(tmp_path):
    keras.utils.set_random_seed(0)
    source = models.build("text_encoder", "tiny")
    write_legacy_h5(tmp_path / "text_encoder.h5", source)
    weights = keras_cv_h5_weights({"text_encoder": tmp_path / "text_encoder.h5"}, source="my preset")
    assert list(weights) == ["text_encoder"] and weights.source == "my preset"
    target = models.build("text_encoder", "tiny", "mixed_bfloat16", weights=weights["text_encoder"])
    assert models.built_with(target, "mixed_bfloat16")  # built once in the compute policy, then filled
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), target.get_weights()))
    with pytest.raises(InputError, match="component must be one of"):
        keras_cv_h5_weights({"unet": tmp_path / "text_encoder.h5"})


def test_a_keras_cv_preset_loads_through_the_registry(tmp_path, monkeypatch):
    # presets.load -> (config, KerasCV h5 weights) -> StableDiffusion builds each component once and fills it;
    # the tiny config stands in for sd-v1 (whose UNet alone is 3.4 GB)
    from sd_keras import presets
    from sd_keras.pipeline import StableDiffusion

    keras.utils.set_random_seed(0)
    sources = {component: models.build(component, "tiny") for component in COMPONENTS}
    for component, model in sources.items():
        write_legacy_h5(tmp_path / f"{component}.h5", model)
    monkeypatch.setattr(presets, "RANDOM_PRESETS", ())
    monkeypatch.setattr(presets, "KERAS_CV_PRESETS", ("tiny",))
    monkeypatch.setattr(presets, "keras_cv_files", lambda name: [f"{c}.h5" for c in COMPONENTS])
    monkeypatch.setattr("sd_keras.weights.download.fetch",
                        lambda remotes, name: [str(tmp_path / remote) for remote in remotes])
    config, weights = presets.load("tiny")
    assert config.name == "tiny" and list(weights) == list(COMPONENTS) and weights.source == "preset 'tiny'"
    sd = StableDiffusion.from_preset("tiny", dtype="bfloat16")
    assert models.built_with(sd.diffusion_model, "bfloat16") and models.built_with(sd.decoder, "float32")
    for component, model in sources.items():  # the h5 file's float32 values, rounded to bfloat16 where stored so
        for a, b in zip(getattr(sd, component).get_weights(), model.get_weights()):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b.astype(a.dtype), np.float32))


def test_a_file_that_is_not_keras_weights_is_refused(tmp_path):
    model = models.build_decoder("tiny")
    garbage = tmp_path / "weights.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="weights.h5"):
        load_keras_cv_h5(model, garbage, "decoder")
    import h5py

    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match="empty.h5.*layer_names"):
        load_keras_cv_h5(model, tmp_path / "empty.h5", "decoder")
    with pytest.raises(ValueError, match="component"):
        load_keras_cv_h5(model, garbage, "vae")


@pytest.mark.keras_cv
def test_from_keras_cv_models_refuses_other_objects():
    import keras_cv  # noqa: F401  (the check then runs its isinstance branch)

    with pytest.raises(TypeError, match=r"StableDiffusion.*got builtins\.str"):
        from_keras_cv_models("sd-v1")
    with pytest.raises(TypeError, match=r"StableDiffusionV2, got .*Functional"):
        from_keras_cv_models(models.build_decoder("tiny"))


@pytest.mark.slow
@pytest.mark.keras_cv
def test_weight_table_is_keras_cv_s():
    from keras_cv.src.models.stable_diffusion import decoder, diffusion_model, image_encoder, text_encoder

    modules = {"text_encoder": text_encoder, "diffusion_model": diffusion_model, "decoder": decoder,
               "image_encoder": image_encoder}
    for version, table in KERAS_CV_WEIGHTS.items():
        assert set(table) == set(COMPONENTS), version
        for component, (url, sha256) in table.items():
            source = inspect.getsource(modules[component])
            assert url in source and sha256 in source, (version, component)
    assert KERAS_CV_WEIGHTS["sd-v1"]["text_encoder"] != KERAS_CV_WEIGHTS["sd-v2"]["text_encoder"]


# -- parity with KerasCV models in memory ------------------------------------------------------------------


PARITY_COMPONENTS = {"sd-v1": COMPONENTS, "sd-v2": ("text_encoder", "diffusion_model")}  # V2 reuses v1's VAE


def recording_keras_cv(version):
    """A KerasCV StableDiffusion(V2) at SIZE whose sub-model properties build KerasCV's classes without the
    download, record KerasCV's output on fixed inputs, and keep no reference: ``from_keras_cv_models`` reads
    each property once, so at most one full-size KerasCV model is alive beside ours (~9 GB peak for sd-v2)."""
    import keras_cv
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel, DiffusionModelV2
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder, TextEncoderV2

    v2 = version == "sd-v2"
    builders = {
        "text_encoder": lambda: (TextEncoderV2 if v2 else TextEncoder)(77, download_weights=False),
        "diffusion_model": lambda: (DiffusionModelV2 if v2 else DiffusionModel)(SIZE, SIZE, 77,
                                                                               download_weights=False),
        "decoder": lambda: Decoder(SIZE, SIZE, download_weights=False),
        "image_encoder": lambda: ImageEncoder(download_weights=False),
    }
    config, rng = get_config(version), np.random.default_rng(0)

    def sub_model(component):
        def build(kcv):
            gc.collect()  # the sub-model handed out before: Keras models hold reference cycles
            model = builders[component]()
            perturb_vectors(model, rng)
            if component in PARITY_COMPONENTS[version]:
                inputs = component_inputs(component, config)
                if component == "diffusion_model":
                    inputs["timestep_embedding"] = ops.convert_to_numpy(kcv._get_timestep_embedding(681, 1))
                per_layer = [w for layer in model.layers
                             for w in layer.trainable_weights + layer.non_trainable_weights]
                kcv.recorded[component] = {
                    "inputs": inputs, "output": run(model, inputs),
                    "h5_order": [id(w) for w in per_layer] == [id(w) for w in model.weights]}
            return model
        return property(build)

    base = keras_cv.models.StableDiffusionV2 if v2 else keras_cv.models.StableDiffusion
    recording = type("Recording" + base.__name__, (base,), {c: sub_model(c) for c in COMPONENTS})
    kcv = recording(img_height=SIZE, img_width=SIZE, jit_compile=False)
    kcv.recorded = {}
    return kcv


def parity_report(version):
    """Build KerasCV's models and ours from them, compare on fixed inputs; plain data for the tests below.

    Runs in a child process (``python tests/test_keras_cv_interop.py parity VERSION OUT``): the full-size
    models take up to ~11 GB, and memory a process has used is not given back to the system, so the rest of the
    suite would run on top of it."""
    kcv = recording_keras_cv(version)
    config, weights = from_keras_cv_models(kcv)
    ours = models.build_all(config, weights)
    recorded = kcv.recorded
    del kcv, weights
    gc.collect()
    reference = get_config(version)
    keras_cv_embedding = recorded["diffusion_model"]["inputs"]["timestep_embedding"]
    ours_embedding = ops.convert_to_numpy(models.timestep_embedding(ops.convert_to_tensor([681.0]), 320))
    return {
        "name": config.name, "image_size": list(config.image_size),
        "architecture_equals_preset": (config.text_encoder, config.unet, config.vae) == (
            reference.text_encoder, reference.unet, reference.vae),
        "components": sorted(ours), "keras_models": all(isinstance(m, keras.Model) for m in ours.values()),
        "timestep_embedding_max_diff": float(np.abs(ours_embedding - keras_cv_embedding).max()),
        "relative_errors": {component: float(relative_error(run(ours[component], record["inputs"]),
                                                            record["output"]))
                            for component, record in recorded.items()},
        "h5_order": {component: record["h5_order"] for component, record in recorded.items()},
    }


@pytest.fixture(scope="module", params=["sd-v1", "sd-v2"])
def keras_cv_parity(request, tmp_path_factory):
    """``parity_report`` of one version, computed in a child process on this suite's backend."""
    out = tmp_path_factory.mktemp("parity") / f"{request.param}.json"
    result = subprocess.run([sys.executable, __file__, "parity", request.param, str(out)], capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0 and out.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    with open(out) as handle:
        return types.SimpleNamespace(version=request.param, **json.load(handle))


@pytest.mark.slow
@pytest.mark.keras_cv
def test_from_keras_cv_models_detects_version_and_size(keras_cv_parity):
    result = keras_cv_parity
    assert result.name == result.version
    assert result.image_size == [SIZE, SIZE]  # the KerasCV model's, not the default 512
    assert result.architecture_equals_preset
    assert result.components == sorted(COMPONENTS) and result.keras_models


@pytest.mark.slow
@pytest.mark.keras_cv
def test_sub_models_match_keras_cv(keras_cv_parity):
    result = keras_cv_parity
    assert result.timestep_embedding_max_diff <= 1e-6
    errors = result.relative_errors
    assert set(errors) == set(PARITY_COMPONENTS[result.version])
    assert all(error <= 1e-5 for error in errors.values()), f"{result.version}: relative errors {errors}"


@pytest.mark.slow
@pytest.mark.keras_cv
def test_keras_cv_flat_weight_order_is_its_h5_order(keras_cv_parity):
    """Keras loads KerasCV's published files layer by layer in ``model.layers`` order (the legacy h5 loader).
    KerasCV's flat ``weights`` (= ours, shown by the parity above) are that same sequence, so a positional
    copy of a file is right for the UNets too, which are too big to write here (3.4 GB); the smaller
    components are loaded from real files in test_load_keras_cv_h5_matches_keras_cv."""
    in_h5_order = keras_cv_parity.h5_order
    assert set(in_h5_order) == set(PARITY_COMPONENTS[keras_cv_parity.version])
    assert all(in_h5_order.values()), in_h5_order


if __name__ == "__main__" and sys.argv[1:2] == ["check"]:
    problems = check_cross_backend(sys.argv[2])
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
if __name__ == "__main__" and sys.argv[1:2] == ["parity"]:
    report = parity_report(sys.argv[2])
    with open(sys.argv[3] + ".tmp", "w") as handle:
        json.dump(report, handle)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])


pytestmark = pytest.mark.once  # TensorFlow suite: KerasCV parity there, JAX through the cross-backend subprocess
