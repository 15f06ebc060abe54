package org.sdkeras.core

/**
 * Every per-step number a sampler's update reads, as float32 arrays (the same tables as Python's
 * `Sampler.tables()`; `n` = number of steps):
 *
 * - `timesteps` (n), `sigmas` (n + 1, the last 0), `init_noise_sigma` (scalar);
 * - `model_input_scale`, `denoise_latent`, `denoise_output`, `step_latent`, `step_denoised`,
 *   `step_previous_denoised`, `step_noise` (n each);
 * - `signal_scale`, `noise_scale` (n + 1, for noising a clean latent to a step's level);
 * - DDIM only: `alphas`, `alphas_prev` (n).
 */
class SamplerTables internal constructor(private val tables: Map<String, FloatArray>, val initNoiseSigma: Float) {
    val timesteps: FloatArray get() = table("timesteps")
    val sigmas: FloatArray get() = table("sigmas")
    val modelInputScale: FloatArray get() = table("model_input_scale")
    val denoiseLatent: FloatArray get() = table("denoise_latent")
    val denoiseOutput: FloatArray get() = table("denoise_output")
    val stepLatent: FloatArray get() = table("step_latent")
    val stepDenoised: FloatArray get() = table("step_denoised")
    val stepPreviousDenoised: FloatArray get() = table("step_previous_denoised")
    val stepNoise: FloatArray get() = table("step_noise")
    val signalScale: FloatArray get() = table("signal_scale")
    val noiseScale: FloatArray get() = table("noise_scale")

    /** The table names, as Python's `tables()` keys them (without `init_noise_sigma`). */
    val names: Set<String> get() = tables.keys

    /** The table [name] (Python's key, e.g. `"step_latent"`); the array is shared, do not modify it. */
    fun table(name: String): FloatArray =
        tables[name] ?: throw IllegalArgumentException("no sampler table \"$name\"; tables: ${tables.keys}")

    companion object {
        /** The tables every sampler provides (STEP_TABLES in sd_keras/schedulers/base.py). */
        val STEP_TABLES = listOf(
            "timesteps", "sigmas", "model_input_scale", "denoise_latent", "denoise_output", "step_latent",
            "step_denoised", "step_previous_denoised", "step_noise", "signal_scale", "noise_scale", "init_noise_sigma"
        )
    }
}
