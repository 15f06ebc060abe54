"""The FastAPI application: AUTOMATIC1111-compatible ``/sdapi/v1`` endpoints, health, metrics and the web page.

Example:
    >>> settings = ServerSettings(models={"tiny": "tiny"}, model="tiny")    # doctest: +SKIP
    >>> app = create_app(settings)  # loads the model; serve it with uvicorn.run(app, port=7860)  # doctest: +SKIP
"""

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import os
import reprlib
import time
from typing import Any, Dict, Optional, Tuple

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

import sd_keras
from sd_keras import defaults, metadata
from sd_keras.errors import InputError
from sd_keras.generator import Generator, check_size
from sd_keras.server import images as image_io
from sd_keras.server import schemas
from sd_keras.server.generation import (LOAD_MODEL, GenerationRunner, GenerationSpec, ModelRegistry,
                                        UnknownModelError, hide_paths, install_cancel_log_filter)
from sd_keras.server.metrics import CONTENT_TYPE, ServerMetrics
from sd_keras.server.middleware import (ApiKeyMiddleware, BodyLimitMiddleware, HostOriginMiddleware,
                                        MetricsMiddleware, SecurityHeadersMiddleware)
from sd_keras.server.queue import GenerationCancelled, Job, JobQueue, QueueFullError, ServerStopping, progress_text
from sd_keras.server.samplers import resolve_sampler, sampler_items, scheduler_items

LOG = logging.getLogger("sd_keras.server")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DISCONNECT_POLL_SECONDS = 0.1
DOCS_ASSETS_URL = "/static/docs"
PROGRESS_PATH = "/sdapi/v1/progress"


def _docs_assets_dir():
    """Swagger UI's and Redoc's files, from the ``fastapi-offline`` package (the ``serve`` extra): Swagger UI 5,
    which reads the OpenAPI 3.1 that FastAPI writes."""
    import fastapi_offline

    return os.path.join(os.path.dirname(os.path.abspath(fastapi_offline.__file__)), "static")


class _QuietProgressPolls(logging.Filter):
    """Drops uvicorn's access line for a successful ``GET /sdapi/v1/progress`` (the page polls it several times
    a second) unless the access log is at DEBUG (``--log-level debug``)."""

    def filter(self, record):
        args = record.args  # uvicorn: (client, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and str(args[2]).split("?", 1)[0] == PROGRESS_PATH \
                and isinstance(args[4], int) and args[4] < 400:
            return logging.getLogger("uvicorn.access").isEnabledFor(logging.DEBUG)
        return True


def install_progress_log_filter():
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _QuietProgressPolls) for f in access_log.filters):
        access_log.addFilter(_QuietProgressPolls())


@dataclasses.dataclass
class ServerSettings:
    """How ``sd-keras serve`` runs: registered models (name → preset or path), the key and the limits."""

    models: Dict[str, str]
    model: str
    api_key: Optional[str] = None
    queue_size: int = 16
    max_batch: int = 4
    max_body_bytes: int = 20 * 2**20
    dtype: str = "float32"
    output_dir: Optional[str] = None
    max_programs: Optional[int] = 16      # compiled programs kept per model (None: no bound)
    allowed_hosts: Tuple[str, ...] = ()   # Host names accepted besides the address reached (no API key only)
    upscalers_dir: Optional[str] = None   # upscaler files (.pth/.safetensors) offered by /sdapi/v1/upscalers
    read_timeout: Optional[float] = 30.0  # most seconds between two parts of a request body
    prompt_syntax: Optional[str] = defaults.SERVER.prompt_syntax  # None: prompts are plain text
    lora_dir: Optional[str] = None        # where <lora:name:weight> tags find their files


class ApiError(Exception):
    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _error_response(status, detail, headers=None):
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _SHORT_REPR.maxlong = schemas.SHOWN_CHARS
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist = 2, 4, 4


def _echo(value):
    """A client's value as an error may repeat it: short, and valid JSON (no NaN, no megabytes)."""
    if value is None or isinstance(value, (bool, str)):
        return value if not isinstance(value, str) else schemas.shorten(value)
    if isinstance(value, int) and abs(value) < 2**64 or isinstance(value, float) and math.isfinite(value):
        return value
    return _SHORT_REPR.repr(value)


