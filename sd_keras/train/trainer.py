"""The training loop: ``Trainer`` (models, data and one compiled program per stage) and ``train``."""

import json
import math
import os
import signal
import sys
import time

import numpy as np

from sd_keras.errors import InputError
from sd_keras.train.checkpoints import (CHECKPOINT_NAME, LOG_NAME, check_resume, read_checkpoint,
                                        remove_stale_temporaries, truncate_log, write_checkpoint)
from sd_keras.train.config import (PRECISIONS, TrainConfig, build_model_config, check_max_minutes, load_config,
                                   to_yaml)
from sd_keras.train.data import batch_indices, training_data
from sd_keras.train.finish import finish, write_json, write_text
from sd_keras.train.parts import Parts
from sd_keras.train.runner import StageRunner

EXIT_PAUSED = 3  # stopped at train.max_minutes after writing a checkpoint: run again with --resume


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
            raise InputError("overrides need a YAML path or dict config")
        self.config = config
        self.model_config = build_model_config(config.model)
        self.devices = backend.use_devices(devices)
        backend.compilation_cache_dir()  # the persistent compilation cache (on unless SD_KERAS_COMPILATION_CACHE=0)
        # The layers draw their initial weights from numpy's global RNG (HostUniform); keras.utils.set_random_seed
        # would also import TensorFlow under JAX.
        np.random.seed(config.model.seed)
        self.parts = Parts(self.model_config, PRECISIONS[config.train.precision])
        if config.model.init:
            self.parts.load_init(config.model.init)
        self._initial = self.parts.tensors()
        started = time.time()
        self.images, self.tokens, self.captions, self.empty_tokens = training_data(config, self.model_config)
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
            self._runners[stage_index] = StageRunner(self.parts, stage, steps, self.model_config,
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
                raise InputError(f"--resume: no checkpoint in {out_dir} ({CHECKPOINT_NAME})")
            tensors, info = read_checkpoint(checkpoint_path)
            check_resume(info, self.model_config, self.stage_names, checkpoint_path)
        elif os.path.exists(checkpoint_path):
            raise InputError(f"{out_dir} already has a checkpoint: pass --resume to continue it, or choose another "
                             f"--out")
        remove_stale_temporaries(out_dir)
        # a fresh run starts a new log; a resumed one drops what a killed run logged after its last checkpoint
        truncate_log(os.path.join(out_dir, LOG_NAME), self.stage_names, info)
        for runner in self._runners.values():
            runner.reset()
        self.parts.assign(self._initial, "initial weights", partial=True)
        write_text(os.path.join(out_dir, "train_config.yaml"), to_yaml(config))

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
                    write_json(os.path.join(out_dir, "summary.json"), summary)
                    return summary
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        summary["global_step"] = global_step
        summary.update(finish(config, self.parts, self.model_config, out_dir))
        summary["complete"] = True
        summary["seconds"] = round(time.time() - started, 1)
        write_json(os.path.join(out_dir, "summary.json"), summary)
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
                raise InputError(f"--resume: the optimizer state in {checkpoint_path} does not fit stage {name!r} "
                                 f"({len(optimizer_values)} values, {len(expected)} expected): were its components "
                                 f"or LoRA settings changed?")
            if runner.use_ema and len(ema_values) != len(runner.trainable_variables):
                raise InputError(f"--resume: {checkpoint_path} has {len(ema_values)} EMA values, stage {name!r} "
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
                indices = np.stack([batch_indices(train_section.seed, stage_index, s, batch_size, len(self.images))
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
