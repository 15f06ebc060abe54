"""Request and response bodies of the A1111-compatible API (field names and defaults as AUTOMATIC1111's).

Unknown fields are accepted and ignored, so requests written for A1111 work unchanged; ``null`` means "the
default". Limits keep one request from taking the server down: sides in [64, 2048] and multiples of 64,
``steps`` in [1, 150], ``batch_size`` ≤ 8, ``n_iter`` ≤ 16, at most 32 images per request, prompts ≤ 10,000
characters. Numbers must be finite (JSON's ``NaN``, ``Infinity`` and overflowing ``1e400`` are refused wherever
they appear). ``width``/``height`` left out mean the model's native size. The seeds of a request's images,
``seed`` to ``seed + batch_size * n_iter - 1``, must all be at most ``MAX_SEED`` (2**63 - 1).

Example:
    >>> Txt2ImgRequest.model_validate({"prompt": "a cat", "steps": 4, "future_field": 1}).steps
    4
"""

import math
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sd_keras.defaults import SERVER as DEFAULTS  # A1111's API defaults, shared with `sd-keras serve --help`

MAX_SIDE = 2048
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_N_ITER = 16
MAX_IMAGES_PER_REQUEST = 32
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1
SHOWN_CHARS = 100  # how much of a client's value an error message repeats


