"""Train sd_keras models from a YAML config: ``sd-keras train CONFIG.yaml [key=value ...] --out DIR``.

A config (see ``configs/shapes.yaml``) has six sections, each a dataclass in ``sd_keras.train.config``, so an
unknown key or a value of the wrong type is an error that names the key (``stages.vae.stpes: unknown key``):

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

The package, one module per concern: ``config`` (schema, validation, the model config), ``lora`` (adapter files),
``schedule`` (learning rate), ``losses`` (the loss graph), ``runner`` (the compiled step programs), ``data``,
``checkpoints`` (checkpoint and log files), ``trainer`` (the loop: ``Trainer``, ``train``) and ``finish`` (export
and evaluation).
"""

from sd_keras.train.checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CHECKPOINT_VERSION, LOG_NAME,
                                        read_checkpoint, remove_stale_temporaries, truncate_log, write_checkpoint)
from sd_keras.train.config import (COMPONENTS, DATA_SOURCES, LR_SCHEDULES, OPTIMIZERS, PRECISIONS, RECON_LOSSES,
                                   WEIGHT_DTYPES, DataSection, EvalSection, ExportSection, ModelSection,
                                   StageSection, TrainConfig, TrainSection, build_model_config, check_max_minutes,
                                   load_config)
from sd_keras.train.lora import LORA_FORMAT, LORA_VERSION, enable_lora, load_lora, merged_tensors, save_lora
from sd_keras.train.trainer import EXIT_PAUSED, Trainer, train

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CHECKPOINT_VERSION", "COMPONENTS", "DATA_SOURCES", "EXIT_PAUSED",
           "LOG_NAME", "LORA_FORMAT", "LORA_VERSION", "LR_SCHEDULES", "OPTIMIZERS", "PRECISIONS", "RECON_LOSSES",
           "WEIGHT_DTYPES", "DataSection", "EvalSection", "ExportSection", "ModelSection", "StageSection",
           "TrainConfig", "TrainSection", "Trainer", "build_model_config", "check_max_minutes", "enable_lora",
           "load_config", "load_lora", "merged_tensors", "read_checkpoint", "remove_stale_temporaries", "save_lora",
           "train", "truncate_log", "write_checkpoint"]
