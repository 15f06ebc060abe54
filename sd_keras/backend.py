"""The only place that knows which Keras backend runs: compilation, host callbacks, the compile cache.

Everything else is written with ``keras.ops`` and calls these helpers.
"""

import contextlib
import functools
import os

import keras

from sd_keras import env
from sd_keras.errors import InputError


def name():
    return keras.backend.backend()


# On a CPU-only TensorFlow, models with at least this many weights run as a TensorFlow graph instead of XLA.
CPU_GRAPH_MIN_PARAMS = 100_000_000


def tf_uses_xla(num_params=None):
    """Whether TensorFlow compiles a model's programs with XLA.

    With a GPU or TPU: yes. On a CPU-only machine it depends on the model's size: TensorFlow's own CPU kernels
    (oneDNN) run the SD 1.x UNet (860M weights) 2.6x faster than XLA's CPU code (128x128, two cores: 1.9 s
    against 5.0 s per call), while XLA runs the small shipped demo model 2x faster (0.57 s against 1.2 s per
    128x128 image at 20 steps) by fusing its many small ops. So models with ``CPU_GRAPH_MIN_PARAMS`` weights or
    more run as one TensorFlow graph (``tf.function`` without ``jit_compile``): still one program per
    generation, with no Python between steps. ``SD_KERAS_TF_XLA=1`` or ``0`` (any ``sd_keras.env.flag`` value)
    overrides the choice.
    """
    forced = env.flag("SD_KERAS_TF_XLA", None)
    if forced is not None:
        return forced
    if _tf_has_accelerator():
        return True
    return num_params is None or num_params < CPU_GRAPH_MIN_PARAMS


def jit(fn, *, num_params=None):
    """Compile ``fn`` into one program per input signature.

    JAX: ``jax.jit`` (XLA). TensorFlow: ``tf.function``, with ``jit_compile`` where ``tf_uses_xla(num_params)``
    (``num_params``: the weights of the model ``fn`` runs). Other backends run eagerly.
    """
    backend = name()
    if backend == "jax":
        import jax

        compilation_cache_dir()  # the persistent cache is on by default: switch it on before the first compile
        return jax.jit(fn, compiler_options=jax_compiler_options())
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=tf_uses_xla(num_params), reduce_retracing=False)
    return fn


def jax_compiler_options():
    """XLA options for sd_keras' JAX programs on a GPU (None elsewhere).

    - Matrix products through cuBLAS rather than Triton. Measured on an H200 (SD 1.x, 512x512, 50 steps,
      bf16): 0.400 -> 0.378 s at batch 1 and 0.222 -> 0.219 s per image at batch 8
      (benchmarks/results/gpu_bench_h200.json).
    - No rematerialization pass. XLA sizes the loop's and the decoder's programs at 129 GiB (132 at batch 8:
      the estimate holds a scratch buffer as large as the card that an autotuned kernel asks for; the
      allocator then logs that it "ran out of memory trying to allocate 129.35GiB" as "not a failure"), above
      the pass's limit of 80 % of the device's memory x 0.95 = 106 GiB, whatever JAX's preallocation. The pass
      can remove nothing ("only reduced to 129.36GiB ... down from 129.36GiB originally") and printed two
      "Can't reduce memory use below 106 GiB" warnings per new program; the programs need 6.9 GiB when they
      run. Without the pass: no warning, the same 0.48 s per image and the same peak memory
      (benchmarks/results/first_image_h200.json).

    Per program, so other JAX code in the process is untouched; the same setting in ``XLA_FLAGS`` wins.
    """
    import jax

    if jax.default_backend() != "gpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    options = {}
    if "xla_gpu_enable_triton_gemm" not in flags:
        options["xla_gpu_enable_triton_gemm"] = False
    if "xla_disable_hlo_passes" not in flags:
        options["xla_disable_hlo_passes"] = "rematerialization"
    return options or None


# Convolutions with at most this many output positions (batch x height x width) and at least this many inputs
# per output (kernel height x width x input channels) run as one matrix product on a CPU-only TensorFlow.
CONV_MATMUL_MAX_ROWS = 256
CONV_MATMUL_MIN_DEPTH = 4096
_native_convolutions = [False]