def shorten(text, limit=SHOWN_CHARS):
    """``text`` cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _first_non_finite(data):
    """The path (``cfg_scale``, ``override_settings.x``, ``script_args[2]``) of the first NaN or infinite
    number in a JSON body, or None."""
    pending = [(data, "")]
    while pending:
        value, path = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path or "body"
        if isinstance(value, dict):
            pending.extend((item, f"{path}.{shorten(key)}" if path else shorten(key))
                           for key, item in reversed(list(value.items())))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{index}]") for index, item in reversed(list(enumerate(value))))
    return None


def _nearest_multiples(value, base=64):
    low = max(base, min(MAX_SIDE, (value // base) * base))
    high = min(MAX_SIDE, low + base) if low < value else low
    return " or ".join(str(v) for v in sorted({low, high}))


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: List[str] = Field(default_factory=list, max_length=64)
    seed: int = Field(DEFAULTS.seed, ge=-1, le=MAX_SEED,
                      description="-1 draws a random seed; the one used is reported")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = Field(None, max_length=100)
    sampler_index: Optional[str] = Field(DEFAULTS.sampler, max_length=100,
                                         description="A1111's older name for sampler_name")
    scheduler: Optional[str] = Field(None, max_length=100)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER)
    steps: int = Field(DEFAULTS.steps, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(DEFAULTS.cfg_scale, ge=0, le=100, allow_inf_nan=False)
    width: Optional[int] = Field(None, description="a multiple of 64 in [64, 2048]; default: the model's native width")
    height: Optional[int] = Field(None,
                                  description="a multiple of 64 in [64, 2048]; default: the model's native height")
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    override_settings: Dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    script_name: Optional[str] = None
    script_args: List[Any] = Field(default_factory=list)
    alwayson_scripts: Dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        if isinstance(data, dict):
            # JSON allows NaN/Infinity (and 1e400 overflows to inf); no field means anything by them, and a
            # non-finite number cannot be echoed back in JSON
            where = _first_non_finite(data)
            if where is not None:
                raise ValueError(f"{where}: must be finite")
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_64(cls, value, info):
        if value < 64 or value > MAX_SIDE or value % 64:
            raise ValueError(f"{info.field_name}={value} is not a multiple of 64 in [64, {MAX_SIDE}]; "
                             f"nearest valid: {_nearest_multiples(max(value, 1))}")
        return value

    @model_validator(mode="after")
    def _check_supported(self):
        images = self.batch_size * self.n_iter
        if images > MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"batch_size * n_iter = {images} images; at most {MAX_IMAGES_PER_REQUEST} per request")
        if self.seed != -1 and self.seed + images - 1 > MAX_SEED:
            # image i uses seed + i (as in sd_keras.noise); every reported seed must be one a request may send
            raise ValueError(f"seed: the {images} images would use seeds {self.seed} to {self.seed + images - 1}, "
                             f"over the largest seed {MAX_SEED}; use a seed of at most {MAX_SEED - images + 1}")
        if self.subseed_strength > 0:
            raise ValueError("subseed_strength > 0 (variation seeds) is not supported")
        if self.restore_faces:
            raise ValueError("restore_faces is not supported")
        if self.tiling:
            raise ValueError("tiling is not supported")
        if self.script_name:
            raise ValueError(f"script_name: script {shorten(repr(self.script_name))} not found (this server has no "
                             "scripts)")
        if self.alwayson_scripts:
            name = next(iter(self.alwayson_scripts))
            raise ValueError(f"alwayson_scripts: always-on script {shorten(repr(name))} not found (this server has "
                             "no scripts)")
        return self


class Txt2ImgRequest(_Request):
    """``POST /sdapi/v1/txt2img``."""

    # hires fix (A1111's fields; sd_keras.hires): used when enable_hr is true
    enable_hr: bool = False
    denoising_strength: Optional[float] = Field(None, ge=0, le=1)  # the second pass's (default 0.7)
    hr_scale: float = Field(2.0, ge=1, le=8)
    hr_upscaler: Optional[str] = Field(None, max_length=256)  # None: "Latent"
    hr_second_pass_steps: int = Field(0, ge=0, le=1000)  # 0: as many as steps
    hr_resize_x: int = Field(0, ge=0, le=4096)
    hr_resize_y: int = Field(0, ge=0, le=4096)
    hr_sampler_name: Optional[str] = Field(None, max_length=128)  # None: sampler_name
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)  # "": prompt
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)  # "": negative_prompt
    # sd_keras: the VAE in tiles (True / False; None: automatic above 1024x1024 pixels)
    tiled_vae: Optional[bool] = None
    # SDXL refiner (A1111's fields): a registered SDXL refiner model continues the base model's latent from
    # ``refiner_switch_at`` (a fraction of the steps, diffusers' denoising_end / denoising_start)
    refiner_checkpoint: Optional[str] = Field(None, max_length=1024)
    refiner_switch_at: Optional[float] = Field(None, gt=0, lt=1, allow_inf_nan=False)


class Img2ImgRequest(_Request):
    """``POST /sdapi/v1/img2img``: image-to-image, or inpainting when ``mask`` is given."""

    init_images: List[str] = Field(..., min_length=1, max_length=1,
                                   description="one base64 image (raw or data: URL)")
    resize_mode: int = 0
    denoising_strength: float = Field(DEFAULTS.strength, ge=0, le=1, allow_inf_nan=False)
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = Field(None, description="base64 image; white = repaint")
    mask_blur: int = Field(4, ge=0, le=64)
    mask_blur_x: Optional[int] = None
    mask_blur_y: Optional[int] = None
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: Optional[float] = None
    include_init_images: bool = False


class ImageResponse(BaseModel):
    """Response of txt2img and img2img: base64 PNGs, the request echoed, and ``info`` as a JSON string."""

    images: List[str] = Field(default_factory=list, description="base64 PNGs with the 'parameters' chunk")
    parameters: Dict[str, Any]
    info: str


class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1")
    eta_relative: float = Field(description="estimated seconds left, from the step times so far (0 before the "
                                            "first step)")
    state: Dict[str, Any]
    current_image: Optional[str] = None
    textinfo: Optional[str] = Field(default=None, description="'Step N/M', or 'compiling (first run of this shape)' "
                                                              "while the sampling loop compiles")
    compiling: bool = Field(default=False, description="the sampling loop is compiling for a new shape (its first "
                                                       "run; eta_relative does not count it)")


class PNGInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    image: str = Field(description="base64 PNG (raw or data: URL)")


class PNGInfoResponse(BaseModel):
    info: str
    items: Dict[str, Any]
    parameters: Dict[str, Any]


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SamplerItem(BaseModel):
    name: str
    aliases: List[str]
    options: Dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[List[str]] = None
    default_rho: Optional[float] = None
    need_inner_model: Optional[bool] = None


class ScriptsList(BaseModel):
    txt2img: List[str] = Field(default_factory=list)
    img2img: List[str] = Field(default_factory=list)
