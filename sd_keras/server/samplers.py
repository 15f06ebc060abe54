"""AUTOMATIC1111's sampler and scheduler names, mapped onto sd_keras's samplers.

A1111 (1.9 and later) names a sampler and a schedule separately: ``sampler_name="DPM++ 2M"`` with
``scheduler="karras"`` is sd_keras's ``"DPM++ 2M Karras"``. Older clients send the combined name
(``"DPM++ 2M Karras"``) or a k-diffusion alias (``"k_dpmpp_2m_ka"``); both are accepted. ``"automatic"`` picks the
sampler's own default schedule, which for DPM++ 2M is Karras, as in A1111.

Example:
    >>> resolve_sampler("DPM++ 2M", "Karras").sd_keras_name
    'DPM++ 2M Karras'
    >>> resolve_sampler("k_euler_a", None).sd_keras_name
    'Euler a'
"""

import dataclasses

from sd_keras.defaults import SERVER as _DEFAULTS
from sd_keras.errors import InputError
from sd_keras.schedulers import SAMPLER_ALIASES, SAMPLER_NAMES
from sd_keras.schedulers.base import KARRAS_RHO

DEFAULT_SAMPLER = _DEFAULTS.sampler  # A1111's API default (its ``sampler_index`` field defaults to "Euler")
UNIFORM, KARRAS = "uniform", "karras"
SCHEDULE_LABELS = {UNIFORM: "Uniform", KARRAS: "Karras"}


@dataclasses.dataclass(frozen=True)
class _A1111Sampler:
    name: str                 # A1111's name
    aliases: tuple            # A1111's aliases (k-diffusion names)
    sd_keras_name: str        # the sd_keras sampler with the uniform (non-Karras) schedule
    default_schedule: str     # what "automatic" means for it
    karras: bool              # whether sd_keras has a Karras variant
    options: tuple = ()       # A1111's options dict, as (key, value) pairs


SAMPLERS = (
    _A1111Sampler("DPM++ 2M", ("k_dpmpp_2m",), "DPM++ 2M", KARRAS, True, (("scheduler", "karras"),)),
    _A1111Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "Euler a", UNIFORM, True, (("uses_ensd", "True"),)),
    _A1111Sampler("Euler", ("k_euler",), "Euler", UNIFORM, True),
    _A1111Sampler("DDIM", ("ddim",), "DDIM", UNIFORM, False),
    # KerasCV 0.9's own DDIM schedule (linspace timesteps): the images KerasCV code gives
    _A1111Sampler("DDIM KerasCV", ("ddim_keras_cv",), "DDIM KerasCV", UNIFORM, False),
)
# pre-1.9 A1111 names that carry the schedule, with their k-diffusion aliases
_LEGACY_KARRAS = {"DPM++ 2M Karras": ("k_dpmpp_2m_ka",), "Euler a Karras": (), "Euler Karras": ()}
SCHEDULERS = (
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": None, "need_inner_model": None},
    {"name": UNIFORM, "label": "Uniform", "aliases": None, "default_rho": None, "need_inner_model": False},
    {"name": KARRAS, "label": "Karras", "aliases": None, "default_rho": KARRAS_RHO, "need_inner_model": False},
)


def _key(name):
    return " ".join(str(name).split()).lower()


def _lookup_table():
    table = {}
    by_sd_keras = {sampler.sd_keras_name: sampler for sampler in SAMPLERS}
    for sampler in SAMPLERS:
        for name in (sampler.name, *sampler.aliases):
            table[_key(name)] = (sampler, None)
    for legacy, aliases in _LEGACY_KARRAS.items():
        base = by_sd_keras[legacy[: -len(" Karras")]]
        for name in (legacy, *aliases):
            table[_key(name)] = (base, KARRAS)
    for alias, target in SAMPLER_ALIASES.items():  # diffusers class names
        table.setdefault(_key(alias), (by_sd_keras[target], None))
    missing = {s.sd_keras_name for s in SAMPLERS} - set(SAMPLER_NAMES)
    if missing:  # the table must only name samplers sd_keras has
        raise RuntimeError(f"A1111 sampler table names unknown sd_keras samplers: {sorted(missing)}")
    return table


_LOOKUP = _lookup_table()
_SCHEDULE_LOOKUP = {"automatic": None, "": None, UNIFORM: UNIFORM, KARRAS: KARRAS}


@dataclasses.dataclass(frozen=True)
class ResolvedSampler:
    """A request's sampler: A1111's name and schedule label, and the sd_keras sampler they mean."""

    name: str
    schedule: str
    sd_keras_name: str

    @property
    def schedule_label(self):
        return SCHEDULE_LABELS[self.schedule]


def resolve_sampler(sampler_name, scheduler=None):
    """Map A1111's ``sampler_name`` (+ ``scheduler``) to an sd_keras sampler; InputError naming the bad field."""
    name = DEFAULT_SAMPLER if sampler_name in (None, "") else sampler_name
    entry = _LOOKUP.get(_key(name)) if isinstance(name, str) else None
    if entry is None:
        known = ", ".join(sampler.name for sampler in SAMPLERS)
        raise InputError(f"sampler_name {name!r} is unknown; available samplers: {known}")
    sampler, schedule_from_name = entry
    requested = None if scheduler is None else _key(scheduler)
    if requested is not None and requested not in _SCHEDULE_LOOKUP:
        known = ", ".join(item["name"] for item in SCHEDULERS)
        raise InputError(f"scheduler {scheduler!r} is unknown; available schedulers: {known}")
    # an explicit scheduler wins over one carried by a legacy name; "automatic" falls back to the name, then
    # to the sampler's default
    schedule = (requested and _SCHEDULE_LOOKUP[requested]) or schedule_from_name or sampler.default_schedule
    if schedule == KARRAS and not sampler.karras:
        raise InputError(f"scheduler 'karras' is not available for sampler {sampler.name!r} (use 'uniform')")
    sd_keras_name = sampler.sd_keras_name + (" Karras" if schedule == KARRAS else "")
    return ResolvedSampler(sampler.name, schedule, sd_keras_name)


def sampler_items():
    """``GET /sdapi/v1/samplers``: A1111's ``[{"name", "aliases", "options"}]``."""
    items = []
    for sampler in SAMPLERS:
        aliases = list(sampler.aliases)
        if sampler.karras:
            aliases.append(sampler.sd_keras_name + " Karras")  # the combined names are accepted too
        items.append({"name": sampler.name, "aliases": aliases, "options": dict(sampler.options)})
    return items


def scheduler_items():
    """``GET /sdapi/v1/schedulers``: A1111's ``[{"name", "label", "aliases", "default_rho", ...}]``."""
    return [dict(item) for item in SCHEDULERS]
