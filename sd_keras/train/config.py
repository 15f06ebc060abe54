"""The training config: one dataclass per section, ``load_config`` (YAML + overrides, validated) and the model
config it describes (``build_model_config``).

An unknown key or a value of the wrong type is an ``InputError`` naming the file and the key
(``stages.vae.stpes: unknown key``).

>>> from sd_keras.train.config import load_config
>>> config = load_config({"model": {"preset": "tiny"}, "stages": {"unet": {"components": ["unet"]}}},
...                      ["train.steps=2"])
>>> config.train.steps, config.stages["unet"].optimizer
(2, 'adamw')
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sd_keras.errors import InputError

COMPONENTS = ("vae", "text_encoder", "unet")
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")
RECON_LOSSES = ("l1", "l2")
DATA_SOURCES = ("shapes", "folder")
WEIGHT_DTYPES = ("float32", "float16")


@dataclass
class ModelSection:
    preset: str = "shapes"
    init: Optional[str] = None  # preset name or saved model folder to start from; None: random weights
    seed: int = 0  # random initialisation
    image_size: Optional[List[int]] = None
    text_encoder: Dict[str, Any] = field(default_factory=dict)  # overrides of TextEncoderConfig fields
    unet: Dict[str, Any] = field(default_factory=dict)  # overrides of UNetConfig fields
    vae: Dict[str, Any] = field(default_factory=dict)  # overrides of VAEConfig fields


@dataclass
class DataSection:
    source: str = "shapes"  # shapes | folder
    folder: Optional[str] = None  # source=folder: images with a .txt caption beside each
    seed: int = 0  # shapes: which images
    num_samples: int = 20000  # shapes: images rendered once, before training
    two_object_fraction: float = 0.35
    background_fraction: float = 0.5
    holdout_fraction: float = 0.1  # captions kept out of training for the evaluation
    workers: int = 0  # processes rendering the shapes (0: one per CPU core)


@dataclass
class StageSection:
    components: List[str] = field(default_factory=lambda: ["text_encoder", "unet"])
    steps: int = 1000
    batch_size: int = 32
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the schedule's final learning rate / learning_rate
    weight_decay: float = 0.01  # AdamW; not applied to biases, norms and embeddings
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    grad_clip: Optional[float] = 1.0  # global gradient norm
    ema_decay: float = 0.0  # 0: no EMA; else the EMA weights are kept at the end of the stage
    # diffusion
    caption_dropout: float = 0.1
    snr_gamma: Optional[float] = None  # Min-SNR-gamma loss weighting
    # VAE
    recon_loss: str = "l1"
    kl_weight: float = 1e-4
    latent_moment_weight: float = 0.1
    edge_weight: float = 0.0
    # LoRA on the UNet (components must be [unet]; only the last stage)
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    lora_targets: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


@dataclass
class TrainSection:
    seed: int = 0  # data order, noise, timesteps, caption dropout
    precision: str = "float32"  # float32 | bfloat16 (mixed precision; weights stay float32)
    steps: Optional[int] = None  # overrides every stage's steps
    batch_size: Optional[int] = None  # overrides every stage's batch_size
    steps_per_call: int = 1  # training steps per compiled call
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 5.0  # also checkpoint after this many minutes (0: off)
    max_minutes: Optional[float] = None  # stop with a checkpoint after this many minutes (exit status 3)
    log_every: int = 50  # steps between loss readouts (progress bar, OUT/train_log.jsonl)


@dataclass
class EvalSection:
    enabled: bool = True  # shapes data only
    num_single: int = 48
    num_double: int = 16
    num_steps: int = 20
    sampler: Optional[str] = None  # None: the pipeline's default sampler
    guidance_scale: float = 7.5
    seed: int = 0
    batch_size: int = 16


@dataclass
class ExportSection:
    weight_dtype: str = "float32"  # float16 halves the files; loading casts back


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: Dict[str, StageSection] = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)


def load_config(source, overrides=()):
    """A validated ``TrainConfig`` from a YAML path (or a dict) plus ``key=value`` overrides.

    Raises:
        InputError: naming the file and the key for unknown keys, wrong types and invalid values.

    Example:
        >>> config = load_config("configs/shapes.yaml", ["train.steps=10"])  # doctest: +SKIP
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    name = source if isinstance(source, (str, os.PathLike)) else "config"
    try:
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                raise InputError(f"config file {str(source)!r} does not exist")
            loaded = OmegaConf.load(source)
        else:
            loaded = OmegaConf.create(dict(source))
        dotlist = []
        for item in overrides:
            if "=" not in item:
                raise InputError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
            dotlist.append(item)
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), loaded, OmegaConf.from_dotlist(dotlist))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).splitlines()[0]
        if "not in" in message and "Key" in message:
            message = "unknown key"
        raise InputError(f"{name}: {key}: {message}") from None
    except Exception as error:  # YAML syntax errors and the like
        if isinstance(error, ValueError):
            raise
        raise InputError(f"{name}: {type(error).__name__}: {' '.join(str(error).split())}") from None
    _validate(config, name)
    return config


