package org.sdkeras.core

import java.security.SecureRandom

/**
 * Portable seeded Gaussian noise, a port of `sd_keras/noise.py`: a seed gives the same initial latent (and so the
 * same image) here, in Python on every Keras backend, and in the bundle runner.
 *
 * 1. SplitMix64 stream, state starting at the seed (a Kotlin `Long` is the seed modulo 2^64, two's complement):
 *    `state += 0x9E3779B97F4A7C15; z = state; z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9;
 *    z = (z ^ (z >>> 27)) * 0x94D049BB133111EB; z ^= z >>> 31` (wrapping 64-bit arithmetic).
 * 2. Uniform `u = ((z >>> 11) + 1) · 2^-53` in (0, 1].
 * 3. Box-Muller on consecutive pairs in double: `r = sqrt(-2 ln u1)`, `a = 2π u2`, giving `r cos a` then `r sin a`,
 *    each cast to float. An odd count drops the last sine.
 *
 * Example:
 * ```
 * val latent = SeedNoise.gaussian(42L, 16 * 16 * 4)   // C order: height, width, channel
 * ```
 */
object SeedNoise {
    private val GAMMA = java.lang.Long.parseUnsignedLong("9E3779B97F4A7C15", 16)
    private val MIX1 = java.lang.Long.parseUnsignedLong("BF58476D1CE4E5B9", 16)
    private val MIX2 = java.lang.Long.parseUnsignedLong("94D049BB133111EB", 16)
    private const val TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0

    /** The first [count] raw SplitMix64 outputs of [seed] (read them as unsigned). */
    @JvmStatic
    fun splitMix64(seed: Long, count: Int): LongArray {
        var state = seed
        return LongArray(count) {
            state += GAMMA
            var z = state
            z = (z xor (z ushr 30)) * MIX1
            z = (z xor (z ushr 27)) * MIX2
            z xor (z ushr 31)
        }
    }

    /** [count] standard normal floats from [seed]'s stream. */
    @JvmStatic
    fun gaussian(seed: Long, count: Int): FloatArray {
        require(count >= 0) { "count must be >= 0, got $count" }
        val pairs = (count + 1) / 2
        val bits = splitMix64(seed, 2 * pairs)
        val result = FloatArray(count)
        for (pair in 0 until pairs) {
            val u1 = ((bits[2 * pair] ushr 11).toDouble() + 1.0) * TWO_POW_MINUS_53
            val u2 = ((bits[2 * pair + 1] ushr 11).toDouble() + 1.0) * TWO_POW_MINUS_53
            val radius = Math.sqrt(-2.0 * Math.log(u1))
            val angle = 2.0 * Math.PI * u2
            result[2 * pair] = (radius * Math.cos(angle)).toFloat()
            if (2 * pair + 1 < count) result[2 * pair + 1] = (radius * Math.sin(angle)).toFloat()
        }
        return result
    }

    /**
     * Initial latents and per-step noise of a batch, as `latent_noise` in Python: image `i` uses seed `seed + i`;
     * its stream gives the initial latent, then [extraDraws] latent-sized draws (ancestral samplers: one per step).
     *
     * @return `(initial, extra)` in C order: `(batch, latentSize)` and `(extraDraws, batch, latentSize)`.
     */
    @JvmStatic
    fun latentNoise(seed: Long, batch: Int, latentSize: Int, extraDraws: Int = 0): Pair<FloatArray, FloatArray> {
        require(batch >= 1) { "batch_size must be >= 1, got $batch" }
        require(latentSize >= 1 && extraDraws >= 0) { "latentSize must be >= 1 and extraDraws >= 0" }
        val initial = FloatArray(batch * latentSize)
        val extra = FloatArray(extraDraws * batch * latentSize)
        for (image in 0 until batch) {
            val stream = gaussian(seed + image, (1 + extraDraws) * latentSize)
            System.arraycopy(stream, 0, initial, image * latentSize, latentSize)
            for (draw in 0 until extraDraws) {
                System.arraycopy(stream, (1 + draw) * latentSize, extra, (draw * batch + image) * latentSize, latentSize)
            }
        }
        return Pair(initial, extra)
    }

    /** A fresh seed for "random seed" requests, in [0, 2^32 - 1) like Python's; show it to the user. */
    @JvmStatic
    fun randomSeed(): Long = (SecureRandom().nextLong() ushr 1) % 4294967295L
}
