"""Hires fix as AUTOMATIC1111 defines it: draw at the first-pass size, upscale, redraw at the target size.

A model draws one coherent picture at about its native size (``config.image_size``: 512 for SD 1.x, 128 for the
``shapes`` demo model); asked for more, it repeats objects. Hires fix keeps the composition of a first pass at
the first-pass size and adds detail in a second, image-to-image pass at the target size:

1. text-to-image at ``height`` x ``width`` (the first-pass size);
2. upscale to the target size (``HiresFix.scale`` times the first pass, or ``resize_x`` / ``resize_y``):
   in latent space (``"Latent"``: bilinear, ``"Latent (bicubic)"``, ``"Latent (nearest-exact)"``, the
   interpolations of ``torch.nn.functional.interpolate`` with ``align_corners=False``), or in pixels
   (``"Lanczos"``, ``"Nearest"``, or an AI upscaler: a file path or a model of
   ``sd_keras.weights.upscalers.load_upscaler``, run through ``sd_keras.upscale``), then encoded by the VAE;
3. the upscaled latent noised to the step that ``denoising_strength`` selects and denoised for the rest of
   ``second_pass_steps`` (0: as many as the first pass) with ``sampler`` (None: the first pass's), ``prompt`` and
   ``negative_prompt`` (None: the first pass's), seeded as the first pass.

How much the second pass may redraw depends on how far the target is above the native size: the second pass is
a text-to-image model at a size it repeats objects at, held to the first pass's picture only by the part of the
noise schedule it skips. The ``shapes`` model (native 128) taken to 512x512 (x4, 10 second-pass steps, objects
counted with ``sd_keras.evaluate.count_objects``, 8 held-out prompts of ``benchmarks/hires_cpu.py``): upscaled in
pixels (``"Lanczos"``) at strength 0.3, every image keeps its one object; with the latent upscale, 5 of 8 (the x4
interpolation leaves a fringe of another colour around an edge and can break a small object in pieces); at 0.6,
3 and 2 of 8 (plain 512x512: 8.6 objects per image). ``tests/test_hires.py`` checks six other held-out prompts
with the latent upscale at 0.3 (all six keep their object; with ``"Lanczos"``, five). A1111's default of 0.7 suits x1.5 to x2 on SD 1.x.

Both passes run the engine's compiled loop: the second is exactly an image-to-image call at the target size (the
same compiled program ``image_to_image`` uses for that size, steps and sampler), so a repeated hires generation
compiles nothing. When both ``resize_x`` and ``resize_y`` are given and their aspect ratio differs from the first
pass's, the upscaled picture covers the target and is cropped to it around its centre (A1111's "crop").

``Generator.text_to_image(..., hires=HiresFix(...))`` runs it; the PNG metadata carries A1111's ``Denoising
strength``, ``Hires upscale`` (or ``Hires resize``), ``Hires steps``, ``Hires upscaler`` (and ``Hires sampler``,
``Hires prompt``, ``Hires negative prompt`` when set), which ``from_parameters`` reads back.

Example:
    >>> from sd_keras.pipeline import StableDiffusion
    >>> sd = StableDiffusion.from_preset("tiny")
    >>> hires = HiresFix(scale=2, upscaler="Latent", denoising_strength=0.5, second_pass_steps=1)
    >>> sd.text_to_image("a red circle", num_steps=2, seed=3, hires=hires).shape
    (1, 128, 128, 3)
    >>> hires.target_size(64, 64)
    (128, 128)
"""

import dataclasses
import math
import os

import numpy as np

from sd_keras.errors import InputError

LATENT_UPSCALERS = {"Latent": "bilinear", "Latent (bilinear)": "bilinear", "Latent (bicubic)": "bicubic",
                    "Latent (nearest-exact)": "nearest-exact", "Latent (nearest)": "nearest-exact"}
DEFAULT_UPSCALER = "Latent"
DEFAULT_STRENGTH = 0.7  # A1111's default denoising strength for hires fix

__all__ = ["HiresFix", "LATENT_UPSCALERS", "resize_latent", "hires_fix", "from_parameters"]


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


