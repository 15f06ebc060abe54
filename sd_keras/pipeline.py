"""``StableDiffusion``: the Keras engine of the generation API (KerasCV-compatible names, new options
keyword-only).

The generation itself (argument checks, prompts → contexts, seeds → noise, image conditioning, decode, results) is
``sd_keras.generator.Generator``'s; this class supplies its networks as Keras models and runs the sampling loop as
one compiled program (``sd_keras.loop``). The checks and image helpers below are the base's, importable from here
as before.
"""

import dataclasses
import math

import numpy as np

from sd_keras.config import ModelConfig, get_config
from sd_keras.errors import InputError
from sd_keras.generator import (BLEND, CONCAT, MAX_SIDE, MAX_STEPS, TXT2IMG, Generator, KerasGenerator,  # noqa: F401
                                batch_size_for, check_guidance, check_size, check_steps, check_strength, load_image,
                                to_pil, to_uint8)


class _LoopModule:
    """``sd_keras.loop`` (Keras), imported on first use, so that importing this module stays cheap for the
    front ends' argument checks."""

    def __getattr__(self, name):
        from sd_keras import loop

        return getattr(loop, name)


loop_lib = _LoopModule()

# KerasCV 0.9's generate_image schedule, so that KerasCV code ported to sd_keras gives KerasCV's images
DEFAULT_SAMPLER = Generator.default_sampler


