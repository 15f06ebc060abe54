"""Generate images from an exported bundle alone: LiteRT interpreters and numpy, no Keras model.

``BundleRunner`` takes exactly the steps the Android app takes, in the same order, so it is the executable
reference of the on-device loop:

1. tokenize the prompt and the negative prompt with the bundle's merges file (padding as the manifest says);
2. run the text encoder once per text (batch 1), giving the conditional and unconditional contexts;
3. draw the initial latent (and, for ancestral samplers, one latent-sized draw per step) from the portable
   seeded generator ``sd_keras.noise``; image ``i`` of a batch uses seed ``seed + i``;
4. for each step, with the sampler's float32 tables (``Sampler.tables()``) and the step formula of
   ``sd_keras/schedulers/base.py``: scale the latent, embed the timestep (``timestep_embedding`` below), run the
   UNet on the classifier-free-guidance pair ``[unconditional, conditional]`` (batch 2), combine with the
   guidance scale and update the latent;
5. decode with the VAE decoder and map [-1, 1] to uint8 as KerasCV does.

An SDXL bundle (format version 2, ``export/BUNDLE.md``) adds the second text encoder (each encoder gets its own
padding of the prompt's tokens; the second also gives the pooled embedding, zeros for an empty negative prompt
when the manifest says so) and the UNet's ``added_embedding`` (``added_embedding`` below: the pooled embedding and
the manifest's micro-conditioning values through the timestep sinusoid).

The steps that are not networks (argument checks, prompts, seeds, image preparation, results) are
``sd_keras.generator.Generator``'s, shared with the Keras pipeline; ``BundleRunner`` is its LiteRT engine and,
like the base, imports no Keras.

Example:
    >>> runner = BundleRunner("bundles/tiny-fp32")                                   # doctest: +SKIP
    >>> images = runner.text_to_image("a red circle", num_steps=4, seed=7, sampler="Euler a")  # doctest: +SKIP
    >>> images.shape                                                                   # doctest: +SKIP
    (1, 64, 64, 3)
"""

import dataclasses
import math
import os

import numpy as np

from sd_keras.errors import InputError
from sd_keras.export.bundle import read_bundle
from sd_keras.generator import TXT2IMG, Generator, to_uint8, unpack  # noqa: F401 (to_uint8: this module's name for it)


def timestep_embedding(timesteps, dim, max_period=10000):
    """float32 ``[cos, sin]`` sinusoidal embedding, the numpy twin of ``sd_keras.models.layers.timestep_embedding``.

    The exponent ``-ln(max_period) * k / half`` and the phase ``t * f_k`` are float32 products in the Keras
    order; ``exp``, ``cos`` and ``sin`` are evaluated in float64 and rounded to float32, so every value is the
    float32 nearest to the exact function of its float32 argument. float32 ``exp``/``cos``/``sin`` differ by an
    ulp between numpy, TensorFlow, JAX and the JVM (up to 6e-5 at t = 999), while this recipe is what the Kotlin
    port (``TimestepEmbedding.kt``) computes: the two are bit for bit equal (golden ``runner_rows``). Against the
    Keras layer they agree to that 6e-5.

    Example:
        >>> timestep_embedding(np.array([999.0]), 320).shape
        (1, 320)
    """
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    frequencies = np.exp(exponent.astype(np.float64)).astype(np.float32)
    phases = (np.asarray(timesteps, np.float32)[..., None] * frequencies).astype(np.float64)
    return np.concatenate([np.cos(phases), np.sin(phases)], axis=-1).astype(np.float32)


def added_embedding(pooled, time_ids, dim):
    """SDXL's ``added_embedding`` (B, P + n * dim) float32: ``pooled`` (B, P) followed by each of the ``time_ids``
    (B, n) through ``timestep_embedding`` at width ``dim`` (``[cos, sin]``, as diffusers' ``Timesteps(
    flip_sin_to_cos=True, downscale_freq_shift=0)``), in order: the input of the UNet's add-embedding MLP.

    Example:
        >>> added_embedding(np.zeros((1, 4)), np.array([[64, 64, 0, 0, 64, 64]]), 8).shape
        (1, 52)
    """
    pooled = np.asarray(pooled, np.float32)
    time_ids = np.asarray(time_ids, np.float32)
    if pooled.ndim != 2 or time_ids.ndim != 2 or pooled.shape[0] != time_ids.shape[0]:
        raise InputError(f"added_embedding: pooled (B, P) and time_ids (B, n) of one batch, got {pooled.shape} "
                         f"and {time_ids.shape}")
    embedded = timestep_embedding(time_ids.reshape(-1), dim).reshape(time_ids.shape[0], -1)
    return np.concatenate([pooled, embedded], axis=-1).astype(np.float32)


