package org.sdkeras.core

/**
 * The carry of a multistep sampler between steps: the previous step's denoised latent. Create one per
 * generation ([Sampler.newState]); samplers that keep no state ignore it.
 */
class SamplerState internal constructor() {
    internal var previousDenoised: FloatArray? = null
}

/**
 * A sampler built for one step count: its float32 tables and the shared update formulas of
 * `sd_keras/schedulers/base.py`, all in float32 in the same order as Python:
 *
 * ```
 * model_input = latent * model_input_scale[i]
 * denoised    = denoise_latent[i] * latent + denoise_output[i] * model_output
 * next_latent = step_latent[i] * latent + step_denoised[i] * denoised
 *               (+ step_previous_denoised[i] * previous_denoised   for multistep samplers)
 *               (+ step_noise[i] * noise                           for ancestral samplers)
 * ```
 *
 * `previous_denoised` is the denoised latent of the step taken before; on the first step taken it is the current
 * one. Build samplers with [Samplers.create].
 *
 * Example:
 * ```
 * val sampler = Samplers.create("Euler a", 20, NoiseSchedule())
 * var latent = initialNoise.map { it * sampler.tables.initNoiseSigma }
 * val state = sampler.newState()
 * for (i in 0 until sampler.numSteps) {
 *     val output = unet(sampler.scaleModelInput(latent, i), sampler.tables.timesteps[i])
 *     latent = sampler.step(latent, output, i, state, stepNoise[i])
 * }
 * ```
 */
class Sampler internal constructor(
    /** The name UIs show, e.g. "DPM++ 2M Karras". */
    val name: String,
    val numSteps: Int,
    val predictionType: String,
    /** Ancestral samplers add fresh unit Gaussian noise every step. */
    val needsNoise: Boolean,
    /** Multistep samplers carry the previous denoised latent ([SamplerState]). */
    val isMultistep: Boolean,
    val tables: SamplerTables
) {
    fun newState() = SamplerState()

    private fun checkIndex(i: Int) {
        if (i < 0 || i >= numSteps) throw IllegalArgumentException("step index must be in [0, ${numSteps - 1}], got $i")
    }

    /** The UNet input for step [i]: the latent scaled to unit variance where the sampler needs it. */
    fun scaleModelInput(latent: FloatArray, i: Int): FloatArray {
        checkIndex(i)
        val scale = tables.modelInputScale[i]
        return FloatArray(latent.size) { latent[it] * scale }
    }

    /** The model's estimate of the clean latent at step [i] (what previews decode). */
    fun denoise(latent: FloatArray, modelOutput: FloatArray, i: Int): FloatArray {
        checkIndex(i)
        checkSizes(latent, modelOutput, "model output")
        val fromLatent = tables.denoiseLatent[i]
        val fromOutput = tables.denoiseOutput[i]
        return FloatArray(latent.size) { fromLatent * latent[it] + fromOutput * modelOutput[it] }
    }

    /**
     * One denoising step: the latent of step `i + 1` from the latent and (guided) model output of step [i].
     * [noise] (unit Gaussian, the latent's size) is required when [needsNoise] and ignored otherwise.
     */
    fun step(latent: FloatArray, modelOutput: FloatArray, i: Int, state: SamplerState, noise: FloatArray? = null): FloatArray {
        return stepWithDenoised(latent, modelOutput, i, state, noise).first
    }

    /** [step], also returning the step's denoised latent (for previews). */
    fun stepWithDenoised(
        latent: FloatArray,
        modelOutput: FloatArray,
        i: Int,
        state: SamplerState,
        noise: FloatArray? = null
    ): Pair<FloatArray, FloatArray> {
        if (needsNoise) {
            if (noise == null) throw IllegalArgumentException("noise: $name adds fresh noise every step; pass unit Gaussian noise")
            checkSizes(latent, noise, "noise")
        }
        val denoised = denoise(latent, modelOutput, i)
        val fromLatent = tables.stepLatent[i]
        val fromDenoised = tables.stepDenoised[i]
        val next = FloatArray(latent.size) { fromLatent * latent[it] + fromDenoised * denoised[it] }
        if (isMultistep) {
            val previous = state.previousDenoised ?: denoised
            val fromPrevious = tables.stepPreviousDenoised[i]
            for (index in next.indices) next[index] = next[index] + fromPrevious * previous[index]
            state.previousDenoised = denoised
        }
        if (needsNoise && noise != null) {
            val fromNoise = tables.stepNoise[i]
            for (index in next.indices) next[index] = next[index] + fromNoise * noise[index]
        }
        return Pair(next, denoised)
    }

    private fun checkSizes(latent: FloatArray, other: FloatArray, what: String) {
        if (latent.size != other.size) {
            throw IllegalArgumentException("$what has ${other.size} values but the latent has ${latent.size}")
        }
    }

    override fun toString() = "Sampler($name, numSteps=$numSteps, predictionType=$predictionType)"
}
