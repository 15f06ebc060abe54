"""Preset loading: which weights each preset name means and where they come from.

- ``tiny``: random weights (seed 0), a few hundred thousand parameters, for tests and smoke runs.
- ``sd-v1`` / ``sd-v2``: KerasCV's published h5 weights (SD 1.4 and SD 2.1-base shapes), downloaded once from
  KerasCV's URLs, checked against KerasCV's sha256 and cached in ``$SD_KERAS_CACHE``.
"""

from sd_keras.config import PRESETS, get_config

RANDOM_PRESETS = ("tiny",)
KERAS_CV_PRESETS = ("sd-v1", "sd-v2")
_COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")


def names():
    """Every preset name ``from_preset`` accepts."""
    return list(PRESETS)


def keras_cv_files(name):
    """The RemoteFile list (url, sha256) of a KerasCV preset, in component order."""
    from sd_keras.weights.download import RemoteFile
    from sd_keras.weights.keras_cv import KERAS_CV_WEIGHTS

    table = KERAS_CV_WEIGHTS[name]
    return [RemoteFile(f"{component}.h5", *table[component]) for component in _COMPONENTS if component in table]


def cached(name):
    """True when ``name`` loads without a download: a shipped or random preset, or a KerasCV preset whose files
    are all in the cache (their sha256 is checked when they load)."""
    get_config(name)  # ValueError listing the presets for an unknown name
    if name not in KERAS_CV_PRESETS:
        return True
    import os

    from sd_keras.paths import cache_dir

    return all(os.path.isfile(cache_dir(name, remote.name)) for remote in keras_cv_files(name))


def load(cls, name, *, dtype="float32"):
    config = get_config(name)  # ValueError listing the presets for an unknown name
    if name in RANDOM_PRESETS:
        return cls.from_config(config, dtype=dtype)
    if name in KERAS_CV_PRESETS:
        from sd_keras import models
        from sd_keras.weights.download import fetch
        from sd_keras.weights.keras_cv import load_keras_cv_h5

        paths = fetch(keras_cv_files(name), name)
        builders = {"text_encoder": models.build_text_encoder, "diffusion_model": models.build_diffusion_model,
                    "decoder": models.build_decoder, "image_encoder": models.build_image_encoder}
        parts = {}
        for component, path in zip(_COMPONENTS, paths):
            parts[component] = builders[component](config)
            load_keras_cv_h5(parts[component], path, component)
        return cls(config, **parts, dtype=dtype)
    from sd_keras.weights.saved import load_packaged

    return load_packaged(cls, name, dtype=dtype)
