"""``Generator``: the generation API written once, over two engines.

The base owns every step of a generation that is not running a network: argument checks (size, steps,
guidance, strength, batch size, prompt lists, seeds), prompt → contexts (tokenize, encode, the unconditional
context of classifier-free guidance), seeds → host noise (``sd_keras.noise``: image ``i`` of a batch with seed
``s`` uses ``s + i``), image and mask preparation for image-to-image and inpainting, the NaN check and uint8
conversion of decoded images, and the results (``last_seed``, ``last_truncated``, ``last_generation``, ``save``).

An engine supplies the networks as four primitives, and its facts:

=================================  ==========================================================================
``_encode_tokens(ids)``            (B, 77) int32 token ids → (B, 77, D) float32 text-encoder output
``_denoise(scheduler, context,     the sampling loop from ``start_index`` to the end → final latent
unconditional, latent,             (B, h, w, c) float32; ``mode`` is ``TXT2IMG`` (also image-to-image),
step_noise, *, guidance_scale,     ``BLEND`` (plain-UNet inpainting: ``extra`` holds ``original``, ``noise``,
start_index, mode, extra,          ``mask``) or ``CONCAT`` (9-channel inpainting UNet: ``extra["cond"]``)
progress)``
``_decode(latent)``                latents (B, h, w, c) → decoder output (B, H, W, 3) in [-1, 1]
``_encode_image(pixels)``          (1, H, W, 3) in [-1, 1] → latent (1, h, w, c)
``config``, ``tokenizer``,         the model's ``ModelConfig`` (or the bundle's plain config), its CLIP
``image_encoder``                  tokenizer, and None when there is no VAE encoder
``latent_channels``,               channels of the latent, and of the UNet's input (latent + 5 for an
``unet_in_channels``               inpainting UNet)
=================================  ==========================================================================

Two engines exist: ``StableDiffusion`` (``sd_keras.pipeline``: Keras models, the compiled loop of
``sd_keras.loop``) and ``BundleRunner`` (``sd_keras.export.runner``: LiteRT interpreters and a numpy loop). This
module imports no Keras, so the bundle runner runs without it. ``KerasGenerator`` holds the primitives that the
Keras engines (``StableDiffusion``, ``sd_keras.pipeline_sdxl.StableDiffusionXL``) share.

Two steps are single methods so that features can replace them in one place: ``_contexts`` (the only step that
reads prompt text: a prompt syntax with weights or prompts longer than 77 tokens overrides it) and
``decode`` / ``_encode_image`` (the only ways between pixels and latents: a tiled VAE or a second, upscaling pass
goes there).

Example:
    >>> from sd_keras.pipeline import StableDiffusion
    >>> sd = StableDiffusion.from_preset("tiny")
    >>> isinstance(sd, Generator)
    True
    >>> images = sd.text_to_image("a red circle", batch_size=2, num_steps=2, seed=7, height=64, width=64)
    >>> sd.last_seed, images.shape
    (7, (2, 64, 64, 3))
"""

import math
import warnings

import numpy as np

from sd_keras import noise as noise_lib
from sd_keras import prompts as prompts_lib
from sd_keras.errors import InputError

# how the loop conditions on an image (the modes of ``Generator._denoise``)
TXT2IMG, BLEND, CONCAT = "txt2img", "blend", "concat"

MAX_STEPS = 1000
MAX_SIDE = 4096


