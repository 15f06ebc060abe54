"""Samplers (schedulers) for Stable Diffusion: DDIM, Euler, Euler a and DPM++ 2M, with Karras variants.

Pick one by the name UIs use, case-insensitively, or by diffusers' class name:

    >>> from sd_keras.schedulers import get_sampler
    >>> sampler = get_sampler("DPM++ 2M Karras", 25)
    >>> sampler.name, sampler.num_steps
    ('DPM++ 2M Karras', 25)

A sampler is immutable, holds its per-step numbers as float32 tables (``tables()``) and updates latents with
``keras.ops`` only; see ``base.py`` for the contract the compiled loop and the device ports rely on.
"""

import dataclasses

from sd_keras.errors import InputError
from sd_keras.schedulers.base import NoiseSchedule, Sampler, karras_sigmas
from sd_keras.schedulers.ddim import DDIMSampler
from sd_keras.schedulers.dpm_solver import DPMPP2MSampler
from sd_keras.schedulers.euler import EulerSampler
from sd_keras.schedulers.euler_ancestral import EulerAncestralSampler

# name -> (class, fixed options). "DDIM KerasCV" is KerasCV 0.9's generate_image schedule.
_SAMPLERS = {
    "DDIM": (DDIMSampler, {}),
    "DDIM KerasCV": (DDIMSampler, {"timestep_spacing": "linspace"}),
    "Euler": (EulerSampler, {}),
    "Euler Karras": (EulerSampler, {"karras": True}),
    "Euler a": (EulerAncestralSampler, {}),
    "Euler a Karras": (EulerAncestralSampler, {"karras": True}),
    "DPM++ 2M": (DPMPP2MSampler, {}),
    "DPM++ 2M Karras": (DPMPP2MSampler, {"karras": True}),
}
SAMPLER_NAMES = list(_SAMPLERS)
SAMPLER_ALIASES = {
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
}


def _key(name):
    return " ".join(name.split()).lower()


_LOOKUP = {_key(name): name for name in SAMPLER_NAMES}
_LOOKUP.update({_key(alias): name for alias, name in SAMPLER_ALIASES.items()})


def get_sampler(name, num_steps, *, schedule=None, karras=None, prediction_type=None, timestep_spacing=None):
    """Build the sampler called ``name`` for ``num_steps`` steps.

    Args:
        name: one of ``SAMPLER_NAMES`` or ``SAMPLER_ALIASES`` (case and repeated spaces ignored).
        num_steps: number of denoising steps, an integer >= 1.
        schedule: the training ``NoiseSchedule`` (default: SD 1.x/2.x's).
        karras: None follows the name; True selects the Karras sigma schedule (``get_sampler("Euler", n,
            karras=True)`` is "Euler Karras"); False with a "... Karras" name is an error.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``; overrides the schedule's.
        timestep_spacing: ``"leading"`` or ``"linspace"``; None keeps the sampler's default.

    Example:
        >>> get_sampler("euler a", 30).needs_noise
        True
        >>> get_sampler("DDIM", 50, prediction_type="v_prediction").prediction_type
        'v_prediction'
    """
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        known = ", ".join(repr(n) for n in SAMPLER_NAMES + list(SAMPLER_ALIASES))
        raise InputError(f"sampler name {name!r} is unknown; known names: {known}")
    canonical = _LOOKUP[_key(name)]
    cls, options = _SAMPLERS[canonical]
    options = dict(options)
    if karras is not None:
        if not isinstance(karras, bool):
            raise InputError(f"karras must be None, True or False, got {karras!r}")
        if options.get("karras") and not karras:
            raise InputError(f"karras=False contradicts the sampler name {canonical!r}")
        if karras:
            options["karras"] = True
    if timestep_spacing is not None:
        if "timestep_spacing" in options and timestep_spacing != options["timestep_spacing"]:
            raise InputError(f"timestep_spacing={timestep_spacing!r} contradicts the sampler name {canonical!r}")
        options["timestep_spacing"] = timestep_spacing
    if prediction_type is not None:
        base = NoiseSchedule() if schedule is None else schedule
        if not isinstance(base, NoiseSchedule):
            raise InputError(f"schedule must be a NoiseSchedule, got {type(base).__name__}")
        schedule = dataclasses.replace(base, prediction_type=prediction_type)
    return cls(num_steps, schedule=schedule, **options)


__all__ = [
    "NoiseSchedule",
    "Sampler",
    "DDIMSampler",
    "EulerSampler",
    "EulerAncestralSampler",
    "DPMPP2MSampler",
    "SAMPLER_NAMES",
    "SAMPLER_ALIASES",
    "get_sampler",
    "karras_sigmas",
]
