"""What the worker runs: the model registry (one model in memory) and generations for batches of jobs.

Models are chosen by registered name only (the models named with ``-m`` or found by ``--models-dir`` at start;
presets are not registered unless named), never by a path from a request. A batch of compatible text-to-image
jobs (same model, size, steps, sampler, CFG; a sampler without per-step noise) runs as one ``generate_image``
call: each job's initial noise is drawn from its own seed, so every image equals the one a lone request with that
seed gives.

Example:
    >>> registry = ModelRegistry({"tiny": "tiny"}, "tiny")              # doctest: +SKIP
    >>> runner = GenerationRunner(registry)                               # doctest: +SKIP
    >>> queue = JobQueue(runner, max_depth=16)                            # doctest: +SKIP
"""

import dataclasses
import gc
import logging
import os
import re
import threading
import time
from typing import Any, List, Optional

import numpy as np

import sd_keras
from sd_keras import metadata
from sd_keras.generator import Generator
from sd_keras.server.queue import GenerationCancelled, RunContext
from sd_keras.server.samplers import ResolvedSampler

LOG = logging.getLogger("sd_keras.server")
LOAD_MODEL = "load_model"
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")
_LORA_TAG = re.compile(r"<lora:[^>]+>")


class UnknownModelError(LookupError):
    """A model name that is not registered."""


class ModelLoadError(RuntimeError):
    """Loading a registered model failed; the message names files by base name only (clients see it)."""


_PATH = re.compile(r"(?<![\w.:/\\…])(?:~|[A-Za-z]:)?(?:[/\\][^\s'\"/\\,;:()\[\]]+)+")


_QUOTED_PATH = re.compile(r"""(['"])((?:~|[A-Za-z]:)?[/\\][^'"]*)\1""")


def _base(path):
    return "…/" + re.split(r"[/\\]", path)[-1]


def hide_paths(text):
    """``text`` with every absolute path cut to ``…/`` and its base name (the server's folders stay private)."""
    text = _QUOTED_PATH.sub(lambda match: match.group(1) + _base(match.group(2)) + match.group(1), text)
    return _PATH.sub(lambda match: _base(match.group(0)), text)


def model_name_for(spec):
    """The name a ``-m`` spec is served under: a preset's name, or a file or folder's base name."""
    base = os.path.basename(os.path.normpath(spec))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in (".safetensors", ".ckpt", ".h5", ".keras") else base


def _program_cache(model):
    """The compiled programs of a model (``Generator.programs``); None when its engine compiles nothing."""
    return model.programs if isinstance(model, Generator) else None


def _count(cache, key):
    return 0 if cache is None else getattr(cache, key)


