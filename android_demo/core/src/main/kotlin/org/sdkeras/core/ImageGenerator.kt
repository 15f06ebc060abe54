package org.sdkeras.core

/**
 * What a generation needs to know about the model, besides the networks: read from a bundle with
 * [GeneratorConfig.fromManifest].
 */
class GeneratorConfig(
    val imageHeight: Int,
    val imageWidth: Int,
    val latentHeight: Int,
    val latentWidth: Int,
    val latentChannels: Int,
    val timestepEmbeddingDim: Int,
    val schedule: NoiseSchedule,
    val padId: Int = ClipTokenizer.END_ID,
    /** An SDXL bundle's conditioning (two text encoders, `added_embedding`); null for SD 1.x/2.x. */
    val sdxl: SdxlSpec? = null
) {
    val latentSize: Int get() = latentHeight * latentWidth * latentChannels

    companion object {
        @JvmStatic
        fun fromManifest(manifest: BundleManifest) = GeneratorConfig(
            manifest.imageHeight, manifest.imageWidth, manifest.latentHeight, manifest.latentWidth,
            manifest.latentChannels, manifest.timestepEmbeddingDim, manifest.schedule, manifest.tokenizer.padId,
            manifest.sdxl
        )
    }
}

/** The resolved inputs of a generation ([ImageGenerator.setInputs]), including what truncation did. */
class GenerationInputs internal constructor(
    val prompt: TokenizedPrompt,
    val negativePrompt: TokenizedPrompt,
    val seed: Long,
    val guidanceScale: Float,
    val sampler: Sampler,
    /** The first step that runs: 0 for text-to-image, [ImageToImage.startIndex] for image-to-image. */
    val startStep: Int = 0
) {
    /** The UNet steps this generation runs (`sampler.numSteps - startStep`). */
    val stepsToRun: Int get() = sampler.numSteps - startStep

    val anyTruncated: Boolean get() = prompt.truncated || negativePrompt.truncated

    /** A message for the user when a prompt was cut to fit the text encoder, else null (Python warns the same). */
    fun truncationMessage(): String? {
        val parts = ArrayList<String>()
        for ((label, tokenized) in listOf("prompt" to prompt, "negative prompt" to negativePrompt)) {
            if (!tokenized.truncated) continue
            val capacity = tokenized.ids.size - 2
            var dropped = tokenized.droppedText
            if (dropped.length > 80) dropped = dropped.substring(0, 77) + "..."
            parts.add(
                "The $label has ${tokenized.numTokens} tokens but the text encoder reads $capacity; " +
                    "dropped the last ${tokenized.numTokens - capacity}: \"$dropped\""
            )
        }
        return if (parts.isEmpty()) null else parts.joinToString("\n")
    }
}

/**
 * One step's outcome.
 *
 * @property stepsDone steps finished so far (1 after the first call of [ImageGenerator.execute]); image-to-image
 *   counts only the steps it runs, so [totalSteps] is [GenerationInputs.stepsToRun] (0 at strength 0).
 * @property image the final image on the last step; a preview (the decoded denoised estimate) when asked for.
 */
class StepResult(val stepsDone: Int, val totalSteps: Int, val image: RgbImage?, val isFinal: Boolean)

/**
 * Text-to-image (and, with an [ImageEncoder], image-to-image: [setImageInputs]) with any [TextEncoder],
 * [DiffusionModel] and [Decoder], one step at a time, following MediaPipe's image generator contract: [setInputs]
 * (prompt, settings, seed), then [execute] once per step, optionally decoding a preview; the last call returns the
 * image. Cancelling is simply not calling [execute] again.
 *
 * The maths is the Python pipeline's: the prompt and negative prompt are tokenized and encoded (batch 1 each), the
 * initial latent (and for ancestral samplers one draw per step) comes from [SeedNoise], and each step runs the
 * UNet on the `[unconditional, conditional]` pair, applies [ClassifierFreeGuidance] and the sampler's update.
 *
 * An SDXL bundle ([GeneratorConfig.sdxl]) runs the same loop with [SdxlConditioning]: the prompt's token row is
 * re-padded for each text encoder, the UNet's context is their contexts side by side and its `added_embedding`
 * the pooled embedding with the micro-conditioning; pass `text_encoder` as [textEncoder] and `text_encoder_2` as
 * [textEncoder2] (a refiner bundle has only `text_encoder_2`: pass it as [textEncoder] and no [textEncoder2]).
 *
 * Example:
 * ```
 * val generator = ImageGenerator(tokenizer, textEncoder, unet, decoder, GeneratorConfig.fromManifest(manifest))
 * val inputs = generator.setInputs("a red circle", "", steps = 20, guidanceScale = 7.5f, seed = 42L, sampler = "Euler a")
 * inputs.truncationMessage()?.let { showWarning(it) }
 * var result: StepResult
 * do { result = generator.execute(showResult = it % 5 == 0) } while (!result.isFinal)
 * showImage(result.image!!)
 * ```
 */
