"""``StableDiffusionXL``: SDXL base, refiner and inpainting models on the generation API of ``Generator``.

The Keras engine for the ``sdxl`` / ``sdxl-refiner`` families (``sd_keras.models.sdxl``): the generation steps
(argument checks, seeds, image and mask preparation, decode, A1111 metadata) are ``sd_keras.generator``'s, and the
denoising runs in the same compiled loop as SD 1.x (``sd_keras.loop``: one program per shape, weights as
arguments), which takes SDXL's added conditioning (the pooled text embeddings and the micro-conditioning
``time_ids``) as arguments like the contexts.

What SDXL adds, with diffusers' names and defaults:

- **Two text encoders**: the prompt is tokenized once (padded with the first encoder's pad id) and each encoder
  gets its own padding (``config.pad_token_ids``); the contexts are their penultimate hidden states concatenated,
  and the pooled embedding comes from the last encoder at the first 77-token chunk. An SDXL "encoded text"
  (``encode_text``, the input of ``generate_image``) is ``(B, 1 + 77 n, D)``: row 0 holds the pooled embedding in
  its first ``pooled_dim`` values (zeros after), rows 1... the hidden states of the ``n`` chunks.
- **Negative prompts** have their own pooled embeddings; with ``config.force_zeros_for_empty_prompt`` (the base
  model) an empty negative prompt is zero embeddings, pooled too, as diffusers does when none is given.
- **Micro-conditioning**: ``original_size`` and ``target_size`` default to the generated (height, width),
  ``crops_coords_top_left`` to (0, 0); the negative side uses the same values. The refiner conditions on
  ``aesthetic_score`` (6.0) and ``negative_aesthetic_score`` (2.5) instead of ``target_size``.
- **Refiner hand-off**: ``text_to_image(..., denoising_end=0.8, return_latent=True)`` stops the base model at
  that fraction of the noise schedule (the steps whose timestep is at or above ``round(1000 (1 - 0.8))``) and
  returns the latent; ``refiner.image_to_image(prompt, latent, denoising_start=0.8)`` continues with the same
  sampler and step count from there, without re-noising (diffusers' ``denoising_end`` / ``denoising_start``).

Example:
    >>> from sd_keras.pipeline_sdxl import StableDiffusionXL
    >>> xl = StableDiffusionXL.from_preset("tiny-xl")
    >>> images = xl.text_to_image("a red circle", num_steps=2, seed=1, height=64, width=64)
    >>> images.shape, xl.last_seed
    ((1, 64, 64, 3), 1)
"""

import dataclasses

import numpy as np

from sd_keras.config_sdxl import SDXL_PRESETS, SDXLConfig
from sd_keras.errors import InputError
from sd_keras.generator import TXT2IMG, KerasGenerator, _repeat_to, batch_size_for, pack, prompt_list, unpack
from sd_keras.tokenizer import END_OF_TEXT_ID

CLIP_VOCAB_SIZE = 49408
TINY_PRESETS = ("tiny-xl", "tiny-xl-refiner", "tiny-xl-inpainting")


def _check_fraction(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            0.0 < float(value) < 1.0):
        raise InputError(f"{name} must be a number strictly between 0 and 1 (a fraction of the noise schedule), "
                         f"got {value!r}")
    return float(value)


def _check_pair(value, name):
    if value is None:
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(np.isfinite(pair)):
        raise InputError(f"{name} must be a pair of numbers (height, width) or (top, left), got {value!r}")
    return pair


