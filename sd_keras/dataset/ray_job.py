"""Run a dataset job's shards on a Ray cluster with Ray Data (``pip install "sd_keras[ray]"``).

The pending shard numbers become a Ray dataset (one row, one block each) and go through ``map_batches`` with a
pool of actors: each actor loads the model once (one per GPU with ``gpus_per_worker=1``, else one per CPU
worker) and runs ``ShardWorker.make_shard``, the code of the local job, so the shards are the same files. An
actor writes its shard straight into the output folder (which every node must see: a shared file system) and
returns the shard's manifest entry; the driver adds each entry to the manifest as it arrives, so a driver killed
mid-job loses only the shards in flight and ``resume`` goes on from there.

A failed actor (its process killed, its node lost) is restarted and its shard retried (``max_restarts`` and
``max_task_retries`` unbounded); shard files are written atomically and identical when written again, so a retry
never duplicates an image, and ``manifest.verify`` proves that every image number appears exactly once.
"""

import json
import os
import time

import numpy as np

from sd_keras.dataset import manifest as manifest_lib
from sd_keras.errors import InputError


class ShardActor:
    """A Ray Data actor: one loaded model, one shard per call."""

    def __init__(self, model, batch_size, quality_filter, dtype, out, output_format, plan):
        import ray

        from sd_keras.dataset import quality
        from sd_keras.dataset.worker import ShardWorker

        if isinstance(plan, ray.ObjectRef):
            plan = ray.get(plan)
        self.plan, self.out, self.output_format = plan, out, output_format
        filter_function, _, _ = quality.resolve(quality_filter)
        self.worker = ShardWorker(model, batch_size=batch_size, quality_filter=filter_function, dtype=dtype)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch):
        entries, timings = [], []
        for index in batch["shard"]:
            index = int(index)
            first, end, items, rejects = self.plan[index]
            before, started = self.worker.compilations(), time.perf_counter()
            entry = self.worker.make_shard(self.out, index, first, end, items, self.output_format, rejects)
            seconds = time.perf_counter() - started
            entry["model"] = self.worker.identity
            timings.append(json.dumps({"seconds": seconds, "images": len(items), "node": self.node, "pid": os.getpid(),
                                       "compiled": self.worker.compilations() != before}))
            entries.append(json.dumps(entry))
        return {"shard": np.asarray(batch["shard"]), "entry": np.asarray(entries, dtype=object),
                "timing": np.asarray(timings, dtype=object)}


def _connect(address):
    try:
        import ray
    except ImportError:
        raise InputError("ray: Ray is not installed (pip install 'sd_keras[ray]')") from None
    if ray.is_initialized():
        return ray
    env = {name: os.environ[name] for name in ("KERAS_BACKEND",) if name in os.environ}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                 include_dashboard=False)
    except ConnectionError as error:
        raise InputError(f"ray {address}: no Ray cluster to connect to ({error}); start one with `ray start "
                         "--head` or pass its address") from None
    return ray


def run(address, out, manifest, validation, ranges, by_shard, pending, model, batch_size, quality_filter, dtype,
        output_format, workers, gpus_per_worker, progress):
    """Generate the ``pending`` shards on Ray; updates and saves ``manifest`` as shards finish."""
    if not pending:
        progress.close()
        return {"images": 0, "compile_seconds": 0.0, "rate": None}
    if callable(quality_filter):
        raise InputError("ray: pass a quality filter function as its import path 'module:function' (the actors "
                         "import it), or 'shapes'")
    ray = _connect(address)
    import ray.data

    # the job shows its own progress (images, rows/s, ETA); Ray Data's per-operator bars and log lines would
    # repeat it
    ray.data.DataContext.get_current().enable_progress_bars = False

    resources = ray.cluster_resources()
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1))
    workers = max(1, min(int(workers), len(pending)))
    plan = {index: (ranges[index][0], ranges[index][1], by_shard[index][0], by_shard[index][1]) for index in pending}
    plan_ref = ray.put(plan)  # held here until the job ends: a restarted actor reads it again
    dataset = ray.data.from_items([{"shard": index} for index in pending], override_num_blocks=len(pending))
    results = dataset.map_batches(
        ShardActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"model": model, "batch_size": batch_size, "quality_filter": quality_filter,
                               "dtype": dtype, "out": os.path.abspath(out), "output_format": output_format,
                               "plan": plan_ref},
        num_cpus=1, num_gpus=gpus_per_worker or None, max_restarts=-1, max_task_retries=-1)
    images, seen, arrivals = 0, set(), []
    started = time.perf_counter()
    try:
        for row in results.iter_rows():
            entry, timing = json.loads(row["entry"]), json.loads(row["timing"])
            identity = entry.pop("model")
            if manifest.get("model") and manifest["model"]["sha256"] != identity["sha256"]:
                raise RuntimeError(f"ray: actors loaded different weights ({identity['sha256'][:12]} vs "
                                   f"{manifest['model']['sha256'][:12]}): every node needs the same model files")
            manifest["model"] = identity
            if entry["index"] in seen:
                continue
            seen.add(entry["index"])
            manifest_lib.add_shard(manifest, entry)
            manifest_lib.save(out, manifest, validation)
            count = entry["end"] - entry["first"]
            images += len(by_shard[entry["index"]][0])
            arrivals.append((time.perf_counter(), images))
            progress.advance(count, timing["seconds"], timing["compiled"])
            progress.shard_done(entry["index"])
    finally:
        progress.close()
    # steady rate: the images that arrived after the first shard, over the time since (actor start-up, model
    # loading and compilation happen before the first shard arrives)
    rate = None
    if len(arrivals) > 2 and arrivals[-1][0] > arrivals[0][0]:
        rate = (arrivals[-1][1] - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0])
    # and per actor: the shards that did not compile, over the time the actors spent on them
    return {"images": images, "compile_seconds": progress.compile_seconds, "rate": rate, "workers": workers,
            "actor_rate": progress.rate,
            "first_shard_seconds": round(arrivals[0][0] - started, 3) if arrivals else None}
