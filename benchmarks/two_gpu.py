"""Two-GPU runs (data parallel over the GPUs of one host): one command each, results as JSON with the ratio to target.

    KERAS_BACKEND=jax python benchmarks/two_gpu.py --run dataset      # 1. sd-keras dataset, one GPU vs both vs Ray
    KERAS_BACKEND=jax python benchmarks/two_gpu.py --run sdxl         # 2. SDXL 1024x1024, 30 steps, batch 8
    KERAS_BACKEND=jax python benchmarks/two_gpu.py --run sd_batch16   # 3. SD 1.x batch 16 (1.83x on 2026-11-26)
    KERAS_BACKEND=jax python benchmarks/two_gpu.py                    # all three
    python benchmarks/two_gpu.py --smoke       # CPU, two host devices, tiny presets at 64x64, 2 steps

All runs use random weights (the architectures' shapes, no download). Every configuration runs in a fresh process,
since ``backend.use_devices`` must be called before a model is built (weights are replicated per device):

1. ``dataset``: ``sd_keras.dataset.generate`` (what ``sd-keras dataset`` runs) on SD 1.x shapes, 512x512, 25 Euler a
   steps, batch 16, warm (a job of the same shapes first): images over the timed job's wall time with one GPU
   (``devices=1``), with both (``devices="all"``), and through a local Ray with two one-GPU actors (the actors'
   steady rate: start, load and compilation excluded; the wall-time rate beside it). Target >= 1.85x one GPU.
2. ``sdxl``: ``StableDiffusionXL.text_to_image`` on SDXL base shapes (bf16), 1024x1024, 30 Euler steps, CFG 5,
   batch 8, one GPU vs both. Target >= 1.8x.
3. ``sd_batch16``: ``StableDiffusion.text_to_image`` on SD 1.x shapes (bf16), 512x512, 50 DDIM steps, CFG 7.5,
   batch 16, one GPU vs both, as ``gpu_bench.py --parts multi_gpu`` measured it (1.83x on 2026-11-26). Target:
   no regression (>= 1.83x).

Writes ``benchmarks/results/two_gpu_<run>_<card>.json`` (``--out`` to change the folder), each with the card name,
the images/s of every configuration, ``speedup`` and ``meets_target``. ``--smoke`` forces two host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and writes ``two_gpu_<run>_smoke_cpu.json``, marked as a
smoke run: it checks that the scripts run end to end; its numbers are not a measurement.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = ("dataset", "sdxl", "sd_batch16")
TARGETS = {"dataset": 1.85, "sdxl": 1.8, "sd_batch16": 1.83}
# full shapes (a 2x H200 machine) and the smoke shapes (CPU): model, size, steps, sampler, cfg, batch, images, repeats
SHAPES = {
    "dataset": dict(model="sd-v1", size=512, steps=25, sampler="Euler a", cfg=7.0, batch=16, images=256, repeats=1),
    "sdxl": dict(model="sd-xl", size=1024, steps=30, sampler="Euler", cfg=5.0, batch=8, images=None, repeats=3),
    "sd_batch16": dict(model="sd-v1", size=512, steps=50, sampler="DDIM", cfg=7.5, batch=16, images=None, repeats=3),
}
SMOKE = {
    "dataset": dict(model="tiny", size=64, steps=2, batch=4, images=8, repeats=1),
    "sdxl": dict(model="tiny-xl", size=64, steps=2, batch=2, repeats=1),
    "sd_batch16": dict(model="tiny", size=64, steps=2, batch=4, repeats=1),
}


def _shapes(run, smoke):
    shapes = dict(SHAPES[run])
    if smoke:
        shapes.update(SMOKE[run])
    return shapes


def _card():
    import jax

    device = jax.devices()[0]
    return {"card": getattr(device, "device_kind", device.platform), "platform": device.platform,
            "device_count": jax.device_count()}


def _rows(count):
    from sd_keras import dataset

    rows = dataset.expand_template("a {size} {color} {shape} on a {bg} background",
                                   {"size": "@shapes", "color": "@shapes", "shape": "@shapes", "bg": "@shapes"})
    return [rows[(i * 7) % len(rows)] for i in range(count)]


def _dtype(smoke):
    return "float32" if smoke else "bfloat16"


def _child_dataset(shapes, devices, smoke, work):
    from sd_keras import backend, dataset
    from sd_keras.pipeline import StableDiffusion

    count = backend.use_devices(devices)  # before the model is built
    model = StableDiffusion.from_config(shapes["model"], dtype=_dtype(smoke))
    settings = dict(steps=shapes["steps"], cfg_scale=shapes["cfg"], sampler=shapes["sampler"], width=shapes["size"],
                    height=shapes["size"], batch_size=shapes["batch"], shard_size=shapes["batch"] * 4,
                    progress=False, devices=devices)
    dataset.generate(_rows(shapes["batch"]), os.path.join(work, "warm"), model=model, **settings)  # compiles
    started = time.perf_counter()
    manifest = dataset.generate(_rows(shapes["images"]), os.path.join(work, "job"), model=model, **settings)
    seconds = time.perf_counter() - started
    return {"devices": count, "images": shapes["images"], "seconds": round(seconds, 3),
            "images_per_second": round(shapes["images"] / seconds, 4), "timing": manifest["timing"]}


def _child_ray(shapes, smoke, work):
    import ray

    from sd_keras import dataset
    from sd_keras.pipeline import StableDiffusion

    path = os.path.join(work, "model")
    StableDiffusion.from_config(shapes["model"], dtype=_dtype(smoke)).save_pretrained(path)
    gpus = 0 if smoke else 1
    ray.init(address="local", num_cpus=2, num_gpus=0 if smoke else 2, object_store_memory=200 * 1024 * 1024,
             include_dashboard=False,
             runtime_env={"env_vars": {"KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                       "XLA_FLAGS": ""}})  # each actor: its own GPU, one device
    try:
        started = time.perf_counter()
        manifest = dataset.generate(
            _rows(shapes["images"]), os.path.join(work, "ray"), model=path, steps=shapes["steps"],
            cfg_scale=shapes["cfg"], sampler=shapes["sampler"], width=shapes["size"], height=shapes["size"],
            batch_size=shapes["batch"], shard_size=max(shapes["batch"], shapes["images"] // 8), progress=False,
            ray="auto", ray_workers=2, ray_gpus_per_worker=gpus, dtype=_dtype(smoke))
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    timing = manifest["timing"]
    per_actor = timing.get("rows_per_second_per_actor")
    workers = timing.get("workers") or 2
    return {"actors": workers, "gpus_per_actor": gpus, "images": shapes["images"], "seconds": round(seconds, 3),
            "images_per_second": round(shapes["images"] / seconds, 4),
            "steady_images_per_second": round(per_actor * workers, 4) if per_actor else None, "timing": timing}


def _child_generate(run, shapes, devices, smoke):
    from sd_keras import backend

    count = backend.use_devices(devices)  # before the model is built
    if run == "sdxl":
        from sd_keras.pipeline_sdxl import StableDiffusionXL

        model = StableDiffusionXL.from_config(shapes["model"], dtype=_dtype(smoke))
    else:
        from sd_keras.pipeline import StableDiffusion

        model = StableDiffusion.from_config(shapes["model"], dtype=_dtype(smoke))

    def generate():
        return model.text_to_image("a photo of a cat", batch_size=shapes["batch"], num_steps=shapes["steps"],
                                   unconditional_guidance_scale=shapes["cfg"], seed=0, sampler=shapes["sampler"],
                                   height=shapes["size"], width=shapes["size"])

    images = generate()  # compiles
    if len(images) != shapes["batch"]:
        raise RuntimeError(f"{run}: {len(images)} images for batch {shapes['batch']}")
    times = []
    for _ in range(shapes["repeats"]):
        started = time.perf_counter()
        generate()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"devices": count, "batch": shapes["batch"], "seconds": round(seconds, 4), "times": times,
            "images_per_second": round(shapes["batch"] / seconds, 4)}


def child(run, config, smoke):
    """One configuration in this (fresh) process; prints ``RESULT <json>``."""
    shapes = _shapes(run, smoke)
    work = tempfile.mkdtemp(prefix="two-gpu-")
    try:
        if config == "ray":
            result = _child_ray(shapes, smoke, work)
        elif run == "dataset":
            result = _child_dataset(shapes, config, smoke, work)
        else:
            result = _child_generate(run, shapes, config, smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(_card())
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(run, config, smoke):
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    if smoke:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the Ray run's driver shares the GPUs with its actors
    command = [sys.executable, os.path.abspath(__file__), "--child", run, "--config", config]
    if smoke:
        command.append("--smoke")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-2000:], "returncode": done.returncode}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_seconds"] = round(time.perf_counter() - started, 3)
    return result


def measure(run, smoke, out):
    shapes = _shapes(run, smoke)
    configs = ["1", "all"] + (["ray"] if run == "dataset" else [])
    results = {}
    for config in configs:
        results[config] = _spawn(run, config, smoke)
        print(run, config, json.dumps({k: v for k, v in results[config].items() if k != "timing"}), flush=True)
    one = results["1"].get("images_per_second")
    target = TARGETS[run]
    speedups = {}
    for config, key in (("all", "images_per_second"), ("ray", "steady_images_per_second")):
        value = results.get(config, {}).get(key)
        if one and value:
            speedups[config] = round(value / one, 4)
    card = next((r["card"] for r in results.values() if "card" in r), "unknown")
    two_devices = all(results[c].get("device_count", 0) >= 2 for c in ("1", "all") if "error" not in results[c])
    result = {"run": run, "smoke": smoke, "card": card, "date": time.strftime("%Y-%m-%d"), "backend": "jax",
              "random_weights": True, "shapes": shapes, "dtype": _dtype(smoke), "configs": results,
              "speedup": speedups, "target_speedup": target,
              "ratio_to_target": {k: round(v / target, 4) for k, v in speedups.items()},
              "meets_target": {k: v >= target for k, v in speedups.items()} if not smoke else None,
              "two_devices_seen": two_devices, "python": platform.python_version()}
    if run == "sd_batch16":
        result["previous"] = {"speedup": 1.83, "date": "2026-11-26", "script": "gpu_bench.py --parts multi_gpu"}
    if smoke:
        result["note"] = ("smoke run on a CPU with two host devices, tiny preset at 64x64 and 2 steps: it checks "
                          "that the script runs end to end; its numbers are not a measurement")
    from sd_keras import files

    name = f"two_gpu_{run}_smoke_cpu.json" if smoke else f"two_gpu_{run}_{card.lower().replace(' ', '_')}.json"
    path = os.path.join(out, name)
    files.write_json(path, result)
    print(path, flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", choices=RUNS, action="append", help="one run (repeatable); default: all three")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU with two host devices, tiny presets, 64x64, 2 steps: checks the script only")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=("1", "all", "ray"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.config, args.smoke)
        return 0
    failed = False
    for run in args.run or RUNS:
        result = measure(run, args.smoke, args.out)
        failed |= any("error" in value for value in result["configs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
