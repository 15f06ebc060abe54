package org.sdkeras.core

/** A rectangle of source pixels: columns [left, left + width), rows [top, top + height). */
class CropRect(val left: Int, val top: Int, val width: Int, val height: Int) {
    override fun equals(other: Any?) = other is CropRect && other.left == left && other.top == top &&
        other.width == width && other.height == height

    override fun hashCode() = ((left * 31 + top) * 31 + width) * 31 + height

    override fun toString() = "CropRect(left=$left, top=$top, width=$width, height=$height)"
}

/** Packed ARGB pixels with their size (the result of [ImagePreprocessing.upright]). */
class OrientedImage(val argb: IntArray, val width: Int, val height: Int)

/**
 * A picked photo to the image encoder's input: centre-crop to the model's aspect ratio, resize to the model's
 * size, and map 8-bit RGB to [-1, 1] as Python does (`pixels / 127.5 - 1`, float32).
 *
 * The resize is a separable triangle (bilinear) filter whose support widens with the reduction factor, so a large
 * photo is averaged rather than aliased. Python's `load_image` resizes with PIL's Lanczos filter and does not crop
 * (it stretches); crop a photo to the model's aspect ratio before comparing the two. Pixels are packed ARGB ints
 * (Android's `Bitmap.getPixels`); alpha is ignored.
 */
object ImagePreprocessing {
    /** The largest centred rectangle of [sourceWidth]x[sourceHeight] with the aspect ratio of [width]x[height]. */
    @JvmStatic
    fun centerCrop(sourceWidth: Int, sourceHeight: Int, width: Int, height: Int): CropRect {
        checkSize(sourceWidth, sourceHeight, "photo")
        checkSize(width, height, "target")
        // compare sourceWidth / sourceHeight with width / height in integers (no rounding)
        val wide = sourceWidth.toLong() * height > width.toLong() * sourceHeight
        return if (wide) {
            val cropWidth = Math.max(1L, (sourceHeight.toLong() * width + height / 2) / height).toInt()
            CropRect((sourceWidth - cropWidth) / 2, 0, cropWidth, sourceHeight)
        } else {
            val cropHeight = Math.max(1L, (sourceWidth.toLong() * height + width / 2) / width).toInt()
            CropRect(0, (sourceHeight - cropHeight) / 2, sourceWidth, cropHeight)
        }
    }

    /**
     * The power-of-two subsampling (Android's `BitmapFactory.Options.inSampleSize`) that decodes a photo of
     * [sourceWidth]x[sourceHeight] no smaller than twice [width]x[height] in each direction, so a 48-megapixel
     * photo is not decoded whole.
     */
    @JvmStatic
    fun decodeSubsampling(sourceWidth: Int, sourceHeight: Int, width: Int, height: Int): Int {
        checkSize(sourceWidth, sourceHeight, "photo")
        checkSize(width, height, "target")
        var sample = 1
        while (sourceWidth / (sample * 2) >= 2 * width && sourceHeight / (sample * 2) >= 2 * height) sample *= 2
        return sample
    }

    /** Resize the [crop] of an ARGB image ([sourceWidth] wide) to [width]x[height] RGB floats in [0, 255]. */
    @JvmStatic
    fun resizeRgb(argb: IntArray, sourceWidth: Int, sourceHeight: Int, crop: CropRect, width: Int, height: Int): FloatArray {
        checkSize(sourceWidth, sourceHeight, "photo")
        checkSize(width, height, "target")
        if (argb.size != sourceWidth * sourceHeight) {
            throw IllegalArgumentException("${argb.size} pixels for a ${sourceWidth}x$sourceHeight image")
        }
        if (crop.left < 0 || crop.top < 0 || crop.width < 1 || crop.height < 1 ||
            crop.left + crop.width > sourceWidth || crop.top + crop.height > sourceHeight) {
            throw IllegalArgumentException("$crop is not inside the ${sourceWidth}x$sourceHeight image")
        }
        val columns = weights(crop.width, width)
        val rows = weights(crop.height, height)
        // horizontal pass: crop.height rows x width columns x 3 channels
        val horizontal = FloatArray(crop.height * width * 3)
        for (y in 0 until crop.height) {
            val rowStart = (crop.top + y) * sourceWidth + crop.left
            for (x in 0 until width) {
                val taps = columns[x]
                var red = 0.0
                var green = 0.0
                var blue = 0.0
                for (t in taps.indices) {
                    val pixel = argb[rowStart + taps.first + t]
                    val weight = taps.weights[t]
                    red += weight * ((pixel shr 16) and 0xFF)
                    green += weight * ((pixel shr 8) and 0xFF)
                    blue += weight * (pixel and 0xFF)
                }
                val at = (y * width + x) * 3
                horizontal[at] = red.toFloat()
                horizontal[at + 1] = green.toFloat()
                horizontal[at + 2] = blue.toFloat()
            }
        }
        val result = FloatArray(height * width * 3)
        for (y in 0 until height) {
            val taps = rows[y]
            for (x in 0 until width) {
                for (channel in 0 until 3) {
                    var sum = 0.0
                    for (t in taps.indices) sum += taps.weights[t] * horizontal[((taps.first + t) * width + x) * 3 + channel]
                    result[(y * width + x) * 3 + channel] = Math.min(255.0, Math.max(0.0, sum)).toFloat()
                }
            }
        }
        return result
    }

