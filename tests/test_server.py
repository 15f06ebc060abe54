"""`sd-keras serve` against a live server on loopback (tiny model, 64x64, 2 steps), plus its pure parts.

The server runs in a subprocess (`sd_keras.server.process.ServerProcess`), so its RSS, its log and its handling of
client disconnects are the real ones. Images are compared with the library's own output for the same seeds.
"""

import base64
import contextlib
import io
import json
import socket
import threading
import time
import urllib.parse

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from sd_keras import metadata
from sd_keras.server import samplers as server_samplers
from sd_keras.server.middleware import key_matches
from sd_keras.server.process import ServerProcess

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 7.5}
# long enough (16 x 150 steps) that it is still running while a test interrupts it or walks away from it
LONG = {**SMALL, "prompt": "long", "steps": 150, "n_iter": 16}
QUEUE_SIZE = 4


# -- helpers -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("saved")


@pytest.fixture(scope="module")
def server(output_dir):
    with ServerProcess("-m", "tiny", "--api-key", KEY, "--queue-size", str(QUEUE_SIZE), "--max-batch", "2",
                       "--output-dir", str(output_dir)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=600) as c:
        yield c


@pytest.fixture(scope="module")
def library_model():
    from sd_keras.pipeline import StableDiffusion

    return StableDiffusion.from_preset("tiny")


def assert_serving(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def decode_png(text):
    assert not text.startswith("data:"), "A1111 sends raw base64"
    data = base64.b64decode(text, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), metadata.read_parameters(io.BytesIO(data))


def png_base64(array, prefix=""):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return prefix + base64.b64encode(buffer.getvalue()).decode()


def metric_values(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, what, limit=300.0):
    """Poll ``predicate`` (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def progress_state(client):
    return client.get("/sdapi/v1/progress").json()["state"]


def open_raw_request(url, path, body):
    """Send a request on a bare socket, so the test can hang up mid-request like a closed browser tab."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    sock.sendall(head.encode() + payload)
    return sock


class Background:
    """Run one request in a thread; ``result()`` joins it."""

    def __init__(self, client, path, body):
        self.response = None
        self.thread = threading.Thread(target=self._run, args=(client, path, body))
        self.thread.start()

    def _run(self, client, path, body):
        self.response = client.post(path, json=body)

    def result(self):
        self.thread.join(600)
        return self.response


# -- pure parts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, scheduler, expected", [
    ("DPM++ 2M", "karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", None, "DPM++ 2M Karras"),          # A1111 1.9: "automatic" is Karras for DPM++ 2M
    ("DPM++ 2M", "uniform", "DPM++ 2M"),
    ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),   # pre-1.9 combined name
    ("k_dpmpp_2m_ka", "automatic", "DPM++ 2M Karras"),
    ("Euler a", None, "Euler a"),
    ("k_euler_ancestral", "karras", "Euler a Karras"),
    ("Euler", "automatic", "Euler"),
    ("DDIM", None, "DDIM"),
    (None, None, "Euler"),                         # A1111's API default
])
def test_a1111_sampler_names_map_onto_sd_keras_samplers(name, scheduler, expected):
    from sd_keras.schedulers import SAMPLER_NAMES

    resolved = server_samplers.resolve_sampler(name, scheduler)
    assert resolved.sd_keras_name == expected and expected in SAMPLER_NAMES


@pytest.mark.parametrize("name, scheduler, message", [
    ("Heun", None, "sampler_name 'Heun' is unknown"),
    ("DDIM", "karras", "not available for sampler 'DDIM'"),
    ("Euler", "exponential", "scheduler 'exponential' is unknown"),
])
def test_unsupported_sampler_names_are_refused_by_name(name, scheduler, message):
    with pytest.raises(ValueError, match=message):
        server_samplers.resolve_sampler(name, scheduler)


def test_api_key_header_forms():
    basic = lambda text: "Basic " + base64.b64encode(text.encode()).decode()  # noqa: E731
    assert key_matches(f"Bearer {KEY}", KEY)
    assert key_matches(f"bearer  {KEY} ", KEY)
    assert key_matches(basic(f"anyone:{KEY}"), KEY)            # A1111 --api-auth style: the key as password
    assert key_matches(basic("user:pass-word-1"), "user:pass-word-1")  # a key written as user:password
    for header in (None, "", f"Bearer {KEY}x", f"Token {KEY}", basic(f"{KEY}:"), basic("anyone:wrong"),
                   "Basic !!!not-base64", f"Bearer {KEY[:-1]}"):
        assert not key_matches(header, KEY), header


