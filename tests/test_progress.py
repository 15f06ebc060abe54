"""Progress while the sampling loop compiles: the loop's phase reports, the CLI bar, the server's /progress.

The first run of a shape compiles its program (seconds on a GPU, up to a minute on a CPU) before any step is
done: every display says so, and ETAs come from the step times alone.
"""

import io
import os
import threading
import time

import httpx
import numpy as np
import pytest

from sd_keras.cli import generate as cli_generate
from sd_keras.server import queue as server_queue
from sd_keras.server.process import ServerProcess


class Recorder:
    """A progress callback with a ``phase`` method that records what it hears."""

    def __init__(self):
        self.events = []

    def __call__(self, step_done):
        self.events.append(step_done)

    def phase(self, name):
        self.events.append(name)


@pytest.mark.slow
def test_the_loop_says_when_it_compiles_and_when_the_steps_start():
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("tiny")
    common = dict(num_steps=3, seed=5, height=64, width=64, sampler="Euler")
    first, second = Recorder(), Recorder()
    image = model.text_to_image("a red circle", progress=first, **common)
    traces = model._loop.trace_count
    again = model.text_to_image("a red circle", progress=second, **common)
    assert first.events == ["compiling", "sampling", 1, 2, 3]
    assert second.events == ["sampling", 1, 2, 3]  # compiled: no compilation to report
    assert model._loop.trace_count == traces  # the zero-step compile run and the real run share one program
    np.testing.assert_array_equal(image, again)
    plain = []
    np.testing.assert_array_equal(model.text_to_image("a red circle", progress=plain.append, **common), image)
    assert plain == [1, 2, 3]  # a plain callable still hears every step


def test_cli_bar_says_compiling_and_times_the_steps_alone(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(cli_generate.sys, "stderr", stream)
    progress, close = cli_generate._progress_bar(20, True)
    progress.phase("compiling")
    assert "compiling (first run of this shape)" in stream.getvalue()
    time.sleep(0.5)  # the compilation
    progress.phase("sampling")
    progress(1)
    progress(2)
    elapsed = progress.bar.format_dict["elapsed"]
    assert elapsed < 0.4, elapsed  # the clock restarted when the steps started
    assert progress.bar.n == 2 and progress.bar.desc.startswith("sampling")
    close()


def test_cli_bar_rate_ignores_the_steps_image_to_image_skips(monkeypatch):
    monkeypatch.setattr(cli_generate.sys, "stderr", io.StringIO())
    progress, close = cli_generate._progress_bar(20, True)
    progress.phase("sampling")
    time.sleep(0.2)
    progress(16)  # strength 0.25: the loop starts at step 15
    rate = (progress.bar.format_dict["n"] - progress.bar.format_dict["initial"]) / progress.bar.format_dict["elapsed"]
    assert rate < 10, rate  # one step in >= 0.2 s, not 16
    close()


def test_server_progress_excludes_compilation_from_the_eta():
    progress = server_queue.Progress()
    context = server_queue.RunContext([server_queue.Job("txt2img", None)], progress)
    progress.begin("txt2img", 2, 10)  # two iterations of ten steps
    progress.update(job_no=0)
    context.step.phase("compiling")
    value, eta, state = progress.snapshot()
    assert state["compiling"] and server_queue.progress_text(state) == "compiling (first run of this shape)"
    assert eta == 0.0 and 0 < value < 0.02
    time.sleep(0.6)  # the compilation: it must not count in the ETA
    context.step.phase("sampling")
    time.sleep(0.05)
    context.step(1)
    context.step(2)
    value, eta, state = progress.snapshot()
    assert not state["compiling"] and server_queue.progress_text(state) == "Step 2/10"
    # 18 steps left at about 0.025 s each; counting the compilation would give more than 5 s
    assert 0.2 < eta < 2.5, eta
    progress.update(job_no=1)  # the second iteration: the first one's step times still count
    value, eta, state = progress.snapshot()
    assert 0.2 < eta < 2.5 and server_queue.progress_text(state) == "Step 0/10"
    progress.end()
    assert progress.snapshot()[1] == 0.0 and server_queue.progress_text(progress.snapshot()[2]) is None


@pytest.mark.slow
def test_progress_endpoint_reports_the_compilation_of_a_new_shape():
    """A live server: the first request of a new size compiles; /progress says so while it does."""
    seen = []
    env = {**os.environ, "SD_KERAS_COMPILATION_CACHE": "0"}  # JAX: a program cached by an earlier run loads at once
    with ServerProcess("-m", "tiny", env=env) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        results = []
        request = threading.Thread(target=lambda: results.append(client.post(
            "/sdapi/v1/txt2img", json={"prompt": "a blue square", "width": 64, "height": 64, "steps": 3,
                                       "sampler_name": "Euler"})))
        request.start()
        while request.is_alive():
            body = client.get("/sdapi/v1/progress").json()
            if body["state"]["job_count"]:
                seen.append((body["compiling"], body["textinfo"], body["eta_relative"]))
            time.sleep(0.02)
        request.join()
        assert results[0].status_code == 200, results[0].text
        idle = client.get("/sdapi/v1/progress").json()
    compiling = [entry for entry in seen if entry[0]]
    assert compiling, seen
    assert all(text == "compiling (first run of this shape)" and eta == 0.0 for _, text, eta in compiling)
    assert not idle["compiling"] and idle["textinfo"] is None
