package org.sdkeras.core

/**
 * Euler ancestral ("Euler a") tables, a port of `sd_keras/schedulers/euler_ancestral.py`: from σ to σ', an Euler
 * step to `σ_down` and fresh noise scaled by `σ_up`, where `σ_up = sqrt(σ'² (σ² - σ'²) / σ²)` and
 * `σ_down = sqrt(σ'² - σ_up²)`. Same noise levels and model input scaling as Euler.
 */
internal object EulerAncestralTables {
    fun build(schedule: NoiseSchedule, count: Int, karras: Boolean): RawTables {
        val tables = EulerTables.common(schedule, count, karras)
        val sigmas = tables.getValue("sigmas")
        val sigmaUp = DoubleArray(count) {
            val sigma = sigmas[it]
            val next = sigmas[it + 1]
            Math.sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma))
        }
        val ratio = DoubleArray(count) {
            val next = sigmas[it + 1]
            val sigmaDown = Math.sqrt(Math.max(next * next - sigmaUp[it] * sigmaUp[it], 0.0))
            sigmaDown / sigmas[it]
        }
        tables["step_latent"] = ratio
        tables["step_denoised"] = DoubleArray(count) { 1.0 - ratio[it] }
        tables["step_noise"] = sigmaUp
        return RawTables(tables, EulerTables.initNoiseSigma(sigmas))
    }
}
