package org.sdkeras.core

/**
 * DDIM (η = 0) tables, a port of `sd_keras/schedulers/ddim.py`. The loop latent is the training-space noised latent
 * (unit variance); each step predicts x0 and moves to the ᾱ of the next timestep taken (1.0 after the last).
 *
 * Spacing "leading" ("DDIM"): `t = k · (N // n) + steps_offset`. "linspace" ("DDIM KerasCV", KerasCV 0.9's
 * schedule): `t = round(k · (N - 1) / (n - 1))`.
 */
internal object DdimTables {
    fun build(schedule: NoiseSchedule, count: Int, linspace: Boolean): RawTables {
        val train = schedule.numTrainTimesteps
        val timesteps = if (!linspace) {
            NumpyMath.leadingTimesteps(schedule, count, train / count)
        } else {
            // KerasCV 0.9's exact expression (not np.linspace) so half-way roundings agree with it
            val ratio = if (count > 1) (train - 1).toDouble() / (count - 1) else train.toDouble()
            NumpyMath.reversed(NumpyMath.rint(DoubleArray(count) { it * ratio }))
        }
        val cumprod = schedule.alphasCumprod()
        val alphas = DoubleArray(count) { cumprod[timesteps[it].toInt()] }
        val levels = DoubleArray(count + 1) { if (it < count) alphas[it] else 1.0 }
        val signal = DoubleArray(count + 1) { Math.sqrt(levels[it]) }
        val noise = DoubleArray(count + 1) { Math.sqrt(1.0 - levels[it]) }
        val epsilon = schedule.predictionType == NoiseSchedule.EPSILON
        val stepLatent = DoubleArray(count) { noise[it + 1] / noise[it] }
        val tables = linkedMapOf(
            "timesteps" to timesteps,
            "sigmas" to DoubleArray(count + 1) { noise[it] / signal[it] },
            "alphas" to alphas,
            "alphas_prev" to DoubleArray(count) { levels[it + 1] },
            "model_input_scale" to DoubleArray(count) { 1.0 },
            // epsilon: x0 = (x - sqrt(1 - ᾱ)·ε) / sqrt(ᾱ); v = sqrt(ᾱ)·ε - sqrt(1 - ᾱ)·x0 gives x0 = sqrt(ᾱ)·x - sqrt(1 - ᾱ)·v
            "denoise_latent" to DoubleArray(count) { if (epsilon) 1.0 / signal[it] else signal[it] },
            "denoise_output" to DoubleArray(count) { if (epsilon) -noise[it] / signal[it] else -noise[it] },
            "step_latent" to stepLatent,
            "step_denoised" to DoubleArray(count) { signal[it + 1] - stepLatent[it] * signal[it] },
            "step_previous_denoised" to DoubleArray(count),
            "step_noise" to DoubleArray(count),
            "signal_scale" to signal,
            "noise_scale" to noise
        )
        return RawTables(tables, 1.0)
    }
}

/** float64 tables of one sampler before the float32 cast, and its init_noise_sigma. */
internal class RawTables(val tables: Map<String, DoubleArray>, val initNoiseSigma: Double)
