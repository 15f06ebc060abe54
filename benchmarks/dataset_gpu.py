"""``sd-keras dataset`` on one GPU: does the pipeline keep the compiled loop busy?

    KERAS_BACKEND=jax python benchmarks/dataset_gpu.py                  # one H200: SD 1.x, 512x512, 25 Euler a
    KERAS_BACKEND=jax python benchmarks/dataset_gpu.py --random         # same shapes, random weights (no download)
    KERAS_BACKEND=jax python benchmarks/dataset_gpu.py --smoke          # CPU, tiny preset: checks the script only

For each batch size (8 and 16), three numbers of images per second, all warm (every program compiled first):

- ``bare``: ``text_to_image`` with a list of ``batch`` prompts, called repeatedly: the compiled loop, text
  encoding and decoding alone, no PNG, no file;
- ``dataset``: ``sd_keras.dataset.generate`` of ``--images`` rows (WebDataset shards of 64) in this process,
  images over the job's wall time: per-image seeds, batching, PNG encoding and shard writing included; the
  target is >= 95 % of ``bare`` (the writer thread hides the host work behind the GPU);
- ``ray``: the same job through Ray Data with one GPU actor (a local Ray started here), its steady rate (the
  actor's images over its time on the shards that did not compile: actor start, model load and compilation
  excluded) beside the job's wall-time rate.

The model: ``--model`` (default ``sd-v1``, KerasCV's weights, downloaded once) or ``--random`` (the ``sd-v1``
architecture with random weights: the same speed; for Ray it is saved to a temporary folder that the actor
loads). Writes ``benchmarks/results/dataset_gpu_<device>.json``; ``--smoke`` writes
``dataset_gpu_smoke_cpu.json``, marked as a smoke run (tiny model, 64x64, 2 steps: not a measurement).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _rows(count, offset=0):
    from sd_keras import dataset

    rows = dataset.expand_template("a {size} {color} {shape} on a {bg} background",
                                   {"size": "@shapes", "color": "@shapes", "shape": "@shapes", "bg": "@shapes"})
    return [rows[(offset + i * 7) % len(rows)] for i in range(count)]


def _bare(model, batch, args, runs):
    prompts = [row["prompt"] for row in _rows(batch)]
    options = dict(num_steps=args.steps, unconditional_guidance_scale=7.0, sampler=args.sampler,
                   height=args.size, width=args.size)
    model.text_to_image(prompts, seed=0, **options)  # compiles
    started = time.perf_counter()
    for run in range(runs):
        model.text_to_image(prompts, seed=run * batch, **options)
    seconds = time.perf_counter() - started
    return {"images_per_second": round(batch * runs / seconds, 4), "runs": runs, "seconds": round(seconds, 3)}


def _dataset(model, batch, args, folder, **options):
    from sd_keras import dataset

    settings = dict(steps=args.steps, cfg_scale=7.0, sampler=args.sampler, width=args.size, height=args.size,
                    batch_size=batch, shard_size=args.shard_size, progress=False)
    if "ray" not in options:  # warm: the job's programs (same shapes as the timed job) compiled beforehand
        dataset.generate(_rows(batch, offset=1), os.path.join(folder, f"warm-{batch}"), model=model, **settings)
    started = time.perf_counter()
    manifest = dataset.generate(_rows(args.images), os.path.join(folder, f"job-{batch}-{len(options)}"),
                                model=model, **settings, **options)
    seconds = time.perf_counter() - started
    return {"images_per_second": round(args.images / seconds, 4), "seconds": round(seconds, 3),
            "steady_images_per_second": manifest["timing"].get("rows_per_second_per_actor",
                                                               manifest["timing"]["rows_per_second"]),
            "timing": manifest["timing"]}


def _device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return device.platform, getattr(device, "device_kind", device.platform)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return ("gpu", tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")) if gpus else (
        "cpu", "cpu")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sd-v1")
    parser.add_argument("--random", action="store_true", help="the model's architecture with random weights")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--images", type=int, default=256, help="rows of each timed dataset job")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--bare-runs", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", help="the model's dtype (float32 with --smoke)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny preset, 64x64, 2 steps: checks the script")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.random, args.size, args.steps = "tiny", False, 64, 2
        args.batches, args.images, args.shard_size, args.bare_runs = [2, 4], 16, 4, 3
        args.dtype = "float32"

    # the Ray actor shares the GPU with this process: JAX must not reserve most of its memory up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from sd_keras import files, loading
    from sd_keras.pipeline import StableDiffusion

    work = tempfile.mkdtemp(prefix="dataset-gpu-bench-")
    try:
        model = (StableDiffusion.from_config(args.model, dtype=args.dtype) if args.random
                 else loading.load(args.model, dtype=args.dtype))
        model_spec = args.model
        if args.random and not args.no_ray:
            model_spec = os.path.join(work, "model")
            model.save_pretrained(model_spec)
        platform_name, device = _device_name()
        results = {}
        for batch in args.batches:
            bare = _bare(model, batch, args, args.bare_runs)
            local = _dataset(model, batch, args, work)
            entry = {"bare": bare, "dataset": local,
                     "dataset_vs_bare": round(local["images_per_second"] / bare["images_per_second"], 4)}
            print(batch, json.dumps(entry), flush=True)
            results[str(batch)] = entry
        if not args.no_ray:
            import gc

            import ray

            del model  # this process's copy: the actor loads its own
            gc.collect()

            gpus = 0 if platform_name == "cpu" else 1
            ray.init(address="local", num_cpus=2, num_gpus=gpus, object_store_memory=200 * 1024 * 1024,
                     include_dashboard=False,
                     runtime_env={"env_vars": {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
                                               "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}})
            try:
                for batch in args.batches:
                    on_ray = _dataset(model_spec, batch, args, work, ray="auto", ray_workers=1,
                                      ray_gpus_per_worker=gpus, dtype=args.dtype)
                    results[str(batch)]["ray_one_actor"] = on_ray
                    steady = on_ray["steady_images_per_second"]
                    results[str(batch)]["ray_steady_vs_bare"] = (
                        round(steady / results[str(batch)]["bare"]["images_per_second"], 4) if steady else None)
                    print(batch, "ray", json.dumps(on_ray), flush=True)
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"what": "sd-keras dataset vs the bare compiled loop, warm, images/s",
              "smoke": args.smoke, "model": args.model, "random_weights": args.random, "size": args.size,
              "steps": args.steps, "sampler": args.sampler, "cfg_scale": 7.0, "dtype": args.dtype,
              "images_per_job": args.images,
              "shard_size": args.shard_size, "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              "device": device, "target_dataset_vs_bare": 0.95, "batches": results,
              "python": platform.python_version()}
    if args.smoke:
        result["note"] = ("smoke run on a CPU with the tiny preset at 64x64 and 2 steps: it checks that the "
                          "script runs end to end; its numbers are not a measurement")
    name = "dataset_gpu_smoke_cpu.json" if args.smoke else f"dataset_gpu_{device.lower().replace(' ', '_')}.json"
    path = os.path.join(args.out, name)
    files.write_json(path, result)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