@dataclasses.dataclass(frozen=True)
class HiresFix:
    """The settings of a hires fix (A1111's ``hr_*`` fields; see the module docstring).

    Attributes:
        scale: target size / first-pass size (``hr_scale``), used when ``resize_x`` and ``resize_y`` are 0.
        upscaler: a latent upscaler name (``LATENT_UPSCALERS``), ``"Lanczos"`` / ``"Nearest"``, a path to an
            upscaler file, or a loaded Keras upscaler (``hr_upscaler``).
        denoising_strength: how much the second pass redraws, in [0, 1].
        second_pass_steps: steps of the second pass's schedule (``hr_second_pass_steps``; 0: the first pass's).
        resize_x, resize_y: target width / height (``hr_resize_x`` / ``hr_resize_y``; 0: from the other side or
            from ``scale``).
        sampler: the second pass's sampler (``hr_sampler_name``; None: the first pass's).
        prompt, negative_prompt: the second pass's prompts (``hr_prompt`` / ``hr_negative_prompt``; None or
            ``""``: the first pass's).
    """

    scale: float = 2.0
    upscaler: object = DEFAULT_UPSCALER
    denoising_strength: float = DEFAULT_STRENGTH
    second_pass_steps: int = 0
    resize_x: int = 0
    resize_y: int = 0
    sampler: object = None
    prompt: object = None
    negative_prompt: object = None

    def __post_init__(self):
        if not _is_number(self.scale) or not math.isfinite(self.scale) or not 1.0 <= self.scale <= 8.0:
            raise InputError(f"hires scale must be a number in [1, 8], got {self.scale!r}")
        if not _is_number(self.denoising_strength) or not 0.0 <= float(self.denoising_strength) <= 1.0:
            raise InputError(f"hires denoising_strength must be a number in [0, 1], got {self.denoising_strength!r}")
        for name in ("second_pass_steps", "resize_x", "resize_y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InputError(f"hires {name} must be an integer >= 0, got {value!r}")
        if isinstance(self.upscaler, (str, os.PathLike)):
            name = os.fspath(self.upscaler)
            if name not in LATENT_UPSCALERS and name not in ("Lanczos", "Nearest") and not os.path.isfile(name):
                raise InputError(f"hires upscaler {name!r}: not one of {', '.join(self.upscaler_names())} nor an "
                                 "upscaler file")
        elif getattr(self.upscaler, "upscaler_config", None) is None:
            raise InputError(f"hires upscaler must be a name, a file path or a loaded upscaler, got "
                             f"{type(self.upscaler).__name__}")
        for name in ("sampler", "prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InputError(f"hires {name} must be a string or None, got {value!r}")

    @staticmethod
    def upscaler_names():
        """The built-in upscaler names (latent ones first)."""
        return [name for name in LATENT_UPSCALERS if name not in ("Latent (bilinear)", "Latent (nearest)")] + [
            "Lanczos", "Nearest"]

    @property
    def latent(self):
        """Whether the upscale runs on the latent (no decode and encode between the passes)."""
        return isinstance(self.upscaler, str) and self.upscaler in LATENT_UPSCALERS

    @property
    def upscaler_name(self):
        """The name written to the metadata: the latent or built-in name, or an upscaler file's stem."""
        if isinstance(self.upscaler, (str, os.PathLike)):
            name = os.fspath(self.upscaler)
            return name if name in LATENT_UPSCALERS or name in ("Lanczos", "Nearest") else os.path.splitext(
                os.path.basename(name))[0]
        return getattr(self.upscaler, "name", None) or "upscaler"

    def target_size(self, height, width):
        """(height, width) of the second pass for a first pass of ``height`` x ``width`` (A1111's rules:
        ``scale`` times the first pass; one of ``resize_x`` / ``resize_y``: the other side keeps the aspect
        ratio; both: that size)."""
        if not self.resize_x and not self.resize_y:
            return int(height * self.scale), int(width * self.scale)
        if not self.resize_y:
            return self.resize_x * height // width, self.resize_x
        if not self.resize_x:
            return self.resize_y, self.resize_y * width // height
        return self.resize_y, self.resize_x

    def parameters(self, num_steps):
        """A1111's metadata fields of this hires fix (after ``Denoising strength``)."""
        fields = {"Denoising strength": float(self.denoising_strength)}
        if self.resize_x or self.resize_y:
            fields["Hires resize"] = f"{self.resize_x}x{self.resize_y}"
        else:
            fields["Hires upscale"] = float(self.scale)
        fields["Hires steps"] = int(self.second_pass_steps) or None
        fields["Hires upscaler"] = self.upscaler_name
        fields["Hires sampler"] = self.sampler
        fields["Hires prompt"] = self.prompt or None
        fields["Hires negative prompt"] = self.negative_prompt or None
        return fields

    def run(self, generator, prompt, **settings):
        """``hires_fix`` with these settings on ``generator``: what ``text_to_image(..., hires=self)`` runs (the
        generator asks its ``hires`` argument to run rather than importing this module, which builds on it)."""
        return hires_fix(generator, prompt, self, **settings)


def from_parameters(parameters, upscalers=None):
    """The ``HiresFix`` that ``sd_keras.metadata.parse_parameters``'s dict describes, or None when it has no
    ``Hires upscale`` / ``Hires resize`` field. An upscaler file named by its stem is looked up in
    ``upscalers`` (a ``sd_keras.upscale.Upscalers``); InputError when it is not there.

    Example:
        >>> from sd_keras import metadata
        >>> text = metadata.format_parameters("a cat", Steps=20, **HiresFix(scale=2).parameters(20))
        >>> from_parameters(metadata.parse_parameters(text)) == HiresFix(scale=2)
        True
    """
    if "Hires upscale" not in parameters and "Hires resize" not in parameters:
        return None
    try:
        fields = {"upscaler": parameters.get("Hires upscaler", DEFAULT_UPSCALER),
                  "denoising_strength": float(parameters.get("Denoising strength", DEFAULT_STRENGTH)),
                  "second_pass_steps": int(parameters.get("Hires steps", 0)),
                  "sampler": parameters.get("Hires sampler"), "prompt": parameters.get("Hires prompt"),
                  "negative_prompt": parameters.get("Hires negative prompt")}
        if "Hires resize" in parameters:
            x, y = parameters["Hires resize"].lower().split("x")
            fields["resize_x"], fields["resize_y"] = int(x), int(y)
        else:
            fields["scale"] = float(parameters["Hires upscale"])
    except (TypeError, ValueError) as error:
        raise InputError(f"hires fields of the parameters: {error}") from None
    name = fields["upscaler"]
    if name not in LATENT_UPSCALERS and name not in ("Lanczos", "Nearest"):
        path = upscalers.path(name) if upscalers is not None else None
        if path is None:
            raise InputError(f"Hires upscaler {name!r}: not a built-in upscaler nor a file of the upscalers folder")
        fields["upscaler"] = path
    return HiresFix(**fields)


# -- latent interpolation (torch.nn.functional.interpolate, align_corners=False) ---------------------------------
def _cubic(distance, a=-0.75):
    distance = np.abs(distance)
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
    return np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))


