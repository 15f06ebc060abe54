package org.sdkeras.core

/**
 * The discrete noise schedule a Stable Diffusion UNet was trained with (a port of `NoiseSchedule` in
 * `sd_keras/schedulers/base.py`), read from a bundle manifest's `schedule`.
 *
 * Defaults are SD 1.x/2.x's: 1000 "scaled linear" betas (squares of evenly spaced square roots) from 0.00085 to
 * 0.012, `steps_offset = 1`, epsilon prediction. Everything is computed in float64, as in Python.
 *
 * Example:
 * ```
 * val schedule = NoiseSchedule(predictionType = NoiseSchedule.V_PREDICTION)
 * schedule.alphasCumprod()[0]   // 0.99915
 * ```
 */
class NoiseSchedule(
    val numTrainTimesteps: Int = 1000,
    val betaStart: Double = 0.00085,
    val betaEnd: Double = 0.012,
    val predictionType: String = EPSILON,
    val stepsOffset: Int = 1
) {
    init {
        require(numTrainTimesteps >= 2) { "num_train_timesteps must be an integer >= 2, got $numTrainTimesteps" }
        require(betaStart > 0.0 && betaStart < 1.0) { "beta_start must be a number in (0, 1), got $betaStart" }
        require(betaEnd > 0.0 && betaEnd < 1.0) { "beta_end must be a number in (0, 1), got $betaEnd" }
        require(betaStart <= betaEnd) { "beta_start ($betaStart) must not exceed beta_end ($betaEnd)" }
        require(predictionType == EPSILON || predictionType == V_PREDICTION) {
            "prediction_type must be one of ($EPSILON, $V_PREDICTION), got $predictionType"
        }
        require(stepsOffset in 0 until numTrainTimesteps) {
            "steps_offset must be an integer in [0, $numTrainTimesteps), got $stepsOffset"
        }
    }

    /** The same schedule with another prediction type. */
    fun withPredictionType(type: String) = NoiseSchedule(numTrainTimesteps, betaStart, betaEnd, type, stepsOffset)

    /** Per-step noise variances (float64). */
    fun betas(): DoubleArray {
        val roots = NumpyMath.linspace(Math.sqrt(betaStart), Math.sqrt(betaEnd), numTrainTimesteps)
        return DoubleArray(numTrainTimesteps) { roots[it] * roots[it] }
    }

    /** ᾱ_t, the signal variance of the noised latent at each training timestep. */
    fun alphasCumprod(): DoubleArray {
        val betas = betas()
        val result = DoubleArray(numTrainTimesteps)
        var product = 1.0
        for (index in betas.indices) {
            product *= 1.0 - betas[index]
            result[index] = product
        }
        return result
    }

    /** σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), the noise level in "x0 + σ·noise" form, increasing with t. */
    fun sigmas(): DoubleArray {
        val alphas = alphasCumprod()
        return DoubleArray(numTrainTimesteps) { Math.sqrt((1.0 - alphas[it]) / alphas[it]) }
    }

    /** σ at (possibly fractional) timesteps, interpolated linearly between training timesteps. */
    fun sigmaAt(timesteps: DoubleArray): DoubleArray {
        val grid = DoubleArray(numTrainTimesteps) { it.toDouble() }
        val sigmas = sigmas()
        return DoubleArray(timesteps.size) { NumpyMath.interp(timesteps[it], grid, sigmas) }
    }

    /** The fractional timestep whose σ is each of [sigmas]: linear in log σ, clamped to the training range. */
    fun timestepAt(sigmas: DoubleArray): DoubleArray {
        val table = sigmas()
        val logTable = DoubleArray(table.size) { Math.log(table[it]) }
        return DoubleArray(sigmas.size) {
            val logSigma = Math.log(Math.max(sigmas[it], 1e-10))
            val low = clamp(NumpyMath.searchSortedRight(logTable, logSigma) - 1, 0, logTable.size - 2)
            val weight = (logTable[low] - logSigma) / (logTable[low] - logTable[low + 1])
            low + Math.min(Math.max(weight, 0.0), 1.0)
        }
    }

    private fun clamp(value: Int, low: Int, high: Int) = Math.min(Math.max(value, low), high)

    override fun toString() = "NoiseSchedule(numTrainTimesteps=$numTrainTimesteps, betaStart=$betaStart, " +
        "betaEnd=$betaEnd, predictionType=$predictionType, stepsOffset=$stepsOffset)"

    companion object {
        const val EPSILON = "epsilon"
        const val V_PREDICTION = "v_prediction"
        /** The only beta schedule Stable Diffusion uses (and the only one sd_keras exports). */
        const val SCALED_LINEAR = "scaled_linear"
    }
}