def test_cli_refuses_bad_serve_options_before_loading_anything(capsys):
    from sd_keras import cli

    assert cli.main(["serve", "-m", "/no/such/model.safetensors"]) == 2
    assert "unknown model '/no/such/model.safetensors'" in capsys.readouterr().err
    assert cli.main(["serve", "--api-key", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_model_files_are_registered_under_their_base_names(tmp_path):
    from sd_keras.cli.serve import registered_models
    from sd_keras.errors import InputError

    (tmp_path / "my-model.safetensors").write_bytes(b"")
    (tmp_path / "tiny.ckpt").write_bytes(b"")
    models = registered_models(["tiny", str(tmp_path / "my-model.safetensors")])
    assert models["my-model"] == str(tmp_path / "my-model.safetensors") and models["tiny"] == "tiny"
    with pytest.raises(InputError, match="already taken"):
        registered_models(["tiny", str(tmp_path / "tiny.ckpt")])
    assert registered_models([str(tmp_path / "tiny.ckpt")]) == {"tiny": str(tmp_path / "tiny.ckpt")}  # no preset


# -- live server -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_only_health_and_the_page_are_public(server, client):
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model_loaded": True, "auth_required": True}
    assert httpx.get(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/static/app.js").status_code == 200
    basic = lambda text: "Basic " + base64.b64encode(text.encode()).decode()  # noqa: E731
    protected = [("GET", "/sdapi/v1/samplers"), ("GET", "/sdapi/v1/options"), ("GET", "/sdapi/v1/progress"),
                 ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/sdapi/v1/txt2img"),
                 ("POST", "/sdapi/v1/interrupt"), ("GET", "/no/such/path")]
    for method, path in protected:
        for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": basic("u:wrong-key")}):
            response = httpx.request(method, server.url + path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers)
            assert "API key" in response.json()["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer")
    # a browser opening the docs is offered HTTP basic auth (user name: anything, password: the key)
    response = httpx.get(server.url + "/docs", headers={"Accept": "text/html"})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(server.url + "/docs", headers={"Authorization": basic(f"me:{KEY}")}).status_code == 200
    openapi = client.get("/openapi.json").json()
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/health"} <= set(openapi["paths"])
    assert KEY not in server.log()


@pytest.mark.slow
def test_txt2img_matches_the_library_and_answers_like_a1111(client, library_model):
    body = {**SMALL, "prompt": "a red circle", "negative_prompt": "blurry", "seed": 1234, "batch_size": 2,
            "sampler_index": "ignored when sampler_name is set", "unknown_field": {"x": 1}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"images", "parameters", "info"}
    info = json.loads(result["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["sampler_name"] == "Euler" and info["extra_generation_params"] == {"Schedule type": "Uniform"}
    assert info["width"] == 64 and info["steps"] == 2 and info["cfg_scale"] == 7.5 and info["batch_size"] == 2
    assert info["sd_model_name"] == "tiny" and info["negative_prompt"] == "blurry"
    assert {"prompt", "all_prompts", "subseed", "all_subseeds", "index_of_first_image", "infotexts",
            "job_timestamp", "version", "styles", "denoising_strength"} <= set(info)
    parameters = result["parameters"]
    assert parameters["prompt"] == "a red circle" and parameters["seed"] == 1234 and parameters["n_iter"] == 1
    assert "unknown_field" not in parameters
    for i, text in enumerate(result["images"]):
        # image i of a batch with seed s is the library's lone image for seed s + i
        expected = library_model.text_to_image("a red circle", "blurry", 1, 2, 7.5, 1234 + i, sampler="Euler",
                                               height=64, width=64, progress=lambda step: None)[0]
        pixels, parameters_chunk = decode_png(text)
        assert pixels.shape == (64, 64, 3)
        assert np.abs(pixels.astype(int) - expected).max() <= 1
        assert parameters_chunk == info["infotexts"][i]
        parsed = metadata.parse_parameters(parameters_chunk)
        assert parsed["prompt"] == "a red circle" and parsed["negative_prompt"] == "blurry"
        assert parsed["Seed"] == str(1234 + i) and parsed["Size"] == "64x64" and parsed["Sampler"] == "Euler"
        assert parsed["Steps"] == "2" and parsed["Model"] == "tiny"


@pytest.mark.slow
def test_random_seed_is_reported_and_reproduces_the_image(client):
    first = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "seed": -1, "n_iter": 2}).json()
    info = json.loads(first["info"])
    seed = info["seed"]
    assert seed >= 0 and info["all_seeds"] == [seed, seed + 1] and len(first["images"]) == 2
    again = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "seed": seed + 1}).json()
    assert json.loads(again["info"])["all_seeds"] == [seed + 1]
    assert np.array_equal(decode_png(again["images"][0])[0], decode_png(first["images"][1])[0])


@pytest.mark.slow
def test_send_images_false_and_save_images_true(client, output_dir):
    quiet = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "saved", "seed": 3, "send_images": False,
                                                   "save_images": True}).json()
    assert quiet["images"] == [] and json.loads(quiet["info"])["all_seeds"] == [3]
    saved = sorted(output_dir.glob("*-3.png"))
    assert len(saved) == 1 and metadata.read_parameters(str(saved[0])) == json.loads(quiet["info"])["infotexts"][0]
    assert not [p for p in output_dir.iterdir() if p.name.startswith(".")]  # written atomically, no leftovers


