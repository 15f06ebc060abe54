package org.sdkeras.core

/**
 * The UNet's sinusoidal timestep input, `[cos(t·f_k), sin(t·f_k)]` with `f_k = exp(-ln(10000)·k / half)`, in
 * float32 in the order of `sd_keras.models.layers.timestep_embedding` (computed on the host, as in Python).
 *
 * The exponent and the phase `t·f_k` are float32 products; exp, cos and sin are evaluated in double and rounded
 * to float32. The bundle runner (export/runner.py) computes the same recipe, so the two give identical bits
 * (golden `runner_rows`), and an int8 bundle runs the same UNet inputs on the phone as in Python.
 */
object TimestepEmbedding {
    private const val MAX_PERIOD = 10000.0

    /** The embedding of [timestep], `2 · (dim / 2)` floats. */
    @JvmStatic
    fun compute(timestep: Float, dim: Int): FloatArray {
        require(dim >= 2) { "timestep embedding dim must be >= 2, got $dim" }
        val half = dim / 2
        val scale = (-Math.log(MAX_PERIOD)).toFloat()
        val result = FloatArray(2 * half)
        for (k in 0 until half) {
            val exponent = scale * k.toFloat() / half.toFloat()
            val frequency = Math.exp(exponent.toDouble()).toFloat()
            val argument = (timestep * frequency).toDouble()
            result[k] = Math.cos(argument).toFloat()
            result[half + k] = Math.sin(argument).toFloat()
        }
        return result
    }
}