class ModelRegistry:
    """Registered model names → how to load them; holds the one loaded model.

    Only the worker thread calls ``ensure``; request handlers read ``name`` and ``names()``. The loaded model
    keeps at most ``max_programs`` compiled programs (None: no bound), the least recently used dropped first.
    """

    def __init__(self, specs, initial, *, loader=None, dtype="float32", max_programs=None, prompt_syntax=None,
                 lora_dir=None):
        if initial not in specs:
            raise UnknownModelError(f"model {initial!r} is not registered")
        self.specs = dict(specs)
        self.initial = initial
        self.dtype = dtype
        self.max_programs = max_programs
        self.prompt_syntax, self.lora_dir = prompt_syntax, lora_dir  # given to every model loaded
        self._loader = loader
        self.model = None
        self.name = None
        self._lock = threading.Lock()
        self.refiner_model, self.refiner_name = None, None  # an SDXL refiner held beside the model
        self._retired = {"compilations": 0, "evictions": 0}  # while models loaded before the current one were
        self._baseline = {"compilations": 0, "evictions": 0}  # the current model's counts when it was loaded

    def _counts_since_load(self, model):
        cache = _program_cache(model)
        return {key: _count(cache, key) - self._baseline[key] for key in self._baseline}

    def programs(self):
        """Compiled programs: ``held`` now, their ``limit``, and ``compilations`` / ``evictions`` since start."""
        model = self.model
        cache = _program_cache(model)
        counts = {"held": len(cache) if cache is not None else 0, "limit": self.max_programs or 0}
        since_load = self._counts_since_load(model)
        for key, retired in self._retired.items():
            counts[key] = retired + since_load[key]
        return counts

    def _retire(self, model):
        cache = _program_cache(model)
        if cache is not None:
            for key, value in self._counts_since_load(model).items():
                self._retired[key] += value

    def names(self):
        return list(self.specs)

    def check(self, name):
        """The registered name that ``name`` means; UnknownModelError unless there is one.

        A1111 clients send checkpoint titles such as ``"v1-5.safetensors [6ce0161689]"``: the ``[hash]`` and a
        weights file extension are ignored, nothing else is.
        """
        if isinstance(name, str) and name not in self.specs:
            name = _TITLE_HASH.sub("", name)
            name = model_name_for(name) if os.path.basename(name) == name else name
        if not isinstance(name, str) or name not in self.specs:
            raise UnknownModelError(f"model {name!r} is not registered; available: {', '.join(self.specs)}")
        return name

    def _load(self, name):
        loader = self._loader
        if loader is None:
            from sd_keras.loading import load as loader
        return loader(self.specs[name], dtype=self.dtype)

    def _bounded(self, model):
        model.prompt_syntax, model.lora_dir = self.prompt_syntax, self.lora_dir
        cache = _program_cache(model)
        if cache is not None and self.max_programs is not None:
            cache.resize(self.max_programs)
        self._baseline = {key: _count(cache, key) for key in self._baseline}
        return model

    def ensure_refiner(self, name):
        """The refiner model ``name``, loaded beside the model (one refiner in memory)."""
        name = self.check(name)
        with self._lock:
            if self.refiner_name != name or self.refiner_model is None:
                self.refiner_model, self.refiner_name = None, None
                gc.collect()
                started = time.monotonic()
                self.refiner_model = self._load(name)
                self.refiner_model.prompt_syntax, self.refiner_model.lora_dir = self.prompt_syntax, self.lora_dir
                self.refiner_name = name
                LOG.info("refiner %r loaded in %.1f s", name, time.monotonic() - started)
            return self.refiner_model

    def ensure(self, name):
        """Make ``name`` the loaded model (freeing the previous one first: one model in memory)."""
        self.check(name)
        with self._lock:
            if self.name == name and self.model is not None:
                return self.model
            previous = self.name
            self._retire(self.model)
            self.model, self.name = None, None
            gc.collect()
            started = time.monotonic()
            try:
                self.model = self._bounded(self._load(name))
            except BaseException:
                if previous is not None and previous != name:
                    LOG.warning("loading model %r failed; reloading %r", name, previous)
                    try:
                        self.model = self._bounded(self._load(previous))
                        self.name = previous
                    except Exception:  # noqa: BLE001 - the original error is the one to report
                        LOG.exception("reloading model %r failed too; no model is loaded", previous)
                raise
            self.name = name
            LOG.info("model %r loaded in %.1f s", name, time.monotonic() - started)
            return self.model


