import math

import numpy as np
import pytest

from sd_keras import noise


def _reference_stream(seed, count):
    """Scalar re-statement of the documented algorithm with Python integers."""
    mask = (1 << 64) - 1
    state = seed & mask
    out = []
    while len(out) < count:
        pair = []
        for _ in range(2):
            state = (state + 0x9E3779B97F4A7C15) & mask
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            z ^= z >> 31
            pair.append(((z >> 11) + 1) * 2.0**-53)
        r = math.sqrt(-2.0 * math.log(pair[0]))
        a = 2.0 * math.pi * pair[1]
        out += [r * math.cos(a), r * math.sin(a)]
    return np.array(out[:count], dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**63 + 5, -7])
def test_matches_scalar_reference(seed):
    np.testing.assert_array_equal(noise.gaussian(seed, (37,)), _reference_stream(seed, 37))


def test_statistics_and_determinism():
    a = noise.gaussian(123, (64, 64, 4))
    assert a.dtype == np.float32 and a.shape == (64, 64, 4)
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1.0) < 0.02
    np.testing.assert_array_equal(a, noise.gaussian(123, (64, 64, 4)))
    assert not np.array_equal(a, noise.gaussian(124, (64, 64, 4)))


def test_batch_image_i_equals_seed_plus_i():
    initial, extra = noise.latent_noise(10, 3, (8, 8, 4), num_extra_draws=2)
    assert initial.shape == (3, 8, 8, 4) and extra.shape == (2, 3, 8, 8, 4)
    for i in range(3):
        single, single_extra = noise.latent_noise(10 + i, 1, (8, 8, 4), num_extra_draws=2)
        np.testing.assert_array_equal(initial[i], single[0])
        np.testing.assert_array_equal(extra[:, i], single_extra[:, 0])
    # the per-step draws continue the image's own stream
    stream = noise.gaussian(11, (3 * 256,))
    np.testing.assert_array_equal(extra[1, 1].ravel(), stream[2 * 256:])


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        noise.gaussian(bad, (2,))
