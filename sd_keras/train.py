"""Train sd_keras models from a YAML config: ``sd-keras train CONFIG.yaml [key=value ...] --out DIR``.

A config (see ``configs/shapes.yaml``) has six sections, each a dataclass below, so an unknown key or a value of
the wrong type is an error that names the key (``stages.vae.stpes: unknown key``):

- ``model``: ``preset`` plus overrides of its ``ModelConfig`` fields (``model.unet.block_out_channels=[64,128]``),
  ``init`` (a preset or a saved model folder to start from; default: random weights from ``model.seed``);
- ``data``: ``source: shapes`` (the synthetic dataset, ``num_samples`` images rendered once) or ``folder``
  (your images, each with a ``.txt`` caption beside it);
- ``train``: what all stages share: ``seed``, ``precision`` (``float32`` | ``bfloat16``: mixed precision, float32
  weights), checkpoint and log intervals, ``max_minutes``, ``steps_per_call``; ``train.steps`` /
  ``train.batch_size`` override every stage's (smoke runs);
- ``stages``: trained one after the other, in file order. Each names the ``components`` it trains (``vae``,
  ``text_encoder``, ``unet``, alone or together), its steps, batch, optimizer, schedule, EMA and losses;
  ``lora_rank > 0`` trains LoRA adapters on the UNet's attention projections instead of the UNet itself (a
  LoRA stage is the config's only stage and starts from ``model.init``);
- ``eval`` / ``export``: the final step writes ``OUT/model`` (``save_pretrained``) and, for the shapes dataset,
  ``OUT/eval/report.json`` + ``grid.png`` (``sd_keras.evaluate``).

Losses. VAE: L1 (or L2) reconstruction of a posterior sample + ``kl_weight`` x KL + ``latent_moment_weight`` x
(E[latent^2] - 1)^2, which keeps the scaled latents at unit second moment so that the diffusion model sees the
scale SD's noise schedule expects, + ``edge_weight`` x L1 of the image gradients. Diffusion: epsilon (or v)
prediction MSE on the frozen VAE's latents under SD's noise schedule (``NoiseSchedule``), optionally Min-SNR-gamma
weighted, with ``caption_dropout`` of the prompts replaced by the empty prompt (for classifier-free guidance);
the text encoder is trained jointly when listed. When a stage trains the VAE and the UNet together, the
diffusion loss sees the current encoder's latents without passing gradients into it.

One training step is one compiled program: on JAX ``backend.jit`` (``jax.jit``) of a pure function of the weights,
optimizer state, EMA and the batch (``stateless_call`` + ``optimizer.stateless_apply``); on TensorFlow, whose
optimizers have no stateless form, one ``tf.function`` graph that updates the variables. Noise, timesteps and
caption dropout are drawn inside it from a seed that depends only on the step number.
``train.steps_per_call`` > 1 runs that many steps in one program (a loop), which keeps a GPU busy with small
models. With ``--devices all`` (JAX) the batch is split over all local accelerators (``DataParallel``).

Checkpoints. ``OUT/checkpoint.safetensors`` is rewritten atomically every ``checkpoint_every`` steps and
``checkpoint_minutes`` minutes, at the end of each stage, at ``max_minutes`` and on Ctrl-C / SIGTERM. It holds
every model weight (``<component>/<variable path>``), the optimizer (``optimizer/<index>``) and EMA
(``ema/<index>``) values, and in its metadata the model config, stage and step. Data order and noise depend only
on (seed, stage, step), so ``--resume`` (with the same config and overrides) continues exactly where the
checkpoint was written: the result equals an uninterrupted run bit for bit, and ``OUT/train_log.jsonl`` is cut
back to the checkpoint's step, so the steps a killed run logged after it appear once. A run deletes the
temporary files that writes killed mid-way left in ``OUT``. Resuming with another architecture is an error that
lists the differing fields.

LoRA adapters (``OUT/lora.safetensors``): for every adapted Dense layer with variable path ``P`` (relative to the
UNet, e.g. ``down_1_attn_0/transformer_block/attn2/q_proj``), ``P.lora_a`` (in, rank) and ``P.lora_b`` (rank, out),
float32; metadata ``format = "sd_keras.lora"``, ``format_version``, ``rank``, ``alpha``, ``model`` (the model
config name). The adapted kernel is ``kernel + alpha / rank * lora_a @ lora_b`` (Keras' ``enable_lora``).
``OUT/model`` holds the merged weights; ``load_lora(unet, path)`` adds adapters to a loaded UNet, and
``sd-keras generate --lora OUT/lora.safetensors[:SCALE]`` (``sd_keras.weights.lora``) merges them into any model
of the same architecture.

Example:
    >>> summary = train("configs/tiny_test.yaml", "runs/tiny", overrides=["train.steps=2"])  # doctest: +SKIP
    >>> summary["model"]                                                                     # doctest: +SKIP
    'runs/tiny/model'
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from sd_keras import files

COMPONENTS = ("vae", "text_encoder", "unet")
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")
RECON_LOSSES = ("l1", "l2")
DATA_SOURCES = ("shapes", "folder")
WEIGHT_DTYPES = ("float32", "float16")
CHECKPOINT_FORMAT = "sd_keras.train_checkpoint"
CHECKPOINT_VERSION = 1
LORA_FORMAT = "sd_keras.lora"
LORA_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
EXIT_PAUSED = 3  # stopped at train.max_minutes after writing a checkpoint: run again with --resume
_DRAWS_PER_STEP = 16  # random draws a step may take from its seed (keeps the seeds of two steps apart)


# -- the config ----------------------------------------------------------------------------------------------------
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
        ValueError: naming the file and the key for unknown keys, wrong types and invalid values.

    Example:
        >>> config = load_config("configs/shapes.yaml", ["train.steps=10"])  # doctest: +SKIP
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    name = source if isinstance(source, (str, os.PathLike)) else "config"
    try:
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                raise ValueError(f"config file {str(source)!r} does not exist")
            loaded = OmegaConf.load(source)
        else:
            loaded = OmegaConf.create(dict(source))
        dotlist = []
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
            dotlist.append(item)
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), loaded, OmegaConf.from_dotlist(dotlist))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).splitlines()[0]
        if "not in" in message and "Key" in message:
            message = "unknown key"
        raise ValueError(f"{name}: {key}: {message}") from None
    except Exception as error:  # YAML syntax errors and the like
        if isinstance(error, ValueError):
            raise
        raise ValueError(f"{name}: {type(error).__name__}: {' '.join(str(error).split())}") from None
    _validate(config, name)
    return config


def _validate(config, name):
    def fail(key, message):
        raise ValueError(f"{name}: {key}: {message}")

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
        raise ValueError(f"model.preset: {error}") from None
    changes = {}
    for part, part_cls in (("text_encoder", TextEncoderConfig), ("unet", UNetConfig), ("vae", VAEConfig)):
        overrides = dict(getattr(section, part) or {})
        if not overrides:
            continue
        fields = {f.name for f in dataclasses.fields(part_cls)}
        for key in overrides:
            if key not in fields:
                raise ValueError(f"model.{part}.{key}: unknown {part_cls.__name__} field "
                                 f"(fields: {', '.join(sorted(fields))})")
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
        try:
            changes[part] = dataclasses.replace(getattr(base, part), **values)
        except (ValueError, TypeError) as error:
            raise ValueError(f"model.{part}: {error}") from None
    if section.image_size is not None:
        if len(section.image_size) != 2 or any(side % 64 or side < 64 for side in section.image_size):
            raise ValueError(f"model.image_size: two multiples of 64, got {section.image_size}")
        changes["image_size"] = tuple(section.image_size)
    if not changes:
        return base
    try:
        return dataclasses.replace(base, name=f"{base.name}-custom", **changes)
    except (ValueError, TypeError) as error:
        raise ValueError(f"model: {error}") from None


# -- models --------------------------------------------------------------------------------------------------------
class _Parts:
    """The four sub-models plus the encoder's moments head (shares the image encoder's layers)."""

    NAMES = ("text_encoder", "diffusion_model", "decoder", "image_encoder")

    def __init__(self, model_config, policy):
        import keras

        from sd_keras import models

        self.config = model_config
        self.text_encoder = models.build_text_encoder(model_config, dtype=policy)
        self.diffusion_model = models.build_diffusion_model(model_config, dtype=policy)
        self.decoder = models.build_decoder(model_config, dtype=policy)
        self.image_encoder = models.build_image_encoder(model_config, dtype=policy)
        self.encoder_moments = keras.Model(self.image_encoder.input,
                                           self.image_encoder.get_layer("quant_conv").output, name="encoder_moments")

    def items(self):
        return [(name, getattr(self, name)) for name in self.NAMES]

    def for_component(self, component):
        return {"vae": [self.image_encoder, self.decoder], "text_encoder": [self.text_encoder],
                "unet": [self.diffusion_model]}[component]

    def tensors(self):
        from sd_keras.weights.saved import model_tensors

        return {f"{name}/{key}": value for name, model in self.items() for key, value in model_tensors(model).items()}

    def keys(self):
        """``{id(variable): "<component>/<variable path>"}``: the checkpoint key of every weight."""
        return {id(variable): f"{name}/{_relative_path(model, variable)}" for name, model in self.items()
                for variable in model.weights}

    def assign(self, tensors, source, *, partial=False):
        """Assign ``<component>/<path>`` tensors; ``partial`` assigns only the keys given (shapes checked)."""
        from sd_keras.weights.saved import assign_tensors

        for name, model in self.items():
            prefix = name + "/"
            values = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not partial:
                assign_tensors(model, values, source=source)
                continue
            for variable in model.weights:
                value = values.get(_relative_path(model, variable))
                if value is not None:
                    if tuple(value.shape) != tuple(variable.shape):
                        raise ValueError(f"{source}: {name}/{variable.path} has shape {value.shape}")
                    variable.assign(value)

    def load_init(self, spec):
        """Copy the weights of a preset or saved folder with the same architecture."""
        from sd_keras.pipeline import StableDiffusion
        from sd_keras.weights.saved import assign_tensors, is_saved_folder, load_pretrained, model_tensors

        if is_saved_folder(spec):
            source = load_pretrained(StableDiffusion, spec)
        else:
            try:
                source = StableDiffusion.from_preset(spec)
            except ValueError as error:
                raise ValueError(f"model.init: {spec!r} is neither a saved model folder nor a usable preset "
                                 f"({error})") from None
        # The native image size is no part of the weights: fine-tuning at another size is allowed here
        # (a resumed checkpoint must match exactly, image size included: its data depends on it).
        differences = _config_differences(source.config.to_dict(), self.config.to_dict(),
                                          ignore=("name", "image_size"))
        if differences:
            raise ValueError(f"model.init: {spec!r} has another architecture: {'; '.join(differences[:6])}")
        for name, model in self.items():
            other = getattr(source, name, None)
            if other is None:
                raise ValueError(f"model.init: {spec!r} has no {name}")
            assign_tensors(model, model_tensors(other), source=f"model.init {spec}")


def _config_differences(saved, current, prefix="", ignore=("name",)):
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _config_differences(a, b, f"{prefix}{key}.", ignore)
        else:
            a, b = (list(v) if isinstance(v, (list, tuple)) else v for v in (a, b))
            if a != b:
                differences.append(f"{prefix}{key}: {a!r} vs {b!r}")
    return differences


def _relative_path(model, variable):
    """A variable's path without the model's name (the key ``sd_keras.weights.saved`` files use)."""
    prefix = model.name + "/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def _dense_layers(model):
    import keras

    # Keras 3 has no public recursive layer iterator; _flatten_layers is what Model.summary and saving use.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dense):
            yield layer


def _kernel_variable(layer):
    return next(v for v in layer.weights if v.name == "kernel")


def _layer_key(model, layer):
    return _relative_path(model, _kernel_variable(layer)).rsplit("/", 1)[0]


def enable_lora(unet, rank, *, alpha=None, targets=("q_proj", "k_proj", "v_proj", "out_proj"), seed=0):
    """Add LoRA adapters (Keras' ``enable_lora``) to the UNet's Dense layers named in ``targets``; freeze the rest.

    Returns the adapted layers' keys. Example: ``enable_lora(sd.diffusion_model, 4)``.
    """
    import keras

    adapted = []
    for index, layer in enumerate(_dense_layers(unet)):
        if layer.name in targets and not layer.lora_enabled:
            # seeded per layer: the same adapters on every backend and run (B starts at zero, as usual)
            layer.enable_lora(rank, lora_alpha=alpha, a_initializer=keras.initializers.HeUniform(seed=seed + index))
            adapted.append(_layer_key(unet, layer))
    if not adapted:
        raise ValueError(f"lora_targets {list(targets)}: no Dense layer of {unet.name} has one of these names")
    for variable in unet.weights:
        variable.trainable = "lora_kernel" in variable.path
    return adapted


def save_lora(unet, path, model_name=""):
    """Write the UNet's LoRA adapters to ``path`` (layout in the module docstring), atomically."""
    from safetensors.numpy import save_file

    tensors, rank, alpha = {}, None, None
    for layer in _dense_layers(unet):
        if layer.lora_enabled:
            key = _layer_key(unet, layer)
            tensors[f"{key}.lora_a"] = np.asarray(layer.lora_kernel_a.numpy(), np.float32)
            tensors[f"{key}.lora_b"] = np.asarray(layer.lora_kernel_b.numpy(), np.float32)
            rank, alpha = layer.lora_rank, layer.lora_alpha
    if not tensors:
        raise ValueError(f"{unet.name} has no LoRA adapters")
    metadata = {"format": LORA_FORMAT, "format_version": str(LORA_VERSION), "rank": str(rank),
                "alpha": str(alpha), "model": model_name}
    with files.atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return path


def load_lora(unet, path):
    """Add the adapters of a ``save_lora`` file to ``unet`` (same architecture). Returns the adapted keys."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != LORA_FORMAT:
            raise ValueError(f"{path}: not an sd_keras LoRA file (format {metadata.get('format')!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    layers = {_layer_key(unet, layer): layer for layer in _dense_layers(unet)}
    keys = sorted({key.rsplit(".", 1)[0] for key in tensors})
    missing = [key for key in keys if key not in layers]
    if missing:
        raise ValueError(f"{path}: adapters for layers {unet.name} does not have: {missing[:3]}")
    for key in keys:
        layer = layers[key]
        if not layer.lora_enabled:
            layer.enable_lora(rank, lora_alpha=alpha)
        layer.lora_kernel_a.assign(tensors[f"{key}.lora_a"])
        layer.lora_kernel_b.assign(tensors[f"{key}.lora_b"])
    return keys


def merged_tensors(model):
    """``model_tensors`` with every LoRA adapter merged into its kernel (keys of the plain architecture)."""
    import keras

    from sd_keras.weights.saved import model_tensors

    tensors = {k: v for k, v in model_tensors(model).items() if "lora_kernel" not in k}
    for layer in _dense_layers(model):
        if layer.lora_enabled:
            merged = keras.ops.convert_to_numpy(layer.kernel)  # Keras' kernel + alpha / rank * A @ B
            tensors[_relative_path(model, _kernel_variable(layer))] = np.asarray(merged, np.float32)
    return tensors


# -- the training graph --------------------------------------------------------------------------------------------
class _LearningRate:
    """Warm-up then constant / cosine / linear decay to ``min_ratio``; built as a Keras schedule on demand."""

    @staticmethod
    def build(peak, warmup, total, kind, min_ratio):
        import keras
        from keras import ops

        class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = ops.cast(step, "float32")
                warm = ops.minimum(1.0, (step + 1.0) / float(max(warmup, 1)))
                progress = ops.clip((step - warmup) / float(max(total - warmup, 1)), 0.0, 1.0)
                if kind == "cosine":
                    decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + ops.cos(math.pi * progress))
                elif kind == "linear":
                    decay = 1.0 - (1.0 - min_ratio) * progress
                else:
                    decay = ops.ones_like(progress)
                return peak * warm * decay

            def get_config(self):
                return {"peak": peak, "warmup": warmup, "total": total, "kind": kind, "min_ratio": min_ratio}

        return WarmupDecay()


def _make_graph(parts, stage, model_config, trains_vae, trains_diffusion, empty_tokens):
    """A Keras layer whose call returns the stage's loss terms; its variables are the components' variables."""
    import keras
    from keras import ops

    from sd_keras.models.layers import timestep_embedding
    from sd_keras.schedulers import NoiseSchedule

    alphas_cumprod = NoiseSchedule().alphas_cumprod.astype(np.float32)
    scaling = float(model_config.vae.scaling_factor)
    timestep_dim = model_config.unet.timestep_dim
    v_prediction = model_config.prediction_type == "v_prediction"

    class TrainingGraph(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="training_graph")
            self.encoder_moments = parts.encoder_moments
            self.decoder = parts.decoder
            self.text_encoder = parts.text_encoder
            self.diffusion_model = parts.diffusion_model
            self.built = True

        def _moments(self, images):
            moments = ops.cast(self.encoder_moments(images), "float32")
            mean, logvar = ops.split(moments, 2, axis=-1)
            return mean, ops.clip(logvar, -30.0, 20.0)

        def vae_loss(self, images, posterior_noise):
            mean, logvar = self._moments(images)
            latent = (mean + ops.exp(0.5 * logvar) * posterior_noise) * scaling
            reconstruction = ops.cast(self.decoder(latent), "float32")
            error = reconstruction - images
            recon = ops.mean(ops.abs(error)) if stage.recon_loss == "l1" else ops.mean(ops.square(error))
            kl = ops.mean(0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar))
            moment = ops.square(ops.mean(ops.square(mean * scaling)) - 1.0)
            terms = {"recon": recon, "kl": kl, "latent_moment": moment}
            loss = recon + stage.kl_weight * kl + stage.latent_moment_weight * moment
            if stage.edge_weight:
                edge = (ops.mean(ops.abs(error[:, 1:] - error[:, :-1])) +
                        ops.mean(ops.abs(error[:, :, 1:] - error[:, :, :-1])))
                terms["edge"] = edge
                loss = loss + stage.edge_weight * edge
            return loss, terms, mean

        def diffusion_loss(self, latents, tokens, noise, timesteps, drop):
            tokens = ops.where(ops.expand_dims(drop, -1), ops.convert_to_tensor(empty_tokens), tokens)
            positions = ops.broadcast_to(ops.arange(tokens.shape[1], dtype="int32")[None], ops.shape(tokens))
            context = self.text_encoder({"tokens": tokens, "positions": positions})
            signal = ops.take(ops.convert_to_tensor(alphas_cumprod), timesteps)[:, None, None, None]
            noisy = ops.sqrt(signal) * latents + ops.sqrt(1.0 - signal) * noise
            prediction = self.diffusion_model({"latent": noisy,
                                               "timestep_embedding": timestep_embedding(timesteps, timestep_dim),
                                               "context": context})
            target = ops.sqrt(signal) * noise - ops.sqrt(1.0 - signal) * latents if v_prediction else noise
            per_sample = ops.mean(ops.square(ops.cast(prediction, "float32") - target), axis=(1, 2, 3))
            if stage.snr_gamma:
                snr = signal[:, 0, 0, 0] / (1.0 - signal[:, 0, 0, 0])
                weight = ops.minimum(snr, stage.snr_gamma) / (snr + 1.0 if v_prediction else snr)
                return ops.mean(per_sample * weight), {"mse": ops.mean(per_sample)}
            loss = ops.mean(per_sample)
            return loss, {"mse": loss}

        def call(self, inputs):
            terms, loss = {}, 0.0
            latents = inputs.get("latents")
            if trains_vae:
                images = ops.cast(inputs["images"], "float32") / 127.5 - 1.0
                vae_loss, vae_terms, mean = self.vae_loss(images, inputs["posterior_noise"])
                loss = loss + vae_loss
                terms.update(vae_terms)
                if trains_diffusion:
                    latents = ops.stop_gradient(mean * scaling)
            if trains_diffusion:
                diffusion, diffusion_terms = self.diffusion_loss(latents, inputs["tokens"], inputs["noise"],
                                                                 inputs["timesteps"], inputs["drop"])
                loss = loss + diffusion
                terms.update(diffusion_terms)
            terms["loss"] = loss
            return terms

    return TrainingGraph()


class _StageRunner:
    """Builds and runs the compiled training program of one stage.

    JAX: the program is a pure function of (weights, optimizer values, EMA, batch) (``stateless_call`` +
    ``optimizer.stateless_apply``) and the runner keeps those values between calls. TensorFlow (whose optimizers
    have no stateless form): the same step updates the Keras variables inside one ``tf.function`` graph.
    """

    def __init__(self, parts, stage, steps, model_config, empty_tokens, seed_base):
        import keras

        from sd_keras import backend

        self.parts, self.stage, self.steps = parts, stage, steps
        components = set(stage.components)
        self.trains_vae = "vae" in components
        self.trains_diffusion = bool(components & {"text_encoder", "unet"})
        self.lora_layers = []
        if stage.lora_rank:
            self.lora_layers = enable_lora(parts.diffusion_model, stage.lora_rank, alpha=stage.lora_alpha,
                                           targets=tuple(stage.lora_targets))
        self._set_trainable()
        self.graph = _make_graph(parts, stage, model_config, self.trains_vae, self.trains_diffusion, empty_tokens)
        self.trainable_variables = list(self.graph.trainable_variables)
        self.non_trainable_variables = list(self.graph.non_trainable_variables)
        schedule = _LearningRate.build(stage.learning_rate, stage.warmup_steps, steps, stage.lr_schedule,
                                       stage.min_lr_ratio)
        common = dict(learning_rate=schedule, beta_1=stage.beta_1, beta_2=stage.beta_2, epsilon=stage.epsilon,
                      global_clipnorm=stage.grad_clip)
        if stage.optimizer == "adamw":
            self.optimizer = keras.optimizers.AdamW(weight_decay=stage.weight_decay, **common)
            self.optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embeddings"])
        else:
            self.optimizer = keras.optimizers.Adam(**common)
        self.optimizer.build(self.trainable_variables)
        # what reset() restores when the same compiled program trains a new run
        self._initial_optimizer = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        self._initial_lora = [(v, np.asarray(v.numpy())) for v in parts.diffusion_model.weights
                              if "lora_kernel" in v.path]
        self.seed_generator = keras.random.SeedGenerator(0)
        self.seed_base = seed_base
        self.latent_channels = model_config.vae.latent_channels
        self.factor = model_config.vae.downsample_factor
        self.use_ema = stage.ema_decay > 0
        self.stateless = backend.name() == "jax"
        if backend.name() not in ("jax", "tensorflow"):
            raise ValueError(f"training needs the JAX or TensorFlow backend, not {backend.name()!r}")
        if self.stateless:
            self._program = backend.jit(self._stateless_program)
        else:
            # from numpy copies: given a variable's value, TensorFlow would wrap the same storage
            self.ema_variables = [keras.Variable(np.array(v.numpy()), trainable=False, name="ema")
                                  for v in self.trainable_variables] if self.use_ema else []
            import tensorflow as tf

            # A graph without XLA: XLA's compile of this training graph takes twice as long on CPU as building the
            # graph, and TensorFlow is the CPU / test path here (JAX is the accelerator path).
            self._program = tf.function(self._stateful_program, jit_compile=False, reduce_retracing=False)
        self.restore([v.numpy() for v in self.optimizer.variables], None)

    def _set_trainable(self):
        for _, model in self.parts.items():
            model.trainable = False
        for component in self.stage.components:
            for model in self.parts.for_component(component):
                model.trainable = True
        if self.lora_layers:  # only the adapters
            for variable in self.parts.diffusion_model.weights:
                variable.trainable = "lora_kernel" in variable.path

    def activate(self):
        """Give the models this stage's trainable flags again (another stage's runner may have changed them);
        a retrace of the program (e.g. for a shorter last call) then sees the same variable lists."""
        self._set_trainable()
        if [id(v) for v in self.graph.trainable_variables] != [id(v) for v in self.trainable_variables]:
            raise RuntimeError("the trainable variables of a stage changed after its program was built")

    def reset(self):
        """Fresh optimizer, LoRA adapters and EMA (from the current weights), for a new run."""
        for variable, value in self._initial_lora:
            variable.assign(value)
        self.restore(self._initial_optimizer, None)

    @property
    def term_names(self):
        names = ["loss"]
        if self.trains_vae:
            names += ["recon", "kl", "latent_moment"] + (["edge"] if self.stage.edge_weight else [])
        if self.trains_diffusion:
            names += ["mse"]
        return names

    # -- pieces shared by both programs
    def _random_inputs(self, batch, step):
        """Noise, timesteps and caption dropout of one step, drawn from a seed that depends only on the step."""
        import keras
        from keras import ops

        generator = self.seed_generator
        seed = ops.cast(ops.stack([ops.convert_to_tensor(self.seed_base, "int32"),
                                   ops.cast(step, "int32") * _DRAWS_PER_STEP]), generator.state.dtype)
        first = batch["tokens"] if "tokens" in batch else batch["images"]
        batch_size = ops.shape(first)[0]
        inputs = dict(batch)
        with keras.StatelessScope(state_mapping=[(generator.state, seed)]):
            if self.trains_diffusion:
                if "latents" in batch:
                    shape = tuple(batch["latents"].shape[1:])
                else:
                    side = batch["images"].shape[1] // self.factor
                    shape = (side, side, self.latent_channels)
                inputs["noise"] = keras.random.normal((batch_size,) + shape, seed=generator)
                inputs["timesteps"] = keras.random.randint((batch_size,), 0, 1000, seed=generator, dtype="int32")
                inputs["drop"] = keras.random.uniform((batch_size,), seed=generator) < self.stage.caption_dropout
            if self.trains_vae:
                side = batch["images"].shape[1] // self.factor
                inputs["posterior_noise"] = keras.random.normal((batch_size, side, side, self.latent_channels),
                                                                seed=generator)
        return inputs

    def _ema_decay(self, step):
        from keras import ops

        count = ops.cast(step, "float32")
        return ops.minimum(self.stage.ema_decay, (1.0 + count) / (10.0 + count))

    def _loop(self, one_step, carry, batches, first_step):
        """Run ``one_step`` for each of the ``count`` batches (axis 1); returns (carry, mean loss terms)."""
        from keras import ops

        count = batches["tokens"].shape[1] if "tokens" in batches else batches["images"].shape[1]
        if count == 1:
            return one_step(carry, {k: v[:, 0] for k, v in batches.items()}, first_step)

        def body(i, loop_carry):
            carry, totals = loop_carry
            carry, terms = one_step(carry, {k: ops.take(v, i, axis=1) for k, v in batches.items()}, first_step + i)
            return carry, {k: totals[k] + terms[k] / count for k in totals}

        zero = {key: ops.zeros((), "float32") for key in self.term_names}
        return ops.fori_loop(0, count, body, (carry, zero))

    # -- JAX
    def _stateless_program(self, state, batches, first_step):
        import jax
        from keras import ops

        def one_step(state, batch, step):
            trainable, non_trainable, optimizer_values, ema = state
            inputs = self._random_inputs(batch, step)

            def loss_fn(trainable_values):
                terms, new_non_trainable = self.graph.stateless_call(trainable_values, non_trainable, inputs)
                return terms["loss"], (terms, new_non_trainable)

            (_, (terms, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            trainable, optimizer_values = self.optimizer.stateless_apply(optimizer_values, grads, trainable)
            if self.use_ema:
                decay = self._ema_decay(step)
                ema = [e * decay + ops.cast(t, e.dtype) * (1.0 - decay) for e, t in zip(ema, trainable)]
            return (trainable, non_trainable, optimizer_values, ema), terms

        return self._loop(one_step, state, batches, first_step)

    # -- TensorFlow
    def _stateful_program(self, batches, first_step):
        import tensorflow as tf

        def one_step(carry, batch, step):
            inputs = self._random_inputs(batch, step)
            with tf.GradientTape() as tape:
                terms = self.graph(inputs)
            grads = tape.gradient(terms["loss"], self.trainable_variables)
            # dense gradients: the sparse (IndexedSlices) updates of the token embedding compile far slower in XLA
            grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                     for g, v in zip(grads, self.trainable_variables)]
            self.optimizer.apply(grads, self.trainable_variables)
            if self.use_ema:
                decay = self._ema_decay(step)
                for ema, variable in zip(self.ema_variables, self.trainable_variables):
                    ema.assign(ema * decay + tf.cast(variable, ema.dtype) * (1.0 - decay))
            return carry + 1, terms

        _, terms = self._loop(one_step, tf.constant(0), batches, first_step)
        return terms

    # -- host side
    def run(self, batches, first_step):
        """Train on ``batches`` (arrays of shape (batch, count, ...)): ``count`` steps from ``first_step``."""
        from sd_keras import backend

        batches = {k: backend.shard_batch(v) for k, v in batches.items()}
        if self.stateless:
            self.state, terms = self._program(self.state, batches, np.int32(first_step))
        else:
            terms = self._program(batches, np.int32(first_step))
        return terms

    def optimizer_and_ema(self):
        """Current optimizer and EMA values as numpy arrays (for checkpoints)."""
        from sd_keras import backend

        if self.stateless:
            optimizer_values, ema = self.state[2], self.state[3]
        else:
            optimizer_values = [v.value for v in self.optimizer.variables]
            ema = [v.value for v in self.ema_variables]
        return [np.asarray(backend.to_numpy(v)) for v in optimizer_values], [np.asarray(backend.to_numpy(v))
                                                                               for v in ema]

    def restore(self, optimizer_values, ema_values):
        """Load optimizer and EMA values (after the weights were assigned to the variables).

        ``ema_values`` None starts the EMA at the current weights.
        """
        import keras

        for variable, value in zip(self.optimizer.variables, optimizer_values):
            variable.assign(value)
        if ema_values is None:
            ema_values = [v.numpy() for v in self.trainable_variables] if self.use_ema else []
        if self.stateless:
            self.state = ([v.value for v in self.trainable_variables], [v.value for v in self.non_trainable_variables],
                          [v.value for v in self.optimizer.variables],
                          [keras.ops.convert_to_tensor(value) for value in ema_values])
        else:
            for variable, value in zip(self.ema_variables, ema_values):
                variable.assign(value)

    def write_back(self, use_ema=False):
        """Make the Keras variables hold the trained (or, with ``use_ema``, the EMA) weights."""
        if self.stateless:
            trainable, non_trainable, optimizer_values, ema = self.state
            for variable, value in zip(self.non_trainable_variables, non_trainable):
                variable.assign(value)
            for variable, value in zip(self.optimizer.variables, optimizer_values):
                variable.assign(value)
        else:
            trainable, ema = None, [v.value for v in self.ema_variables]
        if use_ema and self.use_ema:
            trainable = ema
        if trainable is not None:
            for variable, value in zip(self.trainable_variables, trainable):
                variable.assign(value)


# -- data ----------------------------------------------------------------------------------------------------------
def _shapes_data(section, image_size):
    """Render ``num_samples`` training images (in parallel processes) and their captions."""
    from sd_keras.data.shapes import render_dataset

    return render_dataset(section.num_samples, workers=section.workers or os.cpu_count() or 1, seed=section.seed,
                          image_size=image_size, split="train", two_object_fraction=section.two_object_fraction,
                          holdout_fraction=section.holdout_fraction, background_fraction=section.background_fraction)


def _training_data(config, model_config):
    """uint8 images (N, H, W, 3), token ids (N, 77) and captions of the training set."""
    from sd_keras.tokenizer import CLIPTokenizer

    size = model_config.image_size[0]
    if model_config.image_size[0] != model_config.image_size[1]:
        raise ValueError(f"model.image_size: training uses square images, got {model_config.image_size}")
    if config.data.source == "shapes":
        images, captions = _shapes_data(config.data, size)
    else:
        from sd_keras.data.folder import ImageFolderDataset

        dataset = ImageFolderDataset(config.data.folder, size)
        images, captions = dataset.images, dataset.captions
    tokenizer = CLIPTokenizer()
    unique = sorted(set(captions))
    table = dict(zip(unique, tokenizer.tokenize(unique, pad_token_id=model_config.pad_token_id)))
    tokens = np.stack([table[caption] for caption in captions]).astype(np.int32)
    empty = tokenizer.tokenize([""], pad_token_id=model_config.pad_token_id)[0].astype(np.int32)
    return images, tokens, captions, empty


def _batch_indices(seed, stage_index, step, batch_size, total):
    return np.random.default_rng([seed, stage_index, step]).integers(0, total, size=batch_size)


# -- checkpoints ---------------------------------------------------------------------------------------------------
LOG_NAME = "train_log.jsonl"
# The files of a run that are rewritten atomically: a write killed mid-way (kill -9, power loss) leaves its
# temporary sibling, which the next run in the same folder deletes.
_RUN_FILES = (CHECKPOINT_NAME, "train_config.yaml", "summary.json", "lora.safetensors", LOG_NAME)


def remove_stale_temporaries(out_dir):
    """Delete the temporary files that killed writes of a run's files left in ``out_dir``; returns their paths.

    Besides ``files.temporaries_of``'s names, the ``.<name>.XXXXXXXX.tmp`` names of earlier sd_keras versions.
    """
    removed = []
    for name in _RUN_FILES:
        path = os.path.join(out_dir, name)
        legacy = glob.glob(os.path.join(glob.escape(out_dir), f".{glob.escape(name)}.{'[a-z0-9_]' * 8}.tmp"))
        for temporary in files.temporaries_of(path) + legacy:
            if os.path.isdir(temporary) and not os.path.islink(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            removed.append(temporary)
    return removed


def truncate_log(path, stage_names, info):
    """Keep the records of ``train_log.jsonl`` up to the checkpoint ``info`` (None: keep none).

    Steps after the checkpoint were logged by a run killed before its next checkpoint; the resumed run trains
    and logs them again, so each step appears once. A line cut off by the kill is dropped too. Returns the number
    of records dropped.
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    kept = []
    if info is not None:
        last = len(stage_names) if info["stage"] is None else stage_names.index(info["stage"])
        for line in lines:
            try:
                record = json.loads(line)
                index = stage_names.index(record["stage"])
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if index < last or (index == last and step <= int(info["stage_step"])):
                kept.append(line)
    if len(kept) != len(lines):
        files.write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def write_checkpoint(path, parts, runner, info):
    """Write every weight, the runner's optimizer and EMA values and ``info`` to ``path`` atomically."""
    from safetensors.numpy import save_file

    tensors = {}
    if runner is not None:
        runner.write_back()
        optimizer_values, ema = runner.optimizer_and_ema()
        tensors.update({f"optimizer/{i:05d}": value for i, value in enumerate(optimizer_values)})
        tensors.update({f"ema/{i:05d}": value for i, value in enumerate(ema)})
    tensors.update(parts.tensors())
    tensors = {key: np.array(value, order="C") for key, value in tensors.items()}  # keeps 0-d arrays 0-d
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION),
                **{key: json.dumps(value) for key, value in info.items()}}
    with files.atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)


