"""``sd_keras.load(spec)``: one entry point from a model name or path to something that generates.

``spec`` is one of

- a preset name (``"tiny"``, ``"shapes"``, ``"sd-v1"``, ``"sd-v2"``): ``StableDiffusion.from_preset``; an SDXL
  preset (``"sd-xl"``, ``"sd-xl-refiner"``, ``"tiny-xl"``, ...): ``StableDiffusionXL.from_preset``;
- a checkpoint: an sd_keras saved folder (``save_pretrained`` / ``sd-keras convert``), a diffusers folder, or an
  original single ``.safetensors`` / ``.ckpt`` file: ``StableDiffusion.from_checkpoint`` (an SDXL diffusers folder or
  single file: ``StableDiffusionXL.from_checkpoint``);
- an exported LiteRT bundle folder (it holds ``manifest.json``): ``sd_keras.export.runner.BundleRunner``.

The front ends (``sd-keras generate -m``, ``sd-keras export -m``, ``sd-keras serve -m``) and
``sd_keras.evaluate`` all resolve ``-m`` here. ``spec_kind`` answers which of the three a spec is without loading
anything (no Keras import), so a front end can refuse bad input before minutes of loading.

Loading a model means choosing its engine (the Keras pipeline or the LiteRT bundle runner), so this module sits
in the tasks layer, beside the two engines; the weight readers it reaches through them are in the loading layer.

Example:
    >>> import sd_keras
    >>> sd = sd_keras.load("tiny")
    >>> type(sd).__name__
    'StableDiffusion'
    >>> spec_kind("sd-v1")
    'preset'
    >>> sd_keras.load("no-such-model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sd_keras.errors.InputError: unknown model 'no-such-model': not a preset (sd-v1, sd-v2, tiny, shapes, sd-xl, ...
"""

import os

from sd_keras import paths
from sd_keras.errors import InputError

PRESET, CHECKPOINT, BUNDLE = "preset", "checkpoint", "bundle"


def _preset_names():
    from sd_keras import presets
    from sd_keras.pipeline_sdxl import preset_names

    return presets.names() + preset_names()


def spec_kind(spec, *, prediction_type=None, ema=False):
    """``"preset"``, ``"bundle"`` or ``"checkpoint"``: what ``load(spec)`` would load, checked without loading it.

    InputError (naming the presets) unless ``spec`` is a preset name or an existing file or folder, and unless
    ``prediction_type`` / ``ema`` are given only for a checkpoint (they say how a checkpoint file is read).
    Whether a checkpoint's files are complete and readable is found out when it loads.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise InputError(f"model: expected a preset name, checkpoint path or bundle folder, got {spec!r}")
    names = _preset_names()
    if spec in names:
        kind = PRESET
    elif paths.is_bundle_folder(spec):
        kind = BUNDLE
    elif os.path.exists(spec):
        kind = CHECKPOINT
    else:
        raise InputError(f"unknown model {spec!r}: not a preset ({', '.join(names)}) and no such file or folder")
    if kind != CHECKPOINT and (prediction_type is not None or ema):
        what = "a preset" if kind == PRESET else "an exported bundle"
        raise InputError(f"{spec}: {what}: --prediction-type / --ema (prediction_type, ema) apply to checkpoint "
                         "files and folders only")
    return kind


def load(spec, *, dtype="float32", prediction_type=None, ema=False):
    """The model ``spec`` names: a ``StableDiffusion`` for a preset or checkpoint (``StableDiffusionXL`` for an
    SDXL one), a ``BundleRunner`` for an exported bundle folder.

    ``dtype``: compute dtype of a Keras model (``"float32"``, ``"bfloat16"``, ``"float16"``); a bundle runs at
    the precisions it was exported with. ``prediction_type`` / ``ema``: how a checkpoint file is read (see
    ``StableDiffusion.from_checkpoint``); an error for presets and bundles. What checkpoint loading infers or
    chooses (prediction type, EMA weights) is logged at INFO to the ``sd_keras.checkpoints`` logger.

    Raises ``InputError`` for an unknown spec (naming the presets) or a bad combination.
    """
    kind = spec_kind(spec, prediction_type=prediction_type, ema=ema)
    spec = os.fspath(spec)
    if kind == BUNDLE:
        from sd_keras.export.runner import BundleRunner

        return BundleRunner(spec)
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.pipeline_sdxl import StableDiffusionXL, preset_names

    if kind == PRESET and spec in preset_names():
        return StableDiffusionXL.from_preset(spec, dtype=dtype)
    if kind == CHECKPOINT and not ema:
        from sd_keras.weights.sdxl import is_sdxl_checkpoint

        if is_sdxl_checkpoint(spec):
            return StableDiffusionXL.from_checkpoint(spec, dtype=dtype, prediction_type=prediction_type)
    if kind == PRESET:
        return StableDiffusion.from_preset(spec, dtype=dtype)
    return StableDiffusion.from_checkpoint(spec, dtype=dtype, prediction_type=prediction_type, ema=ema)
