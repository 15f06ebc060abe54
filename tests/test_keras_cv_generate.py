"""generate_image parity with KerasCV 0.9 (TensorFlow suite): same weights, same noise, DDIM, 128x128.

The issue's oracle is KerasCV on TensorFlow; the JAX suite covers the same pipeline through the cross-backend
tests (test_pipeline.py, test_keras_cv_interop.py).
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from sd_keras.pipeline import StableDiffusion

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="KerasCV generate_image is the TensorFlow suite's oracle")


SIZE = 128


def build_keras_cv():
    """KerasCV's StableDiffusion at SIZE with its four sub-models built without the weight download."""
    import keras_cv
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder
    from test_keras_cv_interop import perturb_vectors

    kcv = keras_cv.models.StableDiffusion(img_height=SIZE, img_width=SIZE, jit_compile=False)
    kcv._text_encoder = TextEncoder(77, download_weights=False)
    kcv._diffusion_model = DiffusionModel(SIZE, SIZE, 77, download_weights=False)
    kcv._decoder = Decoder(SIZE, SIZE, download_weights=False)
    kcv._image_encoder = ImageEncoder(download_weights=False)
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    from sd_keras.tokenizer import DEFAULT_MERGES_PATH

    kcv._tokenizer = SimpleTokenizer(bpe_path=str(DEFAULT_MERGES_PATH))  # KerasCV would download this file
    rng = np.random.default_rng(0)
    for model in (kcv._text_encoder, kcv._diffusion_model, kcv._decoder, kcv._image_encoder):
        perturb_vectors(model, rng)  # biases and norms away from their 0/1 initial values
    return kcv


def compare_with_keras_cv():
    """Context and images of KerasCV and sd_keras on the same weights and noise (plain data)."""
    kcv = build_keras_cv()
    sd = StableDiffusion.from_keras_cv(kcv)
    context = sd.encode_text("a photograph of a red circle")
    kcv_context = keras.ops.convert_to_numpy(kcv.encode_text("a photograph of a red circle"))
    report = {"context_max_diff": float(np.abs(context - kcv_context).max()),
              "context_allclose": bool(np.allclose(context, kcv_context, rtol=1e-4, atol=1e-4)), "images": {}}
    noise = np.random.default_rng(1).standard_normal((1, SIZE // 8, SIZE // 8, 4)).astype(np.float32)
    for steps in (1, 3):
        expected = kcv.generate_image(kcv_context, num_steps=steps, diffusion_noise=noise)
        ours = sd.generate_image(context, num_steps=steps, diffusion_noise=noise, height=SIZE, width=SIZE)
        report["images"][str(steps)] = {
            "shapes": [list(ours.shape), list(expected.shape)],
            "max_pixel_diff": int(np.abs(ours.astype(int) - expected.astype(int)).max()),
            "distinct_values": int(len(np.unique(expected)))}
    return report


@pytest.mark.slow
def test_generate_image_matches_keras_cv(tmp_path):
    # A child process: the full-size models take ~11 GB that a process does not give back to the system.
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0 and out.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    with open(out) as handle:
        report = json.load(handle)
    assert report["context_allclose"], report["context_max_diff"]
    assert set(report["images"]) == {"1", "3"}
    for steps, image in report["images"].items():
        assert image["shapes"] == [[1, SIZE, SIZE, 3]] * 2, steps
        assert image["distinct_values"] > 10, steps  # a real image, not a constant
        assert image["max_pixel_diff"] <= 2, (steps, image)


if __name__ == "__main__":
    with open(sys.argv[1] + ".tmp", "w") as handle:
        json.dump(compare_with_keras_cv(), handle)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
