"""The only place that knows which Keras backend runs: compilation, host callbacks, the compile cache.

Everything else is written with ``keras.ops`` and calls these helpers.
"""

import os

import keras


def name():
    return keras.backend.backend()


def jit(fn):
    """Compile ``fn`` into one XLA program per input signature.

    JAX: ``jax.jit``. TensorFlow: ``tf.function(jit_compile=True)``. Other backends run eagerly.
    """
    backend = name()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=False)
    return fn


def supports_loop_callback():
    """Whether a host callback can run inside the compiled loop (JAX); TF's XLA programs cannot call Python."""
    return name() == "jax"


def loop_callback(callback, *args):
    """Call ``callback(*host_values)`` on the host from inside a compiled loop (JAX only).

    The callback is unordered so it adds no extra synchronisation to the device program.
    """
    import jax

    jax.debug.callback(callback, *args)


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def enable_compilation_cache(path=None):
    """Switch on JAX's persistent compilation cache in ``path`` (default ``$SD_KERAS_CACHE/xla``).

    A second process with the same shapes then loads the compiled programs instead of compiling them.
    No effect (returns None) on other backends.
    """
    if name() != "jax":
        return None
    import jax

    from sd_keras.weights.download import cache_dir

    path = path or cache_dir("xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path
