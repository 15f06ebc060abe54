"""The persistent compilation cache (JAX) is on by default: a second process loads the programs the first one
compiled, the loop's progress reports included; ``SD_KERAS_COMPILATION_CACHE=0`` turns it off."""

import json
import os
import subprocess
import sys

import pytest

GENERATE = """
import collections, json, sys, time
import jax
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name.rsplit("/", 1)[-1]]))
from sd_keras import backend
from sd_keras.pipeline import StableDiffusion
model = StableDiffusion.from_preset("tiny")
seen = []
model.text_to_image("a red circle", num_steps=3, seed=1, height=64, width=64, sampler="Euler", progress=seen.append)
print("RESULT" + json.dumps({"hits": events["cache_hits"], "misses": events["cache_misses"], "steps": seen,
                             "folder": backend.compilation_cache_dir(),
                             "loop_callback": backend.supports_loop_callback()}))
"""


SETTINGS = """
import json
from sd_keras import backend
settings = {"folder": backend.compilation_cache_dir(), "loop_callback": backend.supports_loop_callback()}
print("RESULT" + json.dumps(settings))
"""


def _run(env, tmp_path, script=GENERATE):
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT", 1)[1])


@pytest.mark.slow
@pytest.mark.once  # always runs JAX in subprocesses (see conftest.py)
def test_a_second_process_loads_the_compiled_programs_from_the_cache(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "SD_KERAS_CACHE": str(tmp_path / "cache")}
    env.pop("SD_KERAS_COMPILATION_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    folder = str(tmp_path / "cache" / "xla")

    first = _run(env, tmp_path)
    assert first["folder"] == folder and first["hits"] == 0 and first["misses"] >= 1
    assert first["steps"] == [1, 2, 3] and not first["loop_callback"]  # progress without a host callback
    written = sorted(name for name in os.listdir(folder) if name.endswith("-cache"))
    assert any(name.startswith("jit_program-") for name in written), written  # the sampling loop

    second = _run(env, tmp_path)
    # every program the first process wrote is found (programs that compile in under
    # COMPILATION_CACHE_MIN_SECONDS are not written, so they miss again; on a busy machine the second process has
    # once looked up one program more than the first, so only the hits are counted here)
    assert second["hits"] >= len(written) >= 1
    assert set(written) <= {name for name in os.listdir(folder) if name.endswith("-cache")}
    assert second["steps"] == [1, 2, 3]

    off = _run({**env, "SD_KERAS_COMPILATION_CACHE": "0"}, tmp_path, SETTINGS)
    assert off == {"folder": None, "loop_callback": True}  # off: progress from inside the loop again


@pytest.mark.once  # pure JAX, whatever the Keras backend (see conftest.py)
def test_gpu_programs_compile_without_the_rematerialization_pass(monkeypatch):
    """On a GPU the pass only printed "Can't reduce memory use below 106 GiB" warnings (see
    ``backend.jax_compiler_options``): sd_keras' programs turn it off, unless XLA_FLAGS says otherwise."""
    import jax
    import numpy as np

    from sd_keras import backend

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert backend.jax_compiler_options() is None or jax.default_backend() == "gpu"  # CPU: no options
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    options = backend.jax_compiler_options()
    assert options == {"xla_gpu_enable_triton_gemm": False, "xla_disable_hlo_passes": "rematerialization"}
    compiled = jax.jit(lambda x: x @ x.T, compiler_options={"xla_disable_hlo_passes": "rematerialization"})
    np.testing.assert_allclose(np.asarray(compiled(np.eye(3, dtype=np.float32))), np.eye(3))  # XLA accepts it
    monkeypatch.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=fusion")
    assert backend.jax_compiler_options() == {"xla_gpu_enable_triton_gemm": False}


@pytest.mark.slow
@pytest.mark.once  # always runs JAX in a subprocess (see conftest.py)
def test_an_unwritable_cache_folder_only_turns_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {**os.environ, "KERAS_BACKEND": "jax", "SD_KERAS_CACHE": str(blocker / "cache")}
    env.pop("SD_KERAS_COMPILATION_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-W", "always", "-c", SETTINGS], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.split("RESULT", 1)[1]) == {"folder": None, "loop_callback": True}
    assert "no persistent compilation cache" in result.stderr
