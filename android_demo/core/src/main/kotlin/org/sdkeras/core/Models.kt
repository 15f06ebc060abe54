package org.sdkeras.core

/**
 * The networks of a generation, as the sampling loop sees them: flat float arrays in C order (batch first,
 * channels last), the shapes a bundle's manifest lists. The Android app binds them to LiteRT; tests bind fakes.
 */
interface TextEncoder {
    /** `tokens` (77 ids, one prompt) to the context `(77, D)`; the binding supplies positions 0..76. */
    fun encode(tokens: IntArray): FloatArray

    /**
     * Every output by name: `context`, and for SDXL's `text_encoder_2` also `pooled` `(P)`. An encoder with one
     * output need not override this.
     */
    fun encodeOutputs(tokens: IntArray): Map<String, FloatArray> = mapOf("context" to encode(tokens))
}

interface DiffusionModel {
    /**
     * The predicted noise (or v) for a classifier-free-guidance pair: `latent` `(2, h, w, c)`,
     * `timestepEmbedding` `(2, dim)`, `context` `(2, 77, D)`; row 0 is unconditional, row 1 conditional.
     * Returns `(2, h, w, c)`.
     */
    fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray): FloatArray

    /**
     * An SDXL UNet: as above with `context` `(2, 77, D1 + D2)` and `addedEmbedding` `(2, P + n d)` (the pooled text
     * embedding and the micro-conditioning sinusoids of each row, [SdxlConditioning]). SD 1.x/2.x UNets do not
     * take it.
     */
    fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray,
                addedEmbedding: FloatArray): FloatArray =
        throw UnsupportedOperationException("this diffusion model takes no added_embedding (not an SDXL UNet)")
}

interface Decoder {
    /** One latent `(h, w, c)` to an image `(H, W, 3)` with values in [-1, 1]. */
    fun decode(latent: FloatArray): FloatArray
}

interface ImageEncoder {
    /** One image `(H, W, 3)` with values in [-1, 1] to its latent `(h, w, c)` (already scaled, as the bundle's). */
    fun encode(image: FloatArray): FloatArray
}