@dataclasses.dataclass
class GenerationSpec:
    """One request, validated and decoded: everything the worker needs to generate."""

    mode: str                 # "txt2img" | "img2img" | "inpaint"
    model_name: Optional[str]  # None: whichever model is loaded when the job runs
    prompt: str
    negative_prompt: str
    seed: int
    batch_size: int
    n_iter: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    sampler: ResolvedSampler
    strength: Optional[float] = None
    init_image: Any = None    # PIL image
    mask: Any = None          # PIL image, white = repaint, already blurred / inverted
    mask_blur: int = 0
    hires: Any = None         # sd_keras.hires.HiresFix (txt2img with enable_hr)
    tiled_vae: Optional[bool] = None
    refiner: Optional[str] = None            # a registered SDXL refiner model (txt2img)
    refiner_switch_at: Optional[float] = None  # the fraction of the schedule where it takes over

    @property
    def num_images(self):
        return self.batch_size * self.n_iter

    def seeds(self):
        """A1111's seeds: image ``i`` of the request uses ``seed + i`` (across ``n_iter`` too)."""
        return [self.seed + i for i in range(self.num_images)]

    def infotext(self, seed, model_name):
        settings = {"Steps": self.steps, "Sampler": self.sampler.name, "Schedule type": self.sampler.schedule_label,
                    "CFG scale": self.cfg_scale, "Seed": seed, "Size": f"{self.width}x{self.height}",
                    "Model": model_name}
        if self.mode != "txt2img":
            settings["Denoising strength"] = self.strength
        if self.hires is not None:
            settings.update(self.hires.parameters(self.steps))
        if self.mode == "inpaint":
            settings["Mask blur"] = self.mask_blur
        if self.refiner is not None:
            settings["Refiner"] = self.refiner
            settings["Refiner switch at"] = self.refiner_switch_at
        settings["Version"] = f"sd_keras {sd_keras.__version__}"
        return metadata.format_parameters(self.prompt, self.negative_prompt or None, **settings)

    def batch_key(self):
        """Jobs with equal keys may share one batch; None for jobs that must run alone."""
        from sd_keras.schedulers import get_sampler

        if (self.mode != "txt2img" or self.n_iter != 1 or self.hires is not None or self.tiled_vae is not None
                or self.refiner is not None):
            return None
        if get_sampler(self.sampler.sd_keras_name, self.steps).needs_noise:
            # ancestral samplers draw per-step noise from the batch's seed; batching would change the images
            return None
        # a prompt's <lora:...> tags change the model's weights for its generation: batch only equal tags
        loras = tuple(sorted(_LORA_TAG.findall(self.prompt)))
        return (self.model_name, self.width, self.height, self.steps, self.sampler.sd_keras_name,
                float(self.cfg_scale), loras)


@dataclasses.dataclass
class GenerationOutcome:
    """Images (uint8 arrays) with their seeds and infotexts; ``interrupted`` when stopped early."""

    images: List[np.ndarray]
    seeds: List[int]
    infotexts: List[str]
    model_name: str
    interrupted: bool = False
    seconds: float = 0.0
    batched_with: int = 0  # other jobs that ran in the same batch