def denoise(sampler, unet, context, unconditional_context, latent, step_noise=None, *, guidance_scale,
            timestep_dim, start_index=0, progress=None, added=None, unconditional_added=None):
    """The sampling loop in numpy: ``unet(latent, timestep_embedding, context)`` is any callable on batches.

    Args:
        sampler: an ``sd_keras.schedulers`` sampler; only its ``tables()``, ``needs_noise`` and ``num_steps`` are
            read.
        unet: ``callable(latent (2B,h,w,c), timestep_embedding (2B,dim), context (2B,77,D)) -> (2B,h,w,c)``.
        context, unconditional_context: (B, 77, D) float32.
        latent: the starting latent (B, h, w, c), already scaled or noised for ``start_index``.
        step_noise: (num_steps, B, h, w, c) unit Gaussian noise for ancestral samplers.
        guidance_scale: classifier-free guidance scale.
        timestep_dim: width of the timestep embedding.
        start_index: first step to run (image-to-image starts later).
        progress: ``callable(step_done)``, called after every step.
        added, unconditional_added: SDXL's ``added_embedding`` (B, A) of the prompt and the negative prompt; with
            them ``unet`` takes a fourth argument, the (2B, A) pair in the order of the contexts.

    Returns:
        The final latent, float32 (B, h, w, c).
    """
    tables = sampler.tables()
    latent = np.asarray(latent, np.float32)
    batch = latent.shape[0]
    both_contexts = np.concatenate([unconditional_context, context], axis=0).astype(np.float32)
    extra = () if added is None else (np.concatenate([unconditional_added, added], axis=0).astype(np.float32),)
    guidance = np.float32(guidance_scale)
    previous_denoised = None
    for i in range(start_index, sampler.num_steps):
        model_input = latent * tables["model_input_scale"][i]
        embedding = np.repeat(timestep_embedding(tables["timesteps"][i:i + 1], timestep_dim), 2 * batch, axis=0)
        output = np.asarray(unet(np.concatenate([model_input, model_input], axis=0), embedding, both_contexts,
                                 *extra), np.float32)
        unconditional, conditional = output[:batch], output[batch:]
        prediction = unconditional + guidance * (conditional - unconditional)
        denoised = tables["denoise_latent"][i] * latent + tables["denoise_output"][i] * prediction
        if previous_denoised is None:  # the first step taken is first order (base.py: "previous_denoised")
            previous_denoised = denoised
        next_latent = tables["step_latent"][i] * latent + tables["step_denoised"][i] * denoised
        next_latent = next_latent + tables["step_previous_denoised"][i] * previous_denoised
        if sampler.needs_noise:
            next_latent = next_latent + tables["step_noise"][i] * np.asarray(step_noise[i], np.float32)
        latent, previous_denoised = next_latent.astype(np.float32), denoised
        if progress is not None:
            progress(i + 1)
    return latent


def open_signature(path, entry, num_threads=None):
    """``callable(**inputs) -> {output name: array}`` for a manifest entry: the signature runner of its
    ``.tflite`` file at ``path``, or, for an entry with ``parts`` (``path`` is then the bundle folder), the parts
    run in order with tensors passed on by name (``unet_parts.ChainedComponent``)."""
    if "parts" in entry:
        from sd_keras.export.unet_parts import ChainedComponent

        return ChainedComponent(path, entry["parts"], num_threads)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    signatures = interpreter.get_signature_list()
    if entry["signature"] not in signatures:
        raise InputError(f"{os.path.basename(path)}: signature {entry['signature']!r} not in the model "
                         f"(it has {', '.join(signatures)})")
    return interpreter.get_signature_runner(entry["signature"])


