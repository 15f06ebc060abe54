"""``sd-keras dataset --ray``: a two-node Ray cluster on the loopback (``ray start --head`` + ``ray start
--address``, one CPU each, small object stores, the ``tiny`` preset) writes the same shards as the local job, and
a worker killed mid-job still leaves every image exactly once. ``ray stop`` always runs at the end."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from sd_keras import dataset  # noqa: E402
from sd_keras.dataset import manifest as manifest_lib  # noqa: E402

pytestmark = pytest.mark.slow

RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
OBJECT_STORE = str(80 * 1024 * 1024)
# A user filter the actors import by name: keeps every image, slowly, so that a worker can be killed mid-job.
SLOW_FILTER = """
import time
def keep_slowly(image, item):
    time.sleep(0.4)
    return True
"""
JOB = """
import json, sys
from sd_keras import dataset
rows = [{"prompt": f"a red circle number {i}", "n": i} for i in range(int(sys.argv[3]))]
manifest = dataset.generate(rows, sys.argv[1], model="tiny", steps=2, batch_size=2, shard_size=2, progress=False,
                            quality_filter="slow_filter:keep_slowly", ray=sys.argv[2] if sys.argv[2] != "-" else None)
print("COUNTS", json.dumps(manifest["counts"]))
"""


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_modules")
    (folder / "slow_filter.py").write_text(SLOW_FILTER, encoding="utf-8")
    # the cluster's own token (whatever ~/.ray/auth_token a local ray.init() may have left), passed to the nodes and
    # the drivers through the environment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0", "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus", "1", "--object-store-memory", OBJECT_STORE, "--node-ip-address", "127.0.0.1"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", address.split(":")[1], "--include-dashboard=false",
                        *common], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", "--address", address, *common], env=env, check=True, capture_output=True,
                       timeout=180)
        yield address, env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=180)


def _job(out, address, count, env):
    return subprocess.Popen([sys.executable, "-c", JOB, str(out), address, str(count)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads([line for line in stdout.splitlines() if line.startswith("COUNTS ")][-1][len("COUNTS "):])


def _hashes(folder):
    return {shard["name"]: shard["sha256"] for shard in manifest_lib.load(folder)["shards"]}


def _actor_pids():
    """Processes of this user whose title is a Ray Data actor running ShardActor."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "ShardActor" in title and "MapWorker" in title:
            pids.append(int(name))
    return pids


def test_two_nodes_write_the_local_jobs_shards(cluster, tmp_path):
    address, env = cluster
    local = _job(tmp_path / "local", "-", 8, env)
    assert _finish(local) == {"images": 8, "written": 8, "rejected": 0, "filtered": 0}
    on_ray = _job(tmp_path / "ray", address, 8, env)
    assert _finish(on_ray) == {"images": 8, "written": 8, "rejected": 0, "filtered": 0}
    manifest = dataset.verify(tmp_path / "ray")
    assert manifest["timing"]["mode"] == "ray" and manifest["complete"]
    assert _hashes(tmp_path / "ray") == _hashes(tmp_path / "local")


def test_a_killed_worker_still_leaves_every_image_exactly_once(cluster, tmp_path):
    address, env = cluster
    out = tmp_path / "ray"
    job = _job(out, address, 24, env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = len(manifest_lib.load(out)["shards"]) if (out / "manifest.json").exists() else 0
            if done >= 1 and _actor_pids():
                break
            assert job.poll() is None, job.communicate()[1][-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no shard finished in time")
        victim = _actor_pids()[0]
        os.kill(victim, signal.SIGKILL)
        killed_during = len(manifest_lib.load(out)["shards"])
        counts = _finish(job)
    finally:
        if job.poll() is None:
            job.kill()
    assert killed_during < 12, "the job ended before the worker was killed"
    assert counts == {"images": 24, "written": 24, "rejected": 0, "filtered": 0}
    manifest = dataset.verify(out)  # each image number in exactly one shard, sha256 as listed
    keys = sorted(key for shard in manifest["shards"]
                  for key in manifest_lib.shard_io.read_keys(str(out / shard["name"]), "webdataset"))
    assert keys == [f"{index:09d}" for index in range(24)]