class GenerationRunner:
    """The ``runner`` of the ``JobQueue``: loads models and runs generations, on the worker thread only."""

    def __init__(self, registry):
        self.registry = registry

    def _ensure(self, name):
        """``registry.ensure`` for a client's request: a failure is a ModelLoadError without folder names (the
        log keeps the original error)."""
        try:
            return self.registry.ensure(name)
        except UnknownModelError:
            raise
        except Exception as error:
            LOG.error("loading model %r failed", name, exc_info=error)
            raise ModelLoadError(f"loading model {name!r} failed: {type(error).__name__}: "
                                 f"{hide_paths(' '.join(str(error).split()))}") from None

    def __call__(self, jobs, context):
        first = jobs[0]
        if first.kind == LOAD_MODEL:
            self._ensure(first.spec)
            return [self.registry.name]
        # no model named: the one loaded when the job runs (a model switch queued before it has happened)
        model = self._ensure(first.spec.model_name or self.registry.name or self.registry.initial)
        if len(jobs) > 1 and isinstance(model, Generator):
            return self._run_batched(model, jobs, context)
        # run one by one, each job cancellable on its own
        return [self._run_one(model, job, RunContext([job], context.progress)) for job in jobs]

    def _call(self, model, spec, seed, progress):
        common = dict(negative_prompt=spec.negative_prompt or None, batch_size=spec.batch_size,
                      num_steps=spec.steps, unconditional_guidance_scale=spec.cfg_scale, seed=seed,
                      sampler=spec.sampler.sd_keras_name, height=spec.height, width=spec.width, progress=progress)
        model.tiled_vae = spec.tiled_vae
        if spec.mode == "txt2img":
            import warnings

            from sd_keras.generator import AboveNativeSizeWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AboveNativeSizeWarning)  # the response's info says it
                if spec.refiner is not None:
                    return self._refined(model, spec, common)
                return model.text_to_image(spec.prompt, hires=spec.hires, **common)
        # an engine that cannot do this (a bundle cannot inpaint) raises InputError: a 422 naming the cause
        if spec.mode == "inpaint":
            return model.inpaint(spec.prompt, spec.init_image, spec.mask, strength=spec.strength, **common)
        return model.image_to_image(spec.prompt, spec.init_image, spec.strength, **common)

    def _refined(self, model, spec, common):
        """SDXL base then refiner: the base stops at ``refiner_switch_at`` and hands its latent over."""
        from sd_keras.errors import InputError
        from sd_keras.pipeline_sdxl import StableDiffusionXL

        refiner = self.registry.ensure_refiner(spec.refiner)
        if not isinstance(model, StableDiffusionXL) or not isinstance(refiner, StableDiffusionXL):
            raise InputError("refiner_checkpoint: a refiner continues an SDXL model's generation; "
                             f"{self.registry.name!r} and {spec.refiner!r} must both be SDXL models")
        refiner.tiled_vae = spec.tiled_vae
        latent = model.text_to_image(spec.prompt, denoising_end=spec.refiner_switch_at, return_latent=True,
                                     **common)
        refined = dict(common, height=None, width=None)
        prompt = spec.prompt
        if refiner.prompt_syntax is not None:  # <lora:...> tags name LoRAs of the base model: the refiner skips them
            from sd_keras.prompt_syntax import extract_loras

            prompt = extract_loras(prompt)[0]
        return refiner.image_to_image(prompt, latent, denoising_start=spec.refiner_switch_at, **refined)

    def _run_one(self, model, job, context):
        spec = job.spec
        started = time.monotonic()
        context.progress.begin(spec.mode, spec.n_iter, spec.steps)
        images, seeds = [], spec.seeds()
        interrupted = False
        for iteration in range(spec.n_iter):
            context.progress.update(job_no=iteration)
            if context.all_cancelled():
                interrupted = True
                break
            try:
                batch = self._call(model, spec, spec.seed + iteration * spec.batch_size, context.step)
            except Exception:
                # an abort from the step callback surfaces as the backend's own error type on JAX
                if context.all_cancelled():
                    interrupted = True
                    break
                raise
            images.extend(np.asarray(batch))
        seeds = seeds[: len(images)]
        return GenerationOutcome(images, seeds, [spec.infotext(s, self.registry.name) for s in seeds],
                                 self.registry.name, interrupted, time.monotonic() - started)

    def _run_batched(self, model, jobs, context):
        from sd_keras import noise

        specs = [job.spec for job in jobs]
        first = specs[0]
        started = time.monotonic()
        context.progress.begin("txt2img", 1, first.steps)
        prompts = [spec.prompt for spec in specs for _ in range(spec.batch_size)]
        negatives = [spec.negative_prompt for spec in specs for _ in range(spec.batch_size)]
        latent_shape = (first.height // 8, first.width // 8, model.latent_channels)
        initial = np.concatenate([noise.latent_noise(spec.seed, spec.batch_size, latent_shape)[0] for spec in specs])
        try:
            images = model.generate_image(
                model.encode_text(prompts), negatives if any(negatives) else None, len(prompts), first.steps,
                first.cfg_scale, diffusion_noise=initial, sampler=first.sampler.sd_keras_name, height=first.height,
                width=first.width, progress=context.step)
        except Exception:
            if not context.all_cancelled():
                raise
            images = None
        seconds = time.monotonic() - started
        outcomes, offset = [], 0
        for spec in specs:
            if images is None:
                outcomes.append(GenerationOutcome([], [], [], self.registry.name, True, seconds, len(specs) - 1))
                continue
            own = list(np.asarray(images[offset: offset + spec.batch_size]))
            offset += spec.batch_size
            seeds = spec.seeds()
            outcomes.append(GenerationOutcome(own, seeds, [spec.infotext(s, self.registry.name) for s in seeds],
                                              self.registry.name, False, seconds, len(specs) - 1))
        return outcomes


def install_cancel_log_filter():
    """Keep JAX from logging a traceback for every cancelled generation (the abort is raised on purpose)."""

    class _DropCancelled(logging.Filter):
        def filter(self, record):
            error = record.exc_info[1] if record.exc_info else None
            return not isinstance(error, GenerationCancelled)

    logging.getLogger("jax._src.debugging").addFilter(_DropCancelled())


__all__ = ["ModelRegistry", "GenerationSpec", "GenerationOutcome", "GenerationRunner", "UnknownModelError",
           "ModelLoadError", "hide_paths",
           "GenerationCancelled", "LOAD_MODEL", "model_name_for", "install_cancel_log_filter"]
