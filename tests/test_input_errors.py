"""The foundation modules' validators raise sd_keras.errors.InputError (the one class front ends map to a usage
error), still a ValueError; a value of the wrong type raises InputTypeError, still a TypeError."""

import dataclasses
import io

import numpy as np
import pytest

from sd_keras import backend, config, files, image_file, images, noise, schedulers
from sd_keras.data import folder, shapes
from sd_keras.errors import InputError, InputTypeError
from sd_keras.tokenizer import CLIPTokenizer

BAD_INPUT = {
    "unknown preset": lambda tmp: config.get_config("sd-v9"),
    "model config field": lambda tmp: dataclasses.replace(config.get_config("tiny"), prediction_type="x"),
    "unknown sampler": lambda tmp: schedulers.get_sampler("Heun 9", 10),
    "sampler steps": lambda tmp: schedulers.get_sampler("DDIM", 0),
    "noise schedule": lambda tmp: schedulers.NoiseSchedule(beta_start=0.5, beta_end=0.1),
    "seed": lambda tmp: noise.gaussian("seven", (2,)),
    "batch size": lambda tmp: noise.latent_noise(1, 0, (8, 8, 4)),
    "output pattern": lambda tmp: images.output_paths("out_%s_%d.png", 2),
    "grid scale": lambda tmp: images.image_grid([np.zeros((4, 4, 3), np.uint8)], scale=0),
    "output is a folder": lambda tmp: files.check_writable(tmp),
    "token id": lambda tmp: CLIPTokenizer().decode([10**6]),
    "caption": lambda tmp: shapes.Scene.parse("a purple elephant"),
    "image folder": lambda tmp: folder.ImageFolderDataset(str(tmp / "missing")),
    "image file": lambda tmp: image_file.open_image(io.BytesIO(b"not an image"), "upload"),
    "devices": lambda tmp: backend.use_devices("many"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_an_input_error(case, tmp_path):
    with pytest.raises(InputError) as caught:
        BAD_INPUT[case](tmp_path)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)  # one line naming the cause


@pytest.mark.parametrize("call", [lambda: CLIPTokenizer().encode(b"a cat"),
                                  lambda: CLIPTokenizer().tokenize(["a cat", 3])])
def test_a_wrong_type_is_an_input_type_error(call):
    with pytest.raises(InputTypeError) as caught:
        call()
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, InputError)
