"""Which stage of an SDXL generation sets the peak device memory (JAX on a GPU).

Builds SDXL base shapes with random weights (bfloat16), then runs one batch-1 1024x1024 generation a stage at a
time: the text encoders, the denoising loop (30 Euler steps, CFG 5) and the float32 VAE decode, twice (the first
time compiles). After each stage it records the device memory in use and the peak so far
(``jax.devices()[0].memory_stats()``): the stage after which the peak rises is the one that sets it, and the peak
minus the memory in use after building is that stage's working memory above the weights.

    XLA_PYTHON_CLIENT_PREALLOCATE=false KERAS_BACKEND=jax python benchmarks/sdxl_memory.py --out sdxl_memory.json
    python benchmarks/sdxl_memory.py --smoke --out /tmp/smoke.json      # CPU, tiny-xl, 64x64 (checks the script)

Not a test: the numbers depend on the card (its libraries' algorithms and their workspaces).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
GIB = 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny-xl, 64x64, 2 steps")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import jax

    from sd_keras import backend, files
    from sd_keras.pipeline_sdxl import StableDiffusionXL

    preset, size, steps = ("tiny-xl", 64, 2) if args.smoke else ("sd-xl", 1024, 30)
    device = jax.devices()[0]
    records = []

    def record(stage, started):
        stats = device.memory_stats() or {}
        records.append({"stage": stage, "seconds": round(time.perf_counter() - started, 3),
                        "in_use_gib": round(stats.get("bytes_in_use", 0) / GIB, 3),
                        "peak_gib": round(stats.get("peak_bytes_in_use", 0) / GIB, 3)})
        print(records[-1], flush=True)

    started = time.perf_counter()
    xl = StableDiffusionXL.from_config(preset, dtype="bfloat16")
    backend.wait([w.value for w in xl.diffusion_model.weights[:1]])
    record("build", started)
    for run in (1, 2):
        started = time.perf_counter()
        context, _ = xl._contexts(["a photo of a cat"], None)
        _, unconditional = xl._contexts(None, [""])
        record(f"run{run}_text_encoders", started)
        started = time.perf_counter()
        scheduler = xl._scheduler("Euler", steps)
        latent = xl._noise(0, 1, (size // 8, size // 8, 4), scheduler)[0] * scheduler.init_noise_sigma
        final = backend.wait(xl._denoise(scheduler, context, unconditional, latent, None, guidance_scale=5.0))
        record(f"run{run}_denoising_loop", started)
        started = time.perf_counter()
        xl.decode(final)
        record(f"run{run}_vae_decode", started)
    result = {"card": getattr(device, "device_kind", str(device)), "preset": preset, "size": size, "steps": steps,
              "environment": {key: os.environ.get(key) for key in ("XLA_PYTHON_CLIENT_PREALLOCATE",
                                                                   "XLA_PYTHON_CLIENT_MEM_FRACTION")},
              "stages": records}
    files.write_json(args.out, result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
