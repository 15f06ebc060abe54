"""Warm CPU speed of the ``shapes`` demo model: one 128x128 image in 20 steps (target: <= 3 s).

    KERAS_BACKEND=jax python benchmarks/shapes_cpu_speed.py [--runs 7] [--steps 20] [--sampler NAME]
    KERAS_BACKEND=tensorflow python benchmarks/shapes_cpu_speed.py

Loads ``StableDiffusion.from_preset("shapes")`` (the shipped weights; ``--random`` builds the same architecture
with random weights, which runs at the same speed), makes one call that compiles, then times ``--runs`` calls of
``text_to_image`` with one prompt, the pipeline's default sampler and guidance 7.5, and each part on its own:
text encoding (prompt and negative prompt), the denoising loop, decoding. Wall time and this process's CPU time
are both recorded, with the load average before and after: on a shared machine the wall time rises with the
other processes' load, the CPU time much less. Writes ``benchmarks/results/shapes_cpu_speed_<backend>.json``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_SECONDS = 3.0


def _timed(fn, runs):
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_median": round(statistics.median(walls), 4), "wall_min": round(min(walls), 4),
            "cpu_median": round(statistics.median(cpus), 4), "wall_all": [round(w, 4) for w in walls]}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default=None, help="default: the pipeline's default sampler")
    parser.add_argument("--random", action="store_true", help="random weights instead of the shipped ones")
    parser.add_argument("--out", default=None, help="result path (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from sd_keras.pipeline import DEFAULT_SAMPLER, StableDiffusion

    backend = keras.backend.backend()
    sampler = args.sampler or DEFAULT_SAMPLER
    started = time.perf_counter()
    sd = StableDiffusion.from_config("shapes") if args.random else StableDiffusion.from_preset("shapes")
    load_seconds = time.perf_counter() - started
    prompt = "a small red circle in the top left and a blue square on a white background"
    settings = dict(num_steps=args.steps, seed=1, sampler=sampler, unconditional_guidance_scale=7.5)

    first = time.perf_counter()
    sd.text_to_image(prompt, **settings)
    first_seconds = time.perf_counter() - first

    load_before = os.getloadavg()
    total = _timed(lambda: sd.text_to_image(prompt, **settings), args.runs)
    context = sd.encode_text(prompt)
    latent = sd.generate_image(context, return_latent=True, **settings)
    parts = {
        "encode_text_x2": _timed(lambda: (sd.encode_text(prompt), sd.encode_text("")), args.runs),
        "denoise_loop": _timed(lambda: sd.generate_image(context, return_latent=True, **settings), args.runs),
        "decode": _timed(lambda: sd.decode(latent), args.runs),
    }
    load_after = os.getloadavg()

    params = {name: int(sum(np.prod(v.shape) for v in getattr(sd, name).weights))
              for name in ("text_encoder", "diffusion_model", "decoder", "image_encoder")}
    assets = os.path.join(os.path.dirname(HERE), "sd_keras", "assets", "shapes")
    files = sorted(f for f in os.listdir(assets) if f.endswith(".safetensors")) if os.path.isdir(assets) else []
    result = {
        "what": "shapes preset, one 128x128 image, text_to_image warm (after one compiling call)",
        "backend": backend, "sampler": sampler, "num_steps": args.steps, "guidance_scale": 7.5,
        "weights": "random" if args.random else "shipped",
        "seconds_per_image": total["wall_median"], "target_seconds": TARGET_SECONDS,
        "meets_target": total["wall_median"] <= TARGET_SECONDS,
        "text_to_image": total, "parts": parts,
        "first_call_seconds": round(first_seconds, 2), "load_seconds": round(load_seconds, 2),
        "parameters": params, "parameters_total": sum(params.values()),
        "weights_mb_float32": round(4 * sum(params.values()) / 1e6, 2),
        "shipped_files_mb": round(sum(os.path.getsize(os.path.join(assets, f)) for f in files) / 1e6, 2),
        "machine": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": load_after, "python": platform.python_version(),
                    "keras": keras.__version__},
    }
    if backend == "jax":
        import jax

        result["machine"]["jax"] = jax.__version__
    elif backend == "tensorflow":
        import tensorflow as tf

        result["machine"]["tensorflow"] = tf.__version__
    out = args.out or os.path.join(HERE, "results", f"shapes_cpu_speed_{backend}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    temporary = out + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(temporary, out)
    print(json.dumps({k: result[k] for k in ("backend", "seconds_per_image", "meets_target", "parts")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
