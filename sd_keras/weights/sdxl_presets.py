"""The SDXL presets' weights: Stability AI's official single files, downloaded once, checked and cached.

- ``sd-xl``: ``sd_xl_base_1.0.safetensors`` of ``stabilityai/stable-diffusion-xl-base-1.0`` (6,938,078,334 bytes);
- ``sd-xl-refiner``: ``sd_xl_refiner_1.0.safetensors`` of ``stabilityai/stable-diffusion-xl-refiner-1.0``
  (6,075,981,930 bytes).

The URLs pin the Hugging Face Hub revision the files were published in; the sha256 values are the files' Git LFS
object ids on the hub, as Stability AI's ``generative-models`` README ("File Hash (sha256)") and the model lists
of AUTOMATIC1111 / SwarmUI give them. Files go through ``sd_keras.weights.download.fetch`` like the KerasCV
presets: resumable download, sha256 check, ``$SD_KERAS_CACHE/<preset>/``; offline, the error names the file, URL
and folder to copy it into.

Example:
    >>> from sd_keras.weights.sdxl_presets import preset_files
    >>> preset_files("sd-xl")[0].name
    'sd_xl_base_1.0.safetensors'
"""

import dataclasses
import os

from sd_keras.config_sdxl import get_sdxl_config
from sd_keras.errors import InputError
from sd_keras.paths import cache_dir
from sd_keras.weights.download import RemoteFile

_HUB = "https://huggingface.co/stabilityai"
SDXL_WEIGHTS = {
    "sd-xl": RemoteFile(
        "sd_xl_base_1.0.safetensors",
        f"{_HUB}/stable-diffusion-xl-base-1.0/resolve/462165984030d82259a11f4367a4eed129e94a7b/"
        "sd_xl_base_1.0.safetensors",
        "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"),
    "sd-xl-refiner": RemoteFile(
        "sd_xl_refiner_1.0.safetensors",
        f"{_HUB}/stable-diffusion-xl-refiner-1.0/resolve/5d4cfe854c9a9a87939ff3653551c2b3c99a4356/"
        "sd_xl_refiner_1.0.safetensors",
        "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f"),
}


def names():
    """The SDXL presets that have published weights."""
    return list(SDXL_WEIGHTS)


def preset_files(name):
    """The ``RemoteFile`` list (url, sha256) of an SDXL preset."""
    if name not in SDXL_WEIGHTS:
        raise InputError(f"unknown SDXL preset {name!r}; presets with weights: {', '.join(SDXL_WEIGHTS)}")
    return [SDXL_WEIGHTS[name]]


def cached(name):
    """True when the preset's file is in the cache (its sha256 is checked when it loads)."""
    return all(os.path.isfile(cache_dir(name, remote.name)) for remote in preset_files(name))


def load(name, *, progress=None):
    """``(SDXLConfig, models.Weights)`` of an SDXL preset: the file is fetched (download, sha256, cache) and read
    as a single-file checkpoint, whose inferred architecture must be the preset's."""
    from sd_keras.weights.download import fetch
    from sd_keras.weights.sdxl import load_sdxl_checkpoint

    (path,) = fetch(preset_files(name), name, progress=progress)
    config, weights = load_sdxl_checkpoint(path)
    expected = get_sdxl_config(name)
    if dataclasses.replace(config, name=name, image_size=expected.image_size) != expected:
        weights.close()
        raise InputError(f"{path}: its architecture is not the {name} preset's (a different file under the "
                         "preset's name?)")
    return expected, weights