def _location(error):
    return ".".join(schemas.shorten(p) for p in error.get("loc", ()) if p != "body")


def _validation_message(errors):
    parts = []
    for error in errors:
        location = _location(error)
        if error.get("type") == "finite_number":
            message = "must be finite"
        else:
            message = schemas.shorten(str(error.get("msg", "invalid")).removeprefix("Value error, "), 300)
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def _validation_errors(errors):
    """pydantic's error list with every echoed value shortened (``input``, ``ctx``)."""
    return [{"type": str(error.get("type")), "loc": [_echo(p) for p in error.get("loc", ())],
             "msg": schemas.shorten(error.get("msg", ""), 300), "input": _echo(error.get("input")),
             **({"ctx": {str(k): _echo(v if isinstance(v, (int, float, str)) else str(v))
                         for k, v in error["ctx"].items()}} if isinstance(error.get("ctx"), dict) else {})}
            for error in errors]


class _Server:
    """State shared by the route handlers: the queue, the model registry, the metrics."""

    def __init__(self, settings, registry):
        self.settings = settings
        self.registry = registry
        self.queue = JobQueue(GenerationRunner(registry), max_depth=settings.queue_size,
                              max_batch=settings.max_batch, on_finish=self._on_finish)
        self.metrics = ServerMetrics(self.queue, registry.programs)
        self._saved_count = itertools.count()
        # the model setting (``sd_model_checkpoint``): what a request without an override runs on. A request's
        # override loads its model for that request only (unless it asks to keep it); the next request without
        # one loads the selected model back.
        self.selected = settings.model
        self.upscalers = None  # the upscaler files (sd_keras.upscale.Upscalers), set by create_app

    def native_size(self, name):
        """(height, width) a model was trained at: of the loaded model, of a preset, or (a checkpoint not
        loaded yet) the loaded model's as the best guess."""
        from sd_keras.config import PRESETS

        model = self.registry.model
        if name != self.registry.name or model is None:
            spec = self.registry.specs.get(name)
            if isinstance(spec, str) and spec in PRESETS:
                return tuple(PRESETS[spec].image_size)
            from sd_keras.config_sdxl import SDXL_PRESETS

            if isinstance(spec, str) and spec in SDXL_PRESETS:
                return tuple(SDXL_PRESETS[spec].image_size)
        return tuple(model.config.image_size) if isinstance(model, Generator) else (512, 512)

    def _on_finish(self, job, seconds, outcome):
        if isinstance(outcome, BaseException):
            cancelled = isinstance(outcome, GenerationCancelled)
            result = "cancelled" if cancelled else "error"
            if not cancelled:
                self.metrics.errors.inc(type="model_load" if job.kind == LOAD_MODEL else "generation")
        elif job.kind == LOAD_MODEL:
            result = "ok"
        else:
            # "cancelled": stopped early because its client left; "interrupted": stopped by /interrupt
            result = ("interrupted" if job.interrupted else "cancelled") if outcome.interrupted else "ok"
            self.metrics.images.inc(len(outcome.images))
            self.metrics.generation_seconds.observe(seconds, kind=job.kind)
            if outcome.batched_with:
                self.metrics.batched_jobs.inc()
        self.metrics.jobs.inc(kind=job.kind, outcome=result)

    # -- requests → jobs ---------------------------------------------------------------------------------------
    def build_spec(self, body, mode):
        """Validate what pydantic cannot (sampler, model, images) and decode the images; ApiError if bad."""
        from sd_keras import noise

        try:
            sampler = resolve_sampler(body.sampler_name or body.sampler_index, body.scheduler)
        except InputError as error:
            raise ApiError(422, str(error)) from None
        model_name = body.override_settings.get("sd_model_checkpoint")
        if model_name is not None:
            try:
                model_name = self.registry.check(model_name)
            except UnknownModelError as error:
                raise ApiError(404, f"override_settings.sd_model_checkpoint: {error}") from None
            if not body.override_settings_restore_afterwards:
                self.selected = model_name  # A1111: the override becomes the setting
        else:
            model_name = self.selected
        seed = noise.random_seed() if body.seed == -1 else body.seed
        self.check_prompts(body.prompt, body.negative_prompt)
        native_height, native_width = self.native_size(model_name)
        spec = GenerationSpec(mode=mode, model_name=model_name, prompt=body.prompt,
                              negative_prompt=body.negative_prompt, seed=seed, batch_size=body.batch_size,
                              n_iter=body.n_iter, steps=body.steps, cfg_scale=body.cfg_scale,
                              width=body.width or native_width, height=body.height or native_height,
                              sampler=sampler, tiled_vae=getattr(body, "tiled_vae", None))
        if getattr(body, "refiner_checkpoint", None):
            if body.enable_hr:
                raise ApiError(422, "refiner_checkpoint: cannot be combined with enable_hr")
            try:
                spec.refiner = self.registry.check(body.refiner_checkpoint)
            except UnknownModelError as error:
                raise ApiError(422, f"refiner_checkpoint: {error}") from None
            spec.refiner_switch_at = 0.8 if body.refiner_switch_at is None else body.refiner_switch_at
        if mode == "txt2img" and body.enable_hr:
            spec.hires = self.hires_of(body)
            spec.strength = spec.hires.denoising_strength
            try:
                target_height, target_width = spec.hires.target_size(spec.height, spec.width)
                check_size(target_height, target_width)
            except InputError as error:
                raise ApiError(422, f"hires fix: target size: {error}") from None
        if mode == "img2img":
            from PIL import ImageFilter, ImageOps

            try:
                spec.init_image = image_io.decode_image(body.init_images[0], "init_images[0]")
                spec.strength = body.denoising_strength
                if body.mask:
                    mask = image_io.decode_image(body.mask, "mask").convert("L")
                    mask = mask.resize((body.width, body.height))  # A1111 fits the mask to the output size
                    if body.inpainting_mask_invert:
                        mask = ImageOps.invert(mask)
                    if body.mask_blur:
                        mask = mask.filter(ImageFilter.GaussianBlur(body.mask_blur))
                    spec.mode, spec.mask, spec.mask_blur = "inpaint", mask, body.mask_blur
            except image_io.ImageInputError as error:
                raise ApiError(422, str(error)) from None
        return spec

    def check_prompts(self, prompt, negative_prompt):
        """ApiError 422 for prompt syntax that cannot be read or a ``<lora:...>`` tag that names no file of the
        LoRA folder (the message lists its LoRAs; folders shown by base name only), before the job is queued."""
        if self.settings.prompt_syntax is None:
            return
        from sd_keras.errors import InputError
        from sd_keras.prompt_syntax import parse_prompt
        from sd_keras.prompts import find_lora

        try:
            if negative_prompt and parse_prompt(negative_prompt).loras:
                raise InputError("negative_prompt: <lora:...> tags are read from the prompt only")
            for lora in parse_prompt(prompt).loras:
                find_lora(lora.name, self.settings.lora_dir)
        except InputError as error:
            raise ApiError(422, hide_paths(str(error))) from None

    async def run_job(self, request, job):
        """Queue ``job`` and wait for it; None when the client went away (the job is then cancelled)."""
        try:
            self.queue.submit(job)
        except QueueFullError as error:
            self.metrics.jobs.inc(kind=job.kind, outcome="rejected")
            raise ApiError(503, str(error), {"Retry-After": str(error.retry_after)}) from None
        except ServerStopping as error:
            raise ApiError(503, str(error)) from None
        future = asyncio.wrap_future(job.future)
        # a result nobody awaits (client gone) must not be logged as "exception never retrieved"
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                break
            if await request.is_disconnected():
                if self.queue.cancel(job):  # it was still waiting: the worker never sees it
                    self.metrics.jobs.inc(kind=job.kind, outcome="cancelled")
                LOG.info("%s cancelled: the client disconnected", job.kind)
                return None
        try:
            return future.result()
        except UnknownModelError as error:
            raise ApiError(404, str(error)) from None
        except InputError as error:  # bad input, and only that, is the client's error; anything else is a bug
            raise ApiError(422, " ".join(str(error).split())) from None
        except ServerStopping as error:
            raise ApiError(503, str(error)) from None
        except GenerationCancelled as error:
            raise ApiError(409, str(error)) from None
        except FloatingPointError as error:
            raise ApiError(500, str(error)) from None
        except Exception as error:  # noqa: BLE001 - a bug: the traceback goes to the log, not to the client
            LOG.error("%s failed: %s: %s", job.kind, type(error).__name__, error, exc_info=error)
            raise ApiError(500, f"{job.kind} failed: {type(error).__name__}: {' '.join(str(error).split())}"
                           ) from None

    def hires_of(self, body):
        """The ``HiresFix`` of a txt2img request with ``enable_hr``; ApiError 422 for bad fields."""
        from sd_keras.hires import DEFAULT_STRENGTH, LATENT_UPSCALERS, HiresFix
        from sd_keras.upscale import BUILTIN

        upscaler = body.hr_upscaler or "Latent"
        if upscaler not in LATENT_UPSCALERS and upscaler not in BUILTIN:
            path = self.upscalers.path(upscaler) if self.upscalers is not None else None
            if path is None:
                names = HiresFix.upscaler_names() + ([name for name in self.upscalers.names()
                                                      if name not in BUILTIN] if self.upscalers else [])
                raise ApiError(422, f"hr_upscaler {upscaler!r}: unknown; available: {', '.join(names)}")
            upscaler = path
        hr_sampler = None
        try:
            if body.hr_sampler_name and body.hr_sampler_name != "Use same sampler":
                hr_sampler = resolve_sampler(body.hr_sampler_name, body.scheduler).sd_keras_name
            return HiresFix(scale=body.hr_scale, upscaler=upscaler, second_pass_steps=body.hr_second_pass_steps,
                            denoising_strength=(DEFAULT_STRENGTH if body.denoising_strength is None
                                                else body.denoising_strength),
                            resize_x=body.hr_resize_x, resize_y=body.hr_resize_y, sampler=hr_sampler,
                            prompt=body.hr_prompt or None, negative_prompt=body.hr_negative_prompt or None)
        except InputError as error:
            raise ApiError(422, f"hires fix: {error}") from None

    def size_warnings(self, spec, model_name):
        """A note when the size is larger than the model's native one without hires fix (allowed, but it often
        repeats objects)."""
        native_height, native_width = self.native_size(model_name)
        if spec.hires is not None or (spec.width <= native_width and spec.height <= native_height):
            return []
        return [f"{spec.width}x{spec.height} is larger than {native_width}x{native_height}, the native size of model "
                f"{model_name!r}: objects may repeat and the composition may fall apart. For a larger image, "
                f"generate at {native_width}x{native_height} with hires fix (enable_hr with hr_scale or "
                "hr_resize_x / hr_resize_y), or upscale it with img2img."]

    def respond(self, body, spec, outcome):
        """Encode the images (PNG + parameters) and build A1111's response; optionally save the PNGs."""
        encoded = [image_io.encode_png(image, text) for image, text in zip(outcome.images, outcome.infotexts)]
        if body.save_images and self.settings.output_dir:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for image, seed, text in zip(outcome.images, outcome.seeds, outcome.infotexts):
                # the counter keeps two requests with one seed in the same second from overwriting each other
                name = f"{stamp}-{next(self._saved_count):05d}-{seed}.png"
                metadata.save_png(image, os.path.join(self.settings.output_dir, name), text)
        parameters = body.model_dump()
        parameters["width"], parameters["height"] = spec.width, spec.height  # the native size when left out
        if isinstance(body, schemas.Img2ImgRequest) and not body.include_init_images:
            parameters["init_images"], parameters["mask"] = None, None
        seeds = outcome.seeds or [spec.seed]
        count = len(outcome.images)
        info = {
            "prompt": spec.prompt, "all_prompts": [spec.prompt] * count,
            "negative_prompt": spec.negative_prompt, "all_negative_prompts": [spec.negative_prompt] * count,
            "seed": seeds[0], "all_seeds": outcome.seeds, "subseed": body.subseed,
            "all_subseeds": [body.subseed] * count, "subseed_strength": body.subseed_strength,
            "width": spec.width, "height": spec.height, "sampler_name": spec.sampler.name,
            "cfg_scale": spec.cfg_scale, "steps": spec.steps, "batch_size": spec.batch_size,
            "restore_faces": False, "face_restoration_model": None, "sd_model_name": outcome.model_name,
            "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
            "seed_resize_from_w": body.seed_resize_from_w, "seed_resize_from_h": body.seed_resize_from_h,
            "denoising_strength": spec.strength,
            "extra_generation_params": {"Schedule type": spec.sampler.schedule_label},
            "index_of_first_image": 0, "infotexts": outcome.infotexts, "styles": body.styles,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
            "is_using_inpainting_conditioning": False, "version": f"sd_keras {sd_keras.__version__}",
            "interrupted": outcome.interrupted, "warnings": self.size_warnings(spec, outcome.model_name),
        }
        return {"images": encoded if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}


