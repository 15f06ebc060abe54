"""Time to the first image in a fresh process: without the persistent compilation cache, filling it, and with it
warm (JAX; the cache is on by default, ``SD_KERAS_COMPILATION_CACHE=0`` turns it off).

Each variant runs in its own process: import, model build, first image (compilation included, with a progress
callback as the CLI and the server pass one), second image (compiled). On a GPU it also counts XLA's
``hlo_rematerialization`` warnings per stage (what the process wrote to stderr between stage markers) and the
peak device memory, for the variants in ``--probe`` (extra environments).

    python benchmarks/first_image.py --out benchmarks/results/first_image_cpu.json                  # CPU, shapes
    python benchmarks/first_image.py --model sd-v1 --random --dtype bfloat16 --size 512 --steps 50 \\
        --batches 1,8 --probe --out first_image_gpu.json                                            # GPU

Each variant also records where its time went (JAX's own timings): seconds spent tracing Python to jaxprs, lowering
them to StableHLO, compiling with XLA and reading the persistent cache, per stage, and the slowest programs.
``--model sd-xl --random`` (or ``tiny-xl``) runs the SDXL pipeline.

Prints one line per variant and writes JSON. Not a test: numbers depend on the machine.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
started = time.perf_counter()
options = json.loads(sys.argv[1])

def stage(name):
    print(f"@@stage {name}", file=sys.stderr, flush=True)

stage("import")
import collections
import numpy as np
import keras
events = collections.Counter()
# where a first call's time goes (JAX): seconds in tracing to a jaxpr, lowering to StableHLO, XLA's compilation and
# reading the persistent cache, summed per stage of this script, and the programs that took longest
PHASES = {"jaxpr_trace_duration": "trace_s", "jaxpr_to_mlir_module_duration": "lower_s",
          "backend_compile_duration": "xla_compile_s", "cache_retrieval_time_sec": "cache_read_s"}
phases = collections.defaultdict(collections.Counter)
programs = collections.Counter()
current = ["import"]

def on_duration(name, seconds, **kwargs):
    phase = PHASES.get(name.rsplit("/", 1)[-1])
    if phase:
        phases[current[0]][phase] += seconds
        if phase != "cache_read_s":
            programs[(current[0], phase, str(kwargs.get("fun_name", "?"))[:60])] += seconds

if keras.backend.backend() == "jax":
    import jax
    jax.monitoring.register_event_listener(lambda name, **kw: events.update([name.rsplit("/", 1)[-1]]))
    jax.monitoring.register_event_duration_secs_listener(on_duration)
from sd_keras import backend
from sd_keras.config_sdxl import SDXL_PRESETS
from sd_keras.pipeline import StableDiffusion
from sd_keras.pipeline_sdxl import TINY_PRESETS, StableDiffusionXL
pipeline = StableDiffusionXL if options["model"] in {*SDXL_PRESETS, *TINY_PRESETS} else StableDiffusion
imported = time.perf_counter()
stage("build")
current[0] = "build"
if options["random"] and options.get("narrow", 1) > 1:
    # the architecture's every layer, each width divided: the same programs to trace and lower
    import dataclasses
    from sd_keras.config_sdxl import get_sdxl_config
    n = options["narrow"]
    config = get_sdxl_config(options["model"])
    def narrow(part, fields):
        return dataclasses.replace(part, **{f: (tuple(v // n for v in getattr(part, f))
                                                if isinstance(getattr(part, f), tuple) else getattr(part, f) // n)
                                            for f in fields if getattr(part, f) is not None})
    encoder_fields = ("width", "intermediate_size", "projection_dim")
    config = dataclasses.replace(
        config, name=config.name + f"-narrow{n}",
        text_encoder=config.text_encoder and narrow(config.text_encoder, encoder_fields),
        text_encoder_2=narrow(config.text_encoder_2, encoder_fields),
        unet=narrow(config.unet, ("block_out_channels", "head_size", "context_dim", "timestep_dim",
                                  "time_embed_dim", "addition_time_embed_dim", "pooled_dim")),
        vae=narrow(config.vae, ("block_out_channels",)))
    model = pipeline.from_config(config, dtype=options["dtype"])
elif options["random"]:
    model = pipeline.from_config(options["model"], dtype=options["dtype"])
else:
    model = pipeline.from_preset(options["model"], dtype=options["dtype"])
built = time.perf_counter()
result = {"import_s": imported - started, "build_s": built - imported, "batches": {}}
for batch in options["batches"]:
    times = []
    for run in ("first", "second"):
        stage(f"batch{batch}_{run}")
        current[0] = f"batch{batch}_{run}"
        steps = []
        start = time.perf_counter()
        model.text_to_image("a red circle above a blue square", batch_size=batch, num_steps=options["steps"],
                            seed=0, sampler="Euler a", height=options["size"], width=options["size"],
                            progress=steps.append)
        times.append(time.perf_counter() - start)
        assert steps == list(range(1, options["steps"] + 1)), steps
    result["batches"][str(batch)] = {"first_image_s": times[0], "second_image_s": times[1]}
stage("end")
result.update(backend=keras.backend.backend(), cache_folder=backend.compilation_cache_dir(),
              cache_hits=events["cache_hits"], cache_misses=events["cache_misses"],
              phases={name: {key: round(value, 3) for key, value in counter.items()}
                      for name, counter in phases.items()},
              slowest_programs=[{"stage": stage, "phase": phase, "program": program, "seconds": round(seconds, 3)}
                                for (stage, phase, program), seconds in programs.most_common(12)])
if keras.backend.backend() == "jax":
    device = jax.devices()[0]
    result["device"] = device.device_kind
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["peak_device_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
print("RESULT" + json.dumps(result), flush=True)
"""

