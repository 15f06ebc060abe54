"""Hires fix on the CPU: the ``shapes`` model at 512x512, plain and through hires fix, and the compact upscaler.

- ``plain_512``: text-to-image at 512x512 (four times the model's native 128), 20 steps;
- ``hires_128_to_512``: first pass at 128x128 (20 steps), latent upscale x4, second pass at 512x512 (10 steps,
  denoising strength 0.3: 3 of them run);
- ``hires_128_to_512_strength_0.6``: the same with strength 0.6 (6 second-pass steps run);
- ``hires_128_to_512_lanczos`` (strength 0.3) and ``..._lanczos_strength_0.6``: the upscale in pixels instead
  (decode, Lanczos x4, encode): no latent interpolation between the passes;
- ``compact_128_to_512``: SRVGGNetCompact as realesr-general-x4v3 (64 features, 32 convolutions, x4, random
  weights) on a 128x128 image, untiled and in the default tiles.

Each generation case runs the same held-out single-object prompts (``sd_keras.evaluate.heldout_scenes``, spread
over colours and shapes) and measures every image: ``sd_keras.evaluate.count_objects`` (every separate object,
by colour: a repeated object counts each time), and ``score_scene``'s colour / shape checks of the largest object
``analyze_image`` finds. ``one_object_rate``: the share of images that show exactly one object, of the prompt's
colour; ``one_object_right_rate``: that and the right shape. Times are the wall clock of one call after a first
(compiling) call of the same shapes. The machine may be shared: the load average is recorded at the start and
the end.

    KERAS_BACKEND=jax nice -n 5 python benchmarks/hires_cpu.py [--prompts 8]

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

    import warnings

    from sd_keras.evaluate import analyze_image, count_objects, heldout_scenes, score_scene
    from sd_keras.generator import AboveNativeSizeWarning
    from sd_keras.hires import HiresFix
    from sd_keras.pipeline import StableDiffusion

    warnings.simplefilter("ignore", AboveNativeSizeWarning)  # plain_512 is above the native size on purpose
    sd = StableDiffusion.from_preset("shapes")
    pool = heldout_scenes(num_single=24, num_double=0)  # every colour / shape pair, colour by colour
    scenes = [pool[(index * 7) % len(pool)] for index in range(num_prompts)]  # a new colour and shape each time

    def hires(strength, upscaler="Latent"):
        return HiresFix(scale=4, upscaler=upscaler, denoising_strength=strength, second_pass_steps=10)

    cases = {"plain_512": dict(height=512, width=512),
             "hires_128_to_512": dict(height=128, width=128, hires=hires(0.3)),
             "hires_128_to_512_strength_0.6": dict(height=128, width=128, hires=hires(0.6)),
             "hires_128_to_512_lanczos": dict(height=128, width=128, hires=hires(0.3, "Lanczos")),
             "hires_128_to_512_lanczos_strength_0.6": dict(height=128, width=128, hires=hires(0.6, "Lanczos"))}
    results = {}
    for name, options in cases.items():
        call = dict(num_steps=20, sampler="Euler", unconditional_guidance_scale=7.5, **options)
        _, first = _timed(lambda: sd.text_to_image(scenes[0].caption, seed=0, **call))
        records, seconds = [], []
        for index, scene in enumerate(scenes):
            image, took = _timed(lambda: sd.text_to_image(scene.caption, seed=index, **call))
            seconds.append(took)
            score = score_scene(scene, analyze_image(image[0], max_objects=32))
            counts = count_objects(image[0])
            wanted = scene.objects[0].color
            records.append({"prompt": scene.caption, "objects": sum(counts.values()), "objects_by_color": counts,
                            "objects_of_prompt_color": counts.get(wanted, 0), "one_object": counts == {wanted: 1},
                            "color": score["color"], "shape": score["shape"]})
        results[name] = {
            "first_call_s": round(first, 2), "steady_s_per_image": round(float(np.median(seconds)), 2),
            "mean_objects": round(float(np.mean([r["objects"] for r in records])), 2),
            "mean_objects_of_prompt_color": round(float(np.mean([r["objects_of_prompt_color"] for r in records])),
                                                  2),
            "one_object_rate": float(np.mean([r["one_object"] for r in records])),
            "one_object_right_rate": float(np.mean([r["one_object"] and r["color"] and r["shape"]
                                                    for r in records])),
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
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    import keras

    backend = keras.backend.backend()
    result = {"backend": backend, "machine": platform.machine(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "load_average_at_start": os.getloadavg(),
              "steps": "20 + 10 (strength 0.3: 3 run; 0.6: 6 run)",
              **generation_cases(args.prompts), **upscaler_cases(),
              "load_average_at_end": os.getloadavg()}
    path = os.path.join(HERE, "results", f"hires_cpu_{backend}.json")
    from sd_keras import files

    with files.atomic_write(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: v for k, v in result.items()
                      if not isinstance(v, dict)} | {k: {kk: vv for kk, vv in v.items() if kk != "images"}
                                                     for k, v in result.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