class ImageGenerator @JvmOverloads constructor(
    private val tokenizer: ClipTokenizer,
    private val textEncoder: TextEncoder,
    private val diffusionModel: DiffusionModel,
    private val decoder: Decoder,
    val config: GeneratorConfig,
    /** The bundle's VAE encoder, for [setImageInputs]; null when the bundle has none. */
    private val imageEncoder: ImageEncoder? = null,
    /** SDXL: the bundle's `text_encoder_2` when it also has a `text_encoder`; null otherwise. */
    private val textEncoder2: TextEncoder? = null
) {
    private val sdxlEncoders: List<TextEncoder> = checkedSdxlEncoders()
    private var inputs: GenerationInputs? = null
    private var latent = FloatArray(0)
    private var contexts = FloatArray(0)
    private var addedEmbeddings = FloatArray(0)
    private var stepNoise = FloatArray(0)
    private var state = SamplerState()
    private var nextStep = 0
    private var startStep = 0
    private var finished = true

    /** Steps finished in the current generation (image-to-image: of those it runs). */
    val stepsDone: Int get() = nextStep - startStep

    /** Whether the current generation has returned its final image (or none was set up). */
    val isFinished: Boolean get() = finished

    private fun checkedSdxlEncoders(): List<TextEncoder> {
        val spec = config.sdxl
        if (spec == null) {
            require(textEncoder2 == null) { "a second text encoder is for SDXL bundles (this config has no sdxl)" }
            return emptyList()
        }
        val encoders = listOf(textEncoder) + listOfNotNull(textEncoder2)
        require(encoders.size == spec.textEncoders.size) {
            "the bundle has ${spec.textEncoders.size} text encoders (${spec.textEncoders.joinToString()}) but " +
                "${encoders.size} were given"
        }
        return encoders
    }

    /** Whether [setImageInputs] can be used: the bundle has an image encoder. */
    val supportsImageToImage: Boolean get() = imageEncoder != null

    /**
     * Prepare a generation: tokenize and encode both prompts, build the sampler, draw the seeded noise.
     *
     * @throws IllegalArgumentException a bad setting (the message names it) or an invalid prompt.
     */
    fun setInputs(
        prompt: String,
        negativePrompt: String,
        steps: Int,
        guidanceScale: Float,
        seed: Long,
        sampler: String
    ): GenerationInputs {
        return prepare(prompt, negativePrompt, steps, guidanceScale, seed, sampler, null, 0.0)
    }

    /**
     * Prepare an image-to-image generation (Python's `image_to_image`, step for step): [image] `(H, W, 3)` in
     * [-1, 1] (see [ImagePreprocessing]) is encoded by the bundle's VAE encoder, noised to the level of step
     * `ImageToImage.startIndex(steps, strength)` with the seeded noise, and only the remaining steps run.
     * [strength] 1 ignores the image's content almost entirely; 0 runs no step and returns the re-decoded image.
     *
     * @throws IllegalArgumentException a bad setting, a wrong image size, or a bundle without an image encoder.
     */
    fun setImageInputs(
        prompt: String,
        negativePrompt: String,
        steps: Int,
        guidanceScale: Float,
        seed: Long,
        sampler: String,
        image: FloatArray,
        strength: Double
    ): GenerationInputs {
        if (imageEncoder == null) {
            throw IllegalArgumentException("this bundle has no image_encoder; export it with the VAE encoder for " +
                "image-to-image")
        }
        ImageToImage.checkStrength(strength)
        val expected = config.imageHeight * config.imageWidth * 3
        if (image.size != expected) {
            throw IllegalArgumentException("the image has ${image.size} values; the model takes " +
                "${config.imageWidth}x${config.imageHeight} RGB ($expected values)")
        }
        return prepare(prompt, negativePrompt, steps, guidanceScale, seed, sampler, image, strength)
    }

    private fun prepare(
        prompt: String,
        negativePrompt: String,
        steps: Int,
        guidanceScale: Float,
        seed: Long,
        sampler: String,
        image: FloatArray?,
        strength: Double
    ): GenerationInputs {
        if (steps < 1 || steps > MAX_STEPS) throw IllegalArgumentException("steps must be in [1, $MAX_STEPS], got $steps")
        if (guidanceScale.isNaN() || guidanceScale.isInfinite() || guidanceScale < 0f) {
            throw IllegalArgumentException("guidance scale must be finite and >= 0, got $guidanceScale")
        }
        val built = Samplers.create(sampler, steps, config.schedule)
        val positive = tokenizer.tokenize(prompt, config.padId)
        val negative = tokenizer.tokenize(negativePrompt, config.padId)
        val sdxl = config.sdxl
        val textInputs: FloatArray
        if (sdxl != null) {
            val conditionalRow = SdxlConditioning.encode(sdxl, sdxlEncoders, prompt, positive, false)
            val unconditionalRow = SdxlConditioning.encode(sdxl, sdxlEncoders, negativePrompt, negative, true)
            textInputs = unconditionalRow.context + conditionalRow.context
            addedEmbeddings = unconditionalRow.addedEmbedding + conditionalRow.addedEmbedding
        } else {
            val conditional = textEncoder.encode(positive.ids)
            val unconditional = textEncoder.encode(negative.ids)
            if (conditional.size != unconditional.size || conditional.isEmpty() ||
                conditional.size % positive.ids.size != 0) {
                throw IllegalStateException(
                    "text encoder returned ${conditional.size} and ${unconditional.size} values for " +
                        "${positive.ids.size} tokens; expected (${positive.ids.size}, width) each"
                )
            }
            textInputs = unconditional + conditional
            addedEmbeddings = FloatArray(0)
        }
        val size = config.latentSize
        val (initial, extra) = SeedNoise.latentNoise(seed, 1, size, if (built.needsNoise) steps else 0)
        var start = 0
        if (image == null) {
            val sigma = built.tables.initNoiseSigma
            latent = FloatArray(size) { initial[it] * sigma }
        } else {
            val original = imageEncoder!!.encode(image)
            if (original.size != size) {
                throw IllegalStateException("image encoder returned ${original.size} values; expected $size " +
                    "(${config.latentHeight}x${config.latentWidth}x${config.latentChannels})")
            }
            start = ImageToImage.startIndex(steps, strength)
            latent = if (start >= steps) original else ImageToImage.noised(original, initial, built.tables, start)
        }
        contexts = textInputs
        stepNoise = extra
        state = built.newState()
        startStep = start
        nextStep = start
        finished = false
        val resolved = GenerationInputs(positive, negative, seed, guidanceScale, built, start)
        inputs = resolved
        return resolved
    }

    /**
     * Run the next step. With [showResult] (or on the last step) the result carries an image: a preview decoded
     * from the step's denoised estimate, or the final image.
     *
     * @throws IllegalStateException no generation is set up, it is finished, or a network returned a wrong size.
     * @throws ArithmeticException the image contains NaN or inf (a broken or overflowing model).
     */
    fun execute(showResult: Boolean = false): StepResult {
        val current = inputs ?: throw IllegalStateException("call setInputs before execute")
        val sampler = current.sampler
        if (finished) throw IllegalStateException("the generation is finished; call setInputs")
        if (nextStep >= sampler.numSteps) {
            // image-to-image at strength 0: no step runs, the result is the encoded image decoded again
            finished = true
            return StepResult(0, 0, decode(latent), true)
        }
        val i = nextStep
        val size = latent.size
        val modelInput = sampler.scaleModelInput(latent, i)
        val embedding = TimestepEmbedding.compute(sampler.tables.timesteps[i], config.timestepEmbeddingDim)
        val output = if (config.sdxl != null) {
            diffusionModel.predict(modelInput + modelInput, embedding + embedding, contexts, addedEmbeddings)
        } else {
            diffusionModel.predict(modelInput + modelInput, embedding + embedding, contexts)
        }
        if (output.size != 2 * size) {
            throw IllegalStateException("diffusion model returned ${output.size} values; expected ${2 * size} (batch 2)")
        }
        val prediction = ClassifierFreeGuidance.combine(output, current.guidanceScale)
        val noise = if (sampler.needsNoise) stepNoise.copyOfRange(i * size, (i + 1) * size) else null
        val (next, denoised) = sampler.stepWithDenoised(latent, prediction, i, state, noise)
        latent = next
        nextStep = i + 1
        val isFinal = nextStep == sampler.numSteps
        if (isFinal) finished = true
        val image = when {
            isFinal -> decode(latent)
            showResult -> decode(denoised)
            else -> null
        }
        return StepResult(nextStep - startStep, sampler.numSteps - startStep, image, isFinal)
    }

    /**
     * Run every remaining step; [onStep] sees each result and returns false to cancel (then null is returned).
     * [previewEvery] > 0 asks for a preview every that many steps.
     */
    fun run(previewEvery: Int = 0, onStep: (StepResult) -> Boolean): RgbImage? {
        while (!isFinished) {
            val upcoming = stepsDone + 1
            val result = execute(previewEvery > 0 && upcoming % previewEvery == 0)
            if (!onStep(result)) return null
            if (result.isFinal) return result.image
        }
        throw IllegalStateException("call setInputs before run")
    }

    /** A copy of the current latent `(h, w, c)`. */
    fun currentLatent(): FloatArray = latent.copyOf()

    private fun decode(latent: FloatArray): RgbImage {
        val image = decoder.decode(latent)
        val expected = config.imageHeight * config.imageWidth * 3
        if (image.size != expected) {
            throw IllegalStateException("decoder returned ${image.size} values; expected $expected " +
                "(${config.imageWidth}x${config.imageHeight} RGB)")
        }
        for (value in image) {
            if (value.isNaN() || value.isInfinite()) {
                throw ArithmeticException(
                    "the generated image contains NaN or inf (numerical overflow in the model); try another " +
                        "quantization of the bundle or the CPU"
                )
            }
        }
        return Pixels.toImage(image, config.imageHeight, config.imageWidth)
    }

    companion object {
        /** The most steps a generation may take (as the Python pipeline allows). */
        const val MAX_STEPS = 1000
    }
}
