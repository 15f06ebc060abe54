"""What a careless or hostile client sends `sd-keras serve`: non-finite numbers, huge values, image bombs, seeds at
the end of the range, sizes and model overrides; plus the offline /docs page and the quiet progress polls.

One in-process server with the tiny model; every generation here is 64x64, 2 Euler steps, batch 1, so the whole
module compiles one program. Image bombs are hand-made PNGs whose header claims a huge size (a few hundred bytes).
"""

import base64
import copy
import dataclasses
import io
import json
import logging
import re
import struct
import threading
import time
import zlib

import httpx
import pytest
from PIL import Image

from sd_keras import cli, metadata
from sd_keras.image_file import ImageFileError, open_image
from sd_keras.server import schemas

# the server's checks do not depend on the Keras backend
pytestmark = pytest.mark.once

SMALL = {"steps": 2, "sampler_name": "Euler", "cfg_scale": 7.5, "prompt": "a red circle"}


# -- hand-made PNGs ------------------------------------------------------------------------------------------
def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width, height, *, text_chunks=()):
    """A PNG whose header says ``width`` x ``height`` (the pixel data covers at most 8x8: a bomb stays tiny)."""
    rows = b"".join(b"\x00" + bytes(3 * min(width, 8)) for _ in range(min(height, 8)))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    texts = b"".join(_chunk(kind, data) for kind, data in text_chunks)
    return b"\x89PNG\r\n\x1a\n" + header + texts + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


TWO_MB = b"x" * (2 * 2**20)
BOMBS = {
    "20000x20000": (png_bytes(20000, 20000), "20000x20000"),
    "zTXt 2 MB": (png_bytes(8, 8, text_chunks=[(b"zTXt", b"parameters\x00\x00" + zlib.compress(TWO_MB))]),
                  "text chunk"),
    "iTXt 2 MB": (png_bytes(8, 8, text_chunks=[(b"iTXt", b"parameters\x00\x01\x00\x00\x00" + zlib.compress(TWO_MB))]),
                  "text chunk"),
    "5 zTXt of 0.9 MB": (png_bytes(8, 8, text_chunks=[(b"zTXt", b"k%d\x00\x00" % i + zlib.compress(b"x" * 900_000))
                                                       for i in range(5)]), "text chunks hold 4500000"),
    "tEXt 1.5 MB": (png_bytes(8, 8, text_chunks=[(b"tEXt", b"parameters\x00" + b"x" * (3 * 2**19))]),
                    "text chunks hold 1572864"),
}


def b64(data):
    return base64.b64encode(data).decode()


def plain_png(width=64, height=64):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- the server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from sd_keras.pipeline import StableDiffusion

    return StableDiffusion.from_preset("tiny")


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def served(tiny_model):
    """(url, loads, access_lines): "tiny", and "small", the same weights described as trained at 32x32 (it shares
    tiny's compiled programs, so switching costs no compilation)."""
    import uvicorn

    from sd_keras.server.app import ServerSettings, create_app

    small = copy.copy(tiny_model)
    small.config = dataclasses.replace(tiny_model.config, image_size=(32, 32))
    loads = []

    def loader(spec, dtype):
        loads.append(spec)
        return {"tiny": tiny_model, "small-spec": small}[spec]

    settings = ServerSettings(models={"tiny": "tiny", "small": "small-spec"}, model="tiny")
    app = create_app(settings, loader=loader)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info"))
    access = _Lines()
    logging.getLogger("uvicorn.access").addHandler(access)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", loads, access.lines
    finally:
        server.should_exit = True
        thread.join(60)
        logging.getLogger("uvicorn.access").removeHandler(access)


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served[0], timeout=600) as c:
        yield c


def strict_json(response):
    """The body parsed as standard JSON (NaN/Infinity are not JSON)."""
    def refuse(constant):
        raise AssertionError(f"the body holds {constant}, which is not JSON")

    return json.loads(response.text, parse_constant=refuse)


def post_raw(client, path, text):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


# -- 1: non-finite numbers and echoed input ------------------------------------------------------------------
IMG2IMG = '{"init_images": ["%s"], "steps": 2, ' % b64(plain_png())


