package org.sdkeras.core

/**
 * The arithmetic of image-to-image that does not need a network: which step a strength starts from and how the
 * encoded image is noised to that step's level (Python: `Sampler.start_index` and the first latent of
 * `BundleRunner.image_to_image`).
 */
object ImageToImage {
    /** Reject a strength outside [0, 1] (or NaN) with a message naming it. */
    @JvmStatic
    fun checkStrength(strength: Double) {
        if (strength.isNaN() || strength.isInfinite() || strength < 0.0 || strength > 1.0) {
            throw IllegalArgumentException("strength must be a number in [0, 1], got $strength")
        }
    }

    /**
     * The first step to run: `steps - min(int(steps * strength), steps)` (diffusers' rule, as Python). 1 starts
     * from step 0; 0 gives [steps], i.e. no step runs.
     */
    @JvmStatic
    fun startIndex(steps: Int, strength: Double): Int {
        checkStrength(strength)
        if (steps < 1) throw IllegalArgumentException("steps must be >= 1, got $steps")
        val taken = Math.min((steps * strength).toInt(), steps)
        return steps - taken
    }

    /** `signal_scale[start] · original + noise_scale[start] · noise`, float32 as Python. */
    @JvmStatic
    fun noised(original: FloatArray, noise: FloatArray, tables: SamplerTables, start: Int): FloatArray {
        if (original.size != noise.size) {
            throw IllegalArgumentException("noise has ${noise.size} values but the latent has ${original.size}")
        }
        val signal = tables.signalScale[start]
        val scale = tables.noiseScale[start]
        return FloatArray(original.size) { signal * original[it] + scale * noise[it] }
    }
}
