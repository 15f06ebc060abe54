"""Portable seeded Gaussian noise.

A seed must mean the same image on TensorFlow, JAX, the bundle runner and the Android app, so the noise is not
drawn with a backend's RNG but with this small generator on the host, which is simple to port exactly:

1. **SplitMix64** stream. State starts at ``seed`` (taken modulo 2**64). Each draw does, in unsigned 64-bit
   wrapping arithmetic::

       state += 0x9E3779B97F4A7C15
       z = state
       z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
       z = (z ^ (z >> 27)) * 0x94D049BB133111EB
       z = z ^ (z >> 31)

2. **Uniform**: ``u = ((z >> 11) + 1) * 2**-53``, a float64 in (0, 1] (never 0, so log is finite).
3. **Box-Muller** on consecutive pairs ``(u1, u2)``: ``r = sqrt(-2 ln u1)``, ``a = 2 pi u2``; the pair yields
   ``r cos a`` then ``r sin a`` (float64), cast to float32. An odd count drops the last sine.

Values fill the array in C order (for a latent: height, width, channel). A batch of N images with seed ``s``
uses seeds ``s, s+1, ..., s+N-1``, one independent stream per image, so image ``i`` of a batch equals a single
generation with seed ``s+i``. Ancestral samplers continue each image's stream: first the initial latent, then one
latent-sized draw per step, in step order.

Example:
    >>> from sd_keras.noise import gaussian
    >>> gaussian(42, (2,)).dtype
    dtype('float32')
"""

import numpy as np

from sd_keras.errors import InputError

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _splitmix64(seed, count):
    """``count`` consecutive SplitMix64 outputs for ``seed`` as uint64 (vectorised, wrapping)."""
    start = np.uint64(int(seed) & _MASK64)
    with np.errstate(over="ignore"):
        steps = np.arange(1, count + 1, dtype=np.uint64)
        z = start + steps * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return z


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def gaussian(seed, shape):
    """Standard normal float32 array of ``shape`` from one seed's stream (see the module docstring)."""
    seed = _check_seed(seed)
    count = int(np.prod(shape, dtype=np.int64))
    pairs = (count + 1) // 2
    bits = _splitmix64(seed, 2 * pairs)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
    radius = np.sqrt(-2.0 * np.log(uniform[0::2]))
    angle = 2.0 * np.pi * uniform[1::2]
    values = np.empty(2 * pairs, dtype=np.float64)
    values[0::2] = radius * np.cos(angle)
    values[1::2] = radius * np.sin(angle)
    return values[:count].astype(np.float32).reshape(shape)


def latent_noise(seed, batch_size, latent_shape, num_extra_draws=0):
    """Initial latents and optional per-step noise for a batch.

    Args:
        seed: integer seed of image 0; image ``i`` uses ``seed + i``.
        batch_size: number of images.
        latent_shape: ``(height, width, channels)`` of one latent.
        num_extra_draws: latent-sized draws that follow the initial latent in each image's stream
            (ancestral samplers: one per step).

    Returns:
        ``(initial, extra)``: float32 arrays of shapes ``(batch, *latent_shape)`` and
        ``(num_extra_draws, batch, *latent_shape)``.
    """
    seed = _check_seed(seed)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    size = int(np.prod(latent_shape))
    streams = np.stack(
        [gaussian(seed + i, ((1 + num_extra_draws) * size,)) for i in range(batch_size)]
    )  # (batch, draws * size)
    streams = streams.reshape(batch_size, 1 + num_extra_draws, *latent_shape)
    initial = streams[:, 0]
    extra = np.ascontiguousarray(np.moveaxis(streams[:, 1:], 1, 0))
    return initial, extra


def random_seed():
    """A fresh seed for "seed = -1 / None" requests, reported back to the user."""
    return int(np.random.default_rng().integers(0, 2**32 - 1))
