"""The component registry: which Keras models make up a model family, how each is built and how it is filled.

A *family* is a config class (``sd_keras.config.ModelConfig`` for SD 1.x / 2.x) and its ordered *components*:
``Component(name, builder, config_field, compute_dtype, optional)``. Everything that builds models goes through
``build`` / ``build_all`` (the pipeline, the loaders, training, the LiteRT exporter), so none of them keeps its
own component → builder table.

Weights, as the loaders return them next to the config (``(config, weights)``), are a ``Weights`` mapping
component → source, where a source is one of

- a mapping ``{variable path: array}`` (paths as ``variable_key`` gives them, e.g. ``down_0_res_0/conv1/kernel``);
  every key and shape is checked before anything is assigned (``assign``);
- a Keras model of the same component (its weights are copied: how a model is rebuilt under another policy);
- any object with a ``fill(model)`` method (lazy sources: a checkpoint's key-map plan, a KerasCV h5 file).

Registering a second family (SDXL) touches no front end and no loader of SD 1.x / 2.x::

    from sd_keras.models import registry

    registry.register_family("sdxl", SDXLConfig, [
        registry.Component("text_encoder", build_clip_l, "text_encoder"),
        registry.Component("text_encoder_2", build_open_clip_g, "text_encoder_2"),
        registry.Component("diffusion_model", build_sdxl_unet, "unet"),
        registry.Component("decoder", build_decoder, "vae", compute_dtype=False),
        registry.Component("image_encoder", build_image_encoder, "vae", compute_dtype=False, optional=True),
    ])

A builder is called as ``builder(getattr(config, config_field), dtype=policy, name=component)``, so one builder
can serve two components (two text encoders) under their own names. ``build("text_encoder_2", sdxl_config)``
then finds the family from the config's class; a loader returns ``(SDXLConfig, Weights({...}))`` and
``build_all`` builds and fills every component of that family in registration order.

Example:
    >>> from sd_keras import models
    >>> [name for name in models.COMPONENTS]
    ['text_encoder', 'diffusion_model', 'decoder', 'image_encoder']
    >>> models.build("decoder", "tiny").name
    'decoder'
"""

import dataclasses
import types
from collections.abc import Mapping
from typing import Callable

import numpy as np

from sd_keras.errors import InputError


@dataclasses.dataclass(frozen=True)
class Component:
    """One Keras model of a family.

    ``builder(part_config, *, dtype=None, name=...)`` returns the model; ``config_field`` names the attribute of
    the family's config it takes (``"unet"``); ``compute_dtype``: built under the pipeline's compute policy
    (mixed precision) rather than always float32; ``optional``: a loaded model may lack it.
    """

    name: str
    builder: Callable
    config_field: str
    compute_dtype: bool = True
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    """A config class and its components in build order (read-only mapping name → ``Component``)."""

    name: str
    config_class: type
    components: Mapping


FAMILIES = {}


def register_family(name, config_class, components):
    """Register a family: ``components`` is a list of ``Component`` in build order. Returns the ``Family``."""
    table = {}
    for component in components:
        if component.name in table:
            raise ValueError(f"family {name!r}: component {component.name!r} registered twice")
        table[component.name] = component
    for other in FAMILIES.values():
        if other.config_class is config_class and other.name != name:
            raise ValueError(f"{config_class.__name__} already belongs to family {other.name!r}")
    family = Family(name, config_class, types.MappingProxyType(table))
    FAMILIES[name] = family
    return family


def _resolve_config(config):
    if isinstance(config, str):
        from sd_keras.config import get_config

        return get_config(config)  # InputError listing the presets for an unknown name
    return config


def family_of(config):
    """The ``Family`` of a config (or preset name)."""
    config = _resolve_config(config)
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    known = ", ".join(f"{f.config_class.__name__} ({f.name})" for f in FAMILIES.values())
    raise InputError(f"config: a {type(config).__name__} belongs to no model family (known: {known})")


def components(config):
    """The component names of ``config``'s family, in build order."""
    return list(family_of(config).components)


def component(name, config):
    """The ``Component`` called ``name`` in ``config``'s family."""
    family = family_of(config)
    try:
        return family.components[name]
    except KeyError:
        raise InputError(f"component: {name!r} is not a component of the {family.name} family (one of "
                         f"{', '.join(family.components)})") from None


def build(name, config, dtype=None, *, weights=None, source=None):
    """Build component ``name`` of ``config`` (a family config or preset name) under the Keras dtype policy
    ``dtype`` (a policy or its name; None: float32), filled from ``weights`` (see the module docstring; None:
    the initializers' random weights)."""
    from sd_keras.models.layers import filled_later

    config = _resolve_config(config)
    spec = component(name, config)
    if weights is None:
        return spec.builder(getattr(config, spec.config_field), dtype=dtype, name=spec.name)
    with filled_later():  # every weight is assigned below (``assign`` checks that none is missing)
        model = spec.builder(getattr(config, spec.config_field), dtype=dtype, name=spec.name)
    fill(model, weights, source=source or f"{name} weights")
    return model