class _Component:
    """One component (a ``.tflite`` file or a chain of parts) behind its named signature, inputs checked
    against the manifest."""

    def __init__(self, bundle, name, num_threads):
        self.name = name
        self.entry = bundle.component(name)
        self.runner = open_signature(bundle.component_path(name), self.entry, num_threads)
        self.inputs = {spec["name"]: spec for spec in self.entry["inputs"]}
        self.output_name = self.entry["outputs"][0]["name"]

    def __call__(self, **inputs):
        """The first output (the only one of most components)."""
        return self.outputs(**inputs)[self.output_name]

    def outputs(self, **inputs):
        """Every output, by name."""
        feed = {}
        for name, spec in self.inputs.items():
            value = np.asarray(inputs[name], dtype=spec["dtype"])
            if list(value.shape) != list(spec["shape"]):
                raise InputError(f"{self.name}: input {name!r} must have shape {tuple(spec['shape'])} "
                                 f"(fixed at export), got {value.shape}")
            feed[name] = value
        return self.runner(**feed)


class BundleRunner(Generator):
    """Text-to-image (and image-to-image when the bundle has the VAE encoder) from a bundle folder.

    The LiteRT engine of ``sd_keras.generator.Generator``: the generation API of ``StableDiffusion``
    (``text_to_image``, ``encode_text``, ``generate_image``, ``image_to_image``, ``save``, ``last_seed``,
    ``last_truncated`` ...) with the same arguments, checks and seeds, so ``sd-keras generate -m BUNDLE_DIR``
    works. Shapes are fixed at export: ``height``/``width`` other than the bundle's ``image_size`` are an error;
    inpainting is not available (InputError). The UNet takes one guidance pair, so the images of a batch run one
    after another.

    Args:
        path: the bundle folder (``manifest.json`` inside); every file's sha256 is checked on load.
        num_threads: CPU threads of each LiteRT interpreter (XNNPACK).

    Example:
        >>> runner = BundleRunner("bundles/tiny-fp32")                         # doctest: +SKIP
        >>> runner.config.image_size, runner.default_sampler                   # doctest: +SKIP
        ((64, 64), 'DDIM KerasCV')
    """

    def __init__(self, path, *, num_threads=None):
        from sd_keras.schedulers import NoiseSchedule
        from sd_keras.tokenizer import CLIPTokenizer

        self.bundle = read_bundle(path)
        manifest = self.manifest = self.bundle.manifest
        self.path = self.bundle.path
        self.name = manifest["model"]
        self.image_size = tuple(manifest["image_size"])
        self.latent_size = tuple(manifest["latent_size"])
        self.default_sampler = manifest["default_sampler"]
        self.samplers = list(manifest["samplers"])
        self.quantization = manifest.get("quantization")
        self.timestep_dim = int(manifest["timestep_embedding_dim"])
        schedule = dict(manifest["schedule"])
        if schedule.pop("beta_schedule", "scaled_linear") != "scaled_linear":
            raise InputError(f"bundle {self.path}: beta_schedule {manifest['schedule']['beta_schedule']!r} is not "
                             f"supported (only 'scaled_linear')")
        self.schedule = NoiseSchedule(prediction_type=manifest["prediction_type"], **schedule)
        token_spec = manifest["tokenizer"]
        self.pad_token_id = int(token_spec["pad_id"])
        self.sdxl = self.bundle.family == "sdxl"
        if self.sdxl:
            self._init_sdxl(manifest)
        self.tokenizer = CLIPTokenizer.from_file(self.bundle.tokenizer_path,
                                                 context_length=int(token_spec["context_length"]),
                                                 pad_token_id=self.pad_token_id)
        if (self.tokenizer.start_token_id, self.tokenizer.end_token_id) != (token_spec["start_id"],
                                                                          token_spec["end_id"]):
            raise InputError(f"bundle {self.path}: tokenizer start/end ids {token_spec['start_id']}/"
                             f"{token_spec['end_id']} differ from the merges file's")
        self.config = self._config()
        threads = num_threads or min(4, os.cpu_count() or 1)
        self.text_encoder = _Component(self.bundle, "text_encoder", threads)
        self.text_encoder_2 = _Component(self.bundle, "text_encoder_2", threads) if self.sdxl else None
        self.diffusion_model = _Component(self.bundle, "diffusion_model", threads)
        self.decoder = _Component(self.bundle, "decoder", threads)
        self.image_encoder = (_Component(self.bundle, "image_encoder", threads)
                              if self.bundle.has("image_encoder") else None)
        self.unet_batch = int(self.diffusion_model.inputs["latent"]["shape"][0])
        if self.unet_batch != 2:
            raise InputError(f"bundle {self.path}: the UNet must take the guidance pair (batch 2), "
                             f"got batch {self.unet_batch}")

    def _init_sdxl(self, manifest):
        """An SDXL bundle (format version 2): the second tokenizer's padding, the pooled width, the
        micro-conditioning values and the empty-negative-prompt rule."""
        second = manifest.get("tokenizer_2")
        if not isinstance(second, dict) or second.get("sha256") != manifest["tokenizer"]["sha256"]:
            raise InputError(f"bundle {self.path}: an SDXL bundle needs 'tokenizer_2' with the tokenizer's merges "
                             f"file (same sha256)")
        self.pad_token_ids = (self.pad_token_id, int(second["pad_id"]))
        self.pooled_dim = int(manifest["pooled_dim"])
        self.addition_time_embed_dim = int(manifest["addition_time_embed_dim"])
        self.force_zeros_for_empty_prompt = bool(manifest["force_zeros_for_empty_prompt"])
        self.micro_conditioning = dict(manifest["micro_conditioning"])
        self._pooled_log = None

    def _config(self):
        """The bundle's ``ModelConfig`` / ``SDXLConfig`` (``image_size`` = the exported size) when the manifest
        carries one."""
        from sd_keras.config import ModelConfig

        data = self.manifest.get("model_config")
        if data is None:
            return _PlainConfig(self.name, self.image_size, self.manifest["prediction_type"], self.pad_token_id)
        if self.sdxl:
            from sd_keras.config_sdxl import sdxl_config_from_dict

            return dataclasses.replace(sdxl_config_from_dict(data), image_size=self.image_size)
        return dataclasses.replace(ModelConfig.from_dict(data), image_size=self.image_size)

    # -- the engine's primitives (``Generator``) -----------------------------------------------------------------
    nan_hint = "; the bundle's decoder or UNet is broken"

    @property
    def latent_channels(self):
        return int(self.latent_size[-1])

    @property
    def unet_in_channels(self):
        return int(self.diffusion_model.inputs["latent"]["shape"][-1])

    def _check_size(self, height, width):
        super()._check_size(height, width)
        if (height, width) != self.image_size:
            raise InputError(f"height x width {height}x{width} differs from the bundle's fixed size "
                             f"{self.image_size[0]}x{self.image_size[1]}; re-export with --size {width}x{height}")

    def _inpaint_mode(self):
        raise InputError("inpainting is not available from a bundle; use the Keras model (a preset or checkpoint)")

    def _missing_image_encoder(self):
        return (f"bundle {self.path} has no image_encoder; export it with the VAE encoder for image_to_image")

    def _encode_tokens(self, ids):
        """One interpreter call per prompt (the exported text encoder takes batch 1). SDXL: both encoders on
        their own padding of ``ids``, hidden states concatenated; the pooled outputs are kept for ``_contexts``."""
        positions = np.arange(ids.shape[1], dtype=np.int32)[None]
        if not self.sdxl:
            return np.concatenate([self.text_encoder(tokens=row[None], positions=positions) for row in ids], axis=0)
        first, second = _encoder_ids(ids, self.pad_token_ids, self.tokenizer.end_token_id)
        hidden, pooled = [], []
        for row_1, row_2 in zip(first, second):
            out = self.text_encoder_2.outputs(tokens=row_2[None], positions=positions)
            hidden.append(np.concatenate([self.text_encoder(tokens=row_1[None], positions=positions),
                                          out["context"]], axis=-1))
            pooled.append(out["pooled"])
        if self._pooled_log is not None:
            self._pooled_log.append(np.concatenate(pooled, axis=0))
        return np.concatenate(hidden, axis=0)

    def _packed(self, prompts, negative):
        """SDXL encoded text (B, 1 + 77, D) of a list of prompts (``generator.pack``); zeros for an empty negative
        prompt when the manifest's ``force_zeros_for_empty_prompt`` says so."""
        zeros = int(self.diffusion_model.inputs["context"]["shape"][-1]) if self.force_zeros_for_empty_prompt else None
        return self._pooled_contexts(prompts, negative, zeros)

    def _contexts(self, prompts, negative_prompts):
        if not self.sdxl:
            return super()._contexts(prompts, negative_prompts)
        context = self._packed(prompts, False) if prompts is not None else None
        unconditional = self._packed(negative_prompts, True) if negative_prompts is not None else None
        return context, unconditional

    def _time_ids(self):
        """(positive, negative) micro-conditioning values of the manifest, as the UNet's time ids."""
        values = self.micro_conditioning
        start = list(values["original_size"]) + list(values["crops_coords_top_left"])
        if "target_size" in values:
            positive = negative = start + list(values["target_size"])
        else:  # a refiner's aesthetic scores
            positive, negative = start + [values["aesthetic_score"]], start + [values["negative_aesthetic_score"]]
        return np.asarray([positive], np.float32), np.asarray([negative], np.float32)

    def _unet(self, latent, embedding, context, added=None):
        if added is None:
            return self.diffusion_model(latent=latent, timestep_embedding=embedding, context=context)
        return self.diffusion_model(latent=latent, timestep_embedding=embedding, context=context,
                                    added_embedding=added)

    def _denoise(self, scheduler, context, unconditional, latent, step_noise, *, guidance_scale, start_index=0,
                 mode=TXT2IMG, extra=None, progress=None):
        """``denoise`` below for each image of the batch in turn (the UNet takes one guidance pair)."""
        if mode != TXT2IMG:
            self._inpaint_mode()
        batch_size = latent.shape[0]
        added = unconditional_added = [None] * batch_size
        if self.sdxl:

            context, pooled = unpack(context, self.pooled_dim)
            unconditional, unconditional_pooled = unpack(unconditional, self.pooled_dim)
            time_ids, negative_time_ids = self._time_ids()
            added = [added_embedding(row[None], time_ids, self.addition_time_embed_dim) for row in pooled]
            unconditional_added = [added_embedding(row[None], negative_time_ids, self.addition_time_embed_dim)
                                   for row in unconditional_pooled]
        latents = []
        for index in range(batch_size):
            latents.append(denoise(
                scheduler, self._unet, context[index:index + 1], unconditional[index:index + 1],
                latent[index:index + 1], None if step_noise is None else step_noise[:, index:index + 1],
                guidance_scale=guidance_scale, timestep_dim=self.timestep_dim, start_index=start_index,
                progress=_batch_progress(progress, index, batch_size, scheduler.num_steps),
                added=added[index], unconditional_added=unconditional_added[index]))
        return np.concatenate(latents)

    def _decode(self, latent):
        """One decoder call per image."""
        return np.concatenate([self.decoder(latent=item[None]) for item in np.asarray(latent, np.float32)])

    def _encode_image(self, pixels):
        return self.image_encoder(image=np.asarray(pixels, np.float32))

    def __repr__(self):
        return (f"BundleRunner({self.path!r}, model={self.name!r}, size={self.image_size}, "
                f"quantization={self.quantization!r})")


def _encoder_ids(ids, pad_ids, end_id):
    """``ids`` re-padded for each text encoder: after the first end token, that encoder's pad id (what
    ``StableDiffusionXL._encoder_ids`` does)."""
    ids = np.asarray(ids, np.int32)
    is_end = ids == end_id
    after_end = (np.cumsum(is_end, axis=1) - is_end) > 0
    return [np.where(after_end, np.int32(pad), ids).astype(np.int32) for pad in pad_ids]


@dataclasses.dataclass(frozen=True)
class _PlainConfig:
    """What ``config`` offers when the manifest carries no ``model_config`` (a bundle from another exporter)."""

    name: str
    image_size: tuple
    prediction_type: str
    pad_token_id: int


def _batch_progress(progress, index, batch_size, num_steps):
    """Images of a batch run one after another (the UNet takes one guidance pair); report the batch's progress
    on the ``num_steps`` scale the batched pipeline uses, rising monotonically to ``num_steps``."""
    if progress is None:
        return None
    return lambda step_done: progress((index * num_steps + step_done) // batch_size)