REMAT = re.compile(r"rematerialization", re.IGNORECASE)


def run_child(options, env, keep_log=None):
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(options)], env=env, capture_output=True,
                            text=True)
    if keep_log:
        with open(keep_log, "w") as handle:
            handle.write(result.stderr)
    if "RESULT" not in result.stdout:
        return {"error": result.stderr[-3000:]}
    measured = json.loads(result.stdout.split("RESULT", 1)[1])
    # XLA's rematerialization warnings, by the stage in which they were written
    remat, current, examples = {}, "start", []
    for line in result.stderr.splitlines():
        if line.startswith("@@stage "):
            current = line.split(" ", 1)[1]
        elif REMAT.search(line):
            remat[current] = remat.get(current, 0) + 1
            if len(examples) < 3:
                examples.append(line.strip()[-400:])
    measured["remat_warnings"] = remat
    if examples:
        measured["remat_examples"] = examples
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name (or a config name with --random)")
    parser.add_argument("--random", action="store_true", help="random weights of the preset's architecture")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--narrow", type=int, default=1,
                        help="with --random and an SDXL preset: every width divided by this (the same layers, so "
                             "the same tracing and lowering work; for a machine without the memory for the model)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes, in this order")
    parser.add_argument("--backend", default="jax", help="jax (cold, fill, warm) or tensorflow (no cache)")
    parser.add_argument("--probe", action="store_true",
                        help="also run without the cache under XLA_PYTHON_CLIENT_PREALLOCATE=false and with XLA's "
                             "rematerialization pass off (GPU: where the rematerialization warnings come from)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=XLA_FLAGS",
                        help="also run without the cache under these XLA flags (repeatable), e.g. "
                             "autotune_0=--xla_gpu_autotune_level=0: how much of XLA's compilation is autotuning")
    parser.add_argument("--logs", help="folder for each variant's stderr")
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()

    options = {"model": args.model, "random": args.random, "dtype": args.dtype, "size": args.size,
               "steps": args.steps, "narrow": args.narrow, "batches": [int(b) for b in args.batches.split(",")]}
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    cache_root = tempfile.mkdtemp(prefix="sd-keras-first-image-")
    base = {**os.environ, "KERAS_BACKEND": args.backend, "SD_KERAS_CACHE": cache_root, "PYTHONUNBUFFERED": "1"}
    base.pop("SD_KERAS_COMPILATION_CACHE", None)
    base.pop("TF_CPP_MIN_LOG_LEVEL", None)  # keep XLA's warnings: they are counted
    off = {**base, "SD_KERAS_COMPILATION_CACHE": "0"}
    variants = [("no_cache", off, options)]
    if args.backend == "jax":
        first_batch = {**options, "batches": options["batches"][:1]}
        variants += [("cache_fill", base, first_batch), ("warm_cache", base, first_batch)]
        if args.probe:
            variants += [
                ("no_cache_no_preallocation", {**off, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, first_batch),
                ("no_cache_no_rematerialization",
                 {**off, "XLA_FLAGS": (off.get("XLA_FLAGS", "") + " --xla_disable_hlo_passes=rematerialization")},
                 first_batch)]
        for variant in args.variant:
            name, _, flags = variant.partition("=")
            if not name or not flags:
                parser.error(f"--variant needs NAME=XLA_FLAGS, got {variant!r}")
            variants.append((f"no_cache_{name}", {**off, "XLA_FLAGS": (off.get("XLA_FLAGS", "") + " " + flags).strip()},
                             first_batch))
    results = {"options": options, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                               "python": platform.python_version()},
               "variants": {}}
    try:
        for name, env, variant_options in variants:
            log = os.path.join(args.logs, f"{name}.log") if args.logs else None
            measured = run_child(variant_options, env, log)
            results["variants"][name] = measured
            print(name, json.dumps(measured), flush=True)
            if args.out:  # after each variant: a run cut short keeps what it measured
                from sd_keras import files

                files.write_json(args.out, results)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
