package org.sdkeras.demo

import java.io.File
import org.sdkeras.core.Bundle
import org.sdkeras.core.BundleLibrary
import org.sdkeras.core.ClipTokenizer
import org.sdkeras.core.ComponentSpec
import org.sdkeras.core.GeneratorConfig
import org.sdkeras.core.ImageGenerator
import org.sdkeras.core.TextEncoder

/**
 * A loaded bundle: checked files, tokenizer, the LiteRT components (text encoder, UNet, decoder and, when the
 * bundle has one, the VAE encoder for image-to-image) and the core's [ImageGenerator] over them. An SDXL bundle
 * (format_version 2) has two text encoders, `text_encoder` and `text_encoder_2` (a refiner only the second).
 *
 * With [lowMemory] the text encoders are loaded only while the prompts are encoded and closed before sampling, so
 * the UNet and the decoder do not share memory with them (the peak is what phones with 6 GB need for SD 1.x; for
 * SDXL the 695 M-parameter `text_encoder_2` is about as large as an SD 1.x UNet in the same mode).
 */
class ModelSession private constructor(
    val bundle: Bundle,
    val preferGpu: Boolean,
    val lowMemory: Boolean,
    val threads: Int,
    private val cacheDirectory: File,
    private val tokenizer: ClipTokenizer,
    private val unet: List<LiteRtComponent>,
    private val decoder: LiteRtComponent,
    private val imageEncoderComponent: LiteRtComponent?
) : AutoCloseable {
    /** The loaded text encoders by component name (loaded on first use; see [lowMemory]). */
    private val textEncoderComponents = LinkedHashMap<String, LiteRtComponent>()

    /** The text encoder component [name], loaded when a prompt is first encoded. */
    private inner class LazyTextEncoder(private val name: String) : TextEncoder {
        private fun component(): LiteRtComponent = textEncoderComponents[name] ?: run {
            val spec = bundle.manifest.component(name)
            LiteRtComponent(bundle.file(name), spec, preferGpu, cpuSettings(spec, threads, cacheDirectory))
                .also { textEncoderComponents[name] = it }
        }

        override fun encode(tokens: IntArray): FloatArray = LiteRtTextEncoder(component(), tokens.size).encode(tokens)

        override fun encodeOutputs(tokens: IntArray): Map<String, FloatArray> =
            LiteRtTextEncoder(component(), tokens.size).encodeOutputs(tokens)
    }

    // SD 1.x/2.x: text_encoder; SDXL base: text_encoder + text_encoder_2; SDXL refiner: text_encoder_2 alone
    private val textEncoderNames: List<String> = bundle.manifest.sdxl?.textEncoders ?: listOf("text_encoder")

    val generator = ImageGenerator(
        tokenizer, LazyTextEncoder(textEncoderNames[0]), LiteRtDiffusionModel(unet), LiteRtDecoder(decoder),
        GeneratorConfig.fromManifest(bundle.manifest), imageEncoderComponent?.let { LiteRtImageEncoder(it) },
        textEncoderNames.getOrNull(1)?.let { LazyTextEncoder(it) }
    )

    /** Where each component runs, for the status line. */
    val accelerators: String
        get() = "UNet ${unet.map { it.accelerator }.distinct().joinToString("/")}, decoder ${decoder.accelerator}" +
            textEncoderComponents.entries.joinToString("") { (name, component) ->
                ", ${name.replace('_', ' ')} ${component.accelerator}"
            } +
            (imageEncoderComponent?.let { ", image encoder ${it.accelerator}" } ?: "") + ", $threads CPU threads"

    /** Called after the prompts are encoded: frees the text encoders in low-memory mode. */
    fun afterTextEncoding() {
        if (lowMemory) releaseTextEncoder()
    }

    private fun releaseTextEncoder() {
        for (component in textEncoderComponents.values) component.close()
        textEncoderComponents.clear()
    }

    override fun close() {
        releaseTextEncoder()
        for (part in unet) part.close()
        decoder.close()
        imageEncoderComponent?.close()
    }

    companion object {
        /**
         * Check the bundle in [directory] (sha256 of every file, remembered in [hashCache]) and load its models.
         *
         * @throws org.sdkeras.core.BundleException the bundle is incomplete, modified or of an unknown version.
         * @throws OutOfMemoryError the phone cannot hold the models (the caller says so on screen).
         */
        fun open(
            directory: File,
            preferGpu: Boolean,
            lowMemory: Boolean,
            threads: Int,
            hashCache: File,
            cacheDirectory: File
        ): ModelSession {
            val bundle = Bundle.open(directory, verifyHashes = true, hashCache = hashCache)
            val tokenizer = bundle.tokenizer()
            val manifest = bundle.manifest
            // one file, or the consecutive parts of a UNet too large to convert whole (run as a chain)
            val opened = ArrayList<LiteRtComponent>()
            fun load(file: File, spec: ComponentSpec) =
                LiteRtComponent(file, spec, preferGpu, cpuSettings(spec, threads, cacheDirectory)).also { opened.add(it) }
            try {
                val unetSpec = manifest.component("diffusion_model")
                val unet = bundle.files("diffusion_model").zip(unetSpec.fileEntries).map { (file, spec) -> load(file, spec) }
                val decoder = load(bundle.file("decoder"), manifest.component("decoder"))
                val imageEncoder = if ("image_encoder" in manifest.components) {
                    load(bundle.file("image_encoder"), manifest.component("image_encoder"))
                } else {
                    null
                }
                return ModelSession(bundle, preferGpu, lowMemory, threads, cacheDirectory, tokenizer, unet, decoder,
                    imageEncoder)
            } catch (error: Throwable) {
                for (component in opened) component.close()
                throw error
            }
        }

        /** XNNPACK settings for one model file: [threads], and a weight cache named by the file's sha256. */
        fun cpuSettings(spec: ComponentSpec, threads: Int, cacheDirectory: File): CpuSettings {
            val cache = if (spec.sha256 == null) null else BundleLibrary.weightCacheFile(cacheDirectory, spec)
            return CpuSettings(threads, cache)
        }
    }
}
