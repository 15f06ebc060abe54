"""AI upscalers (RRDBNet, SRVGGNetCompact): parity with spandrel on CPU torch with random weights, loading of every
key layout from .pth and .safetensors, tiled inference against the whole image, and the tiling maths."""
import fractions
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_keras import tiling
from sd_keras.errors import InputError
from sd_keras.models.upscalers import UpscalerConfig, build_upscaler
from sd_keras.upscale import Upscalers, upscale
from sd_keras.weights.upscalers import WHERE_TO_GET, load_upscaler, read_upscaler

PARITY = 1e-4  # max |keras - spandrel| / max |spandrel|


def _spandrel():
    """spandrel (the reference A1111 and ComfyUI use). Two of its restoration architectures (LaMa, RestoreFormer)
    import torchvision at import time; where torchvision cannot be imported (PyPI's torchvision wheels need PyPI's
    CUDA build of torch, so they fail beside a CPU-only torch build) placeholders let spandrel's registry import.
    Neither architecture is used here: ESRGAN and Compact need torch only."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    placeholders = {}
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        functional = types.ModuleType("torchvision.transforms.functional")

        def unavailable(*args, **kwargs):
            raise RuntimeError("torchvision is not available")

        functional.InterpolationMode = type("InterpolationMode", (), {"NEAREST": "nearest", "BILINEAR": "bilinear"})
        functional.rotate = functional.normalize = unavailable
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        package = types.ModuleType("torchvision")
        package.transforms = transforms
        placeholders = {"torchvision": package, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional}
        sys.modules.update(placeholders)
    try:
        return pytest.importorskip("spandrel", reason="the upscaler parity oracle: pip install --no-deps "
                                   "'spandrel>=0.4.2' einops (setup.py's 'parity' extra)")
    finally:  # other tests' libraries (transformers) must not find the placeholders
        for name in placeholders:
            sys.modules.pop(name, None)


def _conv(rng, out_channels, in_channels):
    bound = 1.0 / np.sqrt(in_channels * 9)
    return {"weight": torch.from_numpy(rng.uniform(-bound, bound, (out_channels, in_channels, 3, 3))
                                       .astype(np.float32)),
            "bias": torch.from_numpy(rng.uniform(-bound, bound, out_channels).astype(np.float32))}


def _add(state, name, tensors):
    state.update({f"{name}.{kind}": value for kind, value in tensors.items()})


def rrdbnet_state(seed=0, *, num_feat=16, num_block=1, num_grow_ch=32, in_channels=3, stages=2):
    """A random RRDBNet state dict in the new (basicsr / Real-ESRGAN) key layout."""
    rng = np.random.default_rng(seed)
    state = {}
    _add(state, "conv_first", _conv(rng, num_feat, in_channels))
    for block in range(num_block):
        for dense in range(1, 4):
            for conv in range(1, 6):
                out_channels = num_feat if conv == 5 else num_grow_ch
                _add(state, f"body.{block}.rdb{dense}.conv{conv}",
                     _conv(rng, out_channels, num_feat + (conv - 1) * num_grow_ch))
    _add(state, "conv_body", _conv(rng, num_feat, num_feat))
    for stage in range(1, stages + 1):
        _add(state, f"conv_up{stage}", _conv(rng, num_feat, num_feat))
    _add(state, "conv_hr", _conv(rng, num_feat, num_feat))
    _add(state, "conv_last", _conv(rng, 3, num_feat))
    return state


def srvgg_state(seed=0, *, num_feat=16, num_conv=4, scale=4):
    """A random SRVGGNetCompact state dict (PReLU slopes around 0.25, as PyTorch initialises them, varied)."""
    rng = np.random.default_rng(seed)
    state = {}
    for index in range(num_conv + 1):
        _add(state, f"body.{2 * index}", _conv(rng, num_feat, 3 if index == 0 else num_feat))
        state[f"body.{2 * index + 1}.weight"] = torch.from_numpy(rng.uniform(0.05, 0.45, num_feat)
                                                                .astype(np.float32))
    _add(state, f"body.{2 * num_conv + 2}", _conv(rng, 3 * scale * scale, num_feat))
    return state


def _reference(state, image):
    """spandrel's output for a uint8 (H, W, 3) image, as float32 NHWC, and its descriptor."""
    descriptor = _spandrel().ModelLoader().load_from_state_dict(state)
    descriptor.model.eval()
    with torch.no_grad():
        x = torch.from_numpy(image.astype(np.float32)[None] / 255.0).permute(0, 3, 1, 2)
        return descriptor.model(x).permute(0, 2, 3, 1).numpy(), descriptor