@pytest.mark.slow
def test_sampler_and_scheduler_pairs_give_the_sd_keras_sampler(client):
    def image(**fields):
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "y", "seed": 5, **fields})
        assert response.status_code == 200, response.text
        return decode_png(response.json()["images"][0])

    pixels, text = image(sampler_name="DPM++ 2M", scheduler="Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in text
    assert np.array_equal(image(sampler_name="DPM++ 2M Karras")[0], pixels)
    assert np.array_equal(image(sampler_name=None, sampler_index="k_dpmpp_2m_ka")[0], pixels)


@pytest.mark.slow
def test_img2img_accepts_data_urls_and_inpainting_keeps_the_unmasked_image(client, library_model):
    source = (np.indices((64, 64)).sum(0) % 256).astype(np.uint8)
    source = np.stack([source, source[::-1], np.full_like(source, 90)], -1)
    body = {**SMALL, "prompt": "z", "seed": 11, "init_images": [png_base64(source, "data:image/png;base64,")],
            "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    pixels, text = decode_png(result["images"][0])
    assert "Denoising strength: 0.5" in text and json.loads(result["info"])["denoising_strength"] == 0.5
    assert result["parameters"]["init_images"] is None  # include_init_images=false, as A1111
    expected = library_model.image_to_image("z", Image.fromarray(source), 0.5, seed=11, num_steps=2,
                                            unconditional_guidance_scale=7.5, sampler="Euler", height=64,
                                            width=64, progress=lambda step: None)
    assert np.abs(pixels.astype(int) - expected[0]).max() <= 1

    # strength 0 returns the re-decoded input; an inverted all-white mask repaints nothing, so it must match
    kept = client.post("/sdapi/v1/img2img", json={**body, "denoising_strength": 0.0}).json()
    white = png_base64(np.full((64, 64, 3), 255, np.uint8))
    inpainted = client.post("/sdapi/v1/img2img", json={**body, "mask": white, "inpainting_mask_invert": 1,
                                                       "include_init_images": True}).json()
    inpainted_pixels, inpainted_text = decode_png(inpainted["images"][0])
    assert "Mask blur: 4" in inpainted_text and inpainted["parameters"]["init_images"] == body["init_images"]
    assert np.abs(inpainted_pixels.astype(int) - decode_png(kept["images"][0])[0]).max() <= 1
    repainted = client.post("/sdapi/v1/img2img", json={**body, "mask": white}).json()
    assert not np.array_equal(decode_png(repainted["images"][0])[0], inpainted_pixels)


@pytest.mark.slow
def test_lists_options_scripts_and_png_info(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny"]  # only the models named at start (-m tiny)
    assert all(set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"} for m in models)
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(samplers)
    assert "k_euler_a" in samplers["Euler a"]["aliases"] and samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["name"] for s in schedulers] == ["automatic", "uniform", "karras"]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "tiny" and options["sd_keras_default_width"] == 64
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny", "other_setting": 1}).json() is None
    generated = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a, b: c", "seed": 9}).json()
    info = client.post("/sdapi/v1/png-info", json={"image": generated["images"][0]}).json()
    assert info["info"] == json.loads(generated["info"])["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a, b: c" and info["parameters"]["Seed"] == "9"
    assert info["parameters"]["Size-1"] == "64" and info["parameters"]["Size-2"] == "64"
    plain = client.post("/sdapi/v1/png-info", json={"image": png_base64(np.zeros((4, 4, 3), np.uint8))}).json()
    assert plain == {"info": "", "items": {}, "parameters": {}}


def _huge_image():
    buffer = io.BytesIO()
    Image.new("L", (2049, 8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    # (method, path, body or raw bytes, headers, status, text in the message)
    ("POST", "/sdapi/v1/txt2img", b'{"prompt": "a",', {}, 422, "JSON"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": 5}, {}, 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", {"steps": "many"}, {}, 422, "steps"),
    ("POST", "/sdapi/v1/txt2img", {"width": 100}, {}, 422, "width=100 is not a multiple of 64"),
    ("POST", "/sdapi/v1/txt2img", {"height": 4096}, {}, 422, "height=4096"),
    ("POST", "/sdapi/v1/txt2img", {"steps": 0}, {}, 422, "steps"),
    ("POST", "/sdapi/v1/txt2img", {"steps": 10**6}, {}, 422, "less than or equal to 150"),
    ("POST", "/sdapi/v1/txt2img", {"batch_size": 8, "n_iter": 16}, {}, 422, "at most 32"),
    ("POST", "/sdapi/v1/txt2img", {"cfg_scale": "nan"}, {}, 422, "cfg_scale"),
    ("POST", "/sdapi/v1/txt2img", {"sampler_name": "Heun"}, {}, 422, "sampler_name 'Heun' is unknown"),
    ("POST", "/sdapi/v1/txt2img", {"scheduler": "exponential"}, {}, 422, "scheduler 'exponential'"),
    ("POST", "/sdapi/v1/txt2img", {"enable_hr": True, "hr_scale": 1.5}, {}, 422, "hires fix: target size"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x" * 10_001}, {}, 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, {}, 404,
     "not registered"),
    ("POST", "/sdapi/v1/txt2img", {"script_name": "x/y/z plot"}, {}, 422, "script"),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["QUFB" * (21 * 2**18)]}, {}, 413, "larger than 20 MB"),
    ("POST", "/sdapi/v1/txt2img", {}, {"Authorization": "Bearer not-the-key"}, 401, "API key"),
    ("POST", "/sdapi/v1/img2img", {}, {}, 422, "init_images"),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["!!!!"]}, {}, 422, "init_images[0]: not valid base64"),
    ("POST", "/sdapi/v1/img2img", {"init_images": [base64.b64encode(b"not an image").decode()]}, {}, 422,
     "init_images[0]: cannot read image"),
    ("POST", "/sdapi/v1/img2img", {"init_images": [_huge_image()]}, {}, 422, "2049x8"),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["https://example.com/a.png"]}, {}, 422, "URLs are not fetched"),
    ("POST", "/sdapi/v1/img2img", {"init_images": [png_base64(np.zeros((8, 8, 3), np.uint8))], "mask": "@@"}, {},
     422, "mask: not valid base64"),
    ("POST", "/sdapi/v1/img2img", {"init_images": [png_base64(np.zeros((8, 8, 3), np.uint8))] * 2}, {}, 422,
     "init_images"),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["x"], "denoising_strength": 2}, {}, 422, "denoising_strength"),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "../../weights.ckpt"}, {}, 404, "not registered"),
    ("POST", "/sdapi/v1/options", [1, 2], {}, 422, "dict"),
    ("POST", "/sdapi/v1/png-info", {"image": base64.b64encode(b"GIF89a-broken").decode()}, {}, 422,
     "cannot read image"),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, path, body, headers, status, message", BAD_REQUESTS,
                         ids=[f"{i}-{case[1].rsplit('/', 1)[1]}-{case[4]}" for i, case in enumerate(BAD_REQUESTS)])
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(client, method, path, body, headers,
                                                                          status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.request(method, path, content=content, headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status, response.text[:500]
    assert message in response.json()["detail"], response.text[:500]
    assert_serving(client)


@pytest.mark.slow
def test_interrupt_stops_the_running_generation_and_the_worker_goes_on(client):
    long_job = Background(client, "/sdapi/v1/txt2img", {**LONG, "seed": 1})
    wait_until(lambda: progress_state(client)["sampling_step"] >= 1, "the long job to start sampling")
    progress = client.get("/sdapi/v1/progress").json()
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0 and progress["current_image"] is None
    assert progress["state"]["job_count"] == 16 and progress["state"]["sampling_steps"] == 150
    assert client.post("/sdapi/v1/interrupt").json() == {}
    response = long_job.result()
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and len(response.json()["images"]) < 16
    assert len(info["all_seeds"]) == len(response.json()["images"])
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    after = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "after", "seed": 2})
    assert after.status_code == 200 and len(after.json()["images"]) == 1
    assert metric(metric_values(client), "sd_keras_jobs_total", kind="txt2img", outcome="interrupted") == 1


