"""Hires fix on the CPU: the ``shapes`` model at 512x512, plain and through hires fix, and the compact upscaler.

- ``plain_512``: text-to-image at 512x512 (four times the model's native 128), 20 steps;
- ``hires_128_to_512``: first pass at 128x128 (20 steps), latent upscale x4, second pass at 512x512 (10 steps,
  denoising strength 0.6: 6 of them run);
- ``compact_128_to_512``: SRVGGNetCompact as realesr-general-x4v3 (64 features, 32 convolutions, x4, random
  weights) on a 128x128 image, untiled and in the default tiles.

Each generation case runs the same held-out single-object prompts (``sd_keras.evaluate.heldout_scenes``) and
measures every image with ``sd_keras.evaluate.analyze_image`` (up to 32 objects): how many objects it draws, how
many of the prompt's colour, and ``score_scene``'s colour / shape checks of the largest one. Times are the wall
clock of one call after a first (compiling) call of the same shapes.

    KERAS_BACKEND=jax python benchmarks/hires_cpu.py [--prompts 6]

Writes ``benchmarks/results/hires_cpu_<backend>.json``.
"""

import argparse
import json
import os
import platform
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def generation_cases(num_prompts):
    import numpy as np

    from sd_keras.evaluate import analyze_image, heldout_scenes, score_scene
    from sd_keras.hires import HiresFix
    from sd_keras.pipeline import StableDiffusion

    sd = StableDiffusion.from_preset("shapes")
    scenes = heldout_scenes(num_single=num_prompts, num_double=0)
    hires = HiresFix(scale=4, upscaler="Latent", denoising_strength=0.6, second_pass_steps=10)
    cases = {"plain_512": dict(height=512, width=512),
             "hires_128_to_512": dict(height=128, width=128, hires=hires)}
    results = {}
    for name, options in cases.items():
        call = dict(num_steps=20, sampler="Euler", unconditional_guidance_scale=7.5, **options)
        _, first = _timed(lambda: sd.text_to_image(scenes[0].caption, seed=0, **call))
        records, seconds = [], []
        for index, scene in enumerate(scenes):
            image, took = _timed(lambda: sd.text_to_image(scene.caption, seed=index, **call))
            seconds.append(took)
            analysis = analyze_image(image[0], max_objects=32)
            score = score_scene(scene, analysis)
            wanted = scene.objects[0].color
            records.append({"prompt": scene.caption, "objects": len(analysis.objects),
                            "objects_of_prompt_color": sum(obj.color == wanted for obj in analysis.objects),
                            "color": score["color"], "shape": score["shape"]})
        results[name] = {
            "first_call_s": round(first, 2), "steady_s_per_image": round(float(np.median(seconds)), 2),
            "mean_objects": round(float(np.mean([r["objects"] for r in records])), 2),
            "mean_objects_of_prompt_color": round(float(np.mean([r["objects_of_prompt_color"] for r in records])),
                                                  2),
            "one_object_rate": float(np.mean([r["objects"] == 1 for r in records])),
            "color_rate": float(np.mean([r["color"] for r in records])),
            "shape_rate": float(np.mean([r["shape"] for r in records])),
            "images": records}
    return results


def upscaler_cases():
    import numpy as np

    from sd_keras.models.upscalers import UpscalerConfig, build_upscaler
    from sd_keras.upscale import upscale

    config = UpscalerConfig(architecture="srvgg", scale=4, num_feat=64, num_conv=32)
    model = build_upscaler(config)
    model.upscaler_config = config
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    results = {}
    for name, tile in (("compact_128_to_512_untiled", 0), ("compact_128_to_512_tiled_64", 64)):
        _, first = _timed(lambda: upscale(image, model, tile=tile, overlap=16))
        out, steady = _timed(lambda: upscale(image, model, tile=tile, overlap=16))
        results[name] = {"first_call_s": round(first, 2), "steady_s": round(steady, 2), "output": list(out.shape)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    args = parser.parse_args()
    import keras

    backend = keras.backend.backend()
    result = {"backend": backend, "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg()[0], "steps": "20 + 10 (strength 0.6: 6 run)",
              **generation_cases(args.prompts), **upscaler_cases(),
              "load_average_at_end": os.getloadavg()[0]}
    path = os.path.join(HERE, "results", f"hires_cpu_{backend}.json")
    from sd_keras import files

    with files.atomic_write(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: v for k, v in result.items()
                      if not isinstance(v, dict)} | {k: {kk: vv for kk, vv in v.items() if kk != "images"}
                                                     for k, v in result.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