def create_app(settings, *, registry=None, loader=None):
    """The ASGI app for ``settings``; loads the initial model unless a ready ``registry`` is given."""
    if registry is None:
        registry = ModelRegistry(settings.models, settings.model, loader=loader, dtype=settings.dtype,
                                 max_programs=settings.max_programs, prompt_syntax=settings.prompt_syntax,
                                 lora_dir=settings.lora_dir)
        registry.ensure(settings.model)
    install_cancel_log_filter()
    install_progress_log_filter()
    server = _Server(settings, registry)

    async def lifespan(app):
        server.queue.start()
        yield
        await run_in_threadpool(server.queue.stop)

    app = FastAPI(title="sd_keras", version=sd_keras.__version__, lifespan=lifespan,
                  description="Stable Diffusion with Keras 3: an AUTOMATIC1111-compatible API (/sdapi/v1).",
                  docs_url=None, redoc_url=None)  # served below from local files, not from a CDN
    app.state.server = server
    from sd_keras.server.extras import create_router
    from sd_keras.upscale import Upscalers

    server.upscalers = Upscalers(settings.upscalers_dir)  # also the hires fix's hr_upscaler files
    app.include_router(create_router(server.upscalers))  # /upscalers, /extra-*-image(s)

    @app.exception_handler(ApiError)
    async def api_error(request, error):
        return _error_response(error.status, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        errors = error.errors()
        return JSONResponse({"detail": _validation_message(errors), "errors": _validation_errors(errors)},
                            status_code=422)

    async def generate(request, body, mode):
        spec = await run_in_threadpool(server.build_spec, body, mode)
        job = Job(spec.mode, spec, batch_key=spec.batch_key(), num_images=spec.num_images)
        started = time.monotonic()
        outcome = await server.run_job(request, job)
        if outcome is None:
            return Response(status_code=499)  # nobody is there to read it
        LOG.info("%s %dx%d steps=%d sampler=%r seed=%d images=%d%s prompt=%r in %.2f s", spec.mode, spec.width,
                 spec.height, spec.steps, spec.sampler.sd_keras_name, spec.seed, len(outcome.images),
                 " (interrupted)" if outcome.interrupted else "", spec.prompt, time.monotonic() - started)
        return await run_in_threadpool(server.respond, body, spec, outcome)

    @app.post("/sdapi/v1/txt2img", response_model=schemas.ImageResponse, tags=["generation"])
    async def txt2img(request: Request, body: schemas.Txt2ImgRequest):
        """Text to image. Returns base64 PNGs (with the A1111 ``parameters`` chunk) and ``info`` (JSON text)."""
        return await generate(request, body, "txt2img")

    @app.post("/sdapi/v1/img2img", response_model=schemas.ImageResponse, tags=["generation"])
    async def img2img(request: Request, body: schemas.Img2ImgRequest):
        """Image to image from ``init_images[0]``; inpainting when ``mask`` is given (white = repaint)."""
        return await generate(request, body, "img2img")

    @app.get(PROGRESS_PATH, response_model=schemas.ProgressResponse, tags=["generation"])
    async def progress(skip_current_image: bool = False):
        """Progress of the running generation (0 to 1), its ETA and A1111's state snapshot."""
        value, eta, state = server.queue.progress.snapshot()
        state["queue_depth"] = server.queue.depth
        return {"progress": value, "eta_relative": eta, "state": state, "current_image": None,
                "textinfo": progress_text(state), "compiling": state["compiling"]}

    @app.post("/sdapi/v1/interrupt", tags=["generation"])
    async def interrupt():
        """Stop the running generation at its next step; it answers with the images finished so far."""
        server.queue.interrupt()
        return {}

    @app.get("/sdapi/v1/options", tags=["settings"])
    async def get_options():
        """A1111's settings that apply here, plus the loaded model's native size (``sd_keras_default_*``)."""
        height, width = server.native_size(server.selected)
        return {"sd_model_checkpoint": server.selected, "sd_checkpoint_hash": None, "samples_format": "png",
                "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "sd_keras_default_width": width,
                "sd_keras_default_height": height}

    @app.post("/sdapi/v1/options", tags=["settings"])
    async def set_options(request: Request, options: Dict[str, Any] = Body(...)):
        """Only ``sd_model_checkpoint`` is honoured (a registered model name); other keys are ignored."""
        name = options.get("sd_model_checkpoint")
        if name is None:
            return None
        try:
            name = registry.check(name)
        except UnknownModelError as error:
            raise ApiError(404, f"sd_model_checkpoint: {error}") from None
        previous, server.selected = server.selected, name  # requests queued from now on run on it
        try:
            loaded = await server.run_job(request, Job(LOAD_MODEL, name))
        except ApiError:
            server.selected = previous  # refused or failed: the setting stays as it was
            raise
        if loaded is None:
            return Response(status_code=499)
        return None

    @app.get("/sdapi/v1/sd-models", response_model=list[schemas.SDModelItem], tags=["settings"])
    async def sd_models():
        # file names only: the server's folders are nobody's business
        return [{"title": name, "model_name": name, "filename": os.path.basename(os.path.normpath(spec))}
                for name, spec in registry.specs.items()]

    @app.get("/sdapi/v1/samplers", response_model=list[schemas.SamplerItem], tags=["settings"])
    async def samplers():
        return sampler_items()

    @app.get("/sdapi/v1/schedulers", response_model=list[schemas.SchedulerItem], tags=["settings"])
    async def schedulers():
        return scheduler_items()

    @app.get("/sdapi/v1/scripts", response_model=schemas.ScriptsList, tags=["settings"])
    async def scripts():
        return {"txt2img": [], "img2img": []}

    @app.post("/sdapi/v1/png-info", response_model=schemas.PNGInfoResponse, tags=["tools"])
    async def png_info(body: schemas.PNGInfoRequest):
        """The ``parameters`` text of a PNG, its other text chunks, and the parameters parsed A1111's way."""
        try:
            chunks = await run_in_threadpool(image_io.image_text_chunks, body.image, "image")
        except image_io.ImageInputError as error:
            raise ApiError(422, str(error)) from None
        text = chunks.pop("parameters", "")
        return {"info": text, "items": chunks, "parameters": _a1111_parameters(text) if text else {}}

    @app.get("/health", tags=["service"])
    async def health():
        """Liveness: public, no API key needed."""
        return {"status": "ok", "model_loaded": registry.model is not None,
                "auth_required": bool(settings.api_key)}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format: requests by endpoint and status, queue depth, generation seconds, errors."""
        return PlainTextResponse(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        """Swagger UI with its files served from the installed package: it works offline."""
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title} - API",
                              redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)

    # before "/static", which would otherwise take these paths; public like the rest of /static/
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_docs_assets_dir()), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    known_paths = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout=settings.read_timeout,
                       metrics=server.metrics)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(HostOriginMiddleware, allowed_hosts=settings.allowed_hosts,
                       check_host=not settings.api_key, metrics=server.metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, known_paths=known_paths)
    return app


def _a1111_parameters(text):
    """sd_keras's parsed parameters under A1111's keys (``Prompt``, ``Negative prompt``, ``Size-1``...)."""
    parsed = metadata.parse_parameters(text)
    result = {"Prompt": parsed.pop("prompt"), "Negative prompt": parsed.pop("negative_prompt")}
    for key, value in parsed.items():
        if key == "Size" and "x" in value:
            result["Size-1"], result["Size-2"] = value.split("x", 1)
        else:
            result[key] = value
    return result
