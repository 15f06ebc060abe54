"""``StableDiffusion``: the generation API (KerasCV-compatible names, new options keyword-only)."""

import dataclasses
import math

import numpy as np

from sd_keras import noise as noise_lib
from sd_keras.config import ModelConfig, get_config
from sd_keras.schedulers import get_sampler


class _LoopModule:
    """``sd_keras.loop`` (Keras), imported on first use: the input checks and ``load_image`` below also serve
    the bundle runner, which runs without Keras."""

    def __getattr__(self, name):
        from sd_keras import loop

        return getattr(loop, name)


loop_lib = _LoopModule()

MAX_STEPS = 1000
# KerasCV 0.9's generate_image schedule, so that KerasCV code ported to sd_keras gives KerasCV's images
DEFAULT_SAMPLER = "DDIM KerasCV"
MAX_SIDE = 4096


def _nearest_multiples(value, base=64):
    low = max(base, (value // base) * base)
    high = low + base if low < value else low
    return sorted({low, high})


def check_size(height, width):
    """ValueError unless both sides are positive multiples of 64 (the UNet downsamples the latent by 8)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer multiple of 64, got {value!r}")
        if value < 64 or value % 64 or value > MAX_SIDE:
            options = " or ".join(str(v) for v in _nearest_multiples(max(int(value), 1)))
            raise ValueError(f"{name}={value} is not a multiple of 64 in [64, {MAX_SIDE}]; nearest valid: {options}")


def check_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps must be in [1, {MAX_STEPS}], got {num_steps}")


def check_guidance(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise ValueError(f"unconditional_guidance_scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"unconditional_guidance_scale must be finite and >= 0, got {scale}")


def check_strength(strength):
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) or not (
        0.0 <= float(strength) <= 1.0
    ):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")


def to_uint8(images):
    """Decoder output in [-1, 1] → uint8 (B, H, W, 3), exactly as KerasCV converts it."""
    images = ((np.asarray(images, np.float32) + 1.0) / 2.0) * 255.0
    return np.clip(images, 0, 255).astype("uint8")


def to_pil(images):
    """uint8 (B, H, W, 3) or (H, W, 3) arrays → list of PIL images."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    return [Image.fromarray(image) for image in images]


def load_image(image, height=None, width=None, *, name="image"):
    """A path, PIL image or uint8/float array → float32 (H, W, C) in [0, 255]; resized to (height, width)."""
    from PIL import Image

    from sd_keras.image_file import open_image

    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        # ValueError naming the file when unreadable or over PIL's pixel limit (checked before decoding)
        with open_image(image, f"{name} {str(image)!r}") as opened:
            image = opened.convert("RGB")
    if isinstance(image, Image.Image):
        if height and width and image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        image = np.asarray(image)
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W, C) or (H, W), got shape {array.shape}")
    if height and width and array.shape[:2] != (height, width):
        mode_image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        array = np.asarray(mode_image.resize((width, height), Image.LANCZOS))
    return array.astype(np.float32)


class StableDiffusion:
    """Text-to-image, image-to-image and inpainting with one set of Keras 3 models.

    The sub-models keep KerasCV's signatures (``text_encoder``, ``diffusion_model``, ``decoder``,
    ``image_encoder``), so KerasCV code ports by changing the import.

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
            raise ValueError("img_height, img_width and jit_compile belong to KerasCV's constructor form "
                             "StableDiffusion(img_height=..., img_width=...), not to one built from a config")
        from sd_keras.tokenizer import CLIPTokenizer

        self.config = config
        self.tokenizer = tokenizer or CLIPTokenizer()
        self.dtype = dtype
        policy = loop_lib.keras_dtype_policy(dtype)
        from sd_keras import models

        # mixed precision: float32 variables, low-precision compute (a model built otherwise is rebuilt, same weights)
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
        self._encode_text = loop_lib.CompiledFunction(text_encoder, programs=self.programs)
        self._decode = loop_lib.CompiledFunction(decoder, programs=self.programs)
        self._encode_image = (loop_lib.CompiledFunction(image_encoder, programs=self.programs)
                              if image_encoder is not None else None)
        self.last_truncated = False

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
                raise ValueError(f"{path}: an sd_keras saved model: ema= and prediction_type= apply to "
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

    # -- text ------------------------------------------------------------------------------------------------
    def tokenize(self, prompts):
        """(B, 77) int32 token ids, padded as KerasCV pads for this model's version."""
        return self.tokenizer.tokenize(prompts, pad_token_id=self.config.pad_token_id)

    def _encode(self, prompt, name="prompt"):
        prompts = _prompt_list(prompt, name)
        tokenized = self.tokenizer.tokenize_with_info(prompts, pad_token_id=self.config.pad_token_id)
        positions = np.repeat(np.arange(tokenized.ids.shape[1], dtype=np.int32)[None], len(prompts), axis=0)
        context = self._encode_text({"tokens": tokenized.ids, "positions": positions})
        return np.asarray(context, np.float32), tokenized.any_truncated

    def encode_text(self, prompt):
        """Text encoder output (B, 77, D) for a prompt or a list of prompts (KerasCV's ``encode_text``).

        A prompt over 77 tokens is truncated with a ``PromptTruncatedWarning``; ``last_truncated`` tells.
        """
        context, self.last_truncated = self._encode(prompt)
        return context

    def _contexts(self, encoded_text, negative_prompt, batch_size):
        context = np.asarray(encoded_text, np.float32)
        if context.ndim == 2:
            context = context[None]
        if context.shape[0] == 1 and batch_size > 1:
            context = np.repeat(context, batch_size, axis=0)
        if context.shape[0] != batch_size:
            raise ValueError(f"encoded_text has batch {context.shape[0]} but batch_size is {batch_size}")
        negative = "" if negative_prompt is None else negative_prompt
        unconditional, _ = self._encode(negative, "negative_prompt")
        if unconditional.shape[0] == 1:
            unconditional = np.repeat(unconditional, batch_size, axis=0)
        if unconditional.shape[0] != batch_size:
            raise ValueError(f"negative_prompt has {unconditional.shape[0]} entries for batch_size {batch_size}")
        return context, unconditional

    # -- sampling --------------------------------------------------------------------------------------------
    def _resolve(self, num_steps, guidance, sampler, height, width, batch_size):
        if batch_size is None:
            batch_size = 1
        check_steps(num_steps)
        check_guidance(guidance)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        height = self.config.image_size[0] if height is None else height
        width = self.config.image_size[1] if width is None else width
        check_size(height, width)
        scheduler = get_sampler(sampler, int(num_steps), prediction_type=self.config.prediction_type)
        return scheduler, height, width

    def _record(self, prompt, negative_prompt, batch_size, num_steps, guidance, sampler, height, width, seed,
                **extra):
        """Remember the settings of the generation just made, for ``save``."""
        self.last_generation = {"prompt": prompt, "negative_prompt": negative_prompt, "batch_size": batch_size,
                                "num_steps": int(num_steps), "guidance_scale": float(guidance), "sampler": sampler,
                                "height": height, "width": width, "seed": seed, **extra}

    def _noise(self, seed, batch_size, latent_shape, scheduler):
        seed = noise_lib.random_seed() if seed is None or seed == -1 else seed
        extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
        initial, step_noise = noise_lib.latent_noise(seed, batch_size, latent_shape, extra_draws)
        self.last_seed = int(seed)
        return initial, (step_noise if scheduler.needs_noise else None)

    def _decode_latent(self, latent):
        images = self._decode(np.asarray(latent, np.float32))
        if not np.all(np.isfinite(images)):
            raise FloatingPointError(
                "the generated image contains NaN or inf (numerical overflow, often float16 in the UNet or VAE); "
                "try dtype='float32' or 'bfloat16'"
            )
        return to_uint8(images)

    def generate_image(self, encoded_text, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=7.5, diffusion_noise=None, seed=None, *, sampler=DEFAULT_SAMPLER,
                       height=None, width=None, progress=None, return_latent=False):
        """Denoise from ``diffusion_noise`` (or seeded noise) with the compiled loop and decode (KerasCV API).

        ``batch_size`` defaults to the batch of ``encoded_text`` (a batch of one is repeated to ``batch_size``).
        ``progress(step_done)`` is called after every step when given.
        """
        if batch_size is None:
            batch_size = _encoded_batch(encoded_text)
        scheduler, height, width = self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width,
                                                 batch_size)
        context, unconditional = self._contexts(encoded_text, negative_prompt, batch_size)
        latent_shape = (height // 8, width // 8, self.latent_channels)
        initial, step_noise = self._noise(seed, batch_size, latent_shape, scheduler)
        if diffusion_noise is not None:
            initial = np.asarray(diffusion_noise, np.float32)
            if initial.shape != (batch_size,) + latent_shape:
                raise ValueError(f"diffusion_noise must have shape {(batch_size,) + latent_shape}, got {initial.shape}")
        latent = initial * np.float32(scheduler.init_noise_sigma)
        extra, mode = None, loop_lib.TXT2IMG
        if self.unet_in_channels != self.latent_channels:
            # a 9-channel inpainting UNet asked for plain text-to-image: everything is "to repaint"
            mode = loop_lib.CONCAT
            extra = {"cond": np.concatenate([np.ones(latent.shape[:3] + (1,), np.float32),
                                             np.zeros(latent.shape, np.float32)], -1)}
        latent = self._loop(scheduler, context, unconditional, latent, step_noise,
                            guidance_scale=unconditional_guidance_scale, mode=mode, extra=extra, progress=progress)
        self._record(None, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
                     width, None if diffusion_noise is not None else self.last_seed)
        return latent if return_latent else self._decode_latent(latent)

    def text_to_image(self, prompt, negative_prompt=None, batch_size=None, num_steps=50,
                      unconditional_guidance_scale=7.5, seed=None, *, sampler=DEFAULT_SAMPLER, height=None, width=None,
                      progress=None):
        """Generate uint8 images (B, H, W, 3) for ``prompt`` (KerasCV's ``text_to_image``).

        ``prompt`` is a string or a list of strings, one per image: ``batch_size`` defaults to the list's length
        (1 for a string; a string or a one-item list is repeated to ``batch_size``). The same holds for a list
        of negative prompts. Image ``i`` of a batch with seed ``s`` equals a single generation with seed
        ``s + i``. ``save(images, "out_%d.png")`` writes the images with these settings in their PNG metadata.

        Example:
            >>> sd = StableDiffusion.from_preset("tiny")
            >>> sd.text_to_image(["a red circle", "a blue square"], num_steps=2, height=64, width=64).shape
            (2, 64, 64, 3)
        """
        batch_size = _batch_size(batch_size, prompt, negative_prompt)
        encoded = self.encode_text(prompt)
        images = self.generate_image(encoded, negative_prompt, batch_size, num_steps, unconditional_guidance_scale,
                                     seed=seed, sampler=sampler, height=height, width=width, progress=progress)
        self.last_generation["prompt"] = prompt
        return images

    # -- image conditioning ----------------------------------------------------------------------------------
    @property
    def latent_channels(self):
        return int(self.diffusion_model.output.shape[-1])

    @property
    def unet_in_channels(self):
        return int(self.diffusion_model.input["latent"].shape[-1])

    def _image_latent(self, image, height, width, batch_size, name="image"):
        if self._encode_image is None:
            raise ValueError("this model has no image encoder (VAE encoder); image_to_image and inpaint need one")
        pixels = load_image(image, height, width, name=name)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, -1)
        pixels = pixels[..., :3] / 127.5 - 1.0
        latent = self._encode_image(pixels[None].astype(np.float32))
        return np.repeat(np.asarray(latent, np.float32), batch_size, axis=0)

    def _prepare_image_call(self, prompt, image, negative_prompt, batch_size, num_steps, guidance, sampler, height,
                            width):
        batch_size = _batch_size(batch_size, prompt, negative_prompt)
        scheduler, height, width = self._resolve(num_steps, guidance, sampler, height, width, batch_size)
        context, unconditional = self._contexts(self.encode_text(prompt), negative_prompt, batch_size)
        return scheduler, height, width, context, unconditional, batch_size

    def image_to_image(self, prompt, image, strength=0.75, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=7.5, seed=None, *, sampler=DEFAULT_SAMPLER, height=None, width=None,
                       progress=None):
        """Encode ``image``, noise it to the step that ``strength`` selects and denoise the remaining steps.

        ``strength`` 0 returns the (re-decoded) input, 1 ignores it entirely. ``prompt`` and ``batch_size`` as
        in ``text_to_image``.
        """
        check_strength(strength)
        scheduler, height, width, context, unconditional, batch_size = self._prepare_image_call(
            prompt, image, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
            width)
        original = self._image_latent(image, height, width, batch_size)
        initial, step_noise = self._noise(seed, batch_size, original.shape[1:], scheduler)
        self._record(prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
                     width, self.last_seed, strength=float(strength))
        start = scheduler.start_index(float(strength))
        latent = np.asarray(scheduler.add_noise(original, initial, start), np.float32)
        if start >= scheduler.num_steps:
            return self._decode_latent(original)
        latent = self._loop(scheduler, context, unconditional, latent, step_noise,
                            guidance_scale=unconditional_guidance_scale, start_index=start, progress=progress)
        return self._decode_latent(latent)

    def inpaint(self, prompt, image, mask, negative_prompt=None, batch_size=None, num_steps=50,
                unconditional_guidance_scale=7.5, seed=None, *, strength=1.0, sampler=DEFAULT_SAMPLER, height=None,
                width=None, progress=None):
        """Repaint the region where ``mask`` is white (>= 0.5 after scaling to [0, 1]); keep the rest.

        A 9-channel inpainting UNet gets the mask and the masked image's latent as extra inputs; a plain UNet
        re-blends the known region from the noised original after every step. ``prompt`` and ``batch_size`` as
        in ``text_to_image``.
        """
        check_strength(strength)
        scheduler, height, width, context, unconditional, batch_size = self._prepare_image_call(
            prompt, image, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
            width)
        pixels = load_image(image, height, width)
        mask_pixels = load_image(mask, name="mask")
        if mask_pixels.shape[:2] != pixels.shape[:2]:
            raise ValueError(f"mask size {mask_pixels.shape[1]}x{mask_pixels.shape[0]} differs from the image size "
                             f"{pixels.shape[1]}x{pixels.shape[0]}")
        mask_gray = mask_pixels if mask_pixels.ndim == 2 else mask_pixels[..., :3].mean(-1)
        mask_gray = (mask_gray / (255.0 if mask_gray.max() > 1.0 else 1.0) >= 0.5).astype(np.float32)
        original = self._image_latent(pixels, height, width, batch_size)
        h, w = original.shape[1:3]
        latent_mask = mask_gray.reshape(h, 8, w, 8).max(axis=(1, 3))[None, :, :, None]
        latent_mask = np.repeat(latent_mask, batch_size, axis=0).astype(np.float32)
        initial, step_noise = self._noise(seed, batch_size, original.shape[1:], scheduler)
        self._record(prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
                     width, self.last_seed, strength=float(strength))
        if self.unet_in_channels == self.latent_channels + 5:
            masked_pixels = pixels * (1.0 - mask_gray[..., None])
            masked_latent = self._image_latent(masked_pixels, height, width, batch_size)
            start = scheduler.start_index(float(strength))
            latent = (initial * np.float32(scheduler.init_noise_sigma) if start == 0
                      else np.asarray(scheduler.add_noise(original, initial, start), np.float32))
            extra = {"cond": np.concatenate([latent_mask, masked_latent], -1)}
            mode = loop_lib.CONCAT
        elif self.unet_in_channels == self.latent_channels:
            start = scheduler.start_index(float(strength))
            latent = np.asarray(scheduler.add_noise(original, initial, start), np.float32)
            extra = {"original": original, "noise": initial, "mask": latent_mask}
            mode = loop_lib.BLEND
        else:
            raise ValueError(f"cannot inpaint with a UNet of {self.unet_in_channels} input channels")
        if start >= scheduler.num_steps:
            return self._decode_latent(original)
        latent = self._loop(scheduler, context, unconditional, latent, step_noise,
                            guidance_scale=unconditional_guidance_scale, start_index=start, mode=mode, extra=extra,
                            progress=progress)
        return self._decode_latent(latent)

    # -- output ----------------------------------------------------------------------------------------------
    def generation_parameters(self, index=0):
        """The AUTOMATIC1111 ``parameters`` text of image ``index`` of the last generation (its own seed and
        prompt), as ``save`` writes it into the PNG and ``sd-keras info`` prints it."""
        from sd_keras import metadata

        last = getattr(self, "last_generation", None)
        if last is None:
            raise ValueError("no generation yet: call text_to_image, generate_image, image_to_image or inpaint "
                             "first")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < last["batch_size"]:
            raise ValueError(f"index must be in [0, {last['batch_size']}), got {index!r}")

        def item(value):
            return value[index] if isinstance(value, (list, tuple)) and len(value) > 1 else (
                value[0] if isinstance(value, (list, tuple)) else value)

        settings = {"Steps": last["num_steps"], "Sampler": last["sampler"], "CFG scale": last["guidance_scale"],
                    "Seed": None if last["seed"] is None else last["seed"] + index,
                    "Size": f"{last['width']}x{last['height']}", "Model": self.config.name}
        if "strength" in last:
            settings["Denoising strength"] = last["strength"]
        return metadata.format_parameters(item(last["prompt"]), item(last["negative_prompt"]), **settings)

    def save(self, images, path_pattern):
        """Write the images of the last generation as PNGs carrying AUTOMATIC1111's ``parameters`` chunk.

        ``path_pattern``: ``%d`` is replaced by the image index (``"out_%d.png"``); without it, one image goes to
        the path itself and several to ``<stem>_<index>.png``. Each PNG records its prompt, negative prompt,
        steps, sampler, CFG scale, its own seed (``seed + index``), size and model (``sd-keras info`` prints it;
        A1111's PNG Info reads it). Folders are created; each file is written atomically. Returns the paths.

        Example::

            images = sd.text_to_image("a red circle", batch_size=2, num_steps=20, seed=5)
            sd.save(images, "circle_%d.png")  # circle_0.png (Seed: 5), circle_1.png (Seed: 6)
        """
        from sd_keras import metadata
        from sd_keras.images import output_paths

        last = getattr(self, "last_generation", None)
        if last is None:
            raise ValueError("no generation to describe: save() writes the images of the last text_to_image, "
                             "generate_image, image_to_image or inpaint call")
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, 3) as the generation returned them, got "
                             f"{images.dtype} {images.shape}")
        if len(images) != last["batch_size"] or images.shape[1:3] != (last["height"], last["width"]):
            raise ValueError(f"got {len(images)} image(s) of {images.shape[2]}x{images.shape[1]}, but the last "
                             f"generation made {last['batch_size']} of {last['width']}x{last['height']}: save the "
                             "images right after the call that made them")
        paths = output_paths(path_pattern, len(images))
        for index, (image, path) in enumerate(zip(images, paths)):
            metadata.save_png(image, path, self.generation_parameters(index))
        return paths


