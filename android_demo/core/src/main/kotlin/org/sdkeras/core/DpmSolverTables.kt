package org.sdkeras.core

/**
 * DPM-Solver++(2M) tables, a port of `sd_keras/schedulers/dpm_solver.py`.
 *
 * The loop latent is `α·x0 + s·noise` with `α = 1 / sqrt(σ² + 1)` and `s = σ·α`. With `λ = -log σ` and
 * `h = λ' - λ`, a step is first order `x' = (s'/s)·x - α'(e^-h - 1)·D0` on the first and last steps, and second
 * order (midpoint, `r = h_prev / h`) in between. Timesteps: "linspace" (default) `n + 1` rounded points from N - 1 to
 * 0 without the last; Karras: Karras σ between the training σ_min and σ_max, each timestep the nearest integer
 * training timestep with that σ.
 */
internal object DpmSolverTables {
    private fun noiseLevels(schedule: NoiseSchedule, count: Int, karras: Boolean): Pair<DoubleArray, DoubleArray> {
        if (karras) {
            val full = schedule.sigmas()
            val sigmas = NumpyMath.karrasSigmas(full[0], full[full.size - 1], count)
            return Pair(NumpyMath.rint(schedule.timestepAt(sigmas)), sigmas)
        }
        val points = NumpyMath.reversed(
            NumpyMath.rint(NumpyMath.linspace(0.0, (schedule.numTrainTimesteps - 1).toDouble(), count + 1))
        )
        val timesteps = points.copyOf(count)
        return Pair(timesteps, schedule.sigmaAt(timesteps))
    }

    fun build(schedule: NoiseSchedule, count: Int, karras: Boolean): RawTables {
        val (timesteps, sigmas) = noiseLevels(schedule, count, karras)
        val allSigmas = DoubleArray(count + 1) { if (it < count) sigmas[it] else 0.0 }
        val alpha = DoubleArray(count + 1) { 1.0 / Math.sqrt(allSigmas[it] * allSigmas[it] + 1.0) }
        val scale = DoubleArray(count + 1) { allSigmas[it] * alpha[it] } // the noise's coefficient in the latent
        val epsilon = schedule.predictionType == NoiseSchedule.EPSILON

        // e^-h = σ'/σ because λ = -log σ; it is 0 on the last step, where h is infinite
        val firstOrder = DoubleArray(count) { alpha[it + 1] * (1.0 - allSigmas[it + 1] / allSigmas[it]) }
        val stepDenoised = firstOrder.copyOf()
        val stepPrevious = DoubleArray(count)
        if (count > 2) {
            val logSigma = DoubleArray(count) { Math.log(allSigmas[it]) }
            for (inner in 1 until count - 1) { // the steps with a previous step and a nonzero σ'
                val h = logSigma[inner] - logSigma[inner + 1]
                val hPrevious = logSigma[inner - 1] - logSigma[inner]
                // repeated σ (too many steps) give hPrevious = 0; Samplers.create rejects the non-finite result
                val correction = firstOrder[inner] * h / (2.0 * hPrevious)
                stepDenoised[inner] = firstOrder[inner] + correction
                stepPrevious[inner] = -correction
            }
        }
        val tables = linkedMapOf(
            "timesteps" to timesteps,
            "sigmas" to allSigmas,
            "model_input_scale" to DoubleArray(count) { 1.0 },
            "denoise_latent" to DoubleArray(count) { if (epsilon) 1.0 / alpha[it] else alpha[it] },
            "denoise_output" to DoubleArray(count) { if (epsilon) -sigmas[it] else -scale[it] },
            "step_latent" to DoubleArray(count) { scale[it + 1] / scale[it] },
            "step_denoised" to stepDenoised,
            "step_previous_denoised" to stepPrevious,
            "step_noise" to DoubleArray(count),
            "signal_scale" to alpha,
            "noise_scale" to scale
        )
        return RawTables(tables, 1.0)
    }
}