@pytest.mark.slow
def test_a_client_that_hangs_up_cancels_its_job_waiting_or_running(server, client):
    before = metric(metric_values(client), "sd_keras_jobs_total", kind="txt2img", outcome="cancelled")
    running = open_raw_request(server.url, "/sdapi/v1/txt2img", {**LONG, "seed": 3})
    wait_until(lambda: progress_state(client)["sampling_step"] >= 1, "the long job to start sampling")
    waiting = open_raw_request(server.url, "/sdapi/v1/txt2img", {**SMALL, "prompt": "waiting", "seed": 4})
    wait_until(lambda: progress_state(client)["queue_depth"] == 1, "the second job to wait in the queue")
    waiting.close()
    wait_until(lambda: progress_state(client)["queue_depth"] == 0, "the waiting job to leave the queue")
    running.close()
    wait_until(lambda: progress_state(client)["job_count"] == 0, "the running job to stop")
    values = metric_values(client)
    assert metric(values, "sd_keras_jobs_total", kind="txt2img", outcome="cancelled") == before + 2
    assert server.log().count("txt2img cancelled: the client disconnected") >= 2
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "still", "seed": 5}).status_code == 200


@pytest.mark.slow
def test_compatible_waiting_requests_run_as_one_batch_with_the_same_images(client):
    batched_before = metric(metric_values(client), "sd_keras_batched_jobs_total")
    blocker = Background(client, "/sdapi/v1/txt2img", {**LONG, "seed": 6})
    wait_until(lambda: progress_state(client)["sampling_step"] >= 1, "the blocking job to start")
    bodies = [{**SMALL, "prompt": "first", "seed": 21}, {**SMALL, "prompt": "second", "seed": 42}]
    waiting = [Background(client, "/sdapi/v1/txt2img", body) for body in bodies]
    wait_until(lambda: progress_state(client)["queue_depth"] == 2, "both requests to wait in the queue")
    client.post("/sdapi/v1/interrupt")
    assert blocker.result().status_code == 200
    batched = [request.result() for request in waiting]
    assert all(response.status_code == 200 for response in batched)
    assert metric(metric_values(client), "sd_keras_batched_jobs_total") == batched_before + 2
    for body, response in zip(bodies, batched):
        alone = client.post("/sdapi/v1/txt2img", json=body).json()  # the queue is empty now: runs alone
        assert json.loads(response.json()["info"])["all_seeds"] == [body["seed"]]
        together, text = decode_png(response.json()["images"][0])
        assert text == json.loads(alone["info"])["infotexts"][0]
        assert np.abs(together.astype(int) - decode_png(alone["images"][0])[0]).max() <= 2