def _keras(model, image):
    return np.asarray(model.predict_on_batch(image.astype(np.float32)[None] / 255.0))


def _relative(ours, reference):
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _image(height, width, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(state, path):
    if str(path).endswith(".safetensors"):
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path


def test_rrdbnet_x4_matches_spandrel_from_pth_params_ema(tmp_path):
    state = rrdbnet_state(0)
    path = _save({"params_ema": state, "params": rrdbnet_state(9)}, tmp_path / "RealESRGAN_x4_random.pth")
    model = load_upscaler(path)
    config = model.upscaler_config
    assert (config.architecture, config.scale, config.num_feat, config.num_block, config.num_grow_ch,
            config.unshuffle) == ("rrdbnet", 4, 16, 1, 32, 1)
    image = _image(13, 11)
    reference, descriptor = _reference(state, image)
    assert descriptor.scale == 4
    ours = _keras(model, image)
    assert ours.shape == reference.shape == (1, 52, 44, 3)
    assert _relative(ours, reference) <= PARITY


def test_rrdbnet_x2_pixel_unshuffle_matches_spandrel_from_safetensors(tmp_path):
    """Real-ESRGAN x2: the image is folded 2x2 into 12 channels; odd sizes are padded by reflection and cropped."""
    state = rrdbnet_state(1, in_channels=12)
    model = load_upscaler(_save(state, tmp_path / "x2.safetensors"))
    assert (model.upscaler_config.scale, model.upscaler_config.unshuffle) == (2, 2)
    image = _image(13, 11)
    reference, descriptor = _reference(state, image)
    assert descriptor.scale == 2
    ours = upscale(image, model, tile=0)
    assert ours.shape == (26, 22, 3)
    expected = np.clip(np.round(reference[0] * 255), 0, 255)
    assert np.abs(ours.astype(np.float32) - expected).max() <= 1
    padded = np.pad(image, ((0, 1), (0, 1), (0, 0)), mode="reflect")
    assert _relative(_keras(model, padded)[:, :26, :22], reference) <= PARITY


def test_rrdbnet_x1_pixel_unshuffle_by_4_matches_spandrel(tmp_path):
    """Real-ESRGAN x1 (restoration) models fold 4x4 pixels into 48 channels and upsample by 4."""
    state = rrdbnet_state(4, in_channels=48)
    model = load_upscaler(_save(state, tmp_path / "x1.pth"))
    assert (model.upscaler_config.scale, model.upscaler_config.unshuffle) == (1, 4)
    image = _image(16, 12)
    reference, descriptor = _reference(state, image)
    assert descriptor.scale == 1
    assert _relative(_keras(model, image), reference) <= PARITY


def test_old_esrgan_layout_matches_spandrel(tmp_path):
    """Original ESRGAN files (model.0, model.1.sub.N.RDBk.convj.0, model.3, ...), here the x4 layout spandrel
    writes for the same random weights."""
    state = rrdbnet_state(2)
    _, descriptor = _reference(state, _image(4, 4))
    old_state = descriptor.model.state_dict()
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old_state and "model.10.weight" in old_state
    model = load_upscaler(_save(old_state, tmp_path / "4x_old.pth"))
    assert (model.upscaler_config.scale, model.upscaler_config.num_block) == (4, 1)
    image = _image(9, 14)
    reference, _ = _reference(old_state, image)
    assert _relative(_keras(model, image), reference) <= PARITY


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_srvgg_compact_matches_spandrel(tmp_path, suffix):
    state = srvgg_state(3)
    model = load_upscaler(_save(state, tmp_path / f"realesr-general-x4-random{suffix}"))
    config = model.upscaler_config
    assert (config.architecture, config.scale, config.num_feat, config.num_conv) == ("srvgg", 4, 16, 4)
    image = _image(15, 9)
    reference, descriptor = _reference(state, image)
    assert descriptor.scale == 4
    assert _relative(_keras(model, image), reference) <= PARITY


@pytest.mark.parametrize("dtype, suffix", [(torch.float16, ".safetensors"), (torch.bfloat16, ".safetensors"),
                                           (torch.float16, ".pth")])
def test_half_precision_files_load_as_float32(tmp_path, dtype, suffix):
    """Community files are often fp16 or bf16: read and widened, they give the float32 file's output closely."""
    import keras

    state = srvgg_state(8, num_conv=2)
    full = load_upscaler(_save(state, tmp_path / f"full{suffix}"))
    half = load_upscaler(_save({key: value.to(dtype) for key, value in state.items()}, tmp_path / f"half{suffix}"))
    assert all(weight.dtype == "float32" for weight in half.weights)
    image = _image(9, 9)
    assert _relative(_keras(half, image), _keras(full, image)) < 2e-2
    rebuilt = keras.Model.from_config(half.get_config())  # PixelShuffle round-trips through its config
    rebuilt.set_weights(half.get_weights())
    np.testing.assert_allclose(_keras(rebuilt, image), _keras(half, image), rtol=1e-6, atol=1e-6)


def test_srvgg_x2_scale_from_last_convolution(tmp_path):
    config, weights = read_upscaler(_save(srvgg_state(4, num_conv=2, scale=2), tmp_path / "x2.pth"))
    assert (config.scale, config.num_conv) == (2, 2)
    assert weights["body_1/alpha"].shape == (1, 1, 16)


def test_tiled_matches_whole_image_within_one_level(tmp_path):
    """Tiles of 24 pixels with 12 shared, blended, against the whole image at once: at most 1/255 apart."""
    compact = load_upscaler(_save(srvgg_state(5), tmp_path / "compact.pth"))
    image = _image(50, 41, seed=7)
    whole = upscale(image, compact, tile=0)
    tiled = upscale(image, compact, tile=24, overlap=12)
    assert tiling.tile_count(50, 41, 24, 12) >= 9
    assert tiled.shape == whole.shape == (200, 164, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_tiled_unshuffled_rrdbnet_matches_whole_image(tmp_path):
    """An x2 RRDBNet folds 2x2 pixels: tiles start on even pixels; a 33x30 image is padded and cropped."""
    model = load_upscaler(_save(rrdbnet_state(6, in_channels=12), tmp_path / "x2.safetensors"))
    image = _image(33, 30, seed=8)
    whole = upscale(image, model, tile=0)
    tiled = upscale(image, model, tile=24, overlap=16)
    assert tiled.shape == whole.shape == (66, 60, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_scale_other_than_the_models_resizes_with_lanczos(tmp_path):
    model = load_upscaler(_save(srvgg_state(7, num_conv=1), tmp_path / "c.pth"))
    image = _image(10, 12)
    assert upscale(image, model, 2).shape == (20, 24, 3)
    assert upscale(image, model, size=(30, 17)).shape == (17, 30, 3)
    assert upscale(np.stack([image, image]), "Nearest", 3).shape == (2, 30, 36, 3)
    np.testing.assert_array_equal(upscale(image, "Nearest", 2)[::2, ::2], image)


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_file_names_where_to_get_weights(tmp_path):
    with pytest.raises(InputError, match="no such upscaler file.*Real-ESRGAN.*openmodeldb"):
        load_upscaler(tmp_path / "RealESRGAN_x4plus.pth")
    assert "github.com/xinntao/Real-ESRGAN/releases" in WHERE_TO_GET


def test_unknown_layout_names_the_keys_found(tmp_path):
    path = _save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match=r"not an ESRGAN.*1 tensors: encoder\.conv\.weight"):
        load_upscaler(path)


def test_esrgan_plus_and_stray_tensors_are_refused(tmp_path):
    state = rrdbnet_state(0)
    plus = dict(state, **{"body.0.rdb1.conv1x1.weight": torch.zeros(32, 16, 1, 1)})
    with pytest.raises(InputError, match="ESRGAN\\+"):
        load_upscaler(_save(plus, tmp_path / "plus.pth"))
    stray = dict(state, **{"extra.weight": torch.zeros(3)})
    with pytest.raises(InputError, match="extra"):
        load_upscaler(_save(stray, tmp_path / "stray.pth"))
    wrong = dict(state, **{"conv_last.weight": torch.zeros(3, 8, 3, 3)})
    with pytest.raises(InputError, match="conv_last"):
        load_upscaler(_save(wrong, tmp_path / "wrong.pth"))


def test_unsafe_pickle_is_an_input_error(tmp_path):
    import os
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"params_ema": Exploit()}))
    with pytest.raises(InputError, match="refus|not allowed|global"):
        load_upscaler(path)


