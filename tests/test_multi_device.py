"""Data-parallel generation over several devices (JAX; two host devices stand in for two GPUs)."""
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import sys
import numpy as np
from sd_keras import backend
from sd_keras.pipeline import StableDiffusion
count = backend.use_devices(sys.argv[1])
sd = StableDiffusion.from_preset("tiny")
latent = sd.generate_image(sd.encode_text("a cat"), batch_size=4, num_steps=3, seed=3, sampler="Euler a",
                           height=64, width=64, return_latent=True)
import keras
print("DEVICES", count, len(keras.distribution.list_devices()))
np.save(sys.argv[2], latent)
"""


def _run(devices, out):
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, devices, str(out)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_two_devices_give_the_single_device_result(tmp_path):
    assert "DEVICES 2 2" in _run("all", tmp_path / "two.npy")
    assert "DEVICES 1 2" in _run("1", tmp_path / "one.npy")
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"), rtol=1e-3, atol=2e-3)


def test_bad_device_requests():
    from sd_keras import backend

    if backend.name() != "jax":
        with pytest.raises(ValueError, match="JAX backend"):
            backend.use_devices("all")
    else:
        with pytest.raises(ValueError, match="devices"):
            backend.use_devices("many")