    /**
     * Turn a decoded photo upright by its EXIF orientation (1-8; 0 or unknown: unchanged), as galleries show it:
     * 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 270 clockwise.
     */
    @JvmStatic
    fun upright(argb: IntArray, width: Int, height: Int, orientation: Int): OrientedImage {
        checkSize(width, height, "photo")
        if (argb.size != width * height) throw IllegalArgumentException("${argb.size} pixels for a ${width}x$height image")
        if (orientation < 2 || orientation > 8) return OrientedImage(argb, width, height)
        val swap = orientation >= 5
        val outWidth = if (swap) height else width
        val outHeight = if (swap) width else height
        val out = IntArray(argb.size)
        for (y in 0 until outHeight) {
            for (x in 0 until outWidth) {
                // (sx, sy): the source pixel shown at (x, y)
                val sx: Int
                val sy: Int
                when (orientation) {
                    2 -> { sx = width - 1 - x; sy = y }
                    3 -> { sx = width - 1 - x; sy = height - 1 - y }
                    4 -> { sx = x; sy = height - 1 - y }
                    5 -> { sx = y; sy = x }
                    6 -> { sx = y; sy = height - 1 - x }
                    7 -> { sx = width - 1 - y; sy = height - 1 - x }
                    else -> { sx = width - 1 - y; sy = x }
                }
                out[y * outWidth + x] = argb[sy * width + sx]
            }
        }
        return OrientedImage(out, outWidth, outHeight)
    }

    /** RGB floats in [0, 255] to the encoder's [-1, 1]: `value / 127.5 - 1` in float32, as Python. */
    @JvmStatic
    fun normalize(rgb: FloatArray): FloatArray = FloatArray(rgb.size) { rgb[it] / 127.5f - 1.0f }

    /** Crop, resize and normalize in one call: the `(height, width, 3)` input of the image encoder. */
    @JvmStatic
    fun encoderInput(argb: IntArray, sourceWidth: Int, sourceHeight: Int, width: Int, height: Int): FloatArray {
        val crop = centerCrop(sourceWidth, sourceHeight, width, height)
        return normalize(resizeRgb(argb, sourceWidth, sourceHeight, crop, width, height))
    }

    private class Taps(val first: Int, val weights: DoubleArray) {
        val indices: IntRange get() = weights.indices
    }

    /** Triangle-filter taps for each output position, normalised to sum 1. */
    private fun weights(sourceSize: Int, targetSize: Int): Array<Taps> {
        val scale = sourceSize.toDouble() / targetSize
        val support = Math.max(1.0, scale) // the filter widens when shrinking (antialiasing)
        return Array(targetSize) { index ->
            val center = (index + 0.5) * scale
            val first = Math.max(0, Math.floor(center - support).toInt())
            val last = Math.min(sourceSize - 1, Math.ceil(center + support).toInt())
            val raw = DoubleArray(last - first + 1) {
                val distance = Math.abs(first + it + 0.5 - center) / support
                Math.max(0.0, 1.0 - distance)
            }
            var total = raw.sum()
            if (total <= 0.0) {
                // a degenerate window: take the nearest pixel
                raw.fill(0.0)
                raw[Math.min(raw.size - 1, Math.max(0, Math.floor(center).toInt() - first))] = 1.0
                total = 1.0
            }
            Taps(first, DoubleArray(raw.size) { raw[it] / total })
        }
    }

    private fun checkSize(width: Int, height: Int, what: String) {
        if (width < 1 || height < 1) throw IllegalArgumentException("$what size must be positive, got ${width}x$height")
    }
}