def test_upscalers_folder_lists_files_and_refuses_unknown_names(tmp_path):
    _save(srvgg_state(0, num_conv=1), tmp_path / "compact-x4.pth")
    (tmp_path / "notes.txt").write_text("not a model")
    upscalers = Upscalers(str(tmp_path))
    assert upscalers.names(with_none=True) == ["None", "Lanczos", "Nearest", "compact-x4"]
    assert upscalers.get("compact-x4").upscaler_config.scale == 4
    assert upscalers.get("compact-x4") is upscalers.get("compact-x4")
    with pytest.raises(InputError, match="unknown; available: Lanczos, Nearest, compact-x4"):
        upscalers.get("RealESRGAN_x4plus")


def test_bad_image_scale_and_tile_are_input_errors():
    image = _image(8, 8)
    for call, cause in [(lambda: upscale(image.astype(np.float32), "Lanczos", 2), "uint8"),
                        (lambda: upscale(image, "Lanczos", 0), "scale 0"),
                        (lambda: upscale(image, "Lanczos", 16), "at most 8"),
                        (lambda: upscale(image, "Lanczos", size=(0, 5)), "size 0x5")]:
        with pytest.raises(InputError, match=cause):
            call()
    model = build_upscaler(UpscalerConfig("srvgg", num_feat=4, num_conv=1))
    model.upscaler_config = UpscalerConfig("srvgg", num_feat=4, num_conv=1)
    with pytest.raises(InputError, match="tile 4"):
        upscale(image, model, tile=4)


