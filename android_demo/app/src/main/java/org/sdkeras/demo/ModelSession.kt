package org.sdkeras.demo

import java.io.File
import org.sdkeras.core.Bundle
import org.sdkeras.core.ClipTokenizer
import org.sdkeras.core.GeneratorConfig
import org.sdkeras.core.ImageGenerator
import org.sdkeras.core.TextEncoder

/**
 * A loaded bundle: checked files, tokenizer, the three LiteRT components and the core's [ImageGenerator] over them.
 *
 * With [lowMemory] the text encoder is loaded only while the prompts are encoded and closed before sampling, so
 * the UNet and the decoder do not share memory with it (the peak is what phones with 6 GB need for SD 1.x).
 */
class ModelSession private constructor(
    val bundle: Bundle,
    val preferGpu: Boolean,
    val lowMemory: Boolean,
    private val tokenizer: ClipTokenizer,
    private val unet: List<LiteRtComponent>,
    private val decoder: LiteRtComponent
) : AutoCloseable {
    private var textEncoderComponent: LiteRtComponent? = null

    private val textEncoder = object : TextEncoder {
        override fun encode(tokens: IntArray): FloatArray {
            val component = textEncoderComponent ?: LiteRtComponent(
                bundle.file("text_encoder"), bundle.manifest.component("text_encoder"), preferGpu
            ).also { textEncoderComponent = it }
            return LiteRtTextEncoder(component, tokens.size).encode(tokens)
        }
    }

    val generator = ImageGenerator(
        tokenizer, textEncoder, LiteRtDiffusionModel(unet), LiteRtDecoder(decoder),
        GeneratorConfig.fromManifest(bundle.manifest)
    )

    /** Where each component runs, for the status line. */
    val accelerators: String
        get() = "UNet ${unet.map { it.accelerator }.distinct().joinToString("/")}, decoder ${decoder.accelerator}" +
            (textEncoderComponent?.let { ", text encoder ${it.accelerator}" } ?: "")

    /** Called after the prompts are encoded: frees the text encoder in low-memory mode. */
    fun afterTextEncoding() {
        if (lowMemory) releaseTextEncoder()
    }

    private fun releaseTextEncoder() {
        textEncoderComponent?.close()
        textEncoderComponent = null
    }

    override fun close() {
        releaseTextEncoder()
        for (part in unet) part.close()
        decoder.close()
    }

    companion object {
        /**
         * Check the bundle in [directory] (sha256 of every file, remembered in [hashCache]) and load its models.
         *
         * @throws org.sdkeras.core.BundleException the bundle is incomplete, modified or of an unknown version.
         * @throws OutOfMemoryError the phone cannot hold the models (the caller says so on screen).
         */
        fun open(directory: File, preferGpu: Boolean, lowMemory: Boolean, hashCache: File): ModelSession {
            val bundle = Bundle.open(directory, verifyHashes = true, hashCache = hashCache)
            val tokenizer = bundle.tokenizer()
            val manifest = bundle.manifest
            // one file, or the consecutive parts of a UNet too large to convert whole (run as a chain)
            val unet = ArrayList<LiteRtComponent>()
            val decoder = try {
                val unetSpec = manifest.component("diffusion_model")
                for ((file, spec) in bundle.files("diffusion_model").zip(unetSpec.fileEntries)) {
                    unet.add(LiteRtComponent(file, spec, preferGpu))
                }
                LiteRtComponent(bundle.file("decoder"), manifest.component("decoder"), preferGpu)
            } catch (error: Throwable) {
                for (part in unet) part.close()
                throw error
            }
            return ModelSession(bundle, preferGpu, lowMemory, tokenizer, unet, decoder)
        }
    }
}
