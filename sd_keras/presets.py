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


def load(name):
    """``(ModelConfig, sd_keras.models.Weights)`` of preset ``name``: random weights (seed 0) for ``tiny``,
    KerasCV's h5 files (downloaded once, sha256-checked) for ``sd-v1`` / ``sd-v2``, the packaged folder otherwise.

    Example:
        >>> config, weights = load("tiny")
        >>> config.name, weights.seed
        ('tiny', 0)
    """
    config = get_config(name)  # InputError listing the presets for an unknown name
    if name in RANDOM_PRESETS:
        from sd_keras.models.registry import Weights

        return config, Weights.random_weights(0, source=f"preset {name!r} (random weights, seed 0)")
    if name in KERAS_CV_PRESETS:
        from sd_keras.weights.download import fetch
        from sd_keras.weights.keras_cv import keras_cv_h5_weights

        paths = fetch(keras_cv_files(name), name)
        return config, keras_cv_h5_weights(dict(zip(_COMPONENTS, paths)), source=f"preset {name!r}")
    from sd_keras.weights.saved import load_packaged

    return load_packaged(name)