# ------------------------------------------------------------------------------------------------ tiling
def test_tile_grid_golden_values():
    """Golden values shared with the Kotlin port (android_demo/core TilingTest)."""
    assert tiling.tile_starts(100, 40, 8) == [0, 30, 60]
    assert tiling.tile_starts(40, 40, 8) == [0]
    assert tiling.tile_starts(30, 40, 8) == [0]
    assert tiling.tile_starts(41, 40, 8) == [0, 1]
    assert tiling.tile_starts(512, 192, 32) == [0, 160, 320]
    assert tiling.tile_starts(66, 24, 16, align=2) == [0, 6, 14, 20, 28, 34, 42]
    np.testing.assert_allclose(tiling.feather_weights(8, 0, 8), [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0])
    np.testing.assert_allclose(tiling.feather_weights(6, 4, 0), [0, 0.25, 0.75, 1, 1, 1])


def test_tiled_apply_blends_to_a_partition_of_unity():
    """Any tiling of a function that ignores neighbours reproduces it exactly, at integer and fractional
    scales (the tiled VAE's x8 decoder and /8 encoder)."""
    image = np.random.default_rng(0).random((2, 48, 72, 4), dtype=np.float32)
    upsample = lambda x: np.repeat(np.repeat(x, 8, axis=1), 8, axis=2) * 2.0  # noqa: E731
    np.testing.assert_allclose(tiling.tiled_apply(upsample, image, 8, tile=16, overlap=8), upsample(image),
                               rtol=1e-6)
    pool = lambda x: x.reshape(x.shape[0], x.shape[1] // 8, 8, x.shape[2] // 8, 8, -1).mean(axis=(2, 4))  # noqa
    out = tiling.tiled_apply(pool, image, fractions.Fraction(1, 8), tile=24, overlap=8)
    np.testing.assert_allclose(out, pool(image), rtol=1e-6)


def test_tiled_apply_bad_settings():
    image = np.zeros((1, 30, 30, 3), np.float32)
    with pytest.raises(InputError, match="overlap 16"):
        tiling.tiled_apply(lambda x: x, image, 1, tile=16, overlap=16)
    with pytest.raises(InputError, match="whole output pixels"):
        tiling.tiled_apply(lambda x: x, image, fractions.Fraction(1, 8), tile=16, overlap=8)
    with pytest.raises(InputError, match="gave"):
        tiling.tiled_apply(lambda x: x, image, 2, tile=16, overlap=8)


# ------------------------------------------------------------------------------------------------ front ends
def _png(path, image, texts=()):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts:
        info.add_text(key, value)
    Image.fromarray(image).save(path, pnginfo=info)
    return str(path)


def _texts(path_or_bytes):
    import io

    from PIL import Image

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        return np.asarray(image), dict(image.text)


def test_cli_upscale_writes_pngs_with_metadata_kept(tmp_path, capsys):
    from sd_keras import cli

    model = _save(srvgg_state(0, num_conv=1), tmp_path / "compact-x4.pth")
    parameters = "a red circle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 12x10, Model: shapes"
    first = _png(tmp_path / "a.png", _image(10, 12), [("parameters", parameters)])
    second = _png(tmp_path / "b.png", _image(7, 5, seed=3))
    out = tmp_path / "out" / "big.png"
    assert cli.main(["upscale", first, second, "-m", str(model), "-o", str(out), "--tile", "8",
                     "--overlap", "4"]) == 0
    pixels, texts = _texts(tmp_path / "out" / "big_0.png")
    assert pixels.shape == (40, 48, 3)
    assert texts == {"parameters": parameters,
                     "postprocessing": "Postprocess upscale by: 4, Postprocess upscaler: compact-x4"}
    np.testing.assert_array_equal(pixels, upscale(_image(10, 12), load_upscaler(model), tile=8, overlap=4))
    assert _texts(tmp_path / "out" / "big_1.png")[0].shape == (28, 20, 3)
    assert cli.main(["upscale", first, "-m", "Lanczos", "-s", "2.5", "-o", str(tmp_path / "l.png")]) == 0
    pixels, texts = _texts(tmp_path / "l.png")
    assert pixels.shape == (25, 30, 3)
    assert texts["postprocessing"] == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"
    assert not [name for name in (tmp_path / "out").iterdir() if name.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("argv, cause", [
    (["missing.png", "-m", "Lanczos"], "missing.png: no such image file"),
    (["{image}", "-m", "RealESRGAN_x4plus.pth"], "neither an upscaler file nor one of Lanczos, Nearest;.*Real-ESRGAN"),
    (["{image}", "-m", "Lanczos", "-s", "20"], "-s 20: must be above 0 and at most 8"),
    (["{image}", "-m", "Lanczos", "--tile", "16", "--overlap", "16"], "--tile 16 / --overlap 16"),
    (["{image}", "-m", "{notes}"], "not an ESRGAN"),
])
def test_cli_upscale_bad_input_exits_2_in_one_line(tmp_path, capsys, argv, cause):
    import re

    from sd_keras import cli

    image = _png(tmp_path / "a.png", _image(6, 6))
    notes = tmp_path / "notes.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(notes))
    argv = [arg.format(image=image, notes=notes) for arg in argv]
    assert cli.main(["upscale", *argv, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(cause, err), err
    assert not (tmp_path / "o.png").exists()


@pytest.fixture(scope="module")
def extras_client(tmp_path_factory, tiny_sd):
    from fastapi.testclient import TestClient

    from sd_keras.server.app import ServerSettings, create_app

    folder = tmp_path_factory.mktemp("upscalers")
    _save(srvgg_state(0, num_conv=1), folder / "compact-x4.pth")
    _save(srvgg_state(1, num_conv=1, scale=2), folder / "compact-x2.safetensors")
    settings = ServerSettings(models={"tiny": "tiny"}, model="tiny", upscalers_dir=str(folder),
                              allowed_hosts=("testserver",))
    app = create_app(settings, loader=lambda spec, dtype: tiny_sd)
    return TestClient(app), folder


def _b64(image, texts=()):
    import base64
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts:
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _decoded(text):
    import base64

    return _texts(base64.b64decode(text))


def test_server_lists_upscalers(extras_client):
    client, folder = extras_client
    response = client.get("/sdapi/v1/upscalers")
    assert response.status_code == 200
    items = response.json()
    assert [item["name"] for item in items] == ["None", "Lanczos", "Nearest", "compact-x2", "compact-x4"]
    assert items[-1]["model_path"] == str(folder / "compact-x4.pth")
    assert [item["scale"] for item in items[-2:]] == [2, 4]


def test_server_extra_single_image_upscales_and_keeps_parameters(extras_client):
    client, folder = extras_client
    image = _image(9, 11)
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": _b64(image, [("parameters", "a cat\nSteps: 20, Seed: 1, Size: 11x9")]),
        "upscaler_1": "compact-x4", "upscaling_resize": 4})
    assert response.status_code == 200, response.text
    pixels, texts = _decoded(response.json()["image"])
    np.testing.assert_array_equal(pixels, upscale(image, load_upscaler(folder / "compact-x4.pth")))
    assert texts["parameters"] == "a cat\nSteps: 20, Seed: 1, Size: 11x9"
    assert response.json()["html_info"] == texts["postprocessing"] == \
        "Postprocess upscale by: 4, Postprocess upscaler: compact-x4"
    # scale to a box: cover 30x20, crop the centre
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": _b64(image), "upscaler_1": "compact-x2", "resize_mode": 1, "upscaling_resize_w": 30,
        "upscaling_resize_h": 20})
    assert _decoded(response.json()["image"])[0].shape == (20, 30, 3)