@pytest.mark.parametrize("path, body, detail", [
    ("/sdapi/v1/txt2img", '{"cfg_scale": NaN}', "cfg_scale: must be finite"),
    ("/sdapi/v1/txt2img", '{"cfg_scale": Infinity}', "cfg_scale: must be finite"),
    ("/sdapi/v1/txt2img", '{"cfg_scale": -Infinity}', "cfg_scale: must be finite"),
    ("/sdapi/v1/txt2img", '{"cfg_scale": 1e400}', "cfg_scale: must be finite"),
    ("/sdapi/v1/txt2img", '{"eta": NaN}', "eta: must be finite"),
    ("/sdapi/v1/txt2img", '{"denoising_strength": Infinity}', "denoising_strength: must be finite"),
    ("/sdapi/v1/txt2img", '{"width": 1e400}', "width: must be finite"),
    ("/sdapi/v1/txt2img", '{"override_settings": {"eta_noise_seed_delta": NaN}}',
     "override_settings.eta_noise_seed_delta: must be finite"),
    ("/sdapi/v1/txt2img", '{"script_args": [1, [2, NaN]]}', "script_args[1][1]: must be finite"),
    ("/sdapi/v1/img2img", IMG2IMG + '"denoising_strength": NaN}', "denoising_strength: must be finite"),
    ("/sdapi/v1/img2img", IMG2IMG + '"image_cfg_scale": 1e999}', "image_cfg_scale: must be finite"),
])
def test_non_finite_numbers_are_a_422_naming_the_field(client, path, body, detail):
    response = post_raw(client, path, body)
    assert response.status_code == 422, response.text[:300]
    assert strict_json(response)["detail"] == detail


@pytest.mark.parametrize("body", [
    {"prompt": "p" * 3_000_000},                                  # over the prompt limit: the error quotes it
    {"prompt": "p" * 3_000_000, "steps": "many"},
    {"script_name": "s" * 3_000_000},                            # our own message names the script
    {"styles": "s" * 3_000_000},                                 # not a list: pydantic quotes the whole value
], ids=["long-prompt", "long-prompt-and-bad-steps", "long-script-name", "styles-not-a-list"])
def test_a_422_never_echoes_large_input(client, body):
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422
    assert len(response.content) < 3000, response.text[:500]
    errors = strict_json(response)["errors"]
    assert errors and all(isinstance(error["msg"], str) for error in errors)


def test_a_422_for_a_missing_image_does_not_echo_the_body(client):
    response = client.post("/sdapi/v1/img2img", json={"prompt": "p" * 9000, "negative_prompt": "n" * 9000})
    assert response.status_code == 422 and "init_images" in response.json()["detail"]
    assert len(response.content) < 3000, response.text[:500]


# -- 2: image bombs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BOMBS))
@pytest.mark.parametrize("field", ["init_images[0]", "mask", "png-info"])
def test_image_bombs_are_a_422_naming_the_field_and_the_limit(client, field, name):
    data, limit_text = BOMBS[name]
    if field == "png-info":
        response = client.post("/sdapi/v1/png-info", json={"image": b64(data)})
        field = "image"
    elif field == "mask":
        response = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(plain_png())],
                                                          "mask": b64(data)})
    else:
        response = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(data)]})
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: ") and limit_text in detail, detail
    assert "2048x2048" in detail if name == "20000x20000" else "limit" in detail


@pytest.mark.filterwarnings("error")  # PIL's DecompressionBombWarning must not be raised either
@pytest.mark.parametrize("width, height", [(20000, 20000), (10000, 10000)])
def test_a_huge_header_is_refused_before_decoding_without_pil_bomb_errors(width, height):
    with pytest.raises(ImageFileError, match=rf"^upload: image is {width}x{height}; the limit is 2048x2048"):
        open_image(io.BytesIO(png_bytes(width, height)), "upload", max_side=2048)
    # the library's default limit is PIL's MAX_IMAGE_PIXELS, reported as ours
    with pytest.raises(ImageFileError, match=rf"image is {width}x{height} = {width * height} pixels; the limit is "
                                             rf"{Image.MAX_IMAGE_PIXELS} pixels"):
        open_image(io.BytesIO(png_bytes(width, height)), "upload")


def test_open_image_reads_ordinary_images_and_their_text():
    buffer = io.BytesIO()
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2")
    Image.new("RGB", (40, 24), (200, 10, 10)).save(buffer, format="PNG", pnginfo=info)
    assert metadata.read_parameters(io.BytesIO(buffer.getvalue())) == "a cat\nSteps: 2"
    for image_format in ("JPEG", "WEBP", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 24), (200, 10, 10)).save(buffer, format=image_format)
        image = open_image(io.BytesIO(buffer.getvalue()), image_format, max_side=64)
        assert image.size == (40, 24) and abs(image.getpixel((5, 5))[0] - 200) <= 3


def run_cli(capsys, *args):
    status = cli.main(list(args))
    err = capsys.readouterr().err
    return status, err


@pytest.mark.parametrize("name", ["20000x20000", "zTXt 2 MB"])
def test_cli_info_refuses_an_image_bomb_in_one_line(tmp_path, capsys, name):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(BOMBS[name][0])
    status, err = run_cli(capsys, "info", str(bomb))
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("sd-keras: error: ") and str(bomb) in err, err
    assert BOMBS[name][1] in err and "limit" in err and "Traceback" not in err


def test_cli_generate_refuses_an_image_bomb_in_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(BOMBS["20000x20000"][0])
    status, err = run_cli(capsys, "generate", "-m", "tiny", "-p", "x", "-W", "64", "-H", "64", "--steps", "1",
                          "-i", str(bomb), "-o", str(tmp_path / "out.png"), "--no-progress")
    assert status == 2
    assert err.count("\n") == 1 and str(bomb) in err and "20000x20000" in err and "limit" in err, err
    assert not (tmp_path / "out.png").exists()