def _check_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(
            value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def timestep_cutoff(fraction, num_train_timesteps=1000):
    """diffusers' ``discrete_timestep_cutoff`` of ``denoising_end`` / ``denoising_start``: the base model runs
    the steps whose timestep is at or above it, the refiner those below it.

    Example:
        >>> timestep_cutoff(0.8)
        200
    """
    return int(round(num_train_timesteps - fraction * num_train_timesteps))


def split_index(scheduler, fraction):
    """The step at which ``fraction`` of the schedule is done: how many of ``scheduler``'s timesteps lie at or
    above ``timestep_cutoff(fraction)`` (where the base model stops and the refiner starts)."""
    cutoff = timestep_cutoff(fraction, scheduler.schedule.num_train_timesteps)
    return int(np.sum(np.asarray(scheduler.timesteps) >= cutoff))


def tiny_xl_config(name="tiny-xl"):
    """The ``tiny-xl`` / ``tiny-xl-refiner`` / ``tiny-xl-inpainting`` configs: ``models.sdxl.tiny_sdxl_config``'s
    shapes with CLIP's full vocabulary, so that real prompts tokenize into them (random weights, for tests)."""
    from sd_keras.models.sdxl import tiny_sdxl_config

    if name not in TINY_PRESETS:
        raise InputError(f"unknown tiny SDXL preset {name!r}; known: {', '.join(TINY_PRESETS)}")
    config = tiny_sdxl_config(refiner=name.endswith("refiner"), inpainting=name.endswith("inpainting"))

    def full(encoder):
        return None if encoder is None else dataclasses.replace(encoder, vocab_size=CLIP_VOCAB_SIZE)

    return dataclasses.replace(config, name=name, text_encoder=full(config.text_encoder),
                               text_encoder_2=full(config.text_encoder_2))


def preset_names():
    """SDXL preset names ``from_preset`` knows: the published models and the random tiny ones."""
    return list(SDXL_PRESETS) + list(TINY_PRESETS)


class StableDiffusionXL(KerasGenerator):
    """Text-to-image, image-to-image and inpainting with an SDXL model (base, refiner or 9-channel inpainting).

    Construct with ``from_preset("sd-xl")`` / ``from_checkpoint(path)`` / ``from_config(config)`` or from parts:
    ``StableDiffusionXL(config, text_encoder, text_encoder_2, diffusion_model, decoder, image_encoder=None)``
    (``text_encoder`` None for the refiner). The generation methods are ``Generator``'s plus SDXL's keywords
    (see the module docstring).
    """

    default_sampler = "Euler"  # diffusers' SDXL pipelines use EulerDiscreteScheduler
    nan_hint = (" (numerical overflow: the stock SDXL VAE overflows in float16; decode in float32 or load the "
                "fp16-fix VAE with vae=)")
    can_merge_lora = True  # sd_keras.weights.lora merges into both text encoders and the UNet (prompt tags)

    def __init__(self, config, text_encoder, text_encoder_2, diffusion_model, decoder, image_encoder=None,
                 tokenizer=None, *, dtype="float32"):
        from sd_keras import loop, models
        from sd_keras.tokenizer import CLIPTokenizer

        if not isinstance(config, SDXLConfig):
            raise InputError(f"config must be an SDXLConfig, got {type(config).__name__}")
        if config.unet.pooled_dim > config.context_width:
            raise InputError(f"pooled_dim {config.unet.pooled_dim} is wider than the context "
                             f"({config.context_width}): the encoded text cannot carry it")
        if (text_encoder is None) != config.is_refiner:
            raise InputError("text_encoder: the SDXL base model needs both text encoders; the refiner has only "
                             "text_encoder_2")
        self.config = config
        self.tokenizer = tokenizer or CLIPTokenizer()
        self.dtype = dtype
        policy = loop.keras_dtype_policy(dtype)
        if text_encoder is not None:
            text_encoder = models.rebuild(text_encoder, "text_encoder", config, policy)
        self.text_encoder = text_encoder
        self.text_encoder_2 = models.rebuild(text_encoder_2, "text_encoder_2", config, policy)
        self.diffusion_model = models.rebuild(diffusion_model, "diffusion_model", config, policy)
        self.decoder = decoder
        self.image_encoder = image_encoder
        self.programs = loop.ProgramCache()
        self._loop = loop.DenoisingLoop(self.diffusion_model, self.programs)
        self._encoder_fns = [loop.CompiledFunction(encoder, postprocess=_pool_first if isinstance(
            encoder.output, dict) else None, programs=self.programs)
            for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]
        self._decoder_fn = loop.CompiledFunction(decoder, programs=self.programs)
        self._image_encoder_fn = (loop.CompiledFunction(image_encoder, programs=self.programs)
                                  if image_encoder is not None else None)
        self._pooled_log = None
        self._call = {}  # the SDXL keywords of the call in progress

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def _from_weights(cls, config, weights, dtype):
        from sd_keras import loop, models

        parts = models.build_all(config, weights, dtype=loop.keras_dtype_policy(dtype))
        return cls(config, parts.get("text_encoder"), parts["text_encoder_2"], parts["diffusion_model"],
                   parts["decoder"], parts.get("image_encoder"), dtype=dtype)

    @classmethod
    def from_config(cls, config, *, seed=0, dtype="float32"):
        """Random weights for ``config`` (an ``SDXLConfig`` or an SDXL preset name, e.g. ``"sd-xl"`` shapes)."""
        from sd_keras import models
        from sd_keras.config_sdxl import get_sdxl_config

        if isinstance(config, str):
            config = tiny_xl_config(config) if config in TINY_PRESETS else get_sdxl_config(config)
        return cls._from_weights(config, models.Weights.random_weights(seed), dtype)

    @classmethod
    def from_preset(cls, name, *, dtype="float32"):
        """``"sd-xl"`` / ``"sd-xl-refiner"``: Stability's published single files (downloaded once, sha256-checked,
        cached); ``"tiny-xl"``, ``"tiny-xl-refiner"``, ``"tiny-xl-inpainting"``: small random models for tests."""
        from sd_keras import loop
        from sd_keras.weights import sdxl_presets

        loop.keras_dtype_policy(dtype)
        if name in TINY_PRESETS:
            return cls.from_config(name, dtype=dtype)
        if name not in sdxl_presets.names():
            raise InputError(f"unknown SDXL preset {name!r}; known: {', '.join(sdxl_presets.names() + list(TINY_PRESETS))}")
        return cls._from_weights(*sdxl_presets.load(name), dtype)

    @classmethod
    def from_checkpoint(cls, path, *, dtype="float32", prediction_type=None, loras=(), vae=None):
        """An SDXL diffusers folder (``text_encoder_2``, fp16 variants) or single ``.safetensors`` file; ``loras``:
        ``(path, scale)`` pairs merged while loading; ``vae``: a separate VAE (e.g. the fp16-fix one)."""
        from sd_keras import loop
        from sd_keras.weights import saved
        from sd_keras.weights.sdxl import load_sdxl_checkpoint

        loop.keras_dtype_policy(dtype)
        if saved.is_saved_folder(path):  # written by save_pretrained
            if prediction_type is not None or loras or vae is not None:
                raise InputError(f"{path}: an sd_keras saved model: prediction_type=, loras= and vae= apply to "
                                 "checkpoints (convert again to change them)")
            return cls._from_weights(*saved.load(path), dtype)
        return cls._from_weights(*load_sdxl_checkpoint(path, prediction_type=prediction_type, loras=loras,
                                                       vae=vae), dtype)

    def save_pretrained(self, folder, *, weight_dtype=None):
        """Write this model in sd_keras's own format (loadable by ``from_checkpoint`` and ``sd_keras.load``),
        atomically; ``weight_dtype="float16"`` halves the files."""
        from sd_keras.weights.saved import save_pretrained

        return save_pretrained(self, folder, weight_dtype=weight_dtype)

    # -- the engine's primitives -----------------------------------------------------------------------------
    @property
    def pooled_dim(self):
        return int(self.config.unet.pooled_dim)

    def tokenize(self, prompts):
        """(B, 77) int32 token ids padded with the first encoder's pad id (each encoder re-pads its copy)."""
        return self.tokenizer.tokenize(prompts, pad_token_id=self.config.pad_token_ids[0])

    def _encoder_ids(self, ids):
        """``ids`` re-padded for each encoder: after the first end-of-text token, its ``pad_token_ids`` entry."""
        ids = np.asarray(ids, np.int32)
        is_end = ids == END_OF_TEXT_ID
        after_end = (np.cumsum(is_end, axis=1) - is_end) > 0
        return [np.where(after_end, np.int32(pad), ids).astype(np.int32) for pad in self.config.pad_token_ids]

    def _encode_tokens(self, ids):
        """(B, 77) ids → the encoders' penultimate hidden states concatenated (B, 77, D); the pooled embedding of
        the call is kept for ``_contexts``."""
        positions = np.repeat(np.arange(ids.shape[1], dtype=np.int32)[None], ids.shape[0], axis=0)
        hidden, pooled = [], None
        for encoder_fn, encoder_ids in zip(self._encoder_fns, self._encoder_ids(ids)):
            out = encoder_fn({"tokens": encoder_ids, "positions": positions})
            out = np.asarray(out, np.float32)
            if out.shape[1] == ids.shape[1] + 1:  # the encoder with the projection: pooled, then hidden states
                hidden.append(out[:, 1:])
                pooled = out[:, 0, :self.pooled_dim]
            else:
                hidden.append(out)
        if self._pooled_log is not None:
            self._pooled_log.append(pooled)
        return np.concatenate(hidden, axis=-1)

    def _packed(self, prompts, negative):
        """Encoded text ``(B, 1 + 77 n, D)`` of a list of prompts: row 0 the pooled embedding, then hidden states."""
        zeros = self.config.context_width if self.config.force_zeros_for_empty_prompt else None
        return self._pooled_contexts(prompts, negative, zeros)

    def _contexts(self, prompts, negative_prompts):
        context = self._packed(prompts, False) if prompts is not None else None
        unconditional = self._packed(negative_prompts, True) if negative_prompts is not None else None
        return context, unconditional

    def _time_ids(self, batch, height, width):
        """``(time_ids, uncond_time_ids)`` (B, num_time_ids) float32 from the call's micro-conditioning."""
        call = self._call
        original = call.get("original_size") or (height, width)
        crops = call.get("crops_coords_top_left") or (0.0, 0.0)
        if self.config.unet.num_time_ids == 5:  # refiner: aesthetic score instead of the target size
            positive = list(original) + list(crops) + [call.get("aesthetic_score", 6.0)]
            negative = list(original) + list(crops) + [call.get("negative_aesthetic_score", 2.5)]
        else:
            target = call.get("target_size") or (height, width)
            positive = negative = list(original) + list(crops) + list(target)
        if len(positive) != self.config.unet.num_time_ids:
            raise InputError(f"this UNet takes {self.config.unet.num_time_ids} time ids, not {len(positive)}")
        return (np.tile(np.asarray(positive, np.float32), (batch, 1)),
                np.tile(np.asarray(negative, np.float32), (batch, 1)))

    def _denoise(self, scheduler, context, unconditional, latent, step_noise, *, guidance_scale, start_index=0,
                 mode=TXT2IMG, extra=None, progress=None):
        context, pooled = unpack(context, self.pooled_dim)
        unconditional, unconditional_pooled = unpack(unconditional, self.pooled_dim)
        batch, h, w = np.shape(latent)[:3]
        time_ids, uncond_time_ids = self._time_ids(batch, h * 8, w * 8)
        added = {"text_embeds": pooled, "uncond_text_embeds": unconditional_pooled, "time_ids": time_ids,
                 "uncond_time_ids": uncond_time_ids}
        stop = None
        if self._call.get("denoising_end") is not None:
            stop = max(start_index, split_index(scheduler, self._call["denoising_end"]))
        return self._loop(scheduler, context, unconditional, latent, step_noise, guidance_scale=guidance_scale,
                          start_index=start_index, mode=mode, extra=extra, progress=progress, added=added,
                          stop_index=stop)

    # -- the SDXL keywords -----------------------------------------------------------------------------------
    def _with(self, options, call):
        """Run ``call()`` with the SDXL keywords ``options`` in effect (checked first)."""
        checked = {"original_size": _check_pair(options.get("original_size"), "original_size"),
                   "target_size": _check_pair(options.get("target_size"), "target_size"),
                   "crops_coords_top_left": _check_pair(options.get("crops_coords_top_left"),
                                                        "crops_coords_top_left"),
                   "aesthetic_score": _check_number(options.get("aesthetic_score", 6.0), "aesthetic_score"),
                   "negative_aesthetic_score": _check_number(options.get("negative_aesthetic_score", 2.5),
                                                             "negative_aesthetic_score"),
                   "denoising_end": _check_fraction(options.get("denoising_end"), "denoising_end")}
        self._call = checked
        try:
            return call()
        finally:
            self._call = {}

    def _record_sdxl(self, **fields):
        if self.last_generation is not None:
            self.last_generation.setdefault("sdxl", {}).update({k: v for k, v in fields.items() if v is not None})

    def generation_parameters(self, index=0):
        """A1111 ``parameters`` text; a refiner hand-off adds A1111's ``Refiner`` / ``Refiner switch at``."""
        text = super().generation_parameters(index)
        extra = (self.last_generation or {}).get("sdxl", {})
        fields = []
        if "refiner" in extra:
            fields.append(f"Refiner: {extra['refiner']}")
        if "denoising_end" in extra:
            fields.append(f"Refiner switch at: {extra['denoising_end']}")
        return text + "".join(", " + field for field in fields)

    def text_to_image(self, prompt, negative_prompt=None, batch_size=None, num_steps=50,
                      unconditional_guidance_scale=5.0, seed=None, *, sampler=None, height=None, width=None,
                      progress=None, hires=None, denoising_end=None, return_latent=False, original_size=None,
                      crops_coords_top_left=None, target_size=None):
        """``Generator.text_to_image`` with SDXL's keywords; ``denoising_end`` (0..1) stops early and, with
        ``return_latent=True``, returns the latent (B, h, w, 4) for a refiner's ``image_to_image(...,
        denoising_start=)``."""
        options = dict(denoising_end=denoising_end, original_size=original_size,
                       crops_coords_top_left=crops_coords_top_left, target_size=target_size)
        if hires is not None:
            if denoising_end is not None or return_latent:
                raise InputError("hires: cannot be combined with denoising_end / return_latent")
            return self._with(options, lambda: super(StableDiffusionXL, self).text_to_image(
                prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, seed, sampler=sampler,
                height=height, width=width, progress=progress, hires=hires))

        def run():
            size = batch_size_for(batch_size, prompt, negative_prompt)
            prompts = _repeat_to(prompt_list(prompt), size, "prompt")
            self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width, size, seed)
            context, _ = self._contexts(prompts, None)
            result = self.generate_image(context, negative_prompt, size, num_steps, unconditional_guidance_scale,
                                         seed=seed, sampler=sampler, height=height, width=width, progress=progress,
                                         return_latent=return_latent)
            self.last_generation["prompt"] = prompt
            self._record_sdxl(denoising_end=self._call["denoising_end"])
            return result

        return self._with(options, run)

    def generate_image(self, encoded_text, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=5.0, diffusion_noise=None, seed=None, *, sampler=None,
                       height=None, width=None, progress=None, return_latent=False, **sdxl):
        """``Generator.generate_image`` for SDXL encoded text (``encode_text``: row 0 pooled, then hidden states);
        ``sdxl``: the keywords of ``text_to_image``."""
        encoded = np.asarray(encoded_text, np.float32)
        if encoded.ndim not in (2, 3) or (encoded.shape[-2] - 1) % 77 or encoded.shape[-1] != self.config.context_width:
            raise InputError(f"encoded_text must be SDXL encoded text (B, 1 + 77 n, {self.config.context_width}) "
                             f"as encode_text returns it, got shape {encoded.shape}")
        call = super(StableDiffusionXL, self).generate_image
        args = (encoded, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, diffusion_noise, seed)
        kwargs = dict(sampler=sampler, height=height, width=width, progress=progress, return_latent=return_latent)
        if self._call:  # inside text_to_image: its keywords are in effect
            return call(*args, **kwargs)
        return self._with(sdxl, lambda: call(*args, **kwargs))

    def image_to_image(self, prompt, image, strength=0.3, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=5.0, seed=None, *, sampler=None, height=None, width=None,
                       progress=None, denoising_start=None, original_size=None, crops_coords_top_left=None,
                       target_size=None, aesthetic_score=6.0, negative_aesthetic_score=2.5):
        """``Generator.image_to_image`` with SDXL's keywords. With ``denoising_start`` (0..1), ``image`` is a latent
        (B, h, w, 4) that a base model returned with ``denoising_end`` (``return_latent=True``): it continues from
        there, unchanged (``strength`` is not used), as diffusers' refiner hand-off does."""
        options = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                       target_size=target_size, aesthetic_score=aesthetic_score,
                       negative_aesthetic_score=negative_aesthetic_score)
        start_fraction = _check_fraction(denoising_start, "denoising_start")
        if start_fraction is None and self.unet_in_channels != self.latent_channels:
            # a 9-channel inpainting UNet: image-to-image is inpainting with everything to repaint
            size = (self.config.image_size[0] if height is None else height,
                    self.config.image_size[1] if width is None else width)  # the size inpaint resizes to
            mask = np.full(size, 255, np.uint8)
            return self.inpaint(prompt, image, mask, negative_prompt, batch_size, num_steps,
                                unconditional_guidance_scale, seed, strength=strength, sampler=sampler, height=height,
                                width=width, progress=progress, original_size=original_size,
                                crops_coords_top_left=crops_coords_top_left, target_size=target_size)
        if start_fraction is None:
            return self._with(options, lambda: super(StableDiffusionXL, self).image_to_image(
                prompt, image, strength, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, seed,
                sampler=sampler, height=height, width=width, progress=progress))
        return self._with(options, lambda: self._continue(prompt, image, start_fraction, negative_prompt,
                                                          batch_size, num_steps, unconditional_guidance_scale, seed,
                                                          sampler, progress))

    def _continue(self, prompt, latent, fraction, negative_prompt, batch_size, num_steps, guidance, seed, sampler,
                  progress):
        latent = np.asarray(latent, np.float32) if not isinstance(latent, str) else np.zeros(())
        if latent.ndim != 4 or latent.shape[-1] != self.latent_channels:
            raise InputError(f"image: with denoising_start, a latent (B, h, w, {self.latent_channels}) from a "
                             f"base model's text_to_image(..., return_latent=True), got shape {latent.shape}")
        batch_size = batch_size_for(batch_size if batch_size is not None else latent.shape[0], prompt,
                                    negative_prompt)
        if latent.shape[0] != batch_size:
            raise InputError(f"image: a latent of batch {latent.shape[0]} for batch_size {batch_size}")
        height, width = latent.shape[1] * 8, latent.shape[2] * 8
        scheduler, height, width = self._resolve(num_steps, guidance, sampler, height, width, batch_size, seed)
        context, unconditional = self._batch_contexts(prompt, negative_prompt, batch_size)
        _, step_noise = self._noise(seed, batch_size, latent.shape[1:], scheduler)
        start = split_index(scheduler, fraction)
        self._record(prompt, negative_prompt, batch_size, num_steps, guidance, sampler, height, width,
                     self.last_seed)
        self._record_sdxl(denoising_start=fraction)
        if start >= scheduler.num_steps:
            return self.decode(latent)
        latent = self._denoise(scheduler, context, unconditional, latent, step_noise, guidance_scale=guidance,
                               start_index=start, progress=progress)
        return self.decode(latent)

    def inpaint(self, prompt, image, mask, negative_prompt=None, batch_size=None, num_steps=50,
                unconditional_guidance_scale=5.0, seed=None, *, strength=1.0, sampler=None, height=None,
                width=None, progress=None, original_size=None, crops_coords_top_left=None, target_size=None):
        """``Generator.inpaint`` with SDXL's keywords (a 9-channel SDXL inpainting UNet or a plain one)."""
        options = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                       target_size=target_size)
        return self._with(options, lambda: super(StableDiffusionXL, self).inpaint(
            prompt, image, mask, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, seed,
            strength=strength, sampler=sampler, height=height, width=width, progress=progress))


def _pool_first(outputs):
    """In the encoder's program: its pooled output as a first row (zero-padded to the width) above its hidden
    states, one array (B, 1 + L, width)."""
    from keras import ops

    hidden, pooled = outputs["hidden_states"], outputs["pooled"]
    width, size = int(hidden.shape[-1]), int(pooled.shape[-1])
    if size > width:
        raise InputError(f"text_encoder_2: pooled width {size} is above its width {width}")
    row = ops.pad(ops.cast(pooled, hidden.dtype), [[0, 0], [0, width - size]])[:, None, :]
    return ops.concatenate([row, hidden], axis=1)


__all__ = ["StableDiffusionXL", "pack", "unpack", "preset_names", "split_index", "timestep_cutoff",
           "tiny_xl_config"]