def test_server_extra_batch_images(extras_client):
    client, _ = extras_client
    body = {"imageList": [{"data": _b64(_image(8, 8)), "name": "a.png"},
                          {"data": _b64(_image(6, 10, seed=2)), "name": "b.png"}],
            "upscaler_1": "Lanczos", "upscaling_resize": 2}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    assert [_decoded(text)[0].shape for text in response.json()["images"]] == [(16, 16, 3), (12, 20, 3)]


@pytest.mark.parametrize("body, detail", [
    ({"upscaler_1": "RealESRGAN_x4plus"},
     "upscaler_1: upscaler 'RealESRGAN_x4plus': unknown; available: Lanczos, Nearest, compact-x2, compact-x4"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8, "image_side": 600}, "larger than 4096 pixels"),
    ({"upscaler_1": "Lanczos", "codeformer_visibility": 0.5}, "face restoration is not available"),
    ({"upscaler_1": "Lanczos", "image": "not base64!"}, "image: not valid base64"),
])
def test_server_extras_bad_input_is_a_422(extras_client, body, detail):
    client, _ = extras_client
    side = body.pop("image_side", 8)
    body.setdefault("image", _b64(_image(side, side)))
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 422
    assert detail in response.json()["detail"]


# ------------------------------------------------------------------------------------------------- LiteRT
@pytest.mark.slow
def test_compact_upscaler_exports_to_litert_with_parity_gate(tmp_path, capsys, monkeypatch):
    """fp16 and int8 files pass their gates; LiteRT tiles blended by sd_keras.tiling match the Keras upscale;
    a failed gate writes nothing."""
    import json

    from sd_keras import cli
    from sd_keras.export import upscaler as export_upscaler

    model_path = _save(srvgg_state(11, num_feat=16, num_conv=4), tmp_path / "compact.pth")
    out = tmp_path / "phone"
    assert cli.main(["export-upscaler", "-m", str(model_path), "-o", str(out), "--tile", "32", "--overlap",
                     "8"]) == 0
    manifest = json.loads((out / "upscaler.json").read_text())
    assert (manifest["architecture"], manifest["scale"], manifest["tile"]) == ("srvgg", 4, 32)
    assert manifest["parity"]["fp16"]["psnr_db"] >= 45 and manifest["parity"]["fp16"]["max_abs_diff"] <= 4
    assert manifest["parity"]["int8"]["psnr_db"] >= 30
    assert "fp16: " in capsys.readouterr().out

    from sd_keras.export.runner import open_signature

    runner = open_signature(str(out / manifest["files"]["fp16"]), manifest["signature"], 2)
    image = _image(40, 56, seed=5)
    tiled = tiling.tiled_apply(lambda tile: runner(image=tile.astype(np.float32))["upscaled"],
                               image[None].astype(np.float32) / 255, 4, tile=32, overlap=manifest["overlap"])
    litert = np.clip(np.round(tiled[0] * 255), 0, 255)
    keras_tiled = upscale(image, load_upscaler(model_path), tile=32, overlap=manifest["overlap"])
    assert np.abs(litert - keras_tiled).max() <= 4

    import keras

    if keras.backend.backend() != "tensorflow":
        # The refusal below patches GATES in this process; under another backend the conversion runs in a
        # TensorFlow subprocess, which does not see the patch. The TensorFlow suite checks the refusal.
        return
    monkeypatch.setitem(export_upscaler.GATES, "int8", {"psnr_db": (">=", 200.0)})
    assert cli.main(["export-upscaler", "-m", str(model_path), "-o", str(tmp_path / "refused"), "--tile", "32",
                     "--overlap", "8", "--quantize", "int8"]) == 1
    assert "int8: psnr_db" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
