"""Export SDXL base shapes (random weights) as a LiteRT bundle on this machine's CPU: time, peak memory, sizes.

The model is ``StableDiffusionXL.from_config("sd-xl")``: the published base model's shapes (UNet 2.57 B
parameters, CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the VAE) with random weights, saved by another process
in sd_keras's format (float16 files, ``--model-dir`` keeps it for the next run). The export is the library's
``export_bundle`` on that folder, as ``sd-keras export`` runs it for SDXL: a worker process loads the model,
records, writes the converters' SavedModels and the gates' Keras references, and exits; then each file is
converted in its own process (the UNet in parts) and the bundle is checked without the model in memory
(``--in-process`` exports a model object in this process instead). This script records the wall time, the peak
resident memory (``VmHWM``, sampled) of every process of the export by what it runs, the machine's lowest available
memory, and the file sizes. The per-component parity checks run on one recorded sample; the end-to-end image and
the quality gates do not (each is a full generation of a 2.6 B-parameter UNet at 1024x1024 on the CPU, for the
Keras model and the bundle: hours on two cores), and calibration records one step of one prompt.

Usage:
    python benchmarks/export_sdxl.py [--quantize int8] [--size 1024x1024] [--model-dir DIR] [--unet-only]
    python benchmarks/export_sdxl.py --quantize w8a16 --latency-runs 0 --check-workers 2   # one int16 call each
Not part of CI. Measured on this 23.5 GB, 2-core machine (``benchmarks/results/export_sdxl_*.json``): int8 at
1024x1024 completes in 21 min, a 3.49 GB bundle; the worker peaks at 23.2 GB resident (with its mapped weight
files; 3.1 GB of the machine stayed available), the largest converter at 10.3 GB; int4 completes in 31 min, a
2.27 GB bundle; w8a16 (``--latency-runs 0 --check-workers 2``) completes in 94 min, a 3.59 GB bundle, 38 min of it
checking (one int16 call of the UNet takes 22 min, of the decoder 30). Exporting the model object in
the process that holds it was killed for memory at 1024x1024 and at 768x768 when its first converter started.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from export_sd_v1 import PeakMemory, _child_rss_mb  # noqa: E402  (the same memory sampling)


def _high_water_mb(pid):
    """VmHWM (peak resident memory, MB) of a running process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _available_mb():
    """The machine's MemAvailable (MB)."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def supervise(argv, output):
    """Run the export in a child process and record its outcome even when it is killed (out of memory): then
    with the converter processes that had finished (``<output>.progress.json``)."""
    started = time.perf_counter()
    available_at_start = _available_mb()
    lowest_available = available_at_start
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *argv])
    peak, tree = 0.0, ProcessTree(child.pid)
    while child.poll() is None:
        peak = max(peak, _child_rss_mb(child.pid))
        tree.sample()
        lowest_available = min(lowest_available, _available_mb())
        time.sleep(0.5)
    result = {}
    progress = output + ".progress.json"
    if child.returncode == 0 and os.path.exists(output):
        with open(output) as handle:
            result = json.load(handle)
    elif os.path.exists(progress):
        with open(progress) as handle:
            result = json.load(handle)
    if os.path.exists(progress):
        os.unlink(progress)
    result["status"] = ("ok" if child.returncode == 0 else
                        f"killed by signal {-child.returncode} (out of memory?)" if child.returncode < 0 else
                        f"failed with exit status {child.returncode}")
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["exporter_peak_rss_mb_sampled"] = round(peak)
    result["process_tree"] = tree.report()
    result["machine_memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    # the machine is shared: what other processes left to this run
    result["machine_available_mb"] = {"at_start": round(available_at_start), "lowest": round(lowest_available)}
    temporary = output + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, output)
    print(json.dumps(result, indent=2))
    return 0 if child.returncode == 0 else 1


class ProcessTree:
    """Every process under ``root`` (sampled): its peak resident memory (``VmHWM``) by what it runs, and the
    largest sum of resident memory of the whole tree at one time."""

    def __init__(self, root):
        self.root = root
        self.peaks = {}  # pid -> [label, peak MB]
        self.largest_total_mb = 0.0

    def _children(self):
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        parents.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        found, queue = [], [self.root]
        while queue:
            pid = queue.pop()
            found.append(pid)
            queue.extend(parents.get(pid, []))
        return found

    @staticmethod
    def _label(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
        except OSError:
            return None
        if "--save-model" in args:
            return "saving the random-weights model"
        if "sd_keras.export_worker" in args:
            return f"{args[args.index('sd_keras.export_worker') + 1]} worker"
        if "--convert" in args:
            try:
                with open(args[args.index("--convert") + 1]) as handle:
                    return f"converter: {json.load(handle)['component']}"
            except (OSError, ValueError, KeyError, IndexError):
                return "converter"
        return "exporter" if pid != os.getpid() else None

    def sample(self):
        total = 0.0
        for pid in self._children():
            peak = _high_water_mb(pid)
            total += _child_rss_mb(pid)
            if pid not in self.peaks:
                label = self._label(pid)
                if label is None:
                    continue
                self.peaks[pid] = [label, 0.0]
            self.peaks[pid][1] = max(self.peaks[pid][1], peak)
        self.largest_total_mb = max(self.largest_total_mb, total)

    def report(self):
        return {"largest_total_rss_mb": round(self.largest_total_mb),
                "processes": [{"process": label, "peak_rss_mb": round(peak)} for label, peak in self.peaks.values()]}


class ConverterProcesses:
    """Stands in for ``subprocess`` inside ``sd_keras.export.litert``: runs each converter process as it would
    and keeps its peak resident memory (``VmHWM``, sampled), wall time and the component it converted."""

    def __init__(self, log, progress):
        self.runs = []
        self.log = log
        self.progress = progress  # {"path": ..., "result": the result so far}

    def __getattr__(self, name):  # everything but ``run``: the real module
        return getattr(subprocess, name)

    def run(self, args, env=None, capture_output=False, text=False, **kwargs):
        job = {}
        try:
            with open(args[-1]) as handle:
                job = json.load(handle)
        except (OSError, ValueError):
            pass
        what = job.get("component", "worker")
        self.log(f"converter process: {what} ({job.get('mode', '?')})")
        started = time.perf_counter()
        peak = 0.0
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(args, env=env, stdout=out if capture_output else None,
                                       stderr=err if capture_output else None, **kwargs)
            # VmHWM of the running process (its peak since exec); getrusage's ru_maxrss of a child would also
            # count the exporter's pages it shared before exec
            while process.poll() is None:
                peak = max(peak, _high_water_mb(process.pid))
                time.sleep(0.2)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if text:
            stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        record = {"component": what, "mode": job.get("mode"), "seconds": round(time.perf_counter() - started, 1),
                  "peak_rss_mb": round(peak), "exit_status": process.returncode}
        self.runs.append(record)
        self.log(f"converter process done: {record}")
        self.progress["result"]["converter_processes"] = self.runs
        with open(self.progress["path"] + ".tmp", "w") as handle:
            json.dump(self.progress["result"], handle, indent=2)
        os.replace(self.progress["path"] + ".tmp", self.progress["path"])
        return subprocess.CompletedProcess(args, process.returncode, stdout if capture_output else None,
                                           stderr if capture_output else None)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT")
    parser.add_argument("--output")
    parser.add_argument("--model", default="sd-xl", help="SDXL preset whose shapes are built (tiny-xl: a smoke run)")
    parser.add_argument("--max-part-mb", type=float, help="UNet part size (default: the exporter's, 1024)")
    parser.add_argument("--unet-only", action="store_true",
                        help="convert only the UNet (litert.export_components, in parts, with its chain check) in a "
                             "process that holds only the UNet: the converter processes' memory and the files, "
                             "without the exporter's other components, sampling and parity checks")
    parser.add_argument("--keep", help="keep the bundle in this folder")
    parser.add_argument("--latency-runs", type=int, default=1,
                        help="timed calls per component after a warm-up (default 1); 0: the parity call's time only "
                             "(w8a16: each int16 call of the UNet or decoder takes 18-33 min here)")
    parser.add_argument("--check-workers", type=int, default=1,
                        help="components checked side by side (2 for w8a16: its int16 kernels use one core each)")
    parser.add_argument("--model-dir", help="where the random-weights model is saved (sd_keras's format, float16 "
                                            "files) and reused if there; default: a temporary folder")
    parser.add_argument("--in-process", action="store_true",
                        help="export the model object in this process (export_bundle(model)), as before "
                             "the workers: the converters then run beside the model")
    parser.add_argument("--save-model", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"export_sdxl_{args.model}_{args.quantize}_{args.size}"
                                   f"{'_unet_only' if args.unet_only else ''}.json")
        argv = [*argv, "--output", args.output]
    if args.save_model:
        return save_model(args.model, args.save_model)
    if not args.child:
        return supervise(argv, args.output)

    import keras

    from sd_keras.cli.export import _parse_size
    from sd_keras.export import litert
    from sd_keras.export.bundle import write_json_atomic
    from sd_keras.export.exporter import export_bundle
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    def log(message):
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    height, width = _parse_size(args.size)
    result = {"model": f"{args.model} shapes, random weights", "quantization": args.quantize,
              "image_size": [height, width], "backend": keras.backend.backend(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
              "settings": {"calibration_prompts": 1, "calibration_steps": 1, "parity_samples": 1,
                           "latency_runs": args.latency_runs, "check_workers": args.check_workers,
                           "end_to_end": False, "quality_gates": False}}
    converters = ConverterProcesses(log, {"path": args.output + ".progress.json", "result": result})
    litert.subprocess = converters
    if args.unet_only:
        return unet_only(args, result, converters, log, (height, width))
    with PeakMemory() as memory, tempfile.TemporaryDirectory(prefix="sd_keras_export_sdxl_") as tmp:
        start = time.perf_counter()
        if args.in_process:
            model = StableDiffusionXL.from_config(args.model, seed=0)
            result["parameters"] = parameters(model)
        else:  # the model is saved by another process and loaded by the export's workers
            model = args.model_dir or os.path.join(tmp, "model")
            if not os.path.exists(model):
                subprocess.run([sys.executable, os.path.abspath(__file__), "--model", args.model, "--save-model",
                                model], check=True)
            with open(os.path.join(model, "parameters.json")) as handle:
                result["parameters"] = json.load(handle)
        result["settings"]["exported"] = "model object, in process" if args.in_process else "model folder, workers"
        result["build_seconds"] = round(time.perf_counter() - start, 1)
        log(f"built in {result['build_seconds']} s: {result['parameters']}")
        destination = args.keep or os.path.join(tmp, "sd-xl-bundle")
        start = time.perf_counter()
        report = export_bundle(model, destination, quantization=args.quantize, image_size=(height, width),
                               random_weights=True, calibration_prompts=["a photograph of an astronaut"],
                               calibration_steps=1, parity_samples=1, latency_runs=args.latency_runs,
                               check_workers=args.check_workers, end_to_end=False,
                               quality_gates=False, log=log,
                               max_part_bytes=None if args.max_part_mb is None else int(args.max_part_mb * 2**20))
        result["export_seconds_total"] = round(time.perf_counter() - start, 1)
        with open(os.path.join(destination, "manifest.json")) as handle:
            manifest = json.load(handle)
    result["convert_seconds"] = report["export_seconds"]
    result["peak_rss_mb"] = {"exporter": round(memory.peak),
                             "largest_converter": max((run["peak_rss_mb"] for run in converters.runs), default=0)}
    result["converter_processes"] = converters.runs
    result["components"] = {
        name: {"size_mb": round(entry["size_bytes"] / 1e6, 1), "files": entry["files"],
               "parity": entry["parity"], "latency": entry["latency"]}
        for name, entry in report["components"].items()}
    result["total_size_mb"] = round(report["total_size_bytes"] / 1e6, 1)
    result["manifest"] = {key: manifest[key] for key in ("format_version", "family", "micro_conditioning",
                                                          "pooled_dim", "addition_time_embed_dim", "quantization")}
    result["passed"] = report["passed"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomic(args.output, result)
    return 0


def parameters(model):
    import numpy as np

    return {name: int(sum(int(np.prod(w.shape)) for w in getattr(model, name).weights))
            for name in ("text_encoder", "text_encoder_2", "diffusion_model", "decoder", "image_encoder")}


def save_model(name, folder):
    """Random weights at ``name``'s shapes saved to ``folder`` (float16 files) with ``parameters.json``."""
    from sd_keras.export.bundle import write_json_atomic
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    model = StableDiffusionXL.from_config(name, seed=0)
    model.save_pretrained(folder, weight_dtype="float16")
    write_json_atomic(os.path.join(folder, "parameters.json"), parameters(model))
    return 0