class StableDiffusion(KerasGenerator):
    """Text-to-image, image-to-image and inpainting with one set of Keras 3 models.

    The Keras engine of ``sd_keras.generator.Generator``, which holds the generation methods. The sub-models keep
    KerasCV's signatures (``text_encoder``, ``diffusion_model``, ``decoder``, ``image_encoder``), so KerasCV code
    ports by changing the import.

    Two ways to construct it:

    - KerasCV's: ``StableDiffusion(img_height=512, img_width=512, jit_compile=True)`` loads the ``sd-v1``
      preset (``StableDiffusionV2(...)``: ``sd-v2``), i.e. KerasCV's published weights, downloaded once and
      cached (offline: the error of ``from_preset`` naming every missing file). The size, rounded to a multiple
      of 128 as KerasCV rounds it, becomes the default ``height``/``width`` of the generations. The loop is
      always compiled; ``jit_compile`` is accepted for compatibility and kept in ``self.jit_compile``.
    - From parts: ``StableDiffusion(config, text_encoder, diffusion_model, decoder, image_encoder=None,
      tokenizer=None)``, as the ``from_*`` class methods do.

    Example:
        >>> sd = StableDiffusion.from_preset("tiny")
        >>> images = sd.text_to_image("a red circle", num_steps=2, seed=1, height=64, width=64)
        >>> images.shape, images.dtype
        ((1, 64, 64, 3), dtype('uint8'))
    """

    KERAS_CV_PRESET = "sd-v1"  # what KerasCV's constructor form loads

    def __init__(self, config=None, text_encoder=None, diffusion_model=None, decoder=None, image_encoder=None,
                 tokenizer=None, *, dtype="float32", img_height=None, img_width=None, jit_compile=None):
        if not isinstance(config, ModelConfig):
            self._init_keras_cv(config, text_encoder, diffusion_model, (decoder, image_encoder, tokenizer), dtype,
                                img_height, img_width, jit_compile)
            return
        if (img_height, img_width, jit_compile) != (None, None, None):
            raise InputError("img_height, img_width and jit_compile belong to KerasCV's constructor form "
                             "StableDiffusion(img_height=..., img_width=...), not to one built from a config")
        from sd_keras.tokenizer import CLIPTokenizer

        self.config = config
        self.tokenizer = tokenizer or CLIPTokenizer()
        self.dtype = dtype
        policy = loop_lib.keras_dtype_policy(dtype)
        from sd_keras import models

        # weights stored and computed in ``dtype`` (the VAE in float32); a model built otherwise is rebuilt with its
        # weights
        text_encoder = models.rebuild(text_encoder, "text_encoder", config, policy)
        diffusion_model = models.rebuild(diffusion_model, "diffusion_model", config, policy)
        self.text_encoder = text_encoder
        self.diffusion_model = diffusion_model
        self.decoder = decoder
        self.image_encoder = image_encoder
        # every compiled program of this model (loop, encoders, decoder), one per input shape; unbounded unless
        # ``programs.resize(n)`` is called (``sd-keras serve --max-programs``)
        self.programs = loop_lib.ProgramCache()
        self._loop = loop_lib.DenoisingLoop(diffusion_model, self.programs)
        self._text_encoder_fn = loop_lib.CompiledFunction(text_encoder, programs=self.programs)
        self._decoder_fn = loop_lib.CompiledFunction(decoder, programs=self.programs)
        self._image_encoder_fn = (loop_lib.CompiledFunction(image_encoder, programs=self.programs)
                                  if image_encoder is not None else None)

    def _init_keras_cv(self, height, width, jit_compile, rest, dtype, img_height, img_width, keyword_jit):
        """KerasCV's ``StableDiffusion(img_height=512, img_width=512, jit_compile=True)``, positional or not."""
        if height is not None and not _is_number(height) or any(part is not None for part in rest):
            raise TypeError("StableDiffusion takes KerasCV's (img_height=512, img_width=512, jit_compile=True) or "
                            f"(config, text_encoder, diffusion_model, decoder, ...) with an sd_keras ModelConfig; "
                            f"got a {type(height).__name__} first")
        for name, positional, keyword in (("img_height", height, img_height), ("img_width", width, img_width),
                                          ("jit_compile", jit_compile, keyword_jit)):
            if positional is not None and keyword is not None:
                raise TypeError(f"StableDiffusion got two values for {name}")
        height = 512 if height is None and img_height is None else (height if img_height is None else img_height)
        width = 512 if width is None and img_width is None else (width if img_width is None else img_width)
        jit_compile = True if jit_compile is None and keyword_jit is None else bool(
            jit_compile if keyword_jit is None else keyword_jit)
        size = (_keras_cv_side("img_height", height), _keras_cv_side("img_width", width))
        loaded = type(self).from_preset(self.KERAS_CV_PRESET, dtype=dtype)
        self.__dict__.update(vars(loaded))
        self.config = dataclasses.replace(self.config, image_size=size)
        self.jit_compile = jit_compile

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, *, seed=0, dtype="float32"):
        """Randomly initialised models for ``config`` (a ModelConfig or preset name)."""
        from sd_keras import models

        if isinstance(config, str):
            config = get_config(config)
        return cls._from_weights(config, models.Weights.random_weights(seed), dtype)

    @classmethod
    def _from_weights(cls, config, weights, dtype):
        """The model of what a loader returns, ``(config, sd_keras.models.Weights)``: every component built once,
        directly in the compute dtype, and filled."""
        from sd_keras import models

        if not isinstance(config, ModelConfig):  # another family (SDXL): refused before anything is built
            weights.close()
            raise InputError(f"{weights.source}: an {models.registry.family_of(config).name} model: StableDiffusion "
                             "generates with SD 1.x / 2.x (load SDXL with sd_keras.StableDiffusionXL or "
                             "sd_keras.load)")
        parts = models.build_all(config, weights, dtype=loop_lib.keras_dtype_policy(dtype))
        return cls(config, **parts, dtype=dtype)

    @classmethod
    def from_preset(cls, name, *, dtype="float32"):
        """Load a preset: ``"tiny"`` (random, for tests), ``"shapes"`` (shipped demo model), ``"sd-v1"`` /
        ``"sd-v2"`` (KerasCV's published weights, downloaded once, sha256-checked and cached)."""
        from sd_keras import presets

        loop_lib.keras_dtype_policy(dtype)  # a bad dtype is refused before any download
        return cls._from_weights(*presets.load(name), dtype)

    @classmethod
    def from_checkpoint(cls, path, *, dtype="float32", prediction_type=None, ema=False):
        """Load a checkpoint: an sd_keras saved folder (``save_pretrained`` / ``sd-keras convert``), a diffusers
        folder, or a single original-layout ``.safetensors`` / ``.ckpt`` file. Single files don't say what the
        UNet predicts: it is inferred as diffusers does (``v_prediction`` for SD 2.x unless the file's
        ``global_step`` is 875000) and logged; ``prediction_type=`` overrides it. ``ema=True`` loads a single
        file's EMA UNet weights (``model_ema.*``) where it also holds the non-EMA ones."""
        from sd_keras.weights import saved

        if saved.is_saved_folder(path):
            if ema or prediction_type is not None:
                raise InputError(f"{path}: an sd_keras saved model: ema= and prediction_type= apply to "
                                 "checkpoints (convert again to change them)")
            return cls._from_weights(*saved.load(path), dtype)
        from sd_keras.weights.checkpoints import load_checkpoint

        loop_lib.keras_dtype_policy(dtype)  # a bad dtype is refused before the files are opened
        return cls._from_weights(*load_checkpoint(path, prediction_type=prediction_type, ema=ema), dtype)

    def save_pretrained(self, folder, *, weight_dtype=None):
        """Write this model in sd_keras's own format (loadable by ``from_checkpoint``), atomically."""
        from sd_keras.weights.saved import save_pretrained

        return save_pretrained(self, folder, weight_dtype=weight_dtype)

    @classmethod
    def from_keras_cv(cls, kcv_model, *, dtype="float32"):
        """Wrap a ``keras_cv.models.StableDiffusion`` / ``StableDiffusionV2`` (sub-models built), same weights."""
        from sd_keras.weights.keras_cv import from_keras_cv_models

        return cls._from_weights(*from_keras_cv_models(kcv_model), dtype)

    # -- the engine's primitives (``Generator``) -----------------------------------------------------------------
    nan_hint = " (numerical overflow, often float16 in the UNet or VAE); try dtype='float32' or 'bfloat16'"
    can_merge_lora = True  # sd_keras.weights.lora merges into the Keras text encoder and UNet

    def _encode_tokens(self, ids):
        positions = np.repeat(np.arange(ids.shape[1], dtype=np.int32)[None], ids.shape[0], axis=0)
        return self._text_encoder_fn({"tokens": ids, "positions": positions})

    def _denoise(self, scheduler, context, unconditional, latent, step_noise, *, guidance_scale, start_index=0,
                 mode=TXT2IMG, extra=None, progress=None):
        return self._loop(scheduler, context, unconditional, latent, step_noise, guidance_scale=guidance_scale,
                          start_index=start_index, mode=mode, extra=extra, progress=progress)


class StableDiffusionV2(StableDiffusion):
    """KerasCV's ``StableDiffusionV2(img_height=512, img_width=512, jit_compile=True)``: the ``sd-v2`` preset
    (SD 2.1-base shapes, KerasCV's published weights). Every other method is ``StableDiffusion``'s."""

    KERAS_CV_PRESET = "sd-v2"


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _keras_cv_side(name, value):
    """KerasCV rounds the image size to the nearest multiple of 128; so does its constructor form here."""
    if not _is_number(value) or not math.isfinite(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    rounded = int(round(value / 128) * 128)
    if not 128 <= rounded <= MAX_SIDE:
        raise InputError(f"{name}={value} rounds to {rounded} (KerasCV rounds to a multiple of 128); "
                         f"it must be in [128, {MAX_SIDE}]")
    return rounded