def read_checkpoint(path):
    """``(tensors, info)`` of a checkpoint; ValueError if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{path}: not an sd_keras training checkpoint")
            if metadata.get("format_version") != str(CHECKPOINT_VERSION):
                raise ValueError(f"{path}: checkpoint format_version {metadata.get('format_version')} is not "
                                 f"supported (this sd_keras reads {CHECKPOINT_VERSION})")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: unreadable checkpoint ({error})") from None
    info = {key: json.loads(value) for key, value in metadata.items() if key not in ("format", "format_version")}
    return tensors, info


def check_max_minutes(value):
    """``value`` as a float if it is a usable time limit in minutes (finite, > 0); else ValueError."""
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--max-minutes must be a number of minutes, got {value!r}") from None
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"--max-minutes must be a finite number of minutes > 0, got {value!r}")
    return minutes


def _check_resume(info, model_config, stage_names, path):
    differences = _config_differences(info["model_config"], model_config.to_dict())
    if differences:
        raise ValueError(f"--resume: {path} was written for another architecture; differing fields: "
                         f"{'; '.join(differences[:8])}" + (" ..." if len(differences) > 8 else ""))
    stage = info["stage"]
    if stage is not None and stage not in stage_names:
        raise ValueError(f"--resume: the checkpoint is in stage {stage!r}, which this config does not have "
                         f"(stages: {', '.join(stage_names)})")


# -- the loop ------------------------------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


def _on_terminate(signum, frame):
    raise _Interrupted()


class Trainer:
    """The models, the training images and one compiled program per stage; ``run`` trains into a folder.

    Running again (another folder, or ``resume=True``) reuses the compiled programs: a fresh run starts from the
    same initial weights, a resumed one from the checkpoint.

    Example:
        >>> trainer = Trainer("configs/tiny_test.yaml", overrides=["eval.enabled=false"])  # doctest: +SKIP
        >>> summary = trainer.run("runs/tiny")                                             # doctest: +SKIP
    """

    def __init__(self, config, *, overrides=(), devices=None):
        from sd_keras import backend

        if not isinstance(config, TrainConfig):
            config = load_config(config, overrides)
        elif overrides:
            raise ValueError("overrides need a YAML path or dict config")
        self.config = config
        self.model_config = build_model_config(config.model)
        self.devices = backend.use_devices(devices)
        backend.compilation_cache_dir()  # the persistent compilation cache (on unless SD_KERAS_COMPILATION_CACHE=0)
        # The layers draw their initial weights from numpy's global RNG (HostUniform); keras.utils.set_random_seed
        # would also import TensorFlow under JAX.
        np.random.seed(config.model.seed)
        self.parts = _Parts(self.model_config, PRECISIONS[config.train.precision])
        if config.model.init:
            self.parts.load_init(config.model.init)
        self._initial = self.parts.tensors()
        started = time.time()
        self.images, self.tokens, self.captions, self.empty_tokens = _training_data(config, self.model_config)
        self.data_seconds = time.time() - started
        self.stage_names = list(config.stages)
        self._runners = {}
        self._encode = None
        self._clock = time.time()  # the first run's time limit counts from here

    def runner(self, stage_index):
        """The compiled program of stage ``stage_index`` (built on first use)."""
        if stage_index not in self._runners:
            config = self.config
            stage = config.stages[self.stage_names[stage_index]]
            steps = config.train.steps or stage.steps
            seed_base = (config.train.seed * 1000003 + stage_index * 7919 + 1) % (2**31 - 1)
            self._runners[stage_index] = _StageRunner(self.parts, stage, steps, self.model_config,
                                                      self.empty_tokens, seed_base)
        return self._runners[stage_index]

    def latents(self):
        """The current (frozen) VAE's scaled posterior means of all training images."""
        from sd_keras import loop as loop_lib

        if self._encode is None:
            self._encode = loop_lib.CompiledFunction(self.parts.image_encoder)
        images = self.images
        batch_size = min(256, len(images))
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pad = batch_size - len(chunk)
            if pad:  # one program shape for every batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            latents = self._encode(chunk.astype(np.float32) / 127.5 - 1.0)
            out.append(np.asarray(latents, np.float32)[:batch_size - pad])
        return np.concatenate(out)

    def run(self, out_dir, *, resume=False, progress=True, max_minutes=None):
        """Train every stage (or the rest of them, with ``resume``), then export and evaluate.

        Args:
            out_dir: checkpoint, ``train_log.jsonl``, ``model/`` (saved model), ``lora.safetensors``, ``eval/``.
            resume: continue from ``out_dir/checkpoint.safetensors`` (required when it exists).
            progress: show a tqdm bar per stage.
            max_minutes: stop with a checkpoint after this many minutes (default ``train.max_minutes``), counted
                from the creation of the trainer for its first run (so model building and data rendering count).

        Returns:
            A summary dict: ``complete`` (False when stopped at the time limit), ``global_step``, ``model``
            (folder), ``eval`` (the evaluation summary, when run), ``stages`` (seconds and last losses).
        """
        config = self.config
        started = time.time()
        if max_minutes is not None:
            check_max_minutes(max_minutes)
        os.makedirs(out_dir, exist_ok=True)
        checkpoint_path = os.path.join(out_dir, CHECKPOINT_NAME)
        info, tensors = None, None
        if resume:
            if not os.path.exists(checkpoint_path):
                raise ValueError(f"--resume: no checkpoint in {out_dir} ({CHECKPOINT_NAME})")
            tensors, info = read_checkpoint(checkpoint_path)
            _check_resume(info, self.model_config, self.stage_names, checkpoint_path)
        elif os.path.exists(checkpoint_path):
            raise ValueError(f"{out_dir} already has a checkpoint: pass --resume to continue it, or choose another "
                             f"--out")
        remove_stale_temporaries(out_dir)
        # a fresh run starts a new log; a resumed one drops what a killed run logged after its last checkpoint
        truncate_log(os.path.join(out_dir, LOG_NAME), self.stage_names, info)
        for runner in self._runners.values():
            runner.reset()
        self.parts.assign(self._initial, "initial weights", partial=True)
        _write_text(os.path.join(out_dir, "train_config.yaml"), _to_yaml(config))

        max_minutes = config.train.max_minutes if max_minutes is None else max_minutes
        clock, self._clock = self._clock, None
        deadline = (clock or started) + 60 * max_minutes if max_minutes else None
        if info is None:
            start_index, global_step = 0, 0
        else:
            start_index = len(self.stage_names) if info["stage"] is None else self.stage_names.index(info["stage"])
            global_step = info["global_step"]
            if any("lora_kernel" in key for key in tensors):
                self.runner(len(self.stage_names) - 1)  # gives the UNet its adapters
            self.parts.assign(tensors, checkpoint_path)
        summary = {"complete": False, "stages": {}, "data_seconds": round(self.data_seconds, 1),
                   "num_images": len(self.images)}
        previous_handler = signal.signal(signal.SIGTERM, _on_terminate) if _in_main_thread() else None
        try:
            for stage_index in range(start_index, len(self.stage_names)):
                resume_info = (tensors, info) if info is not None and stage_index == start_index else None
                result = self._run_stage(stage_index, checkpoint_path, out_dir, resume_info, global_step, deadline,
                                         progress)
                global_step = result["global_step"]
                summary["stages"][self.stage_names[stage_index]] = result
                if result["paused"]:
                    summary["global_step"] = global_step
                    _write_json(os.path.join(out_dir, "summary.json"), summary)
                    return summary
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        summary["global_step"] = global_step
        summary.update(_finish(config, self.parts, self.model_config, out_dir))
        summary["complete"] = True
        summary["seconds"] = round(time.time() - started, 1)
        _write_json(os.path.join(out_dir, "summary.json"), summary)
        return summary

    def _run_stage(self, stage_index, checkpoint_path, out_dir, resume_info, global_step, deadline, progress):
        from sd_keras import backend

        config, train_section = self.config, self.config.train
        name = self.stage_names[stage_index]
        stage = config.stages[name]
        steps = train_section.steps or stage.steps
        batch_size = train_section.batch_size or stage.batch_size
        runner = self.runner(stage_index)
        runner.activate()
        step = 0
        if resume_info is not None and int(resume_info[1]["stage_step"]):
            tensors, info = resume_info
            step = int(info["stage_step"])
            optimizer_values = [tensors[k] for k in sorted(k for k in tensors if k.startswith("optimizer/"))]
            ema_values = [tensors[k] for k in sorted(k for k in tensors if k.startswith("ema/"))]
            expected = [tuple(v.shape) for v in runner.optimizer.variables]
            if [tuple(v.shape) for v in optimizer_values] != expected:
                raise ValueError(f"--resume: the optimizer state in {checkpoint_path} does not fit stage {name!r} "
                                 f"({len(optimizer_values)} values, {len(expected)} expected): were its components "
                                 f"or LoRA settings changed?")
            if runner.use_ema and len(ema_values) != len(runner.trainable_variables):
                raise ValueError(f"--resume: {checkpoint_path} has {len(ema_values)} EMA values, stage {name!r} "
                                 f"needs {len(runner.trainable_variables)} (was ema_decay changed?)")
            runner.restore(optimizer_values, ema_values if runner.use_ema else [])
        else:
            runner.restore([np.asarray(v) for v in runner._initial_optimizer], None)
        latents = self.latents() if runner.trains_diffusion and not runner.trains_vae else None
        first_step = step

        def info_at(current_step, stage_name=name, index=stage_index):
            return {"stage": stage_name, "stage_index": index, "stage_step": current_step,
                    "global_step": global_step + current_step - first_step,
                    "model_config": self.model_config.to_dict(), "stages": self.stage_names}

        started = last_checkpoint = time.time()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=step, desc=name, unit="step", file=sys.stderr, dynamic_ncols=True,
                       mininterval=2.0)
        terms_host = {}
        next_log = step + train_section.log_every
        try:
            while step < steps:
                count = min(train_section.steps_per_call, steps - step)
                indices = np.stack([_batch_indices(train_section.seed, stage_index, s, batch_size, len(self.images))
                                    for s in range(step, step + count)], axis=1)  # (batch, count)
                batches = {"tokens": self.tokens[indices]}
                if runner.trains_vae:
                    batches["images"] = self.images[indices]
                else:
                    batches["latents"] = latents[indices]
                terms = runner.run(batches, step)
                step += count
                if bar is not None:
                    bar.update(count)
                if step >= next_log or step == steps:
                    next_log = step + train_section.log_every
                    terms_host = {k: float(backend.to_numpy(v)) for k, v in terms.items()}
                    if not all(math.isfinite(v) for v in terms_host.values()):
                        raise FloatingPointError(f"stage {name!r} step {step}: the loss is not finite ({terms_host}); "
                                                 f"lower the learning rate or use precision float32")
                    record = {"stage": name, "step": step, "seconds": round(time.time() - started, 2),
                              **{k: round(v, 6) for k, v in terms_host.items()}}
                    with open(os.path.join(out_dir, LOG_NAME), "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in terms_host.items()}, refresh=False)
                now = time.time()
                crossed = step // train_section.checkpoint_every != (step - count) // train_section.checkpoint_every
                timed = (train_section.checkpoint_minutes
                         and now - last_checkpoint >= 60 * train_section.checkpoint_minutes)
                if step < steps and (crossed or timed):
                    write_checkpoint(checkpoint_path, self.parts, runner, info_at(step))
                    last_checkpoint = now
                if deadline is not None and now >= deadline and step < steps:
                    write_checkpoint(checkpoint_path, self.parts, runner, info_at(step))
                    if bar is not None:
                        bar.close()
                    print(f"sd-keras train: stopped at the time limit in stage {name!r} at step {step}/{steps}; "
                          f"checkpoint written, continue with --resume", file=sys.stderr)
                    return {"paused": True, "global_step": global_step + step - first_step, "last": terms_host}
        except (KeyboardInterrupt, _Interrupted):
            write_checkpoint(checkpoint_path, self.parts, runner, info_at(step))
            if bar is not None:
                bar.close()
            print(f"sd-keras train: interrupted in stage {name!r} at step {step}; checkpoint written",
                  file=sys.stderr)
            raise KeyboardInterrupt from None
        if bar is not None:
            bar.close()
        runner.write_back(use_ema=True)
        seconds = time.time() - started
        next_index = stage_index + 1
        next_name = self.stage_names[next_index] if next_index < len(self.stage_names) else None
        end_info = info_at(steps, next_name, next_index)
        end_info["stage_step"] = 0
        write_checkpoint(checkpoint_path, self.parts, None, end_info)
        return {"paused": False, "global_step": end_info["global_step"], "steps": steps, "batch_size": batch_size,
                "seconds": round(seconds, 1), "steps_per_second": round((steps - first_step) / max(seconds, 1e-9), 2),
                "last": terms_host}


def train(config, out_dir, *, overrides=(), resume=False, devices=None, progress=True, max_minutes=None):
    """``Trainer(config, overrides=..., devices=...).run(out_dir, ...)``: one training run; see ``Trainer.run``.

    Example:
        >>> summary = train("configs/tiny_test.yaml", "runs/tiny", overrides=["train.steps=2"])  # doctest: +SKIP
    """
    trainer = Trainer(config, overrides=overrides, devices=devices)
    return trainer.run(out_dir, resume=resume, progress=progress, max_minutes=max_minutes)


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _finish(config, parts, model_config, out_dir):
    """Export the trained model (merged LoRA), the LoRA adapters and, for shapes data, the evaluation."""
    from sd_keras import models
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.weights.saved import assign_tensors, save_pretrained

    result = {}
    builders = {"text_encoder": models.build_text_encoder, "diffusion_model": models.build_diffusion_model,
                "decoder": models.build_decoder, "image_encoder": models.build_image_encoder}
    fresh = {}
    for name, model in parts.items():
        fresh[name] = builders[name](model_config)
        assign_tensors(fresh[name], merged_tensors(model), source=f"trained {name}")
    sd = StableDiffusion(model_config, **fresh)
    folder = os.path.join(out_dir, "model")
    weight_dtype = None if config.export.weight_dtype == "float32" else config.export.weight_dtype
    save_pretrained(sd, folder, weight_dtype=weight_dtype)
    result["model"] = folder
    if any(layer.lora_enabled for layer in _dense_layers(parts.diffusion_model)):
        result["lora"] = save_lora(parts.diffusion_model, os.path.join(out_dir, "lora.safetensors"),
                                   model_config.name)
    if config.eval.enabled and config.data.source == "shapes" and (config.eval.num_single or config.eval.num_double):
        from sd_keras import evaluate

        if weight_dtype:  # evaluate what ships: the stored (rounded) weights
            from sd_keras.weights.saved import load_pretrained

            sd = load_pretrained(StableDiffusion, folder)
        scenes = evaluate.heldout_scenes(config.eval.num_single, config.eval.num_double, seed=config.eval.seed,
                                         holdout_fraction=config.data.holdout_fraction)
        report = evaluate.evaluate(sd, scenes, num_steps=config.eval.num_steps, sampler=config.eval.sampler,
                                   guidance_scale=config.eval.guidance_scale, seed=config.eval.seed,
                                   batch_size=config.eval.batch_size, out_dir=os.path.join(out_dir, "eval"))
        compact = {k: v for k, v in report.items() if k != "records"}
        _write_json(os.path.join(folder, "eval_summary.json"), compact)
        result["eval"] = report["summary"]
        print(evaluate.format_summary(report["summary"]), file=sys.stderr)
    return result


def _write_json(path, data):
    files.write_json(path, data, indent=1)


def _write_text(path, text):
    files.write_text(path, text)


def _to_yaml(config):
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))