def _validate(config, name):
    def fail(key, message):
        raise InputError(f"{name}: {key}: {message}")

    def choice(key, value, choices):
        if value not in choices:
            fail(key, f"must be one of {list(choices)}, got {value!r}")

    def positive(key, value, allow_zero=False):
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            fail(key, f"must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")

    def fraction(key, value):
        if not 0.0 <= value <= 1.0:
            fail(key, f"must be in [0, 1], got {value!r}")

    data, train_section = config.data, config.train
    choice("data.source", data.source, DATA_SOURCES)
    if data.source == "folder" and not data.folder:
        fail("data.folder", "source=folder needs data.folder")
    positive("data.num_samples", data.num_samples)
    positive("data.workers", data.workers, allow_zero=True)
    for key in ("two_object_fraction", "background_fraction", "holdout_fraction"):
        fraction(f"data.{key}", getattr(data, key))
    if data.holdout_fraction >= 1:
        fail("data.holdout_fraction", "must be < 1 (nothing left to train on)")
    choice("train.precision", train_section.precision, PRECISIONS)
    for key in ("steps", "batch_size"):
        if getattr(train_section, key) is not None:
            positive(f"train.{key}", getattr(train_section, key))
    for key in ("steps_per_call", "checkpoint_every", "log_every"):
        positive(f"train.{key}", getattr(train_section, key))
    positive("train.checkpoint_minutes", train_section.checkpoint_minutes, allow_zero=True)
    if train_section.max_minutes is not None:
        positive("train.max_minutes", train_section.max_minutes)
    if not config.stages:
        fail("stages", "no stages: add at least one (e.g. stages: {unet: {components: [unet]}})")
    names = list(config.stages)
    for index, (stage_name, stage) in enumerate(config.stages.items()):
        key = f"stages.{stage_name}"
        if not stage.components:
            fail(f"{key}.components", "is empty")
        for component in stage.components:
            choice(f"{key}.components", component, COMPONENTS)
        if len(set(stage.components)) != len(stage.components):
            fail(f"{key}.components", f"lists a component twice: {stage.components}")
        positive(f"{key}.steps", stage.steps)
        positive(f"{key}.batch_size", stage.batch_size)
        positive(f"{key}.learning_rate", stage.learning_rate)
        positive(f"{key}.warmup_steps", stage.warmup_steps, allow_zero=True)
        fraction(f"{key}.min_lr_ratio", stage.min_lr_ratio)
        positive(f"{key}.weight_decay", stage.weight_decay, allow_zero=True)
        choice(f"{key}.optimizer", stage.optimizer, OPTIMIZERS)
        choice(f"{key}.lr_schedule", stage.lr_schedule, LR_SCHEDULES)
        choice(f"{key}.recon_loss", stage.recon_loss, RECON_LOSSES)
        for beta in ("beta_1", "beta_2"):
            if not 0.0 <= getattr(stage, beta) < 1.0:
                fail(f"{key}.{beta}", f"must be in [0, 1), got {getattr(stage, beta)!r}")
        if not 0.0 <= stage.ema_decay < 1.0:
            fail(f"{key}.ema_decay", f"must be in [0, 1), got {stage.ema_decay!r}")
        fraction(f"{key}.caption_dropout", stage.caption_dropout)
        for loss in ("kl_weight", "latent_moment_weight", "edge_weight"):
            positive(f"{key}.{loss}", getattr(stage, loss), allow_zero=True)
        if stage.grad_clip is not None:
            positive(f"{key}.grad_clip", stage.grad_clip)
        if stage.snr_gamma is not None:
            positive(f"{key}.snr_gamma", stage.snr_gamma)
        positive(f"{key}.lora_rank", stage.lora_rank, allow_zero=True)
        if stage.lora_rank:
            if stage.components != ["unet"]:
                fail(f"{key}.components", f"a LoRA stage (lora_rank > 0) trains only [unet], got {stage.components}")
            if len(names) != 1:
                fail(f"{key}.lora_rank", "a LoRA stage must be the config's only stage (start it from a trained "
                                         "model with model.init)")
            if not stage.lora_targets:
                fail(f"{key}.lora_targets", "is empty")
            if stage.lora_alpha is not None:
                positive(f"{key}.lora_alpha", stage.lora_alpha)
    choice("export.weight_dtype", config.export.weight_dtype, WEIGHT_DTYPES)
    evaluation = config.eval
    for key in ("num_single", "num_double", "num_steps", "batch_size"):
        positive(f"eval.{key}", getattr(evaluation, key), allow_zero=key in ("num_single", "num_double"))
    if evaluation.sampler is not None:
        from sd_keras.schedulers import get_sampler

        try:
            get_sampler(evaluation.sampler, 2)
        except ValueError as error:
            fail("eval.sampler", str(error))