def unet_only(args, result, converters, log, image_size):
    """Convert the UNet alone (random initial weights at the preset's shapes) and record the converters."""
    import numpy as np

    from sd_keras import models
    from sd_keras.export import litert
    from sd_keras.export.bundle import write_json_atomic
    from sd_keras.pipeline_sdxl import tiny_xl_config
    from sd_keras.config_sdxl import get_sdxl_config

    config = tiny_xl_config(args.model) if args.model.startswith("tiny") else get_sdxl_config(args.model)
    result["settings"] = {"unet_only": True}
    with PeakMemory() as memory:
        start = time.perf_counter()
        unet = models.build("diffusion_model", config)
        result["build_seconds"] = round(time.perf_counter() - start, 1)
        result["parameters"] = {"diffusion_model": int(sum(int(np.prod(w.shape)) for w in unet.weights))}
        log(f"built in {result['build_seconds']} s: {result['parameters']}")
        with tempfile.TemporaryDirectory(prefix="sd_keras_export_sdxl_unet_") as tmp:
            start = time.perf_counter()
            converted = litert.export_components(
                {"diffusion_model": unet}, config, image_size, args.quantize, tmp,
                max_part_bytes=None if args.max_part_mb is None else int(args.max_part_mb * 2**20))
            result["convert_seconds"] = round(time.perf_counter() - start, 1)
            entry = converted["diffusion_model"]
            files = [part["file"] for part in entry.get("parts", [entry])]
            sizes = {name: os.path.getsize(os.path.join(tmp, name)) for name in files}
    result["peak_rss_mb"] = {"exporter": round(memory.peak),
                             "largest_converter": max((run["peak_rss_mb"] for run in converters.runs), default=0)}
    result["converter_processes"] = converters.runs
    result["components"] = {"diffusion_model": {"size_mb": round(sum(sizes.values()) / 1e6, 1),
                                                "files": {name: round(size / 1e6, 1) for name, size in sizes.items()},
                                                "large_model_layout": entry["large_model_layout"]}}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
