package org.sdkeras.core

/**
 * Euler tables (diffusers' EulerDiscreteScheduler), a port of `sd_keras/schedulers/euler.py`; also the noise
 * levels and common tables of Euler ancestral.
 *
 * The loop latent lives in "x0 + σ·noise" form; the model sees `latent / sqrt(σ² + 1)`. Spacing "linspace"
 * (default): `n` evenly spaced fractional timesteps from N - 1 to 0 (float32), σ interpolated linearly; with Karras
 * noise levels, Karras σ between the highest and lowest of those and each timestep the fractional one with that σ.
 */
internal object EulerTables {
    /** (timesteps, sigmas without the final 0), float64. */
    fun noiseLevels(schedule: NoiseSchedule, count: Int, karras: Boolean): Pair<DoubleArray, DoubleArray> {
        // float32 like the timesteps the model is fed, so each σ matches the timestep actually used
        var timesteps = NumpyMath.reversed(
            NumpyMath.linspaceFloat32(0.0, (schedule.numTrainTimesteps - 1).toDouble(), count)
        )
        var sigmas = schedule.sigmaAt(timesteps)
        if (karras) {
            sigmas = NumpyMath.karrasSigmas(sigmas[sigmas.size - 1], sigmas[0], count)
            timesteps = schedule.timestepAt(sigmas)
        }
        return Pair(timesteps, sigmas)
    }

    fun common(schedule: NoiseSchedule, count: Int, karras: Boolean): LinkedHashMap<String, DoubleArray> {
        val (timesteps, sigmas) = noiseLevels(schedule, count, karras)
        val epsilon = schedule.predictionType == NoiseSchedule.EPSILON
        val allSigmas = DoubleArray(count + 1) { if (it < count) sigmas[it] else 0.0 }
        return linkedMapOf(
            "timesteps" to timesteps,
            "sigmas" to allSigmas,
            "model_input_scale" to DoubleArray(count) { 1.0 / Math.sqrt(sigmas[it] * sigmas[it] + 1.0) },
            // the v-model's denoiser: c_skip = 1 / (σ² + 1), c_out = -σ / sqrt(σ² + 1)
            "denoise_latent" to DoubleArray(count) { if (epsilon) 1.0 else 1.0 / (sigmas[it] * sigmas[it] + 1.0) },
            "denoise_output" to DoubleArray(count) {
                if (epsilon) -sigmas[it] else -sigmas[it] / Math.sqrt(sigmas[it] * sigmas[it] + 1.0)
            },
            "step_previous_denoised" to DoubleArray(count),
            "step_noise" to DoubleArray(count),
            "signal_scale" to DoubleArray(count + 1) { 1.0 },
            "noise_scale" to allSigmas
        )
    }

    /** init_noise_sigma of the "linspace" spacing: σ_max. */
    fun initNoiseSigma(sigmas: DoubleArray): Double {
        var maximum = Double.NEGATIVE_INFINITY
        for (index in 0 until sigmas.size - 1) if (sigmas[index] > maximum) maximum = sigmas[index]
        return maximum
    }

    fun build(schedule: NoiseSchedule, count: Int, karras: Boolean): RawTables {
        val tables = common(schedule, count, karras)
        val sigmas = tables.getValue("sigmas")
        // latent + (latent - denoised) / σ · (σ' - σ), written in latent and denoised
        val ratio = DoubleArray(count) { sigmas[it + 1] / sigmas[it] }
        tables["step_latent"] = ratio
        tables["step_denoised"] = DoubleArray(count) { 1.0 - ratio[it] }
        return RawTables(tables, initNoiseSigma(sigmas))
    }
}
