"""``sd-keras dataset`` on a CPU: rows/s of the local job and of a two-node Ray cluster on the loopback.

    KERAS_BACKEND=jax python benchmarks/dataset_cpu.py [--images 64] [--batch 8] [--steps 20] [--shard-size 8]

The ``shapes`` preset at its native 128x128, ``Euler a``, CFG 7, prompts from the shapes vocabulary. Three runs
of the same job, each into a new folder:

1. local, in this process (one model, the writer thread overlapping PNG encoding and writing);
2. Ray: ``ray start --head`` + ``ray start --address`` on 127.0.0.1, one CPU each (two actors, each loading its
   own model), the driver in this process;
3. the shards of 1 and 2 compared (sha256 per shard).

For each run: the wall time of the whole job (model loading and compilation included), ``rows/s steady`` (local:
the batches that did not compile; Ray: the images after the first finished shard over the time since) and the
load average. Read the numbers with the load average: on a machine whose two cores other work shares, two
single-CPU Ray nodes (two processes) get a larger share of the contended cores than the local run's one process,
so Ray's steady rate can exceed the local one without more hardware; Ray's wall time also pays for starting
actors and loading a model in each. Writes ``benchmarks/results/dataset_cpu_<backend>.json``.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(count):
    from sd_keras import dataset

    rows = dataset.expand_template("a {size} {color} {shape} on a {bg} background",
                                   {"size": "@shapes", "color": "@shapes", "shape": "@shapes",
                                    "bg": ["gray", "white"]})
    return [rows[(i * 7) % len(rows)] for i in range(count)]


def _run(rows, out, args, **options):
    from sd_keras import dataset

    load = os.getloadavg()
    started = time.perf_counter()
    manifest = dataset.generate(rows, out, model="shapes", steps=args.steps, batch_size=args.batch,
                                shard_size=args.shard_size, progress=False, **options)
    wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 2), "rows_per_second_wall": round(len(rows) / wall, 3),
            "rows_per_second_steady": manifest["timing"]["rows_per_second"], "timing": manifest["timing"],
            "load_average_before": [round(value, 2) for value in load],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
            "shards": {shard["name"]: shard["sha256"] for shard in manifest["shards"]}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    rows = _rows(args.images)
    work = tempfile.mkdtemp(prefix="dataset-bench-")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "KERAS_BACKEND": backend, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    try:
        local = _run(rows, os.path.join(work, "local"), args)
        print("local", json.dumps({k: v for k, v in local.items() if k != "shards"}), flush=True)
        address = f"127.0.0.1:{_free_port()}"
        common = ["--num-cpus", "1", "--object-store-memory", str(80 * 1024 * 1024), "--node-ip-address",
                  "127.0.0.1"]
        subprocess.run([RAY, "start", "--head", "--port", address.split(":")[1], "--include-dashboard=false",
                        *common], env=env, check=True, capture_output=True)
        subprocess.run([RAY, "start", "--address", address, *common], env=env, check=True, capture_output=True)
        os.environ.update(RAY_AUTH_MODE=env["RAY_AUTH_MODE"], RAY_AUTH_TOKEN=env["RAY_AUTH_TOKEN"])
        try:
            on_ray = _run(rows, os.path.join(work, "ray"), args, ray=address)
        finally:
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        print("ray", json.dumps({k: v for k, v in on_ray.items() if k != "shards"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"what": "sd-keras dataset, shapes preset 128x128, local job vs two Ray nodes on the loopback (one "
                      "CPU each)",
              "backend": backend, "images": args.images, "batch_size": args.batch, "steps": args.steps,
              "sampler": "Euler a", "shard_size": args.shard_size, "local": local, "ray_two_nodes": on_ray,
              "same_shards": local["shards"] == on_ray["shards"],
              "ray_vs_local_steady": (round(on_ray["rows_per_second_steady"] / local["rows_per_second_steady"], 3)
                                      if on_ray["rows_per_second_steady"] and local["rows_per_second_steady"]
                                      else None),
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()}}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"dataset_cpu_{backend}.json")
    from sd_keras import files

    files.write_json(path, result)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
