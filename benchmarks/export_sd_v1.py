"""Export SD 1.x shapes (random weights) as a LiteRT bundle on this machine's CPU: time, peak memory, sizes.

Published sizes of SD 1.x with dynamic-range int8 weights are the anchors (text encoder 124 MB, UNet 863 MB,
decoder 50 MB). Parity is still checked (the export refuses to write a bundle otherwise) but on few samples, and
without the end-to-end image (the Keras pipeline at 512x512 on two CPU cores takes longer than the export).

Usage:
    python benchmarks/export_sd_v1.py [--quantize int8] [--size 512x512] [--output benchmarks/results/...]
    python benchmarks/export_sd_v1.py --quantize w8a16 --no-quality-gates \
        --output benchmarks/results/export_sd_v1_w8a16.json
Not part of CI: it takes tens of minutes and about 20 GB of memory.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time

ANCHORS_MB = {"text_encoder": 124, "diffusion_model": 863, "decoder": 50}


def _rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Peak resident memory of this process (sampled) and of finished child processes (getrusage)."""

    def __init__(self, interval=0.5):
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        self.children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _child_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def supervise(argv, output):
    """Run the export in a child process and record its outcome even when it is killed (out of memory)."""
    import subprocess

    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", *argv])
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, _child_rss_mb(child.pid))
        time.sleep(0.5)
    result = {}
    if child.returncode == 0 and os.path.exists(output):
        with open(output) as handle:
            result = json.load(handle)
    result["status"] = ("ok" if child.returncode == 0 else
                        f"killed by signal {-child.returncode} (out of memory?)" if child.returncode < 0 else
                        f"failed with exit status {child.returncode}")
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb_sampled"] = round(peak)
    result["machine_memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    temporary = output + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, output)
    print(json.dumps(result, indent=2))
    return 0 if child.returncode == 0 else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "export_sd_v1.json"))
    parser.add_argument("--keep", help="keep the bundle in this folder")
    parser.add_argument("--no-quality-gates", action="store_true",
                        help="skip the quality gates (component SNR over full trajectories and the bundle's images): "
                             "with int16 activations (w8a16) LiteRT's reference kernels make them hours on two "
                             "cores; the per-component parity checks still run")
    parser.add_argument("--latency-runs", type=int, default=1,
                        help="timed calls per component after a warm-up (default 1); 0: the parity calls' time only")
    parser.add_argument("--check-workers", type=int, default=1,
                        help="components checked side by side (2 for w8a16: its int16 kernels use one core each)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:
        return supervise(argv, args.output)

    import keras

    from sd_keras.export.bundle import write_json_atomic
    from sd_keras.export import quantize
    from sd_keras.export.exporter import export_bundle
    from sd_keras.cli.export import _parse_size
    from sd_keras.pipeline import StableDiffusion

    height, width = _parse_size(args.size)
    result = {"quantization": args.quantize, "image_size": [height, width], "backend": keras.backend.backend(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
              "quality_gates": not args.no_quality_gates, "latency_runs": args.latency_runs,
              "check_workers": args.check_workers}
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = StableDiffusion.from_config("sd-v1", seed=0)
        result["build_seconds"] = round(time.perf_counter() - start, 1)
        with tempfile.TemporaryDirectory(prefix="sd_keras_export_benchmark_") as tmp:
            destination = args.keep or os.path.join(tmp, "sd-v1-bundle")
            start = time.perf_counter()
            report = export_bundle(model, destination, quantization=args.quantize, image_size=(height, width),
                                   random_weights=True, calibration_prompts=["a photograph of an astronaut"],
                                   calibration_steps=2, parity_samples=2, latency_runs=args.latency_runs,
                                   check_workers=args.check_workers, end_to_end=False,
                                   quality_gates=not args.no_quality_gates,
                                   log=lambda message: print(message, file=sys.stderr, flush=True))
            result["export_seconds_total"] = round(time.perf_counter() - start, 1)
    result["convert_seconds"] = report["export_seconds"]
    result["peak_rss_mb"] = {"main_process": round(memory.peak), "largest_child": round(memory.children_peak)}
    result["components"] = {
        name: {"size_mb": round(entry["size_bytes"] / 1e6, 1), "anchor_mb": ANCHORS_MB.get(name),
               "files": entry["files"],
               "parity": entry["parity"], "latency": entry["latency"],
               **{fact: entry[fact] for fact in quantize.FILE_FACTS if entry.get(fact) is not None}}
        for name, entry in report["components"].items()}
    result["passed"] = report["passed"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
