package org.sdkeras.core

/**
 * SDXL's text conditioning on the host, as `sd_keras.pipeline_sdxl.StableDiffusionXL` computes it and
 * export/BUNDLE.md ("SDXL bundles") specifies it for the bundle runner:
 *
 * - the prompt is tokenized once and each text encoder gets its own copy, re-padded with that encoder's pad id
 *   after the first end token ([encoderIds], Python's `_encoder_ids`);
 * - the UNet's `context` is the encoders' contexts concatenated on the last axis, encoder 1 first ([concatContexts]);
 * - its `added_embedding` is the pooled text embedding followed by the sinusoid of each micro-conditioning time id
 *   ([addedEmbedding]: `[cos(v f_k), sin(v f_k)]`, `f_k = exp(-ln(10000) k / (d/2))`, the [TimestepEmbedding]
 *   recipe, so it equals the Python runner's bit for bit);
 * - with `force_zeros_for_empty_prompt` an empty negative prompt is a zero context and a zero pooled embedding
 *   ([encode]).
 */
object SdxlConditioning {
    /** The text inputs of one UNet row: `context` `(77, width)` and `added_embedding` `(pooled + n d)`. */
    class Row(val context: FloatArray, val addedEmbedding: FloatArray)

    /**
     * [ids] (one padded row) with every position after the first end token set to [padId]; the end token itself
     * and everything before it are kept (a prompt that spells `<|endoftext|>` ends there for the encoders, as in
     * Python).
     */
    @JvmStatic
    fun encoderIds(ids: IntArray, padId: Int): IntArray {
        val result = ids.copyOf()
        var ended = false
        for (index in result.indices) {
            if (ended) result[index] = padId
            if (result[index] == ClipTokenizer.END_ID) ended = true
        }
        return result
    }

    /** Per-token concatenation of [contexts] (each `(tokens, widths[i])`) on the last axis, in order. */
    @JvmStatic
    fun concatContexts(contexts: List<FloatArray>, widths: IntArray, tokens: Int): FloatArray {
        require(contexts.size == widths.size) { "${contexts.size} contexts but ${widths.size} widths" }
        for ((index, context) in contexts.withIndex()) {
            if (context.size != tokens * widths[index]) {
                throw IllegalStateException("text encoder ${index + 1} returned ${context.size} values; expected " +
                    "($tokens, ${widths[index]})")
            }
        }
        val width = widths.sum()
        val result = FloatArray(tokens * width)
        for (token in 0 until tokens) {
            var offset = token * width
            for ((index, context) in contexts.withIndex()) {
                System.arraycopy(context, token * widths[index], result, offset, widths[index])
                offset += widths[index]
            }
        }
        return result
    }

    /** `concat(pooled, emb(timeIds[0]), ..., emb(timeIds[n-1]))` with `emb` [TimestepEmbedding] of width [dim]. */
    @JvmStatic
    fun addedEmbedding(pooled: FloatArray, timeIds: FloatArray, dim: Int): FloatArray {
        require(dim >= 2 && dim % 2 == 0) { "addition_time_embed_dim must be even and >= 2, got $dim" }
        val result = FloatArray(pooled.size + timeIds.size * dim)
        System.arraycopy(pooled, 0, result, 0, pooled.size)
        for ((index, value) in timeIds.withIndex()) {
            val embedding = TimestepEmbedding.compute(value, dim)
            System.arraycopy(embedding, 0, result, pooled.size + index * dim, dim)
        }
        return result
    }

    /**
     * One row of UNet text inputs for [text] (tokenized as [tokenized]): every encoder of [encoders] (in the
     * order of [spec]'s `textEncoders`) runs on its re-padded ids; the pooled embedding is the `pooled` output of
     * the last encoder that has one. [negative] selects the unconditional row's time ids, and with
     * `forceZerosForEmptyPrompt` an empty negative [text] gives zeros without running the encoders.
     */
    @JvmStatic
    fun encode(
        spec: SdxlSpec,
        encoders: List<TextEncoder>,
        text: String,
        tokenized: TokenizedPrompt,
        negative: Boolean
    ): Row {
        require(encoders.size == spec.textEncoders.size) {
            "the bundle has ${spec.textEncoders.size} text encoders (${spec.textEncoders.joinToString()}), " +
                "${encoders.size} were given"
        }
        val tokens = tokenized.ids.size
        val timeIds = if (negative) spec.negativeTimeIds else spec.timeIds
        if (negative && spec.forceZerosForEmptyPrompt && text == "") {
            return Row(FloatArray(tokens * spec.contextWidth),
                addedEmbedding(FloatArray(spec.pooledDim), timeIds, spec.additionTimeEmbedDim))
        }
        val contexts = ArrayList<FloatArray>()
        var pooled: FloatArray? = null
        for ((index, encoder) in encoders.withIndex()) {
            val outputs = encoder.encodeOutputs(encoderIds(tokenized.ids, spec.padIds[index]))
            contexts.add(outputs["context"] ?: throw IllegalStateException(
                "text encoder ${spec.textEncoders[index]} returned no \"context\" (outputs: ${outputs.keys})"))
            outputs["pooled"]?.let { pooled = it }
        }
        val pooledValues = pooled ?: throw IllegalStateException("no text encoder returned \"pooled\" (SDXL takes " +
            "text_encoder_2's pooled embedding)")
        if (pooledValues.size != spec.pooledDim) {
            throw IllegalStateException("the pooled embedding has ${pooledValues.size} values; expected ${spec.pooledDim}")
        }
        return Row(concatContexts(contexts, spec.contextWidths, tokens),
            addedEmbedding(pooledValues, timeIds, spec.additionTimeEmbedDim))
    }
}