@pytest.mark.slow
def test_load_every_request_is_answered_200_or_503_and_memory_stays_flat(server, client):
    clients, per_client = 32, 8
    body = {**SMALL, "prompt": "load", "seed": 1}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200  # compiled and warm
    rss_before = server.rss_bytes()
    statuses, retry_after, lock = [], [], threading.Lock()

    def run_client(index):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=600) as own:
            for request in range(per_client):
                response = own.post("/sdapi/v1/txt2img", json={**body, "seed": index * per_client + request})
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 503:
                        retry_after.append(int(response.headers["retry-after"]))

    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    assert len(statuses) == clients * per_client  # none lost
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1  # the queue of 4 overflowed
    assert all(1 <= seconds <= 600 for seconds in retry_after)
    values = metric_values(client)
    assert metric(values, "sd_keras_jobs_total", kind="txt2img", outcome="rejected") == statuses.count(503)
    assert metric(values, "sd_keras_queue_depth") == 0 and metric(values, "sd_keras_queue_capacity") == QUEUE_SIZE
    growth = server.rss_bytes() - rss_before
    assert growth < 150 * 2**20, f"server RSS grew by {growth / 2**20:.0f} MB"
    assert_serving(client)


@pytest.mark.slow
def test_metrics_count_requests_by_endpoint_and_status(server, client):
    before = metric_values(client)
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "m", "seed": 8}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 0}).status_code == 422
    assert httpx.get(server.url + "/no/such/path").status_code == 401
    after = metric_values(client)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    txt2img = dict(endpoint="/sdapi/v1/txt2img", method="POST")
    assert delta("sd_keras_http_requests_total", **txt2img, status="200") == 1
    assert delta("sd_keras_http_requests_total", **txt2img, status="422") == 1
    assert delta("sd_keras_http_requests_total", endpoint="other", method="GET", status="401") == 1
    assert delta("sd_keras_http_requests_total", endpoint="/metrics", method="GET", status="200") == 1
    assert delta("sd_keras_generation_seconds_count", kind="txt2img") == 1
    assert delta("sd_keras_generation_seconds_sum", kind="txt2img") > 0
    assert delta("sd_keras_jobs_total", kind="txt2img", outcome="ok") == 1
    assert delta("sd_keras_images_generated_total") == 1
    count = metric(after, "sd_keras_generation_seconds_count", kind="txt2img")
    assert metric(after, "sd_keras_generation_seconds_bucket", kind="txt2img", le="+Inf") == count
    assert metric(after, "sd_keras_errors_total", type="http_5xx") == 0
    assert metric(after, "sd_keras_queue_depth") == 0 and metric(after, "sd_keras_jobs_running") == 0