def conv_as_matmul(inputs_shape, kernel_shape):
    """Whether a stride-1 convolution runs as im2col + one matrix product (``layers.Conv2D``).

    On a CPU-only TensorFlow, oneDNN lays a convolution's weights out anew on every call when they are not graph
    constants (they are arguments of sd_keras' programs), which dominates the UNet's small, wide convolutions:
    measured on two cores, batch 2, 3x3 2560->1280 at 2x2: 62.5 ms as a convolution, 9.5 ms as a matrix product;
    at 8x8: 87.6 against 28.3 ms; at 16x16 (640 channels) both 13 ms. The rule keeps small models (whose
    channels are few) and large outputs on the convolution. ``SD_KERAS_CONV_AS_MATMUL=0`` (or ``off``) turns it off;
    ``native_convolutions()`` does for a block (LiteRT export keeps CONV_2D operators).
    """
    # the switch is read first, so a bad value is refused under every backend
    if not env.flag("SD_KERAS_CONV_AS_MATMUL", True) or name() != "tensorflow" or _native_convolutions[0]:
        return False
    if None in tuple(inputs_shape[:3]) or _tf_has_accelerator():
        return False
    rows = int(inputs_shape[0]) * int(inputs_shape[1]) * int(inputs_shape[2])
    depth = int(kernel_shape[0]) * int(kernel_shape[1]) * int(kernel_shape[2])
    return rows <= CONV_MATMUL_MAX_ROWS and depth >= CONV_MATMUL_MIN_DEPTH


@contextlib.contextmanager
def native_convolutions():
    """Within this block, models traced on TensorFlow keep every convolution a convolution."""
    previous = _native_convolutions[0]
    _native_convolutions[0] = True
    try:
        yield
    finally:
        _native_convolutions[0] = previous


@functools.lru_cache(maxsize=None)
def _tf_has_accelerator():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def supports_loop_callback(num_params=None):
    """Whether progress is reported by a host callback inside the compiled loop: JAX without the persistent
    compilation cache, and TensorFlow graphs without XLA (whose XLA programs cannot call Python; they run the
    loop a few steps per call instead).

    On an H200 (SD 1.x, 512x512, 50 steps, batch 1: 0.37 s) five reports from inside the loop cost 3.4 %, five
    calls of ten steps each 4.1 % (each program call has its own start-up work). But JAX never writes a program
    with a host callback to its persistent compilation cache, so with the cache on (the default) JAX runs the
    loop a few steps per call too: its one program then loads from the cache in the next process, with or
    without progress, instead of compiling again (seconds on a GPU, up to a minute on a CPU).
    """
    if name() == "jax":
        return compilation_cache_dir() is None
    return name() == "tensorflow" and not tf_uses_xla(num_params)


def optimization_barrier(values):
    """``values`` unchanged, but XLA may not fuse or merge computations across this point (JAX; elsewhere a
    no-op). Keeps the two stages of a split reduction apart."""
    if name() == "jax":
        import jax

        return jax.lax.optimization_barrier(values)
    return values


def wait(value):
    """Block until an asynchronously computed ``value`` (JAX) is ready."""
    if hasattr(value, "block_until_ready"):
        value.block_until_ready()
    return value


def loop_callback(callback, *args):
    """Call ``callback(*host_values)`` on the host from inside a compiled loop.

    JAX: an unordered ``jax.debug.callback``, which adds no extra synchronisation to the device program.
    TensorFlow: a ``tf.py_function`` (stateful, so the graph keeps it, in loop order).
    """
    if name() == "tensorflow":
        import tensorflow as tf

        def call(*values):
            callback(*(value.numpy() for value in values))
            return 0

        tf.py_function(call, list(args), Tout=tf.int32)
        return
    import jax

    jax.debug.callback(callback, *args)


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


# The persistent compilation cache (JAX), on by default; ``SD_KERAS_COMPILATION_CACHE=0`` (or
# ``disable_compilation_cache()``) turns it off. Programs that compile faster than this are not written (JAX's
# own default, 1 s, would skip the small models' programs on a fast machine; trivial programs stay out).
COMPILATION_CACHE_MIN_SECONDS = 0.5
# No size bound: JAX's least-recently-used eviction fails on entries written without it (by earlier sd_keras
# versions or other JAX programs), and then writes nothing. The folder may be deleted at any time.
COMPILATION_CACHE_VARIABLE = "SD_KERAS_COMPILATION_CACHE"
_compilation_cache = {"decided": False}