def build_model_config(section):
    """The ``ModelConfig`` of a ``model`` section: the preset with its overrides applied."""
    from sd_keras.config import TextEncoderConfig, UNetConfig, VAEConfig, get_config

    try:
        base = get_config(section.preset)
    except ValueError as error:
        raise InputError(f"model.preset: {error}") from None
    changes = {}
    for part, part_cls in (("text_encoder", TextEncoderConfig), ("unet", UNetConfig), ("vae", VAEConfig)):
        overrides = dict(getattr(section, part) or {})
        if not overrides:
            continue
        fields = {f.name for f in dataclasses.fields(part_cls)}
        for key in overrides:
            if key not in fields:
                raise InputError(f"model.{part}.{key}: unknown {part_cls.__name__} field "
                                 f"(fields: {', '.join(sorted(fields))})")
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
        try:
            changes[part] = dataclasses.replace(getattr(base, part), **values)
        except (ValueError, TypeError) as error:
            raise InputError(f"model.{part}: {error}") from None
    if section.image_size is not None:
        if len(section.image_size) != 2 or any(side % 64 or side < 64 for side in section.image_size):
            raise InputError(f"model.image_size: two multiples of 64, got {section.image_size}")
        changes["image_size"] = tuple(section.image_size)
    if not changes:
        return base
    try:
        return dataclasses.replace(base, name=f"{base.name}-custom", **changes)
    except (ValueError, TypeError) as error:
        raise InputError(f"model: {error}") from None


def check_max_minutes(value):
    """``value`` as a float if it is a usable time limit in minutes (finite, > 0); else InputError."""
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--max-minutes must be a number of minutes, got {value!r}") from None
    if not math.isfinite(minutes) or minutes <= 0:
        raise InputError(f"--max-minutes must be a finite number of minutes > 0, got {value!r}")
    return minutes


def config_differences(saved, current, prefix="", ignore=("name",)):
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.", ignore)
        else:
            a, b = (list(v) if isinstance(v, (list, tuple)) else v for v in (a, b))
            if a != b:
                differences.append(f"{prefix}{key}: {a!r} vs {b!r}")
    return differences


def to_yaml(config):
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))
