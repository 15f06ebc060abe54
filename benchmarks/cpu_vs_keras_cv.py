"""CPU benchmark: KerasCV's ``generate_image`` against sd_keras's compiled sampler, same weights and shapes.

Runs in one process on the TensorFlow backend (KerasCV needs it): KerasCV 0.9 with its random sub-models
(``download_weights=False``) and sd_keras built from them with ``from_keras_cv``; the same text context and the
same initial noise; KerasCV's DDIM schedule on both sides ("DDIM KerasCV"). Checks that the two images agree,
then times warm generations and prints the ratio. Also measures what the per-step progress report costs.

    KERAS_BACKEND=tensorflow python benchmarks/cpu_vs_keras_cv.py --out benchmarks/results/cpu_vs_keras_cv.json

Not a test: numbers depend on the machine (the committed results name it).
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402


def _median(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_pair(version, size):
    import keras_cv
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel, DiffusionModelV2
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder, TextEncoderV2

    from sd_keras.pipeline import StableDiffusion

    v2 = version == "sd-v2"
    kcv = (keras_cv.models.StableDiffusionV2 if v2 else keras_cv.models.StableDiffusion)(
        img_height=size, img_width=size, jit_compile=True)
    kcv._text_encoder = (TextEncoderV2 if v2 else TextEncoder)(77, download_weights=False)
    kcv._diffusion_model = (DiffusionModelV2 if v2 else DiffusionModel)(size, size, 77, download_weights=False)
    kcv._decoder = Decoder(size, size, download_weights=False)
    kcv._image_encoder = ImageEncoder(download_weights=False)
    return kcv, StableDiffusion.from_keras_cv(kcv)


def bench(version, size, steps, repeats):
    kcv, sd = build_pair(version, size)
    context = sd.encode_text("a photograph of a red circle")
    noise = np.random.default_rng(0).standard_normal((1, size // 8, size // 8, 4)).astype(np.float32)

    def keras_cv_run():
        return kcv.generate_image(context, num_steps=steps, diffusion_noise=noise)

    def sd_keras_run(progress=None):
        return sd.generate_image(context, num_steps=steps, diffusion_noise=noise, height=size, width=size,
                                 progress=progress)

    expected, ours = keras_cv_run(), sd_keras_run()
    max_diff = int(np.abs(expected.astype(int) - ours.astype(int)).max())
    keras_cv_s = _median(keras_cv_run, repeats)
    sd_keras_s = _median(sd_keras_run, repeats)
    sd_keras_run(progress=lambda step: None)
    progress_s = _median(lambda: sd_keras_run(progress=lambda step: None), repeats)
    result = {"version": version, "size": size, "steps": steps, "max_pixel_diff": max_diff,
              "keras_cv_s": keras_cv_s, "sd_keras_s": sd_keras_s, "speedup": keras_cv_s / sd_keras_s,
              "sd_keras_with_progress_s": progress_s, "progress_overhead": progress_s / sd_keras_s - 1.0}
    print(json.dumps(result), flush=True)
    return result


def progress_cost_tiny(repeats):
    """Progress on vs off at the tiny preset (64x64, 20 steps), where per-step overhead shows most."""
    from sd_keras.pipeline import StableDiffusion

    sd = StableDiffusion.from_preset("tiny")
    run = lambda progress=None: sd.text_to_image("a cat", num_steps=20, seed=0, height=64, width=64,  # noqa: E731
                                                 progress=progress)
    run(), run(lambda s: None)
    off, on = _median(run, repeats), _median(lambda: run(lambda s: None), repeats)
    result = {"preset": "tiny", "steps": 20, "off_s": off, "on_s": on, "overhead": on / off - 1.0}
    print(json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cpu_vs_keras_cv.json")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import keras

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "backend": keras.backend.backend(), "date": time.strftime("%Y-%m-%d"),
               "sd_v1": bench("sd-v1", args.size, args.steps, args.repeats),
               "tiny_progress": progress_cost_tiny(max(args.repeats, 15))}
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