# -- 9: seeds ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, batch_size, n_iter", [(schemas.MAX_SEED, 2, 1), (schemas.MAX_SEED - 2, 1, 4),
                                                      (schemas.MAX_SEED - 30, 8, 4)])
def test_seeds_past_the_range_are_refused(client, seed, batch_size, n_iter):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": seed, "batch_size": batch_size,
                                                      "n_iter": n_iter})
    assert response.status_code == 422
    last_ok = schemas.MAX_SEED - batch_size * n_iter + 1
    assert response.json()["detail"].startswith("seed: ") and f"at most {last_ok}" in response.json()["detail"]
    # the largest seed the message offers is accepted
    schemas.Txt2ImgRequest.model_validate({"seed": last_ok, "batch_size": batch_size, "n_iter": n_iter})


# -- 10 and 8: native size, overrides ------------------------------------------------------------------------
def generate(client, **body):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 200, response.text[:500]
    result = response.json()
    return result, json.loads(result["info"])


def image_size(text):
    return Image.open(io.BytesIO(base64.b64decode(text))).size


def test_override_is_undone_after_the_request_and_a_size_over_native_warns(client, served):
    # switching models drops the compiled programs: this test compiles twice (small, then tiny for the next test)
    loads = served[1]
    loads.clear()
    result, info = generate(client, seed=3, width=64, height=64, override_settings={"sd_model_checkpoint": "small"})
    assert info["sd_model_name"] == "small" and "Model: small" in info["infotexts"][0]
    # larger than small's native 32x32: allowed, with a warning naming the native size and the hires-fix recipe
    assert (info["width"], info["height"]) == (64, 64) and image_size(result["images"][0]) == (64, 64)
    assert len(info["warnings"]) == 1 and "32x32" in info["warnings"][0] and "hires fix" in info["warnings"][0]
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "tiny" and options["sd_keras_default_width"] == 64  # restored

    # asked to keep it (A1111's override_settings_restore_afterwards=false): the override becomes the setting
    _, info = generate(client, seed=3, width=64, height=64, override_settings={"sd_model_checkpoint": "small"},
                       override_settings_restore_afterwards=False)
    assert info["sd_model_name"] == "small"
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "small" and options["sd_keras_default_width"] == 32
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}).status_code == 200
    _, info = generate(client, seed=3)  # a request without an override runs on the setting
    assert info["sd_model_name"] == "tiny" and info["warnings"] == []
    assert loads == ["small-spec", "tiny"]


def test_default_size_is_the_models_native_size_and_all_seeds_stay_in_range(client):
    options = client.get("/sdapi/v1/options").json()
    assert (options["sd_keras_default_width"], options["sd_keras_default_height"]) == (64, 64)
    result, info = generate(client, seed=schemas.MAX_SEED - 1, n_iter=2)
    assert (info["width"], info["height"]) == (64, 64) and info["warnings"] == []
    assert (result["parameters"]["width"], result["parameters"]["height"]) == (64, 64)
    assert [image_size(image) for image in result["images"]] == [(64, 64)] * 2
    assert info["all_seeds"] == [schemas.MAX_SEED - 1, schemas.MAX_SEED]
    assert all("Size: 64x64" in text for text in info["infotexts"])


# -- 11: offline docs, quiet progress polls ------------------------------------------------------------------
def test_docs_use_only_local_assets_and_they_are_served(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assets = [url for url in urls if not url.startswith("/openapi.json")]
        assert assets and not [url for url in urls if "//" in url], urls  # nothing from another host
        for url in assets:
            response = client.get(url)
            assert response.status_code == 200 and len(response.content) > 1000, url
    spec = client.get("/openapi.json").json()
    bundle = client.get("/static/docs/swagger-ui-bundle.js").text
    assert spec["openapi"].startswith("3.1") and "isOAS31" in bundle  # this Swagger UI renders OpenAPI 3.1


def test_progress_polls_are_not_access_logged_at_the_default_level(client, served):
    lines = served[2]
    lines.clear()
    for _ in range(3):
        assert client.get("/sdapi/v1/progress?skip_current_image=true").status_code == 200
    assert client.get("/sdapi/v1/samplers").status_code == 200
    time.sleep(0.2)
    assert any("/sdapi/v1/samplers" in line for line in lines), lines
    assert not any("/sdapi/v1/progress" in line for line in lines), lines
    access_log = logging.getLogger("uvicorn.access")
    level = access_log.level
    access_log.setLevel(logging.DEBUG)  # --log-level debug shows them
    try:
        client.get("/sdapi/v1/progress")
        time.sleep(0.2)
        assert any("/sdapi/v1/progress" in line for line in lines), lines
    finally:
        access_log.setLevel(level)