def _axis_matrix(size_in, size_out, mode):
    """(size_out, size_in) float64 matrix of the 1-D interpolation along one axis."""
    matrix = np.zeros((size_out, size_in))
    ratio = size_in / size_out
    rows = np.arange(size_out)
    if mode == "nearest-exact":
        matrix[rows, np.minimum(np.floor((rows + 0.5) * ratio).astype(int), size_in - 1)] = 1.0
        return matrix
    source = (rows + 0.5) * ratio - 0.5
    if mode == "bilinear":
        source = np.maximum(source, 0.0)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        frac = source - low
        np.add.at(matrix, (rows, low), 1.0 - frac)
        np.add.at(matrix, (rows, high), frac)
        return matrix
    base = np.floor(source).astype(int)
    frac = source - base
    for offset in (-1, 0, 1, 2):
        np.add.at(matrix, (rows, np.clip(base + offset, 0, size_in - 1)), _cubic(frac - offset))
    return matrix


def resize_latent(latent, height, width, mode="bilinear"):
    """Latents (B, h, w, c) resized to (B, height, width, c) float32 by ``mode`` (``"bilinear"``, ``"bicubic"``,
    ``"nearest-exact"``), as ``torch.nn.functional.interpolate(..., align_corners=False)`` without antialiasing.

    Example:
        >>> resize_latent(np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1), 4, 4, "nearest-exact")[0, :, :, 0]
        array([[0., 0., 1., 1.],
               [0., 0., 1., 1.],
               [2., 2., 3., 3.],
               [2., 2., 3., 3.]], dtype=float32)
    """
    if mode not in ("bilinear", "bicubic", "nearest-exact"):
        raise InputError(f"latent resize mode {mode!r}: use bilinear, bicubic or nearest-exact")
    latent = np.asarray(latent, np.float32)
    if latent.ndim != 4:
        raise InputError(f"latent must be (batch, height, width, channels), got shape {latent.shape}")
    rows = _axis_matrix(latent.shape[1], height, mode)
    cols = _axis_matrix(latent.shape[2], width, mode)
    # one axis at a time: a single three-operand einsum loops over every (y, h, w, x) quadruple (0.46 s for a
    # 64x64 latent to 128x128 on one core, against 6 ms)
    along_rows = np.einsum("yh,bhwc->bywc", rows, latent.astype(np.float64))
    return np.einsum("bywc,xw->byxc", along_rows, cols).astype(np.float32)


def _cover_crop_latent(latent, height, width, mode):
    """Resize to cover (height, width) keeping the aspect ratio, then crop the centre."""
    _, h, w, _ = latent.shape
    factor = max(height / h, width / w)
    cover_h, cover_w = max(height, round(h * factor)), max(width, round(w * factor))
    resized = resize_latent(latent, cover_h, cover_w, mode)
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return resized[:, top:top + height, left:left + width]


