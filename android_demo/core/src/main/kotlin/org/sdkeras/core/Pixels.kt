package org.sdkeras.core

/** An RGB image as packed ARGB ints (alpha 255), row by row: what Android's `Bitmap.createBitmap` takes. */
class RgbImage(val width: Int, val height: Int, val argb: IntArray)

/**
 * Decoder output in [-1, 1] to 8-bit pixels, as Python's `to_uint8` (KerasCV's conversion):
 * `uint8(clip(((x + 1) / 2) · 255, 0, 255))`, float32 maths, truncated toward zero.
 */
object Pixels {
    @JvmStatic
    fun toUint8(value: Float): Int {
        val scaled = ((value + 1.0f) / 2.0f) * 255.0f
        if (scaled.isNaN()) return 0
        return Math.min(Math.max(scaled, 0.0f), 255.0f).toInt()
    }

    /** `(H, W, 3)` decoder output to RGB bytes in the same order. */
    @JvmStatic
    fun toRgbBytes(image: FloatArray): ByteArray = ByteArray(image.size) { toUint8(image[it]).toByte() }

    /** `(H, W, 3)` decoder output to an [RgbImage]. */
    @JvmStatic
    fun toImage(image: FloatArray, height: Int, width: Int): RgbImage {
        require(image.size == height * width * 3) {
            "decoder output has ${image.size} values; a ${width}x$height RGB image needs ${height * width * 3}"
        }
        val argb = IntArray(height * width) {
            val red = toUint8(image[3 * it])
            val green = toUint8(image[3 * it + 1])
            val blue = toUint8(image[3 * it + 2])
            (0xFF shl 24) or (red shl 16) or (green shl 8) or blue
        }
        return RgbImage(width, height, argb)
    }
}