def _prompt_list(prompt, name="prompt"):
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(item, str) for item in prompt):
        return list(prompt)
    shown = repr(prompt) if len(repr(prompt)) <= 80 else repr(prompt)[:77] + "..."
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {shown}")


def _batch_size(batch_size, prompt, negative_prompt):
    """``batch_size``, or the length of the prompt list (or negative prompt list) when it is None.

    A list of several prompts must match ``batch_size``; a string or a one-item list is repeated.
    """
    counts = [(name, len(value)) for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt))
              if isinstance(value, (list, tuple)) and len(value) > 1]
    if len({count for _, count in counts}) > 1:
        raise ValueError(f"{counts[0][1]} prompts but {counts[1][1]} negative prompts; give as many of each "
                         "(or one negative prompt for all)")
    if not counts:
        return 1 if batch_size is None else batch_size
    name, count = counts[0]
    if batch_size is not None and batch_size != count:
        raise ValueError(f"{name} is a list of {count} but batch_size={batch_size!r}; leave batch_size out "
                         f"(it is the list's length) or pass batch_size={count}")
    return count


def _encoded_batch(encoded_text):
    shape = np.shape(encoded_text)
    return int(shape[0]) if len(shape) == 3 else 1


class StableDiffusionV2(StableDiffusion):
    """KerasCV's ``StableDiffusionV2(img_height=512, img_width=512, jit_compile=True)``: the ``sd-v2`` preset
    (SD 2.1-base shapes, KerasCV's published weights). Every other method is ``StableDiffusion``'s."""

    KERAS_CV_PRESET = "sd-v2"


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _keras_cv_side(name, value):
    """KerasCV rounds the image size to the nearest multiple of 128; so does its constructor form here."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    rounded = int(round(value / 128) * 128)
    if not 128 <= rounded <= MAX_SIDE:
        raise ValueError(f"{name}={value} rounds to {rounded} (KerasCV rounds to a multiple of 128); "
                         f"it must be in [128, {MAX_SIDE}]")
    return rounded
