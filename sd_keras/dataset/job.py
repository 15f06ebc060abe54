"""``generate(table, out, ...)``: a prompt table → a sharded image dataset, on this host or on a Ray cluster."""

import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time

from sd_keras import defaults
from sd_keras.dataset import manifest as manifest_lib
from sd_keras.dataset import shards as shard_io
from sd_keras.dataset import table as table_lib
from sd_keras.errors import InputError

# Generated batches waiting for PNG encoding and writing: generation runs ahead of the writer by at most this
# many batches (a bound on host memory), and waits when the writer falls behind.
QUEUE_BATCHES = 4
COMPILING_TEXT = "compiling (first run of this shape)"


def _rows_of(table):
    if isinstance(table, (str, os.PathLike)):
        return table_lib.read_table(os.fspath(table)), {"path": os.path.abspath(os.fspath(table))}
    if isinstance(table, (list, tuple)) and table and all(isinstance(row, dict) for row in table):
        return list(table), {"path": None}
    raise InputError("table must be a CSV / JSONL / Parquet path or a non-empty list of row dicts")


def _digest(rows):
    text = json.dumps(rows, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_positive(name, value, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum and value > maximum):
        raise InputError(f"{name} must be an integer in [1, {maximum or 'inf'}], got {value!r}")
    return value


class Progress:
    """Rows done, rows/s and ETA on stderr (a bar on a terminal, else a line per shard). Batches that compiled
    are announced and left out of the rate, so the ETA reflects steady-state speed."""

    def __init__(self, total, done=0, *, enabled=True, stream=None):
        self.total, self.done = total, done
        self.timed_rows, self.timed_seconds, self.compile_seconds = 0, 0.0, 0.0
        self.stream = stream or sys.stderr
        self.bar = None
        self.enabled = enabled
        if enabled and total and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="images", file=self.stream, leave=True,
                            bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {postfix}")

    @property
    def rate(self):
        return self.timed_rows / self.timed_seconds if self.timed_seconds > 0 else None

    def eta_seconds(self):
        rate = self.rate
        return None if not rate else (self.total - self.done) / rate

    def compiling(self, group):
        height, width, steps, sampler, cfg = group
        text = f"{COMPILING_TEXT}: {width}x{height}, {steps} steps, {sampler}, CFG {cfg:g}"
        if self.bar is not None:
            self.bar.set_description_str(text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def advance(self, rows, seconds, compiled):
        self.done += rows
        if compiled:
            self.compile_seconds += seconds
        else:
            self.timed_rows += rows
            self.timed_seconds += seconds
        if self.bar is not None:
            self.bar.set_description_str("images", refresh=False)
            self.bar.set_postfix_str(self.status(), refresh=False)
            self.bar.update(rows)

    def status(self):
        rate, eta = self.rate, self.eta_seconds()
        if rate is None:
            return "rate after the first compiled batch"
        return f"{rate:.2f} rows/s, ETA {_duration(eta)}"

    def shard_done(self, index):
        if self.bar is None and self.enabled:
            print(f"shard {index} done: {self.done}/{self.total} images, {self.status()}", file=self.stream,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def generate(table, out, *, model="shapes", output_format="webdataset", shard_size=1000, batch_size=8,
             base_seed=0, steps=defaults.CLI.steps, cfg_scale=defaults.CLI.cfg_scale, sampler=defaults.CLI.sampler,
             width=None, height=None, negative_prompt="",
             num_images=1, resume=False, quality_filter=None, devices=None, ray=None, ray_workers=None,
             ray_gpus_per_worker=0, dtype="float32", progress=None):
    """Generate the images of a prompt table into sharded files in ``out``; returns the manifest (a dict).

    Args:
        table: a CSV / TSV / JSONL / Parquet path, or a list of row dicts (``expand_template`` makes one from a
            template). Columns: ``prompt``; optional ``negative_prompt``, ``seed``, ``steps``, ``cfg_scale``,
            ``sampler``, ``width``, ``height``, ``num_images``; every other column is a label.
        out: the dataset folder (shards, ``manifest.json``, ``rejects.jsonl``).
        model: a preset name or checkpoint path (or, in local mode, a loaded ``StableDiffusion``).
        output_format: ``"webdataset"`` (tar shards), ``"parquet"`` or ``"imagefolder"`` (Hugging Face layout).
        shard_size: image numbers per shard; batch_size: images per compiled batch.
        base_seed: image ``i`` without a ``seed`` cell uses ``base_seed + i``.
        steps, cfg_scale, sampler, width, height, negative_prompt, num_images: what an empty cell means
            (the CLI's defaults, AUTOMATIC1111's: 20 steps, CFG 7, Euler a; width/height None: the model's size).
        resume: continue the job in ``out``: finished shards (listed in the manifest, sha256 checked) are kept,
            the others generated. Without it, ``out`` must not hold a dataset yet.
        quality_filter: None, ``"shapes"`` (keep images that ``sd_keras.evaluate`` judges to show the prompt),
            ``callable(image, item) -> bool or (bool, verdict)`` or its import path ``"module:function"``.
        devices: ``"all"`` or a count: data-parallel over local accelerators (JAX), as ``generate`` does (with a
            model spec: the model is built after the devices are set).
        ray: None (this process), ``"auto"`` or a cluster address: run the shards on Ray actors.
        ray_workers: actors (default: as many as the cluster's CPUs, or GPUs when ``ray_gpus_per_worker``).
        ray_gpus_per_worker: GPUs per actor (1 on a GPU cluster; 0: CPU actors).
        progress: progress on stderr (default on: a bar on a terminal, else a line per shard; False: silent).

    Returns:
        The manifest: ``job``, ``model`` (name and weights sha256), ``shards`` (name, image range, sha256,
        written count, rejected and filtered image numbers), ``counts``, ``complete``, ``timing``.

    Example:
        >>> rows = expand_template("a {color} circle", {"color": ["red", "blue"]})         # doctest: +SKIP
        >>> manifest = generate(rows, "data/", model="tiny", steps=2, shard_size=2)          # doctest: +SKIP
        >>> manifest["counts"]["written"]                                                    # doctest: +SKIP
        2
    """
    from sd_keras.dataset import quality

    if output_format not in shard_io.FORMATS:
        raise InputError(f"output_format must be one of {', '.join(shard_io.FORMATS)}, got {output_format!r}")
    _check_positive("shard_size", shard_size)
    _check_positive("batch_size", batch_size, 1024)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or not 0 <= base_seed <= table_lib.MAX_SEED:
        raise InputError(f"base_seed must be an integer in [0, 2**64), got {base_seed!r}")
    defaults = table_lib.Defaults(negative_prompt=negative_prompt or "", steps=steps, cfg_scale=cfg_scale,
                                  sampler=sampler, width=width, height=height, num_images=num_images,
                                  base_seed=base_seed)
    try:  # the defaults pass the row checks, or every row would be rejected for the same reason
        table_lib._check_row({"prompt": "x"}, defaults)
    except InputError as error:
        raise InputError(f"default {error}") from None
    if ray is not None and not isinstance(model, str):
        raise InputError("ray: pass the model as a preset name or path (each actor loads its own copy)")
    if ray is not None and devices is not None:
        raise InputError("devices applies to a local run; on Ray, each actor uses its GPU (ray_gpus_per_worker)")
    filter_function, filter_name, grammar_check = quality.resolve(quality_filter)
    rows, source = _rows_of(table)
    items, rejects, total = table_lib.plan_items(rows, defaults, check=grammar_check)
    model_name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "name", "model")
    job = {"table": {**source, "rows": len(rows), "sha256": _digest(rows)}, "model": model_name,
           "output_format": output_format, "shard_size": shard_size, "batch_size": batch_size,
           "defaults": {"negative_prompt": defaults.negative_prompt, "steps": steps, "cfg_scale": float(cfg_scale),
                        "sampler": sampler, "width": width, "height": height, "num_images": num_images,
                        "base_seed": base_seed},
           "quality_filter": filter_name, "images": total, "dtype": dtype}
    ranges = table_lib.shard_ranges(total, shard_size)
    out = os.fspath(out)
    manifest = _start(out, job, len(ranges), resume)
    done = {shard["index"] for shard in manifest["shards"]}
    by_shard = {index: ([], []) for index in range(len(ranges))}
    for item in items:
        by_shard[item.index // shard_size][0].append(item)
    for reject in rejects:
        by_shard[reject.index // shard_size][1].append({"index": reject.index, "row": reject.row,
                                                        "reason": reject.reason})
    validation = [reject.to_dict() for reject in rejects]
    pending = [index for index in range(len(ranges)) if index not in done]
    started = time.perf_counter()
    show = True if progress is None else bool(progress)
    done_images = sum(ranges[index][1] - ranges[index][0] for index in done)
    if ray is None:
        run = _run_local(out, manifest, validation, ranges, by_shard, pending, model, model_name, batch_size,
                         filter_function, devices, dtype, output_format, Progress(total, done_images, enabled=show))
    else:
        from sd_keras.dataset import ray_job

        run = ray_job.run(ray, out, manifest, validation, ranges, by_shard, pending, model, batch_size,
                          quality_filter, dtype, output_format,
                          ray_workers, ray_gpus_per_worker, Progress(total, done_images, enabled=show))
    manifest["timing"] = {"seconds": round(time.perf_counter() - started, 3), "images_this_run": run["images"],
                          "compile_seconds": round(run["compile_seconds"], 3),
                          "rows_per_second": None if run["rate"] is None else round(run["rate"], 4),
                          "mode": "local" if ray is None else "ray"}
    if ray is not None:
        manifest["timing"].update(workers=run.get("workers"), first_shard_seconds=run.get("first_shard_seconds"),
                                  rows_per_second_per_actor=None if run.get("actor_rate") is None
                                  else round(run["actor_rate"], 4))
    manifest_lib.save(out, manifest, validation)
    return manifest


def _start(out, job, num_shards, resume):
    """The manifest to continue: a new one, or (``resume``) the folder's, with its shards checked."""
    from sd_keras import files

    path = manifest_lib.path_of(out)
    if os.path.exists(path):
        if not resume:
            raise InputError(f"{out}: already holds a dataset (manifest.json); pass --resume / resume=True to "
                             "continue it, or choose a new folder")
        manifest = manifest_lib.load(out)
        before = manifest["job"]
        differing = sorted(key for key in set(job) | set(before) if key != "table" and job.get(key) != before.get(key))
        if job["table"]["sha256"] != before.get("table", {}).get("sha256"):
            differing.append("table (its rows changed)")
        if differing:
            raise InputError(f"{out}: --resume with other settings than the job it holds (differing: "
                             f"{', '.join(differing)})")
        # what writes killed mid-way left (temporaries next to their targets); one job per folder at a time
        names = [shard_io.shard_name(index, job["output_format"]) for index in range(num_shards)]
        for name in names + [manifest_lib.MANIFEST, manifest_lib.REJECTS]:
            for leftover in files.temporaries_of(os.path.join(out, name)):
                if os.path.isdir(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    os.unlink(leftover)
        kept = []
        for shard in manifest["shards"]:  # a damaged or missing shard is generated again
            shard_path = os.path.join(out, shard["name"])
            if os.path.exists(shard_path) and shard_io.shard_sha256(shard_path) == shard["sha256"]:
                kept.append(shard)
        manifest["shards"] = kept
        manifest["complete"] = len(kept) == num_shards
        return manifest
    try:
        files.check_writable(out, folder=True)
    except ValueError as error:
        raise InputError(str(error)) from None
    os.makedirs(out, exist_ok=True)
    return manifest_lib.new(job, num_shards)


def _run_local(out, manifest, validation, ranges, by_shard, pending, model, model_name, batch_size,
               filter_function, devices, dtype, output_format, progress):
    """Generate on this host: the main thread runs the model, a writer thread encodes PNGs and writes shards
    (a bounded queue between them), so host work overlaps the accelerator's."""
    from sd_keras import backend
    from sd_keras.dataset.worker import ShardWorker, finish_shard

    count = backend.use_devices(devices) if devices is not None else 1
    if batch_size % count:
        raise InputError(f"batch_size {batch_size} must be a multiple of the {count} devices used")
    if not pending:
        progress.close()
        return {"images": 0, "compile_seconds": 0.0, "rate": None}
    worker = ShardWorker(model, batch_size=batch_size, quality_filter=filter_function, model_name=model_name,
                         dtype=dtype)
    work = queue.Queue(maxsize=QUEUE_BATCHES)
    failure = []

    def writer():
        collected = {}
        try:
            # the model's hash (seconds of host work) is checked against a resumed job's here, before any shard is
            # written, while the first batches generate
            _set_model(manifest, worker.identity)
            while True:
                task = work.get()
                if task is None:
                    return
                kind, index, payload = task
                records, rejected, filtered = collected.setdefault(index, ([], [], []))
                if kind == "batch":
                    batch, images, reason = payload
                    if images is None:
                        rejected.extend({"index": item.index, "row": item.row, "reason": reason} for item in batch)
                    else:
                        new, dropped = worker.records(batch, images)
                        records.extend(new)
                        filtered.extend(dropped)
                    continue
                first, end = ranges[index]
                entry = finish_shard(shard_io, out, index, first, end, output_format, records, rejected, filtered,
                                     by_shard[index][1])
                del collected[index]
                manifest_lib.add_shard(manifest, entry)
                manifest_lib.save(out, manifest, validation)
                progress.shard_done(index)
        except BaseException as error:  # reported to the generating thread, which stops
            failure.append(error)
            while work.get() is not None:  # let the producer finish its puts
                pass

    thread = threading.Thread(target=writer, name="sd-keras-dataset-writer", daemon=True)
    thread.start()
    images = 0
    try:
        for index in pending:
            items = by_shard[index][0]

            class OnBatch:
                compiling = staticmethod(progress.compiling)

                def __call__(self, batch, generated, reason, seconds, compiled):
                    if failure:
                        raise failure[0]
                    work.put(("batch", index, (batch, generated, reason)))
                    progress.advance(len(batch), seconds, compiled)

            worker.run_shard(items, OnBatch())
            images += len(items)
            work.put(("shard", index, None))
            progress.advance(len(by_shard[index][1]), 0.0, True)  # rejected rows: nothing to time
            if failure:
                raise failure[0]
    finally:
        work.put(None)
        thread.join()
        progress.close()
    if failure:
        raise failure[0]
    return {"images": images, "compile_seconds": progress.compile_seconds, "rate": progress.rate}


def _set_model(manifest, identity):
    if manifest.get("model") and manifest["model"]["sha256"] != identity["sha256"]:
        raise InputError(f"--resume: the model's weights differ from the ones this dataset was made with "
                         f"({identity['sha256'][:12]} vs {manifest['model']['sha256'][:12]})")
    manifest["model"] = identity
