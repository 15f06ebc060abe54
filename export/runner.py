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

from sd_keras import noise as noise_lib
from sd_keras.export.bundle import read_bundle


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


def to_uint8(images):
    """Decoder output in [-1, 1] to uint8, KerasCV's conversion (``((x + 1) / 2) * 255``, clipped, truncated)."""
    images = ((np.asarray(images, np.float32) + 1.0) / 2.0) * 255.0
    return np.clip(images, 0, 255).astype(np.uint8)


def denoise(sampler, unet, context, unconditional_context, latent, step_noise=None, *, guidance_scale,
            timestep_dim, start_index=0, progress=None):
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

    Returns:
        The final latent, float32 (B, h, w, c).
    """
    tables = sampler.tables()
    latent = np.asarray(latent, np.float32)
    batch = latent.shape[0]
    both_contexts = np.concatenate([unconditional_context, context], axis=0).astype(np.float32)
    guidance = np.float32(guidance_scale)
    previous_denoised = None
    for i in range(start_index, sampler.num_steps):
        model_input = latent * tables["model_input_scale"][i]
        embedding = np.repeat(timestep_embedding(tables["timesteps"][i:i + 1], timestep_dim), 2 * batch, axis=0)
        output = np.asarray(unet(np.concatenate([model_input, model_input], axis=0), embedding, both_contexts),
                            np.float32)
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
        raise ValueError(f"{os.path.basename(path)}: signature {entry['signature']!r} not in the model "
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
        feed = {}
        for name, spec in self.inputs.items():
            value = np.asarray(inputs[name], dtype=spec["dtype"])
            if list(value.shape) != list(spec["shape"]):
                raise ValueError(f"{self.name}: input {name!r} must have shape {tuple(spec['shape'])} "
                                 f"(fixed at export), got {value.shape}")
            feed[name] = value
        return self.runner(**feed)[self.output_name]


class BundleRunner:
    """Text-to-image (and image-to-image when the bundle has the VAE encoder) from a bundle folder.

    Offers the ``StableDiffusion`` surface the CLI uses (``config``, ``text_to_image``, ``image_to_image``,
    ``last_seed``, ``last_truncated``), so ``sd-keras generate -m BUNDLE_DIR`` works. Shapes are fixed at export:
    ``height``/``width`` other than the bundle's ``image_size`` are an error.

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
            raise ValueError(f"bundle {self.path}: beta_schedule {manifest['schedule']['beta_schedule']!r} is not "
                             f"supported (only 'scaled_linear')")
        self.schedule = NoiseSchedule(prediction_type=manifest["prediction_type"], **schedule)
        token_spec = manifest["tokenizer"]
        self.pad_token_id = int(token_spec["pad_id"])
        self.tokenizer = CLIPTokenizer.from_file(self.bundle.tokenizer_path,
                                                 context_length=int(token_spec["context_length"]),
                                                 pad_token_id=self.pad_token_id)
        if (self.tokenizer.start_token_id, self.tokenizer.end_token_id) != (token_spec["start_id"],
                                                                          token_spec["end_id"]):
            raise ValueError(f"bundle {self.path}: tokenizer start/end ids {token_spec['start_id']}/"
                             f"{token_spec['end_id']} differ from the merges file's")
        self.config = self._config()
        threads = num_threads or min(4, os.cpu_count() or 1)
        self.text_encoder = _Component(self.bundle, "text_encoder", threads)
        self.diffusion_model = _Component(self.bundle, "diffusion_model", threads)
        self.decoder = _Component(self.bundle, "decoder", threads)
        self.image_encoder = (_Component(self.bundle, "image_encoder", threads)
                              if self.bundle.has("image_encoder") else None)
        self.unet_batch = int(self.diffusion_model.inputs["latent"]["shape"][0])
        if self.unet_batch != 2:
            raise ValueError(f"bundle {self.path}: the UNet must take the guidance pair (batch 2), "
                             f"got batch {self.unet_batch}")
        self.last_seed = None
        self.last_truncated = False

    def _config(self):
        """The bundle's ``ModelConfig`` (``image_size`` = the exported size) when the manifest carries one."""
        from sd_keras.config import ModelConfig

        data = self.manifest.get("model_config")
        if data is None:
            return _PlainConfig(self.name, self.image_size, self.manifest["prediction_type"], self.pad_token_id)
        return dataclasses.replace(ModelConfig.from_dict(data), image_size=self.image_size)

    # -- pieces ----------------------------------------------------------------------------------------------
    def encode_text(self, prompt):
        """Text encoder output (B, 77, D) float32 for a prompt or list of prompts, one interpreter call each."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        for item in prompts:
            if not isinstance(item, str):
                raise ValueError(f"prompt must be a string or a list of strings, got {type(item).__name__}")
        tokenized = self.tokenizer.tokenize_with_info(prompts, pad_token_id=self.pad_token_id)
        self.last_truncated = bool(tokenized.any_truncated)
        positions = np.arange(tokenized.ids.shape[1], dtype=np.int32)[None]
        contexts = [self.text_encoder(tokens=ids[None], positions=positions) for ids in tokenized.ids]
        return np.concatenate(contexts, axis=0).astype(np.float32)

    def _unet(self, latent, embedding, context):
        return self.diffusion_model(latent=latent, timestep_embedding=embedding, context=context)

    def decode(self, latent):
        """uint8 images (B, H, W, 3) from latents (B, h, w, 4), one decoder call per image."""
        images = np.concatenate([self.decoder(latent=item[None]) for item in np.asarray(latent, np.float32)])
        if not np.all(np.isfinite(images)):
            raise FloatingPointError("the decoded image contains NaN or inf; the bundle's decoder is broken")
        return to_uint8(images)

    def _resolve(self, num_steps, guidance, sampler, height, width, batch_size):
        from sd_keras.pipeline import check_guidance, check_size, check_steps
        from sd_keras.schedulers import get_sampler

        check_steps(num_steps)
        check_guidance(guidance)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        height = self.image_size[0] if height is None else height
        width = self.image_size[1] if width is None else width
        check_size(height, width)
        if (height, width) != self.image_size:
            raise ValueError(f"height x width {height}x{width} differs from the bundle's fixed size "
                             f"{self.image_size[0]}x{self.image_size[1]}; re-export with --size "
                             f"{width}x{height}")
        sampler = self.default_sampler if sampler is None else sampler
        return get_sampler(sampler, int(num_steps), schedule=self.schedule)

    def _contexts(self, prompt, negative_prompt, batch_size):
        context = self.encode_text(prompt)
        truncated = self.last_truncated
        unconditional = self.encode_text("" if negative_prompt is None else negative_prompt)
        self.last_truncated = truncated
        out = []
        for name, value in (("prompt", context), ("negative_prompt", unconditional)):
            if value.shape[0] == 1:
                value = np.repeat(value, batch_size, axis=0)
            if value.shape[0] != batch_size:
                raise ValueError(f"{name} has {value.shape[0]} entries for batch_size {batch_size}")
            out.append(value)
        return out

    def _seed(self, seed):
        seed = noise_lib.random_seed() if seed is None or seed == -1 else seed
        self.last_seed = int(noise_lib._check_seed(seed))
        return self.last_seed

    # -- generation ------------------------------------------------------------------------------------------
    def text_to_image(self, prompt, negative_prompt=None, batch_size=None, num_steps=50,
                      unconditional_guidance_scale=7.5, seed=None, *, sampler=None, height=None, width=None,
                      progress=None):
        """uint8 images (B, H, W, 3); same arguments and seeds as ``StableDiffusion.text_to_image``.

        ``sampler`` defaults to the manifest's ``default_sampler``. Image ``i`` uses seed ``seed + i``; a list of
        prompts sets ``batch_size``.
        """
        from sd_keras.pipeline import _batch_size

        batch_size = _batch_size(batch_size, prompt, negative_prompt)
        scheduler = self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width, batch_size)
        context, unconditional = self._contexts(prompt, negative_prompt, batch_size)
        seed = self._seed(seed)
        extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
        latents = []
        for index in range(batch_size):
            initial, step_noise = noise_lib.latent_noise(seed + index, 1, self.latent_size, extra_draws)
            latent = initial * np.float32(scheduler.init_noise_sigma)
            latents.append(denoise(scheduler, self._unet, context[index:index + 1],
                                   unconditional[index:index + 1], latent, step_noise,
                                   guidance_scale=unconditional_guidance_scale, timestep_dim=self.timestep_dim,
                                   progress=_batch_progress(progress, index, batch_size, scheduler.num_steps)))
        return self.decode(np.concatenate(latents))

    def image_to_image(self, prompt, image, strength=0.75, negative_prompt=None, batch_size=None, num_steps=50,
                       unconditional_guidance_scale=7.5, seed=None, *, sampler=None, height=None, width=None,
                       progress=None):
        """Encode ``image`` with the bundle's VAE encoder, noise it to ``strength``'s step and denoise the rest
        (``StableDiffusion.image_to_image`` step for step)."""
        from sd_keras.pipeline import _batch_size, check_strength, load_image

        batch_size = _batch_size(batch_size, prompt, negative_prompt)
        if self.image_encoder is None:
            raise ValueError(f"bundle {self.path} has no image_encoder; export it with the VAE encoder for "
                             f"image_to_image")
        check_strength(strength)
        scheduler = self._resolve(num_steps, unconditional_guidance_scale, sampler, height, width, batch_size)
        context, unconditional = self._contexts(prompt, negative_prompt, batch_size)
        pixels = load_image(image, *self.image_size)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, -1)
        pixels = pixels[..., :3] / 127.5 - 1.0
        original = np.asarray(self.image_encoder(image=pixels[None].astype(np.float32)), np.float32)
        start = scheduler.start_index(float(strength))
        if start >= scheduler.num_steps:
            return self.decode(np.repeat(original, batch_size, axis=0))
        seed = self._seed(seed)
        tables = scheduler.tables()
        extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
        latents = []
        for index in range(batch_size):
            initial, step_noise = noise_lib.latent_noise(seed + index, 1, self.latent_size, extra_draws)
            latent = tables["signal_scale"][start] * original + tables["noise_scale"][start] * initial
            latents.append(denoise(scheduler, self._unet, context[index:index + 1],
                                   unconditional[index:index + 1], latent, step_noise,
                                   guidance_scale=unconditional_guidance_scale, timestep_dim=self.timestep_dim,
                                   start_index=start,
                                   progress=_batch_progress(progress, index, batch_size, scheduler.num_steps)))
        return self.decode(np.concatenate(latents))

    def inpaint(self, *args, **kwargs):
        raise ValueError("inpainting is not available from a bundle; use the Keras model")

    def __repr__(self):
        return (f"BundleRunner({self.path!r}, model={self.name!r}, size={self.image_size}, "
                f"quantization={self.quantization!r})")


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