# -- argument checks -------------------------------------------------------------------------------------------
def _nearest_multiples(value, base=64):
    low = max(base, (value // base) * base)
    high = low + base if low < value else low
    return sorted({low, high})


def check_size(height, width):
    """InputError unless both sides are multiples of 64 in [64, 4096] (the UNet downsamples the latent by 8).

    Example:
        >>> check_size(100, 64)
        Traceback (most recent call last):
        ...
        sd_keras.errors.InputError: height=100 is not a multiple of 64 in [64, 4096]; nearest valid: 64 or 128
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer multiple of 64, got {value!r}")
        if value < 64 or value % 64 or value > MAX_SIDE:
            options = " or ".join(str(v) for v in _nearest_multiples(max(int(value), 1)))
            raise InputError(f"{name}={value} is not a multiple of 64 in [64, {MAX_SIDE}]; nearest valid: {options}")


def check_steps(num_steps):
    """InputError unless ``num_steps`` is an integer in [1, 1000]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise InputError(f"num_steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= MAX_STEPS:
        raise InputError(f"num_steps must be in [1, {MAX_STEPS}], got {num_steps}")


def check_guidance(scale):
    """InputError unless the classifier-free guidance scale is a finite number >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise InputError(f"unconditional_guidance_scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale < 0:
        raise InputError(f"unconditional_guidance_scale must be finite and >= 0, got {scale}")


def check_strength(strength):
    """InputError unless ``strength`` is a number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(strength) <= 1.0
    ):
        raise InputError(f"strength must be a number in [0, 1], got {strength!r}")


def check_batch_size(batch_size):
    """InputError unless ``batch_size`` is an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def check_seed(seed):
    """InputError unless ``seed`` is an integer or None (-1 and None: draw a random seed)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise InputError(f"seed must be an integer (None or -1: a random seed), got {seed!r}")


def prompt_list(prompt, name="prompt"):
    """``prompt`` as a non-empty list of strings; InputError naming ``name`` otherwise."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(item, str) for item in prompt):
        return list(prompt)
    shown = repr(prompt) if len(repr(prompt)) <= 80 else repr(prompt)[:77] + "..."
    raise InputError(f"{name} must be a string or a non-empty list of strings, got {shown}")


def batch_size_for(batch_size, prompt, negative_prompt):
    """``batch_size``, or the length of the prompt list (or negative prompt list) when it is None.

    A list of several prompts must match ``batch_size``; a string or a one-item list is repeated.

    Example:
        >>> batch_size_for(None, ["a cat", "a dog"], None)
        2
    """
    counts = [(name, len(value)) for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt))
              if isinstance(value, (list, tuple)) and len(value) > 1]
    if len({count for _, count in counts}) > 1:
        raise InputError(f"{counts[0][1]} prompts but {counts[1][1]} negative prompts; give as many of each "
                         "(or one negative prompt for all)")
    if not counts:
        batch_size = 1 if batch_size is None else batch_size
        check_batch_size(batch_size)
        return batch_size
    name, count = counts[0]
    if batch_size is not None and batch_size != count:
        raise InputError(f"{name} is a list of {count} but batch_size={batch_size!r}; leave batch_size out "
                         f"(it is the list's length) or pass batch_size={count}")
    return count


def _repeat_to(values, batch_size, name):
    """A list of one item repeated to ``batch_size``; a list of ``batch_size`` as it is; InputError otherwise."""
    if len(values) == 1:
        return values * batch_size
    if len(values) != batch_size:
        raise InputError(f"{name} has {len(values)} entries for batch_size {batch_size}")
    return values


class AboveNativeSizeWarning(UserWarning):
    """Text-to-image above the model's native size without hires fix (objects tend to repeat)."""


def native_size_note(config, height, width):
    """A sentence when ``height`` x ``width`` is above the model's native size (``config.image_size``), saying that
    size and suggesting hires fix; None otherwise.

    Example:
        >>> from sd_keras.config import get_config
        >>> native_size_note(get_config("shapes"), 512, 512)[:59]
        '512x512 is above 128x128, the native size of model shapes: '
    """
    native_height, native_width = config.image_size
    if height <= native_height and width <= native_width:
        return None
    return (f"{width}x{height} is above {native_width}x{native_height}, the native size of model {config.name}: "
            f"objects tend to repeat; use hires fix (generate at {native_width}x{native_height} and upscale: "
            "hires=HiresFix(...), --hires-scale, enable_hr)")


# -- images ----------------------------------------------------------------------------------------------------
def to_uint8(images):
    """Decoder output in [-1, 1] → uint8 (B, H, W, 3), KerasCV's conversion (``((x + 1) / 2) * 255``, clipped,
    truncated).

    Example:
        >>> to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])).tolist()
        [0, 127, 255, 255]
    """
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
        # an error naming the file when unreadable or over PIL's pixel limit (checked before decoding)
        try:
            with open_image(image, f"{name} {str(image)!r}") as opened:
                image = opened.convert("RGB")
        except InputError:
            raise
        except ValueError as error:
            raise InputError(str(error)) from None
    if isinstance(image, Image.Image):
        if height and width and image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        image = np.asarray(image)
    if image is None:
        raise InputError(f"{name} is missing: give a path, a PIL image or an array")
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise InputError(f"{name} must be an (H, W, C) or (H, W) image, got {array.dtype} of shape {array.shape}")
    if height and width and array.shape[:2] != (height, width):
        mode_image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        array = np.asarray(mode_image.resize((width, height), Image.LANCZOS))
    return array.astype(np.float32)


def _to_rgb_unit(pixels):
    """float32 (H, W[, C]) in [0, 255] → (1, H, W, 3) in [-1, 1], the image encoder's input."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, -1)
    return (pixels[..., :3] / 127.5 - 1.0)[None].astype(np.float32)


class Generator:
    """Text-to-image, image-to-image and inpainting over an engine's networks (see the module docstring).

    Public surface (KerasCV's names, new options keyword-only): ``text_to_image``, ``encode_text``,
    ``generate_image``, ``image_to_image``, ``inpaint``, ``tokenize``, ``decode``, ``save``,
    ``generation_parameters``; after a call ``last_seed`` (the seed of image 0, drawn when None or -1 was given),
    ``last_truncated`` (a prompt was cut at 77 tokens) and ``last_generation`` (its settings).
    """

    # the sampler when none is named: KerasCV 0.9's generate_image schedule, so that KerasCV code ported to
    # sd_keras gives KerasCV's images (a bundle uses its manifest's ``default_sampler``)
    default_sampler = "DDIM KerasCV"
    # the training noise schedule (None: SD 1.x/2.x's, with ``config.prediction_type``)
    schedule = None
    # compiled programs of the engine (a ``sd_keras.loop.ProgramCache``), None when it compiles nothing
    programs = None
    # a sentence added to the NaN error: what to try
    nan_hint = ""
    # how prompt text is read: None (plain text, cut at 75 tokens: KerasCV's reading) or "a1111" (AUTOMATIC1111's
    # emphasis, BREAK, <lora:...> and long prompts in 75-token chunks; ``sd_keras.prompts``)
    prompt_syntax = None
    # the folder whose files <lora:name:weight> tags name (with ``prompt_syntax="a1111"``)
    lora_dir = None
    # whether the engine merges LoRA weights (the Keras engine does; an exported bundle cannot)
    can_merge_lora = False
    # the VAE in tiles (``sd_keras.tiled_vae``): True, False, or None (automatic: above 1024x1024 pixels)
    tiled_vae = None
    last_seed = None
    last_truncated = False
    last_generation = None

    # -- engine primitives -----------------------------------------------------------------------------------
    def _encode_tokens(self, ids):
        raise NotImplementedError

    def _denoise(self, scheduler, context, unconditional, latent, step_noise, *, guidance_scale, start_index=0,
                 mode=TXT2IMG, extra=None, progress=None):
        raise NotImplementedError

    def _decode(self, latent):
        raise NotImplementedError

    def _encode_image(self, pixels):
        raise NotImplementedError

    @property
    def latent_channels(self):
        raise NotImplementedError

    @property
    def unet_in_channels(self):
        raise NotImplementedError

    # -- checks an engine may extend ---------------------------------------------------------------------------
    def _check_size(self, height, width):
        check_size(height, width)

    def _inpaint_mode(self):
        """The loop mode inpainting uses with this UNet: ``CONCAT`` (9-channel) or ``BLEND`` (plain)."""
        if self.unet_in_channels == self.latent_channels + 5:
            return CONCAT
        if self.unet_in_channels == self.latent_channels:
            return BLEND
        raise InputError(f"cannot inpaint with a UNet of {self.unet_in_channels} input channels")

    def _missing_image_encoder(self):
        return "this model has no image encoder (VAE encoder); image_to_image and inpaint need one"

    # -- text ------------------------------------------------------------------------------------------------
    def tokenize(self, prompts):
        """(B, 77) int32 token ids, padded as KerasCV pads for this model's version."""
        return self.tokenizer.tokenize(prompts, pad_token_id=self.config.pad_token_id)

    def _encode_prompts(self, prompts):
        """Text-encoder output for a list of prompts and whether one was truncated; a list of one prompt
        repeated is encoded once."""
        unique = prompts[:1] if len(set(prompts)) == 1 else prompts
        tokenized = self.tokenizer.tokenize_with_info(unique, pad_token_id=self.config.pad_token_id)
        context = np.asarray(self._encode_tokens(np.asarray(tokenized.ids, np.int32)), np.float32)
        if len(unique) < len(prompts):
            context = np.repeat(context, len(prompts), axis=0)
        return context, bool(tokenized.any_truncated)

    def _contexts(self, prompts, negative_prompts):
        """Prompt → contexts: ``(context, unconditional)``, the text-encoder outputs (B, 77, D) float32 of a list
        of prompts and of a list of negative prompts (``""``: unconditional), either list None to skip it.

        The one step that reads prompt text (``text_to_image``, ``encode_text``, ``generate_image``,
        ``image_to_image`` and ``inpaint`` all come here): a prompt syntax (weights, prompts longer than 77
        tokens) overrides this method. Sets ``last_truncated`` from the prompts (not the negative prompts).
        With ``prompt_syntax="a1111"`` the contexts are ``(B, n * 77, D)``: ``sd_keras.prompts.syntax_contexts``.
        """
        if prompts_lib.check_prompt_syntax(self.prompt_syntax) is not None:
            return prompts_lib.syntax_contexts(self, prompts, negative_prompts)
        context = unconditional = None
        if prompts is not None:
            context, self.last_truncated = self._encode_prompts(prompts)
        if negative_prompts is not None:
            unconditional, _ = self._encode_prompts(negative_prompts)
        return context, unconditional

    def _pooled_contexts(self, prompts, negative, zeros_width=None):
        """SDXL encoded text ``(B, 1 + L, D)`` of a list of prompts (``pack``: row 0 the pooled embedding, then the
        hidden states) through ``_contexts``, whose encoder appends each call's pooled output to
        ``self._pooled_log``. ``zeros_width``: an empty negative prompt is zero embeddings of that context width
        (``force_zeros_for_empty_prompt``); None encodes it as any prompt."""
        count = len(prompts)
        if negative and zeros_width is not None and all(p == "" for p in prompts):
            return pack(np.zeros((count, 77, zeros_width), np.float32), np.zeros((count, self.pooled_dim), np.float32))
        self._pooled_log = []
        try:
            if negative:  # the base step (prompt syntax included), not the caller's SDXL override
                _, hidden = Generator._contexts(self, None, prompts)
            else:
                hidden, _ = Generator._contexts(self, prompts, None)
            pooled = self._pooled_log[0]
        finally:
            self._pooled_log = None
        if pooled.shape[0] != count:
            pooled = np.repeat(pooled[:1], count, axis=0)
        return pack(hidden, pooled)

    def encode_text(self, prompt):
        """Text encoder output (B, 77, D) for a prompt or a list of prompts (KerasCV's ``encode_text``).

        A prompt over 77 tokens is truncated with a ``PromptTruncatedWarning``; ``last_truncated`` tells.
        """
        context, _ = self._contexts(prompt_list(prompt), None)
        return context

    def _batch_contexts(self, prompt, negative_prompt, batch_size):
        """Contexts of ``prompt`` and ``negative_prompt`` (None: ``""``), each repeated to ``batch_size``."""
        prompts = _repeat_to(prompt_list(prompt), batch_size, "prompt")
        negatives = _negative_list(negative_prompt, batch_size)
        return self._contexts(prompts, negatives)

    # -- arguments, noise, results ---------------------------------------------------------------------------
    def _resolve(self, num_steps, guidance, sampler, height, width, batch_size, seed):
        """Check the common arguments; the scheduler and the size (the model's own when None)."""
        check_seed(seed)
        check_batch_size(batch_size)
        check_steps(num_steps)
        check_guidance(guidance)
        height = self.config.image_size[0] if height is None else height
        width = self.config.image_size[1] if width is None else width
        self._check_size(height, width)
        return self._scheduler(self.default_sampler if sampler is None else sampler, num_steps), height, width

    def _scheduler(self, sampler, num_steps):
        from sd_keras.schedulers import get_sampler

        try:
            if self.schedule is None:
                return get_sampler(sampler, int(num_steps), prediction_type=self.config.prediction_type)
            return get_sampler(sampler, int(num_steps), schedule=self.schedule)
        except InputError:
            raise
        except ValueError as error:  # the sampler's name or options
            raise InputError(str(error)) from None

    def _noise(self, seed, batch_size, latent_shape, scheduler):
        """Initial latent noise (B, h, w, c) and, for ancestral samplers, per-step noise (steps, B, h, w, c);
        image ``i`` from seed ``seed + i``. Sets ``last_seed``."""
        check_seed(seed)
        seed = noise_lib.random_seed() if seed is None or seed == -1 else int(seed)
        extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
        initial, step_noise = noise_lib.latent_noise(seed, batch_size, latent_shape, extra_draws)
        self.last_seed = seed
        return initial, (step_noise if scheduler.needs_noise else None)

    def _record(self, prompt, negative_prompt, batch_size, num_steps, guidance, sampler, height, width, seed,
                **extra):
        """Remember the settings of the generation just made, for ``save`` and ``generation_parameters``."""
        self.last_generation = {"prompt": prompt, "negative_prompt": negative_prompt, "batch_size": batch_size,
                                "num_steps": int(num_steps), "guidance_scale": float(guidance),
                                "sampler": self.default_sampler if sampler is None else sampler,
                                "height": height, "width": width, "seed": seed, **extra}

    def decode(self, latent):
        """uint8 images (B, H, W, 3) from latents (B, h, w, c); FloatingPointError when the decoder gives NaN or
        inf. Decoded in tiles as ``tiled_vae`` says (``sd_keras.tiled_vae``)."""
        from sd_keras import tiled_vae

        latent = np.asarray(latent, np.float32)
        if tiled_vae.use_tiles(self.tiled_vae, latent.shape[1] * 8, latent.shape[2] * 8):
            images = tiled_vae.decode_tiled(self._decode, latent)
        else:
            images = np.asarray(self._decode(latent))
        if not np.all(np.isfinite(images)):
            raise FloatingPointError("the generated image contains NaN or inf" + self.nan_hint)
        return to_uint8(images)

    def _image_latent(self, image, height, width, batch_size, name="image"):
        """The latent of ``image`` (path, PIL image or array, resized to height x width), repeated to the batch."""
        if self.image_encoder is None:
            raise InputError(self._missing_image_encoder())
        pixels = load_image(image, height, width, name=name)
        latent = self._encode_pixels(_to_rgb_unit(pixels))
        return np.repeat(latent, batch_size, axis=0)

    def _encode_pixels(self, pixels):
        """The latent (1, h, w, c) float32 of pixels (1, H, W, 3) in [-1, 1]; encoded in tiles as ``tiled_vae``
        says (``sd_keras.tiled_vae``)."""
        from sd_keras import tiled_vae

        if tiled_vae.use_tiles(self.tiled_vae, pixels.shape[1], pixels.shape[2]):
            return tiled_vae.encode_tiled(self._encode_image, pixels)
        return np.asarray(self._encode_image(pixels), np.float32)

    @staticmethod
    def _noised(scheduler, original, initial, start):
        """``original`` noised to step ``start``'s level with the sampler's float32 tables (host numpy)."""
        if start >= scheduler.num_steps:
            return np.asarray(original, np.float32)
        tables = scheduler.tables()
        return (tables["signal_scale"][start] * np.asarray(original, np.float32)
                + tables["noise_scale"][start] * np.asarray(initial, np.float32)).astype(np.float32)

    # -- generation ------------------------------------------------------------------------------------------
    def generate_image(self, encoded_text, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=7.5, diffusion_noise=None, seed=None, *, sampler=None,
                       height=None, width=None, progress=None, return_latent=False):
        """Denoise from ``diffusion_noise`` (or seeded noise) and decode (KerasCV's ``generate_image``).

        ``batch_size`` defaults to the batch of ``encoded_text`` (a batch of one is repeated to ``batch_size``).
        ``sampler`` defaults to ``default_sampler``. ``progress(step_done)`` is called as steps finish.
        """
        if batch_size is None:
            shape = np.shape(encoded_text)
            batch_size = int(shape[0]) if len(shape) == 3 else 1
        scheduler, height, width = self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width,
                                                 batch_size, seed)
        context = np.asarray(encoded_text, np.float32)
        if context.ndim == 2:
            context = context[None]
        if context.ndim != 3:
            raise InputError(f"encoded_text must be (B, 77, D) or (77, D), got shape {context.shape}")
        if context.shape[0] == 1 and batch_size > 1:
            context = np.repeat(context, batch_size, axis=0)
        if context.shape[0] != batch_size:
            raise InputError(f"encoded_text has batch {context.shape[0]} but batch_size is {batch_size}")
        _, unconditional = self._contexts(None, _negative_list(negative_prompt, batch_size))
        if context.shape[1] != unconditional.shape[1]:  # prompt and negative prompt of different chunk counts
            empty = np.asarray(self._encode_tokens(self.tokenize("")), np.float32)
            context, unconditional = prompts_lib.match_lengths(context, unconditional, empty)
        note = native_size_note(self.config, height, width)
        if note:
            warnings.warn(note, AboveNativeSizeWarning, stacklevel=3)
        latent_shape = (height // 8, width // 8, self.latent_channels)
        initial, step_noise = self._noise(seed, batch_size, latent_shape, scheduler)
        if diffusion_noise is not None:
            initial = np.asarray(diffusion_noise, np.float32)
            if initial.shape != (batch_size,) + latent_shape:
                raise InputError(f"diffusion_noise must have shape {(batch_size,) + latent_shape}, "
                                 f"got {initial.shape}")
        latent = initial * np.float32(scheduler.init_noise_sigma)
        extra, mode = None, TXT2IMG
        if self.unet_in_channels != self.latent_channels:
            # a 9-channel inpainting UNet asked for plain text-to-image: everything is "to repaint"
            mode = CONCAT
            extra = {"cond": np.concatenate([np.ones(latent.shape[:3] + (1,), np.float32),
                                             np.zeros(latent.shape, np.float32)], -1)}
        latent = self._denoise(scheduler, context, unconditional, latent, step_noise,
                               guidance_scale=unconditional_guidance_scale, mode=mode, extra=extra,
                               progress=progress)
        self._record(None, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
                     width, None if diffusion_noise is not None else self.last_seed)
        return latent if return_latent else self.decode(latent)

    def text_to_image(self, prompt, negative_prompt=None, batch_size=None, num_steps=50,
                      unconditional_guidance_scale=7.5, seed=None, *, sampler=None, height=None, width=None,
                      progress=None, hires=None):
        """Generate uint8 images (B, H, W, 3) for ``prompt`` (KerasCV's ``text_to_image``).

        ``prompt`` is a string or a list of strings, one per image: ``batch_size`` defaults to the list's length
        (1 for a string; a string or a one-item list is repeated to ``batch_size``). The same holds for a list
        of negative prompts. Image ``i`` of a batch with seed ``s`` equals a single generation with seed
        ``s + i``; ``seed`` None or -1 draws one (``last_seed``). ``sampler`` defaults to ``default_sampler``.
        ``save(images, "out_%d.png")`` writes the images with these settings in their PNG metadata.

        Example:
            >>> from sd_keras.pipeline import StableDiffusion
            >>> sd = StableDiffusion.from_preset("tiny")
            >>> sd.text_to_image(["a red circle", "a blue square"], num_steps=2, height=64, width=64).shape
            (2, 64, 64, 3)

        ``hires``: a ``sd_keras.hires.HiresFix``: ``height`` x ``width`` is then the first pass's size and the
        images come at the hires target size (A1111's hires fix). Without it, a size above the model's native one
        warns (``AboveNativeSizeWarning``).
        """
        if hires is not None:
            run = getattr(hires, "run", None)  # sd_keras.hires builds on this module: it is not imported here
            if not callable(run):
                raise InputError(f"hires must be a sd_keras.hires.HiresFix, got {type(hires).__name__}")
            images = run(self, prompt, negative_prompt=negative_prompt, batch_size=batch_size, num_steps=num_steps,
                         unconditional_guidance_scale=unconditional_guidance_scale, seed=seed, sampler=sampler,
                         height=height, width=width, progress=progress)
            self.last_generation["prompt"] = prompt
            return images
        batch_size = batch_size_for(batch_size, prompt, negative_prompt)
        prompts = _repeat_to(prompt_list(prompt), batch_size, "prompt")
        self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width, batch_size, seed)  # first
        context, _ = self._contexts(prompts, None)
        images = self.generate_image(context, negative_prompt, batch_size, num_steps, unconditional_guidance_scale,
                                     seed=seed, sampler=sampler, height=height, width=width, progress=progress)
        self.last_generation["prompt"] = prompt
        return images

    def _prepare_image_call(self, prompt, negative_prompt, batch_size, num_steps, guidance, sampler, height, width,
                            strength, seed):
        check_strength(strength)
        batch_size = batch_size_for(batch_size, prompt, negative_prompt)
        scheduler, height, width = self._resolve(num_steps, guidance, sampler, height, width, batch_size, seed)
        if self.image_encoder is None:
            raise InputError(self._missing_image_encoder())
        context, unconditional = self._batch_contexts(prompt, negative_prompt, batch_size)
        return scheduler, height, width, context, unconditional, batch_size

    def image_to_image(self, prompt, image, strength=0.75, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=7.5, seed=None, *, sampler=None, height=None, width=None,
                       progress=None):
        """Encode ``image``, noise it to the step that ``strength`` selects and denoise the remaining steps.

        ``strength`` 0 returns the (re-decoded) input, 1 ignores it entirely. ``prompt``, ``batch_size``, seeds
        and ``sampler`` as in ``text_to_image``.
        """
        scheduler, height, width, context, unconditional, batch_size = self._prepare_image_call(
            prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height, width,
            strength, seed)
        original = self._image_latent(image, height, width, batch_size)
        initial, step_noise = self._noise(seed, batch_size, original.shape[1:], scheduler)
        self._record(prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height,
                     width, self.last_seed, strength=float(strength))
        start = scheduler.start_index(float(strength))
        if start >= scheduler.num_steps:
            return self.decode(original)
        latent = self._noised(scheduler, original, initial, start)
        latent = self._denoise(scheduler, context, unconditional, latent, step_noise,
                               guidance_scale=unconditional_guidance_scale, start_index=start, progress=progress)
        return self.decode(latent)

    def inpaint(self, prompt, image, mask, negative_prompt=None, batch_size=None, num_steps=50,
                unconditional_guidance_scale=7.5, seed=None, *, strength=1.0, sampler=None, height=None,
                width=None, progress=None):
        """Repaint the region where ``mask`` is white (>= 0.5 after scaling to [0, 1]); keep the rest.

        A 9-channel inpainting UNet gets the mask and the masked image's latent as extra inputs; a plain UNet
        re-blends the known region from the noised original after every step. ``prompt``, ``batch_size``,
        seeds and ``sampler`` as in ``text_to_image``.
        """
        mode = self._inpaint_mode()
        scheduler, height, width, context, unconditional, batch_size = self._prepare_image_call(
            prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler, height, width,
            strength, seed)
        pixels = load_image(image, height, width)
        mask_pixels = load_image(mask, name="mask")
        if mask_pixels.shape[:2] != pixels.shape[:2]:
            raise InputError(f"mask size {mask_pixels.shape[1]}x{mask_pixels.shape[0]} differs from the image size "
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
        start = scheduler.start_index(float(strength))
        if start >= scheduler.num_steps:
            return self.decode(original)
        if mode == CONCAT:
            masked_latent = self._image_latent(pixels * (1.0 - mask_gray[..., None]), height, width, batch_size)
            latent = (initial * np.float32(scheduler.init_noise_sigma) if start == 0
                      else self._noised(scheduler, original, initial, start))
            extra = {"cond": np.concatenate([latent_mask, masked_latent], -1)}
        else:
            latent = self._noised(scheduler, original, initial, start)
            extra = {"original": original, "noise": initial, "mask": latent_mask}
        latent = self._denoise(scheduler, context, unconditional, latent, step_noise,
                               guidance_scale=unconditional_guidance_scale, start_index=start, mode=mode,
                               extra=extra, progress=progress)
        return self.decode(latent)

    # -- output ----------------------------------------------------------------------------------------------
    def generation_parameters(self, index=0):
        """The AUTOMATIC1111 ``parameters`` text of image ``index`` of the last generation (its own seed and
        prompt), as ``save`` writes it into the PNG and ``sd-keras info`` prints it."""
        from sd_keras import metadata

        last = self.last_generation
        if last is None:
            raise InputError("no generation yet: call text_to_image, generate_image, image_to_image or inpaint "
                             "first")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < last["batch_size"]:
            raise InputError(f"index must be in [0, {last['batch_size']}), got {index!r}")

        def item(value):
            return value[index] if isinstance(value, (list, tuple)) and len(value) > 1 else (
                value[0] if isinstance(value, (list, tuple)) else value)

        settings = {"Steps": last["num_steps"], "Sampler": last["sampler"], "CFG scale": last["guidance_scale"],
                    "Seed": None if last["seed"] is None else last["seed"] + index,
                    "Size": f"{last['width']}x{last['height']}", "Model": self.config.name}
        if "strength" in last:
            settings["Denoising strength"] = last["strength"]
        if "hires" in last:  # A1111 writes the first pass's size and the hires fields
            first_height, first_width = last["hires"]["first_pass"]
            settings["Size"] = f"{first_width}x{first_height}"
            settings.update(last["hires"]["fields"])
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

        last = self.last_generation
        if last is None:
            raise InputError("no generation to describe: save() writes the images of the last text_to_image, "
                             "generate_image, image_to_image or inpaint call")
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(f"images must be uint8 (B, H, W, 3) as the generation returned them, got "
                             f"{images.dtype} {images.shape}")
        if len(images) != last["batch_size"] or images.shape[1:3] != (last["height"], last["width"]):
            raise InputError(f"got {len(images)} image(s) of {images.shape[2]}x{images.shape[1]}, but the last "
                             f"generation made {last['batch_size']} of {last['width']}x{last['height']}: save the "
                             "images right after the call that made them")
        paths = output_paths(path_pattern, len(images))
        for index, (image, path) in enumerate(zip(images, paths)):
            metadata.save_png(image, path, self.generation_parameters(index))
        return paths


class KerasGenerator(Generator):
    """The primitives of an engine whose networks are Keras models (``StableDiffusion``, ``StableDiffusionXL``):
    ``diffusion_model`` and the compiled ``_decoder_fn`` / ``_image_encoder_fn`` that its constructor sets."""

    @property
    def latent_channels(self):
        return int(self.diffusion_model.output.shape[-1])

    @property
    def unet_in_channels(self):
        return int(self.diffusion_model.input["latent"].shape[-1])

    def _decode(self, latent):
        return self._decoder_fn(np.asarray(latent, np.float32))

    def _encode_image(self, pixels):
        return self._image_encoder_fn(np.asarray(pixels, np.float32))


def _negative_list(negative_prompt, batch_size):
    """Negative prompts repeated to ``batch_size`` (None: the empty prompt, i.e. the unconditional context)."""
    return _repeat_to(prompt_list("" if negative_prompt is None else negative_prompt, "negative_prompt"),
                      batch_size, "negative_prompt")


def pack(hidden, pooled):
    """SDXL encoded text ``(B, 1 + L, D)`` from hidden states ``(B, L, D)`` and pooled embeddings ``(B, P)``."""
    hidden = np.asarray(hidden, np.float32)
    pooled = np.asarray(pooled, np.float32)
    row = np.zeros((hidden.shape[0], 1, hidden.shape[-1]), np.float32)
    row[:, 0, :pooled.shape[-1]] = pooled
    return np.concatenate([row, hidden], axis=1)


def unpack(encoded, pooled_dim):
    """``(hidden (B, L, D), pooled (B, pooled_dim))`` of SDXL encoded text."""
    encoded = np.asarray(encoded, np.float32)
    return encoded[:, 1:], encoded[:, 0, :pooled_dim]
