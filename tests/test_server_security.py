"""`sd-keras serve` against hostile or careless clients and operators: the start-up checks, which models can be
selected, Host / Origin checks, security headers, stalled and aborted connections, and the bound on compiled
programs (with what /metrics says about them).

One live server without an API key (subprocess, tiny model) serves the HTTP tests; the program cache is checked
in process, where the evicted programs can be watched being freed.
"""

import gc
import socket
import threading
import time
import urllib.parse
import weakref

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sd_keras.errors import InputError
from sd_keras.generator import Generator
from sd_keras.server.process import ServerProcess

SMALL = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "prompt": "a"}
READ_TIMEOUT = 1.0


def metric_values(text):
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, what, limit=60.0):
    """Poll ``predicate`` (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def server():
    with ServerProcess("-m", "tiny", "--read-timeout", str(READ_TIMEOUT), "--allowed-hosts",
                       "studio.example, other.example", "--max-programs", "5") as s:
        yield s


def raw_socket(url):
    parts = urllib.parse.urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30), parts.netloc


def read_all(sock):
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


# -- start-up ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, env", [(["--api-key", ""], None), (["--api-key", "   "], None), ([], "")])
def test_an_empty_api_key_refuses_to_start(argv, env, monkeypatch, capsys):
    from sd_keras import cli

    if env is None:
        monkeypatch.delenv("SD_KERAS_API_KEY", raising=False)
    else:
        monkeypatch.setenv("SD_KERAS_API_KEY", env)
    # the missing model would stop a server that skipped the key check too, instead of serving
    assert cli.main(["serve", *argv, "-m", "/no/such/model.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "at least 8 characters" in err and "unknown model" not in err


def test_only_models_named_at_start_are_registered(tmp_path):
    from sd_keras.cli.serve import models_in_folder, registered_models
    from sd_keras.errors import InputError

    assert registered_models(["tiny"]) == {"tiny": "tiny"}  # no sd-v1 / sd-v2 behind the operator's back
    (tmp_path / "b-model.safetensors").write_bytes(b"")
    (tmp_path / "a-model.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    found = models_in_folder(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in found] == ["a-model.ckpt", "b-model.safetensors", "bundle"]
    assert sorted(registered_models(["tiny", *found])) == ["a-model", "b-model", "bundle", "tiny"]
    with pytest.raises(InputError, match="no model in it"):
        models_in_folder(str(tmp_path / "empty-folder"))
    with pytest.raises(InputError, match="no such folder"):
        models_in_folder(str(tmp_path / "missing"))


def test_bad_program_and_timeout_limits_are_refused(capsys):
    from sd_keras import cli

    assert cli.main(["serve", "--max-programs", "0"]) == 2
    assert "--max-programs must be >= 1" in capsys.readouterr().err
    assert cli.main(["serve", "--read-timeout", "0"]) == 2
    assert "--read-timeout must be > 0" in capsys.readouterr().err


# -- live server, no API key --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unregistered_presets_cannot_be_selected_and_no_paths_are_shown(server):
    response = httpx.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "sd-v1"})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "'sd-v1' is not registered" in detail and "available: tiny" in detail and "/" not in detail
    override = httpx.post(server.url + "/sdapi/v1/txt2img",
                          json={**SMALL, "override_settings": {"sd_model_checkpoint": "sd-v2"}})
    assert override.status_code == 404 and "available: tiny" in override.json()["detail"]
    models = httpx.get(server.url + "/sdapi/v1/sd-models").json()
    assert [(m["title"], m["filename"]) for m in models] == [("tiny", "tiny")]
    assert "downloading" not in server.log().lower()


@pytest.mark.slow
def test_hosts_other_than_the_server_address_are_refused(server):
    port = urllib.parse.urlsplit(server.url).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.1.2.3"):
        response = httpx.get(server.url + "/health", headers={"Host": host})
        assert response.status_code == 403, host
        assert "--allowed-hosts" in response.json()["detail"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "studio.example", f"other.example:{port}",
                 f"[::1]:{port}"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200, host
    values = metric_values(httpx.get(server.url + "/metrics").text)
    assert metric(values, "sd_keras_refused_requests_total", reason="host") >= 4


@pytest.mark.slow
def test_cross_origin_state_changes_are_refused(server):
    interrupt = server.url + "/sdapi/v1/interrupt"
    cross = [{"Origin": "http://evil.example", "Content-Type": "text/plain"}, {"Origin": "null"},
             {"Origin": server.url.replace("127.0.0.1", "localhost")},  # another origin of the same machine
             {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}]
    for headers in cross:
        response = httpx.post(interrupt, headers=headers, content=b"{}")
        assert response.status_code == 403, headers
        assert "cross-origin POST refused" in response.json()["detail"]
    for headers in ({}, {"Origin": server.url}, {"Sec-Fetch-Site": "same-origin", "Origin": server.url},
                    {"Sec-Fetch-Site": "none"}):
        assert httpx.post(interrupt, headers=headers).status_code == 200, headers
    # reading is not a state change (the browser's same-origin policy keeps the answer from the other page)
    assert httpx.get(server.url + "/sdapi/v1/progress", headers={"Origin": "http://evil.example"}).status_code == 200


@pytest.mark.slow
def test_every_response_forbids_sniffing_and_framing(server):
    for path in ("/", "/health", "/static/app.js", "/no/such/path"):
        headers = httpx.get(server.url + path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["content-security-policy"] == "frame-ancestors 'none'", path
        assert headers["x-frame-options"] == "DENY", path
    refused = httpx.get(server.url + "/health", headers={"Host": "evil.example"}).headers
    assert refused["x-content-type-options"] == "nosniff"


@pytest.mark.slow
def test_stalled_headers_and_bodies_are_dropped(server):
    sock, netloc = raw_socket(server.url)
    with sock:
        started = time.monotonic()
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {netloc}\r\nX-Slow: ".encode())  # never finished
        assert read_all(sock) == b""  # closed without an answer
        assert time.monotonic() - started < 20
    sock, netloc = raw_socket(server.url)
    with sock:
        sock.sendall(f"POST /sdapi/v1/png-info HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{\"image\": \"".encode())  # 11 of 1000 bytes, then nothing
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
    # an idle keep-alive connection is closed too, a client that sends in time is served
    sock, netloc = raw_socket(server.url)
    with sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {netloc}\r\n\r\n".encode())
        assert read_all(sock).startswith(b"HTTP/1.1 200")
    values = metric_values(httpx.get(server.url + "/metrics").text)
    assert metric(values, "sd_keras_refused_requests_total", reason="read_timeout") >= 1


@pytest.mark.slow
def test_a_client_aborting_mid_body_is_a_disconnect_not_a_server_error(server):
    def values():
        return metric_values(httpx.get(server.url + "/metrics").text)

    before = values()
    aborts = 3
    for _ in range(aborts):
        sock, netloc = raw_socket(server.url)
        sock.sendall(f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 5000\r\n\r\n{\"prompt\": \"a".encode())
        sock.close()
    endpoint = {"endpoint": "/sdapi/v1/txt2img", "method": "POST"}
    wait_until(lambda: metric(values(), "sd_keras_http_requests_total", **endpoint, status="499")
               >= metric(before, "sd_keras_http_requests_total", **endpoint, status="499") + aborts, "the aborts")
    after = values()
    assert metric(after, "sd_keras_errors_total", type="http_5xx") == metric(before, "sd_keras_errors_total",
                                                                            type="http_5xx")
    assert metric(after, "sd_keras_http_requests_total", **endpoint, status="500") == 0
    assert metric(after, "sd_keras_client_disconnects_total", endpoint="/sdapi/v1/txt2img") >= aborts


# -- compiled programs ------------------------------------------------------------------------------------------
def test_metrics_come_from_prometheus_client_with_a_registry_per_app():
    from sd_keras.server.metrics import ServerMetrics

    first, second = ServerMetrics(queue=None), ServerMetrics(queue=None)
    assert isinstance(first.registry, CollectorRegistry) and first.registry is not second.registry
    first.images.inc(3)
    first.requests.inc(endpoint="/x", method="GET", status="200")
    assert metric(metric_values(first.render()), "sd_keras_images_generated_total") == 3
    assert metric(metric_values(second.render()), "sd_keras_images_generated_total") == 0
    with pytest.raises(ValueError, match="takes labels"):
        first.requests.inc(endpoint="/x")


@pytest.mark.slow
def test_evicted_programs_are_freed_and_rebuilt_when_needed_again():
    import keras
    import numpy as np

    from sd_keras.loop import CompiledFunction, ProgramCache

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    programs = ProgramCache(max_size=1)
    forward = CompiledFunction(model, programs=programs)
    one, two = np.ones((1, 4), np.float32), np.ones((2, 4), np.float32)
    kernel, bias = model.get_weights()
    expected = two @ kernel + bias
    forward(one)
    (key, program), = programs._programs.items()
    held = weakref.ref(program)
    del program
    np.testing.assert_allclose(forward(two), expected, rtol=1e-5, atol=1e-6)
    gc.collect()
    assert key not in programs and len(programs) == 1
    assert held() is None  # the backend's compiled function is gone, not just unlisted
    forward(one)
    assert (programs.compilations, programs.evictions, forward.trace_count) == (3, 2, 3)


class _ModelWithPrograms(Generator):
    """Stands in for a pipeline: every (steps, size) "compiles" a program into its ``ProgramCache``; the prompt
    "bad input" raises InputError, the prompt "bug" a plain ValueError (as a bug in the library would)."""

    def __init__(self):
        from sd_keras.loop import ProgramCache

        self.programs = ProgramCache()
        self.config = type("Config", (), {"image_size": (64, 64)})()

    def text_to_image(self, prompt, *, batch_size, num_steps, height, width, progress=None, **kwargs):
        import numpy as np

        if prompt == "bad input":
            raise InputError("prompt: bad input")
        if prompt == "bug":
            raise ValueError("an internal value that should never occur")
        self.programs.get(("text", batch_size), object)
        self.programs.get(("loop", num_steps, height, width, batch_size), object)
        return np.zeros((batch_size, height, width, 3), np.uint8)


def test_the_server_bounds_compiled_programs_and_reports_them():
    import uvicorn

    from sd_keras.server.app import ServerSettings, create_app

    model = _ModelWithPrograms()
    settings = ServerSettings(models={"tiny": "tiny"}, model="tiny", max_programs=3)
    app = create_app(settings, loader=lambda spec, dtype: model)
    assert model.programs.max_size == 3
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the in-process server to start")
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        with httpx.Client(base_url=url, timeout=60) as client:
            for steps in (1, 2, 1, 3):  # the 1-step loop is used again before the 3-step one comes in
                assert client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": steps}).status_code == 200
            values = metric_values(client.get("/metrics").text)
            assert metric(values, "sd_keras_compiled_programs") == 3
            assert metric(values, "sd_keras_compiled_programs_limit") == 3
            assert metric(values, "sd_keras_compilations_total") == 4  # text, loops of 1, 2 and 3 steps
            assert metric(values, "sd_keras_compiled_program_evictions_total") == 1
            assert ("loop", 2, 64, 64, 1) not in model.programs  # the least recently used one went
            assert ("loop", 1, 64, 64, 1) in model.programs and ("loop", 3, 64, 64, 1) in model.programs
            assert client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 2}).status_code == 200
            values = metric_values(client.get("/metrics").text)
            assert metric(values, "sd_keras_compilations_total") == 5 and len(model.programs) == 3
    finally:
        server.should_exit = True
        thread.join(60)


def test_only_input_errors_are_422_and_a_bug_is_a_500_with_its_traceback_logged(caplog):
    import logging

    import uvicorn

    from sd_keras.server.app import ServerSettings, create_app

    model = _ModelWithPrograms()
    app = create_app(ServerSettings(models={"tiny": "tiny"}, model="tiny"), loader=lambda spec, dtype: model)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the in-process server to start")
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        with httpx.Client(base_url=url, timeout=60) as client, caplog.at_level(logging.ERROR, "sd_keras.server"):
            bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "bad input"})
            assert bad.status_code == 422 and bad.json()["detail"] == "prompt: bad input"
            assert not [r for r in caplog.records if r.exc_info]  # the client's mistake is no server error
            bug = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "bug"})
            assert bug.status_code == 500
            assert "ValueError: an internal value that should never occur" in bug.json()["detail"]
            logged = [r for r in caplog.records if r.exc_info]
            assert len(logged) == 1 and isinstance(logged[0].exc_info[1], ValueError)
            assert "Traceback" in caplog.text
            unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Heun++"})
            assert unknown.status_code == 422 and "sampler_name 'Heun++' is unknown" in unknown.json()["detail"]
            assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    finally:
        server.should_exit = True
        thread.join(60)


def test_a_failed_model_switch_names_no_server_folder():
    from sd_keras.server.generation import (LOAD_MODEL, GenerationRunner, ModelLoadError, ModelRegistry,
                                            hide_paths)
    from sd_keras.server.queue import Job, Progress, RunContext

    def loader(spec, dtype):
        if spec.endswith(".safetensors"):
            raise FileNotFoundError(2, "No such file or directory", spec)
        return _ModelWithPrograms()

    registry = ModelRegistry({"base": "base", "other": "/srv/private models/other.safetensors"}, "base",
                             loader=loader)
    registry.ensure("base")
    job = Job(LOAD_MODEL, "other")
    with pytest.raises(ModelLoadError) as caught:
        GenerationRunner(registry)([job], RunContext([job], Progress()))
    message = str(caught.value)
    assert "loading model 'other' failed: FileNotFoundError" in message and "other.safetensors" in message
    assert "/srv" not in message and "private" not in message
    assert registry.name == "base"  # the previous model is back
    assert hide_paths("cache /root/.cache/sd_keras/sd-v1/x.h5, see https://example.com/a/b") == \
        "cache …/x.h5, see https://example.com/a/b"
