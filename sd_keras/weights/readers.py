"""Tensor file readers: ``.safetensors`` (numpy, no torch), sharded files seen as one, PyTorch pickles.

Every reader has ``keys()``, ``shape(key)``, ``read(key)`` (a numpy array) and ``close()``; ``open_tensor_file``
picks one by content. Checkpoint loading (``sd_keras.weights.checkpoints``) and LoRA files
(``sd_keras.weights.lora``) read through them.
"""

import json
import os
import struct

import numpy as np

from sd_keras.weights.pickle_reader import CheckpointFormatError, UnsafeCheckpointError, open_torch_file

__all__ = ["SafetensorsFile", "MultiFile", "open_tensor_file", "CheckpointFormatError", "UnsafeCheckpointError",
           "SAFETENSORS_SUFFIXES", "PICKLE_SUFFIXES"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class SafetensorsFile:
    """One ``.safetensors`` file read through ``safetensors`` with numpy (no torch); ``read`` opens the file per
    tensor, so memory-mapped pages of tensors already read are released. bfloat16 is widened to float32."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = str(path)
        self._safe_open = safe_open
        try:
            with safe_open(self.path, framework="numpy") as f:
                self._info = {}
                for key in f.keys():
                    tensor_slice = f.get_slice(key)
                    self._info[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
                self.metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointFormatError(f"{self.path}: not a readable safetensors file ({error})") from None
        self._offsets = None

    def keys(self):
        return list(self._info)

    def shape(self, key):
        return self._info[key][0]

    def _raw_bfloat16(self, key):
        if self._offsets is None:  # numpy has no bfloat16: read its bits from the documented layout
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            self._offsets = {k: (8 + length + v["data_offsets"][0], 8 + length + v["data_offsets"][1])
                             for k, v in header.items() if k != "__metadata__"}
        start, end = self._offsets[key]
        with open(self.path, "rb") as f:
            f.seek(start)
            bits = np.frombuffer(f.read(end - start), dtype="<u2").reshape(self.shape(key))
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def read(self, key):
        from safetensors import SafetensorError

        try:
            if self._info[key][1] == "BF16":
                return self._raw_bfloat16(key)
            with self._safe_open(self.path, framework="numpy") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointFormatError(f"{self.path}: cannot read {key!r} ({error})") from None

    def close(self):
        pass


class MultiFile:
    """Several tensor files seen as one (sharded diffusers weights): ``weight_map`` key -> reader."""

    def __init__(self, readers):
        self._readers = readers
        self._owner = {}
        for reader in readers:
            for key in reader.keys():
                self._owner[key] = reader
        self.path = os.path.dirname(readers[0].path) if readers else ""

    def keys(self):
        return list(self._owner)

    def shape(self, key):
        return self._owner[key].shape(key)

    def read(self, key):
        return self._owner[key].read(key)

    def close(self):
        for reader in self._readers:
            reader.close()


def _looks_like_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and length < os.path.getsize(path)


def open_tensor_file(path):
    """A reader (``keys``/``shape``/``read``/``close``) for a ``.safetensors`` or PyTorch file, by content."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointFormatError(f"{path}: empty file, not a checkpoint")
    if path.endswith(SAFETENSORS_SUFFIXES) or _looks_like_safetensors(path):
        return SafetensorsFile(path)
    return open_torch_file(path)