def _upscale_images(images, hires, height, width):
    """uint8 images upscaled to cover (height, width) and centre-cropped to it."""
    from sd_keras.upscale import upscale

    _, h, w, _ = images.shape
    factor = max(height / h, width / w)
    cover_h, cover_w = max(height, round(h * factor)), max(width, round(w * factor))
    upscaler = os.fspath(hires.upscaler) if isinstance(hires.upscaler, os.PathLike) else hires.upscaler
    out = upscale(images, upscaler, size=(cover_w, cover_h))
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return out[:, top:top + height, left:left + width]


class _SecondPassProgress:
    """The second pass's step count continued after the first pass's (one bar for both)."""

    def __init__(self, progress, offset):
        self.progress, self.offset = progress, offset

    def __call__(self, step_done):
        self.progress(step_done + self.offset)


def hires_fix(generator, prompt, hires, *, negative_prompt=None, batch_size=None, num_steps=50,
              unconditional_guidance_scale=7.5, seed=None, sampler=None, height=None, width=None, progress=None):
    """Run a hires fix on ``generator`` (a ``sd_keras.generator.Generator``); uint8 images at the target size.

    ``height`` / ``width`` are the first pass's (default: the model's native size); the other arguments are
    ``text_to_image``'s. ``progress(step)`` counts the first pass's steps, then the second pass's.
    """
    from sd_keras import generator as gen

    if not isinstance(hires, HiresFix):
        raise InputError(f"hires must be a sd_keras.hires.HiresFix, got {type(hires).__name__}")
    batch_size = gen.batch_size_for(batch_size, prompt, negative_prompt)
    prompts = gen._repeat_to(gen.prompt_list(prompt), batch_size, "prompt")
    _, height, width = generator._resolve(num_steps, unconditional_guidance_scale, sampler, height, width,
                                          batch_size, seed)
    target_h, target_w = hires.target_size(height, width)
    try:
        generator._check_size(target_h, target_w)
    except InputError as error:
        raise InputError(f"hires target size {target_w}x{target_h} (first pass {width}x{height}): {error}") from None
    steps = int(hires.second_pass_steps) or int(num_steps)
    second_sampler = hires.sampler or sampler
    scheduler = generator._resolve(steps, unconditional_guidance_scale, second_sampler, target_h, target_w,
                                   batch_size, seed)[0]
    if not hires.latent and generator.image_encoder is None:
        raise InputError(f"hires upscaler {hires.upscaler_name!r} works on pixels and needs the VAE encoder, which "
                         "this model lacks; use a latent upscaler (Latent, Latent (bicubic), Latent "
                         "(nearest-exact))")
    # pass 1: text-to-image at the first-pass size
    context, _ = generator._contexts(prompts, None)
    latent = generator.generate_image(context, negative_prompt, batch_size, num_steps, unconditional_guidance_scale,
                                      seed=seed, sampler=sampler, height=height, width=width, progress=progress,
                                      return_latent=True)
    seed = generator.last_seed
    # upscale
    if hires.latent:
        upscaled = _cover_crop_latent(latent, target_h // 8, target_w // 8, LATENT_UPSCALERS[hires.upscaler])
    else:
        images = _upscale_images(generator.decode(latent), hires, target_h, target_w)
        upscaled = np.concatenate([generator._encode_pixels(gen._to_rgb_unit(image.astype(np.float32)))
                                   for image in images]).astype(np.float32)
    # pass 2: image-to-image at the target size
    context, unconditional = generator._batch_contexts(hires.prompt or prompt,
                                                       hires.negative_prompt or negative_prompt, batch_size)
    start = scheduler.start_index(float(hires.denoising_strength))
    if start < scheduler.num_steps:
        initial, step_noise = generator._noise(seed, batch_size, upscaled.shape[1:], scheduler)
        noised = generator._noised(scheduler, upscaled, initial, start)
        upscaled = generator._denoise(scheduler, context, unconditional, noised, step_noise,
                                      guidance_scale=unconditional_guidance_scale, start_index=start,
                                      progress=_SecondPassProgress(progress, num_steps - start) if progress
                                      else None)
    images = generator.decode(upscaled)
    generator.last_seed = seed
    generator._record(prompt, negative_prompt, batch_size, num_steps, unconditional_guidance_scale, sampler,
                      target_h, target_w, seed, strength=float(hires.denoising_strength),
                      hires={"first_pass": (height, width), "fields": hires.parameters(num_steps)})
    return images
