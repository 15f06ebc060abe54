package org.sdkeras.core

/**
 * `upscaler.json` of a folder written by `sd-keras export-upscaler` (Python: `sd_keras.export.upscaler`): the
 * upscaler's [scale], the fixed [tile] its `.tflite` files take, the [overlap] to tile with, the signature
 * ([spec]) and one file per quantization mode ([files]).
 */
class UpscalerManifest(
    val architecture: String,
    val scale: Int,
    val tile: Int,
    val overlap: Int,
    val padMultiple: Int,
    val spec: ComponentSpec,
    val files: Map<String, String>
) {
    /** The file of the first of [preferred] modes the folder has (fp16 keeps the most quality, int8 is smaller). */
    fun file(preferred: List<String> = listOf("fp16", "int8")): String {
        for (mode in preferred) files[mode]?.let { return it }
        return files.values.first()
    }

    companion object {
        const val FILE_NAME = "upscaler.json"
        const val FORMAT = "sd_keras-upscaler"

        @JvmStatic
        fun parse(text: String): UpscalerManifest {
            val root = try {
                JsonObject.parse(text, "upscaler")
            } catch (error: JsonException) {
                throw BundleException("$FILE_NAME: ${error.message}", error)
            }
            try {
                if (root.string("format") != FORMAT || root.int("version") != 1) {
                    throw BundleException("$FILE_NAME: not an sd_keras upscaler (format ${root.string("format")}, " +
                        "version ${root.int("version")})")
                }
                val signature = root.obj("signature")
                fun specs(key: String) = signature.objects(key).map {
                    TensorSpec(it.string("name"), it.ints("shape"), it.string("dtype"))
                }
                val files = root.obj("files").map.mapValues { (mode, value) ->
                    (value as? String)?.takeIf { '/' !in it && '\\' !in it && !it.startsWith(".") }
                        ?: throw BundleException("$FILE_NAME: files.$mode is not a plain file name")
                }
                if (files.isEmpty()) throw BundleException("$FILE_NAME: no files")
                val spec = ComponentSpec("upscaler", files.values.first(), null, null, signature.string("signature"),
                    specs("inputs"), specs("outputs"))
                val manifest = UpscalerManifest(root.string("architecture"), root.int("scale"), root.int("tile"),
                    root.int("overlap"), root.int("pad_multiple"), spec, files)
                val input = spec.inputs.single().shape
                val output = spec.outputs.single().shape
                val tile = manifest.tile
                if (!input.contentEquals(intArrayOf(1, tile, tile, 3)) ||
                    !output.contentEquals(intArrayOf(1, tile * manifest.scale, tile * manifest.scale, 3))) {
                    throw BundleException("$FILE_NAME: signature shapes ${input.joinToString()} -> " +
                        "${output.joinToString()} do not fit tile $tile and scale ${manifest.scale}")
                }
                return manifest
            } catch (error: JsonException) {
                throw BundleException("$FILE_NAME: ${error.message}", error)
            }
        }
    }
}

/**
 * An RGB image enlarged by an exported upscaler, tile by tile ([Tiling]: the same grid and blend as Python's
 * `sd_keras.upscale`). The model takes fixed `tile x tile` inputs in [0, 1], so an image smaller than a tile
 * (or not a multiple of the model's pad multiple) is first extended by repeating its last row and column; the
 * result is cropped back to `scale` times the image.
 */
object Upscaling {
    /**
     * [rgb] (`height * width * 3` bytes, row by row) to the upscaled RGB bytes. [run] runs the model on one
     * `(1, tile, tile, 3)` tile; [progress] hears (tiles done, tiles in all).
     */
    @JvmStatic
    fun upscale(
        rgb: ByteArray, height: Int, width: Int, manifest: UpscalerManifest, run: (FloatArray) -> FloatArray,
        progress: ((Int, Int) -> Unit)? = null
    ): ByteArray {
        require(rgb.size == height * width * 3) { "image has ${rgb.size} bytes; ${width}x$height RGB needs ${height * width * 3}" }
        val multiple = manifest.padMultiple
        val paddedHeight = roundUp(maxOf(height, manifest.tile), multiple)
        val paddedWidth = roundUp(maxOf(width, manifest.tile), multiple)
        val pixels = FloatArray(paddedHeight * paddedWidth * 3)
        for (y in 0 until paddedHeight) {
            val source = minOf(y, height - 1)
            for (x in 0 until paddedWidth) {
                val from = (source * width + minOf(x, width - 1)) * 3
                val to = (y * paddedWidth + x) * 3
                for (k in 0 until 3) pixels[to + k] = (rgb[from + k].toInt() and 0xFF) / 255.0f
            }
        }
        val total = Tiling.tileStarts(paddedHeight, manifest.tile, manifest.overlap, multiple).size *
            Tiling.tileStarts(paddedWidth, manifest.tile, manifest.overlap, multiple).size
        var done = 0
        val scale = manifest.scale
        val out = Tiling.apply(pixels, paddedHeight, paddedWidth, 3, scale, manifest.tile, manifest.overlap,
            align = multiple) { tile, _, _ ->
            val result = run(tile)
            done += 1
            progress?.invoke(done, total)
            result
        }
        val outWidth = width * scale
        val paddedOutWidth = paddedWidth * scale
        val bytes = ByteArray(height * scale * outWidth * 3)
        for (y in 0 until height * scale) {
            for (x in 0 until outWidth * 3) {
                val value = out[y * paddedOutWidth * 3 + x]
                bytes[y * outWidth * 3 + x] = Math.round(value.coerceIn(0.0f, 1.0f) * 255.0f).toByte()
            }
        }
        return bytes
    }

    private fun roundUp(value: Int, multiple: Int) = (value + multiple - 1) / multiple * multiple
}