def compilation_cache_dir():
    """The folder of the persistent compilation cache in use, or None (off, or not JAX).

    The first call decides the default: unless ``SD_KERAS_COMPILATION_CACHE`` is ``0`` (``false``, ``no``,
    ``off``) or the cache was configured otherwise (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``,
    ``enable_compilation_cache``, ``disable_compilation_cache``), the cache goes to ``$SD_KERAS_CACHE/xla``.
    """
    if name() != "jax":
        return None
    import jax

    if not _compilation_cache["decided"]:
        wanted = env.flag(COMPILATION_CACHE_VARIABLE, True)  # a bad value is refused, and asked again next time
        _compilation_cache["decided"] = True
        if wanted and jax.config.jax_compilation_cache_dir is None and jax.config.jax_enable_compilation_cache:
            try:
                _configure_jax_cache(None, COMPILATION_CACHE_MIN_SECONDS)
            except OSError as error:  # e.g. a read-only home folder: compile as without a cache
                import warnings

                warnings.warn(f"no persistent compilation cache: {error}", RuntimeWarning, stacklevel=2)
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir


def _configure_jax_cache(path, min_seconds):
    import jax

    from sd_keras.paths import cache_dir

    path = path or cache_dir("xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    _reset_jax_cache()
    return path


def _reset_jax_cache():
    # JAX opens its cache once, at the first compilation that looks for it: make it look again
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def enable_compilation_cache(path=None, *, min_compile_seconds=0.0):
    """Switch on JAX's persistent compilation cache in ``path`` (default ``$SD_KERAS_CACHE/xla``).

    It is on by default (see ``compilation_cache_dir``); this chooses another folder, or caches programs that
    compile in under ``COMPILATION_CACHE_MIN_SECONDS`` too (``min_compile_seconds``). A second process with the
    same shapes then loads the compiled programs instead of compiling them. Returns the folder; None (no effect)
    on other backends: TensorFlow's XLA cache (``--tf_xla_persistent_cache_directory``) logs parse errors and
    machine-mismatch warnings when it loads on a CPU, so it is not used.

    Example:
        >>> backend.enable_compilation_cache("/fast_disk/xla")   # doctest: +SKIP
    """
    if name() != "jax":
        return None
    _compilation_cache["decided"] = True
    return _configure_jax_cache(path, min_compile_seconds)


def disable_compilation_cache():
    """Turn the persistent compilation cache off for this process (as ``SD_KERAS_COMPILATION_CACHE=0`` does).

    Programs compiled from now on are neither read from nor written to the cache.
    """
    _compilation_cache["decided"] = True
    if name() == "jax":
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
        _reset_jax_cache()


def use_devices(devices):
    """Spread generation (and training) batches over several local accelerators: data parallel.

    ``devices``: None or 1 (default device), ``"all"``, or a count. Sets Keras' ``DataParallel`` distribution,
    so it must be called before the models are built (weights are then replicated on every device). Returns the
    number of devices used. JAX only: Keras' distribution API runs on the JAX backend.
    """
    if devices in (None, 1, "1"):
        return 1
    if name() != "jax":
        raise InputError(f"devices={devices!r}: multi-device generation needs the JAX backend (KERAS_BACKEND=jax)")
    available = keras.distribution.list_devices()
    if devices != "all":
        try:
            count = int(devices)
        except (TypeError, ValueError):
            raise InputError(f"devices must be 'all' or a device count, got {devices!r}") from None
        if not 1 <= count <= len(available):
            raise InputError(f"devices={count} but only {len(available)} device(s) are available")
        available = available[:count]
    if len(available) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=available))
    return len(available)


def shard_batch(value):
    """Place ``value`` split along its first axis over the data-parallel devices (no-op without a distribution,
    or when the batch does not divide evenly: then it stays replicated)."""
    distribution = keras.distribution.distribution() if name() == "jax" else None
    if distribution is None or not hasattr(value, "shape") or len(value.shape) == 0:
        return value
    batch_devices = distribution.device_mesh.shape[0]
    if value.shape[0] % batch_devices:
        return value
    return keras.distribution.distribute_tensor(value, distribution.get_data_layout(value.shape))
