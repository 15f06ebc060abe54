"""Checkpoint and log files of a run: written atomically, read back, checked for resuming, cut back on resume."""

import contextlib
import glob
import json
import os
import shutil

import numpy as np

from sd_keras import files
from sd_keras.errors import InputError
from sd_keras.train.config import config_differences

CHECKPOINT_FORMAT = "sd_keras.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.jsonl"
# The files of a run that are rewritten atomically: a write killed mid-way (kill -9, power loss) leaves its
# temporary sibling, which the next run in the same folder deletes.
RUN_FILES = (CHECKPOINT_NAME, "train_config.yaml", "summary.json", "lora.safetensors", LOG_NAME)


def remove_stale_temporaries(out_dir):
    """Delete the temporary files that killed writes of a run's files left in ``out_dir``; returns their paths.

    Besides ``files.temporaries_of``'s names, the ``.<name>.XXXXXXXX.tmp`` names of earlier sd_keras versions.
    """
    removed = []
    for name in RUN_FILES:
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
    """``(tensors, info)`` of a checkpoint; InputError if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise InputError(f"{path}: not an sd_keras training checkpoint")
            if metadata.get("format_version") != str(CHECKPOINT_VERSION):
                raise InputError(f"{path}: checkpoint format_version {metadata.get('format_version')} is not "
                                 f"supported (this sd_keras reads {CHECKPOINT_VERSION})")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: unreadable checkpoint ({error})") from None
    info = {key: json.loads(value) for key, value in metadata.items() if key not in ("format", "format_version")}
    return tensors, info



def check_resume(info, model_config, stage_names, path):
    differences = config_differences(info["model_config"], model_config.to_dict())
    if differences:
        raise InputError(f"--resume: {path} was written for another architecture; differing fields: "
                         f"{'; '.join(differences[:8])}" + (" ..." if len(differences) > 8 else ""))
    stage = info["stage"]
    if stage is not None and stage not in stage_names:
        raise InputError(f"--resume: the checkpoint is in stage {stage!r}, which this config does not have "
                         f"(stages: {', '.join(stage_names)})")