def build_all(config, weights=None, *, dtype=None):
    """``{component: keras.Model or None}`` for every component of ``config``'s family, filled from ``weights``
    (a ``Weights`` or a plain mapping component → source). Components with ``compute_dtype`` are built under
    ``dtype`` (the compute policy), the others in float32. With ``weights``, an optional component it lacks is
    None and a required one is an ``InputError``; ``weights.seed`` (random weights) seeds the initializers first.
    ``weights`` is closed afterwards (open checkpoint files are released)."""
    config = _resolve_config(config)
    weights = weights if weights is None or isinstance(weights, Weights) else Weights(weights)
    try:
        if weights is not None and weights.seed is not None:
            import keras

            keras.utils.set_random_seed(weights.seed)
        parts = {}
        for name, spec in family_of(config).components.items():
            source = None
            if weights is not None and not weights.random:
                source = weights.get(name)
                if source is None:
                    if spec.optional:
                        parts[name] = None
                        continue
                    raise InputError(f"{weights.source}: no {name} weights")
            parts[name] = build(name, config, dtype if spec.compute_dtype else None, weights=source,
                                source=f"{weights.source} ({name})" if weights is not None else None)
        return parts
    finally:
        if weights is not None:
            weights.close()


def built_with(model, dtype):
    """True when every layer of ``model`` that holds weights computes under the policy ``dtype``."""
    import keras

    policy = keras.dtype_policies.get(dtype if dtype is not None else "float32")
    return all(layer.dtype_policy.name == policy.name for layer in model.layers if layer.weights)


def rebuild(model, name, config, dtype=None):
    """``model`` itself when it is built under ``dtype``; else component ``name`` built under ``dtype`` with
    ``model``'s weights (rounded to the policy's variable dtype: none under a mixed-precision policy, whose
    variables stay float32)."""
    if built_with(model, dtype):
        return model
    return build(name, config, dtype, weights=model)


# -- variables ---------------------------------------------------------------------------------------------------
def variable_key(model, variable):
    """The path of ``variable`` relative to ``model`` (``down_0_res_0/conv1/kernel``): the key under which
    saved files, checkpoint plans and LoRAs name it."""
    prefix = model.name + "/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def variables(model):
    """``{variable_key: variable}`` of ``model``; two variables with one key are an error."""
    table = {}
    for variable in model.weights:
        key = variable_key(model, variable)
        if key in table:
            raise ValueError(f"{model.name}: two variables share the path {key!r}")
        table[key] = variable
    return table


def tensors(model, dtype=None):
    """``{variable path: numpy array}`` of a Keras model; floating arrays cast to ``dtype`` when given."""
    result = {}
    for key, variable in variables(model).items():
        value = np.asarray(variable.numpy())
        if dtype is not None and np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        result[key] = value
    return result


def assign(model, values, *, source="weights"):
    """Assign ``values`` (variable path → array) to ``model``; every key and shape is checked first.

    Raises:
        InputError: missing or unexpected keys, or a shape mismatch, naming ``source``; the model is unchanged.
    """
    table = variables(model)
    missing = sorted(set(table) - set(values))
    unexpected = sorted(set(values) - set(table))
    if missing or unexpected:
        raise InputError(f"{source}: does not fit {model.name}: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for key, variable in table.items():
        if tuple(np.shape(values[key])) != tuple(variable.shape):
            raise InputError(f"{source}: {key} has shape {tuple(np.shape(values[key]))}, "
                             f"{model.name} expects {tuple(variable.shape)}")
    for key, variable in table.items():
        variable.assign(np.asarray(values[key]).astype(variable.dtype))


def fill(model, weights, *, source="weights"):
    """Fill ``model`` from one component's weights source (see the module docstring)."""
    if hasattr(weights, "fill"):
        weights.fill(model)
    elif hasattr(weights, "get_weights") and hasattr(weights, "weights"):  # a Keras model of the same component
        assign(model, tensors(weights), source=source)
    elif isinstance(weights, Mapping):
        assign(model, weights, source=source)
    else:
        raise TypeError(f"{source}: cannot fill {model.name} from a {type(weights).__name__}")


class Weights(Mapping):
    """What a loader returns next to the config: component → weights source (see the module docstring).

    ``source``: where they come from (used in error messages); ``seed``: random weights drawn with this seed
    (``random_weights``); ``notes``: ``(logging level, message)`` pairs of what loading inferred or chose;
    ``close()`` (or ``with``) releases open files; ``build_all`` closes it after building.
    """

    def __init__(self, parts=None, *, source="weights", seed=None, notes=(), on_close=None):
        self._parts = dict(parts or {})
        self.source = source
        self.seed = seed
        self.notes = list(notes)
        self._on_close = on_close

    @classmethod
    def random_weights(cls, seed=0, *, source=None):
        """Random initial weights drawn with ``seed`` (the same on every backend)."""
        return cls(source=source or f"random weights (seed {seed})", seed=seed)

    @property
    def random(self):
        return self.seed is not None and not self._parts

    def __getitem__(self, name):
        return self._parts[name]

    def __iter__(self):
        return iter(self._parts)

    def __len__(self):
        return len(self._parts)

    def close(self):
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
