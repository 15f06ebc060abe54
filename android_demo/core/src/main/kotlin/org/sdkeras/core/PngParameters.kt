package org.sdkeras.core

import java.io.ByteArrayOutputStream
import java.math.BigDecimal
import java.math.MathContext
import java.util.zip.CRC32

/**
 * The AUTOMATIC1111-style `parameters` text of a generation and the PNG chunk that carries it, as
 * `sd_keras.metadata` writes them, so `sd-keras info image.png` reads images saved on the phone.
 *
 * Example:
 * ```
 * val text = PngParameters.format("a cat", "", listOf("Steps" to 20, "Sampler" to "Euler a", "CFG scale" to 7.5f))
 * val png = PngParameters.withText(bitmapPngBytes, "parameters", text)
 * ```
 */
object PngParameters {
    private val SIGNATURE = byteArrayOf(0x89.toByte(), 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)

    /**
     * `<prompt>\nNegative prompt: <negative>\nKey: value, ...` (the negative line only when there is one). Values
     * containing `,` `:` `"` or a newline are written as JSON strings; floats as Python's `{:g}`.
     */
    @JvmStatic
    fun format(prompt: String, negativePrompt: String, settings: List<Pair<String, Any>>): String {
        val lines = ArrayList<String>()
        lines.add(prompt)
        if (negativePrompt.length > 0) lines.add("Negative prompt: $negativePrompt")
        lines.add(settings.joinToString(", ") { "${it.first}: ${formatValue(it.second)}" })
        return lines.joinToString("\n")
    }

    private fun formatValue(value: Any): String {
        val text = when (value) {
            is Float -> general(value.toDouble())
            is Double -> general(value)
            else -> value.toString()
        }
        if (text.any { it == ',' || it == ':' || it == '"' || it == '\n' }) return jsonString(text)
        return text
    }

    // Python's format(value, "g") for the values a UI holds: 6 significant digits, no trailing zeros.
    private fun general(value: Double): String {
        if (value.isNaN() || value.isInfinite()) return value.toString()
        val rounded = BigDecimal(value).round(MathContext(6)).stripTrailingZeros()
        return if (rounded.signum() == 0) "0" else rounded.toPlainString()
    }

    private fun jsonString(text: String): String {
        val builder = StringBuilder("\"")
        for (char in text) {
            when {
                char == '"' -> builder.append("\\\"")
                char == '\\' -> builder.append("\\\\")
                char == '\n' -> builder.append("\\n")
                char == '\r' -> builder.append("\\r")
                char == '\t' -> builder.append("\\t")
                char == '\b' -> builder.append("\\b")
                char == '\u000C' -> builder.append("\\f")
                char < ' ' -> builder.append("\\u%04x".format(char - '\u0000'))
                else -> builder.append(char)
            }
        }
        return builder.append('"').toString()
    }

    /**
     * [png] with a text chunk [key] = [text] inserted after the header: `tEXt` when the text is Latin-1, else
     * `iTXt` (UTF-8), as Pillow writes it.
     */
    @JvmStatic
    fun withText(png: ByteArray, key: String, text: String): ByteArray {
        require(png.size > 33 && png.copyOfRange(0, 8).contentEquals(SIGNATURE)) { "not a PNG image" }
        val headerEnd = 8 + 4 + 4 + 13 + 4 // signature, IHDR length, type, data, CRC
        val latin1 = text.all { it <= '\u00FF' }
        val data = ByteArrayOutputStream()
        data.write(key.toByteArray(Charsets.ISO_8859_1))
        data.write(0)
        if (latin1) {
            data.write(text.toByteArray(Charsets.ISO_8859_1))
        } else {
            data.write(byteArrayOf(0, 0, 0, 0)) // no compression, method 0, empty language tag and translated key
            data.write(text.toByteArray(Charsets.UTF_8))
        }
        val chunk = chunk(if (latin1) "tEXt" else "iTXt", data.toByteArray())
        val result = ByteArrayOutputStream(png.size + chunk.size)
        result.write(png, 0, headerEnd)
        result.write(chunk)
        result.write(png, headerEnd, png.size - headerEnd)
        return result.toByteArray()
    }

    private fun chunk(type: String, data: ByteArray): ByteArray {
        val out = ByteArrayOutputStream(data.size + 12)
        writeInt(out, data.size)
        val typeBytes = type.toByteArray(Charsets.US_ASCII)
        out.write(typeBytes)
        out.write(data)
        val crc = CRC32()
        crc.update(typeBytes)
        crc.update(data)
        writeInt(out, crc.value.toInt())
        return out.toByteArray()
    }

    private fun writeInt(out: ByteArrayOutputStream, value: Int) {
        out.write(value ushr 24)
        out.write(value ushr 16)
        out.write(value ushr 8)
        out.write(value)
    }
}
