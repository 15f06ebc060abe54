"""Where sd_keras keeps files on this machine, and what kind of model a path holds.

A foundation module (it imports only ``sd_keras.env``, which reads the variable), so the backend (the compilation
cache), the weight loaders (downloads) and the front ends all ask it rather than one another.

The cache folder is ``$SD_KERAS_CACHE`` or, when that is unset or empty, ``~/.cache/sd_keras``; downloaded
weights go to one sub-folder per preset and JAX's persistent compilation cache to ``xla``.

Example:
    >>> import os
    >>> cache_dir("sd-v1", "kcv_decoder.h5") == os.path.join(cache_dir(), "sd-v1", "kcv_decoder.h5")
    True
"""

import os

from sd_keras import env

CACHE_ENV = "SD_KERAS_CACHE"
BUNDLE_MANIFEST = "manifest.json"  # an exported LiteRT bundle folder holds this file
DIFFUSERS_INDEX = "model_index.json"  # a diffusers pipeline folder holds this file
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")  # single-file checkpoints


def cache_dir(*parts):
    """The cache folder (``$SD_KERAS_CACHE`` or ``~/.cache/sd_keras``), joined with ``parts``."""
    root = env.path(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sd_keras")
    return os.path.join(root, *parts)


def is_bundle_folder(path):
    """Whether ``path`` is a folder holding an exported LiteRT bundle (its ``manifest.json``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, BUNDLE_MANIFEST))


def is_diffusers_folder(path):
    """Whether ``path`` is a diffusers pipeline folder (its ``model_index.json``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, DIFFUSERS_INDEX))