@pytest.mark.slow
def test_the_key_never_reaches_the_log(server, client):
    basic = "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()
    client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "logged prompt", "seed": 1})
    httpx.post(server.url + "/sdapi/v1/txt2img", headers={"Authorization": basic}, json={**SMALL, "steps": 0})
    httpx.get(server.url + "/sdapi/v1/options", headers={"Authorization": f"Bearer {KEY}-wrong"})
    log = server.log()
    assert "prompt='logged prompt'" in log  # generations are logged (prompts are fine)
    assert KEY not in log and basic.split()[1] not in log


# -- model switching, with an in-process server whose models are tiny ones with different random weights ---------
@contextlib.contextmanager
def in_process_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the in-process server to start", limit=60)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def test_models_switch_by_registered_name_only_and_a_failed_load_keeps_the_old_one(library_model):
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.server.app import ServerSettings, create_app

    loaded = []

    def loader(spec, dtype):
        loaded.append(spec)
        if spec == "broken-weights":
            raise OSError("broken-weights: no such weights file")
        # "alpha" is the library's tiny preset (already compiled in this process); "beta" other random weights
        return library_model if spec == "preset-tiny" else StableDiffusion.from_config("tiny", seed=2, dtype=dtype)

    settings = ServerSettings(models={"alpha": "preset-tiny", "beta": "random-2", "broken": "broken-weights"},
                              model="alpha")
    with in_process_server(create_app(settings, loader=loader)) as url, httpx.Client(base_url=url,
                                                                                     timeout=600) as client:
        assert [m["title"] for m in client.get("/sdapi/v1/sd-models").json()] == ["alpha", "beta", "broken"]
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "beta"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "beta"
        body = {**SMALL, "prompt": "switch", "seed": 1}
        on_beta = client.post("/sdapi/v1/txt2img", json=body).json()
        assert json.loads(on_beta["info"])["sd_model_name"] == "beta"
        on_alpha = client.post("/sdapi/v1/txt2img",
                               json={**body, "override_settings": {"sd_model_checkpoint": "alpha"}}).json()
        alpha_pixels, alpha_text = decode_png(on_alpha["images"][0])
        assert "Model: alpha" in alpha_text
        expected = library_model.text_to_image("switch", None, 1, 2, 7.5, 1, sampler="Euler", height=64, width=64,
                                               progress=lambda step: None)[0]
        assert np.abs(alpha_pixels.astype(int) - expected).max() <= 1
        assert not np.array_equal(alpha_pixels, decode_png(on_beta["images"][0])[0])  # other weights
        # the override held for that request only (override_settings_restore_afterwards defaults to true)
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "beta"

        failed = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "broken"})
        assert failed.status_code == 500 and "no such weights file" in failed.json()["detail"]
        # the setting stays; the model loaded before the failure (alpha) was reloaded
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "beta"
        for name in ("preset-tiny", "/tmp/x.safetensors", "../alpha"):  # specs and paths are not names
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}).status_code == 404
        values = metric_values(client)
        assert metric(values, "sd_keras_errors_total", type="model_load") == 1
    assert loaded == ["preset-tiny", "random-2", "preset-tiny", "broken-weights", "preset-tiny"]
