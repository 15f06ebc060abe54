"""Read PyTorch ``.ckpt`` / ``.pt`` / ``.bin`` files without executing pickled code and without torch.

A PyTorch file (``torch.save`` since 1.6) is a zip archive: ``<name>/data.pkl`` pickles the object tree and every
tensor storage is a separate member ``<name>/data/<key>`` of raw little-endian bytes. ``data.pkl`` is read with a
restricted unpickler that resolves only these globals:

- ``collections.OrderedDict``;
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter`` (and
  ``_rebuild_parameter_with_state``), replaced by functions of this module that record a ``LazyTensor``
  (storage key, dtype, offset, shape, strides) — nothing is read until ``read_tensor``;
- the typed storage classes ``torch.FloatStorage``, ``torch.HalfStorage``, ``torch.BFloat16Storage``... (dtype
  markers only);
- a few bookkeeping objects that training checkpoints carry next to the weights (PyTorch Lightning's
  ``ModelCheckpoint`` callback state, numpy scalars such as ``global_step``), which become inert placeholders:
  their constructor arguments are kept as data and no code of theirs runs.

Anything else (``os.system``, ``builtins.eval``, any class) raises ``UnsafeCheckpointError`` naming the file and
the global, before any of it is called. Files in the pre-1.6 (non-zip) format are read with
``torch.load(weights_only=True)`` when torch is installed; what it refuses is reported the same way, in one line
of our own (torch's message suggests ``weights_only=False``, which would run the file's code).

Example:
    >>> reader = TorchCheckpoint("sd-v1-5.ckpt")                                 # doctest: +SKIP
    >>> reader.shape("model.diffusion_model.out.2.weight")                       # doctest: +SKIP
    (4, 320, 3, 3)
    >>> reader.read("model.diffusion_model.out.2.weight").dtype                  # doctest: +SKIP
    dtype('float32')
"""

import collections
import pickle
import re
import warnings
import zipfile
from typing import NamedTuple, Tuple

import numpy as np

from sd_keras.errors import InputError


# torch.load(weights_only=True) names what it refused as "GLOBAL module.name" (e.g. "GLOBAL posix.system")
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeCheckpointError(InputError):
    """A pickle asked for a global outside the allow-list (it would run code when loaded)."""


class CheckpointFormatError(InputError):
    """The file is not a readable PyTorch checkpoint (truncated, not a zip/pickle, no state dict)."""


# torch storage class name -> numpy dtype (bfloat16 is kept as its raw uint16 bits, widened on read)
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(NamedTuple):
    name: str


class StorageRef(NamedTuple):
    key: str
    dtype: object  # numpy dtype or "bfloat16"
    numel: int


class LazyTensor(NamedTuple):
    """A tensor found in ``data.pkl``: where its data is, not the data itself."""

    storage: StorageRef
    offset: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]


class _Inert:
    """Stands in for bookkeeping objects (Lightning callback state, numpy scalars): holds its arguments, runs
    nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, StorageRef):
        raise CheckpointFormatError(f"tensor storage is {type(storage).__name__}, not a storage reference")
    return LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}
_INERT = {
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _INERT:
            return _Inert
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to load: the pickle references the global {module}.{name}, which is not a "
            "tensor or state-dict type (loading it would run code from the file); nothing was loaded"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]  # pid[3] is the device, irrelevant here
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self._path}: unsupported storage type {storage_type!r:.80}")
        return StorageRef(str(key), STORAGE_DTYPES[storage_type.name], int(numel))


# Wrappers a state dict is found under, first match wins: Lightning/SD checkpoints ("state_dict"), basicsr /
# Real-ESRGAN training files ("params_ema": the EMA weights they release, before the raw "params")
STATE_DICT_WRAPPERS = ("state_dict", "params_ema", "params")


def _unwrap_state_dict(obj):
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            return obj[wrapper]
    return obj


def _flatten_state_dict(obj, path):
    """The ``{name: LazyTensor}`` inside a loaded object: the first of ``STATE_DICT_WRAPPERS`` present
    (``obj["state_dict"]``, ``obj["params_ema"]``, ``obj["params"]``), else ``obj``."""
    obj = _unwrap_state_dict(obj)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: the pickle holds a {type(obj).__name__}, not a state dict")
    return {key: value for key, value in obj.items() if isinstance(key, str) and isinstance(value, LazyTensor)}


def _global_step(obj):
    """A training checkpoint's top-level ``global_step`` (an int), else None."""
    step = obj.get("global_step") if isinstance(obj, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _widen_bfloat16(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


class TorchCheckpoint:
    """Lazy, code-free reader of a PyTorch zip checkpoint: ``keys()``, ``shape(key)``, ``read(key)``.

    ``read`` returns a numpy array (bfloat16 widened to float32); only that tensor's storage is read.
    ``global_step``: the training step the file records next to its state dict, if any.
    """

    global_step = None

    def __init__(self, path):
        self.path = str(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise CheckpointFormatError(f"{self.path}: not a PyTorch zip checkpoint (truncated or not a "
                                        "checkpoint)") from None
        try:
            self._tensors = self._read_index()
        except BaseException:
            self._zip.close()
            raise

    def _read_index(self):
        names = self._zip.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{self.path}: a zip file without one <name>/data.pkl is not a PyTorch "
                                        "checkpoint")
        self._root = pickles[0][: -len("data.pkl")]
        byteorder = self._root + "byteorder"
        if byteorder in names and self._zip.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointFormatError(f"{self.path}: big-endian checkpoints are not supported")
        try:
            with self._zip.open(pickles[0]) as file:
                obj = _RestrictedUnpickler(file, self.path).load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError,
                AttributeError, IndexError) as error:
            raise CheckpointFormatError(f"{self.path}: corrupt checkpoint pickle ({error})") from None
        self.global_step = _global_step(obj)
        return _flatten_state_dict(obj, self.path)

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return self._tensors[key].shape

    def read(self, key):
        tensor = self._tensors[key]
        storage = tensor.storage
        raw_dtype = np.uint16 if storage.dtype == "bfloat16" else np.dtype(storage.dtype)
        itemsize = np.dtype(raw_dtype).itemsize
        member = f"{self._root}data/{storage.key}"
        try:
            data = self._zip.read(member)
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as error:
            raise CheckpointFormatError(f"{self.path}: cannot read the data of {key!r} ({error})") from None
        if len(data) < storage.numel * itemsize:
            raise CheckpointFormatError(f"{self.path}: the data of {key!r} is truncated")
        flat = np.frombuffer(data, dtype=raw_dtype, count=storage.numel)
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
        if 0 not in tensor.shape and (tensor.offset < 0 or last >= storage.numel):
            raise CheckpointFormatError(f"{self.path}: {key!r} points outside its storage")
        array = np.lib.stride_tricks.as_strided(flat[tensor.offset:], tensor.shape,
                                                [s * itemsize for s in tensor.strides])
        array = np.array(array)  # own the memory (the zip member's bytes are released)
        return _widen_bfloat16(array) if storage.dtype == "bfloat16" else array

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TorchLegacyCheckpoint:
    """Pre-1.6 (non-zip) PyTorch files, through ``torch.load(weights_only=True)`` (torch's own allow-list)."""

    def __init__(self, path):
        self.path = str(path)
        try:
            import torch
        except ImportError:
            raise CheckpointFormatError(f"{self.path}: not a zip-format PyTorch checkpoint; reading the legacy "
                                        "format needs torch installed") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's own notes about weights_only are not for our users
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # Our own words: torch's message goes on to advise loading with weights_only=False, which would run
            # the file's code.
            found = _UNSUPPORTED_GLOBAL.search(str(error))
            what = (f"references the global {found.group(1)}, which is not a tensor or state-dict type" if found
                    else "holds more than tensors and plain data")
            raise UnsafeCheckpointError(f"{self.path}: refusing to load: the pickle {what} (loading it would run "
                                        "code from the file); nothing was loaded") from None
        except (RuntimeError, EOFError, ValueError, OSError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointFormatError(f"{self.path}: not a readable PyTorch checkpoint ({first})") from None
        self.global_step = _global_step(obj)
        obj = _unwrap_state_dict(obj)
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"{self.path}: holds a {type(obj).__name__}, not a state dict")
        self._tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def read(self, key):
        import torch

        tensor = self._tensors[key]
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy().copy()

    def close(self):
        self._tensors = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_torch_file(path):
    """A reader for a PyTorch file: zip format without torch, legacy format through torch (weights only)."""
    if zipfile.is_zipfile(path):
        return TorchCheckpoint(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":  # every pickle of protocol >= 2 starts with PROTO
        raise CheckpointFormatError(f"{path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    return TorchLegacyCheckpoint(path)
