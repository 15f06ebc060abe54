package org.sdkeras.core

import java.awt.image.BufferedImage
import java.io.ByteArrayInputStream
import java.io.ByteArrayOutputStream
import java.io.File
import java.util.zip.CRC32
import javax.imageio.ImageIO
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/**
 * The parameters text and PNG chunk. With `-Dsdkeras.output=DIR` the images are also written there, and
 * tests/test_android_core.py reads them back with `sd_keras.metadata`.
 */
class PngParametersTest {
    private fun png(): ByteArray {
        val image = BufferedImage(4, 3, BufferedImage.TYPE_INT_RGB)
        image.setRGB(1, 1, 0xFF8040)
        val out = ByteArrayOutputStream()
        ImageIO.write(image, "png", out)
        return out.toByteArray()
    }

    /** (type, data) of every chunk, checking lengths and CRCs. */
    private fun chunks(png: ByteArray): List<Pair<String, ByteArray>> {
        val result = ArrayList<Pair<String, ByteArray>>()
        var position = 8
        while (position < png.size) {
            val length = ((png[position].toInt() and 0xFF) shl 24) or ((png[position + 1].toInt() and 0xFF) shl 16) or
                ((png[position + 2].toInt() and 0xFF) shl 8) or (png[position + 3].toInt() and 0xFF)
            val type = String(png, position + 4, 4, Charsets.US_ASCII)
            val data = png.copyOfRange(position + 8, position + 8 + length)
            val crc = CRC32()
            crc.update(png, position + 4, 4 + length)
            val stored = ((png[position + 8 + length].toLong() and 0xFF) shl 24) or
                ((png[position + 9 + length].toLong() and 0xFF) shl 16) or
                ((png[position + 10 + length].toLong() and 0xFF) shl 8) or (png[position + 11 + length].toLong() and 0xFF)
            assertEquals("CRC of $type", crc.value, stored)
            result.add(Pair(type, data))
            position += 12 + length
        }
        return result
    }

    private fun write(name: String, bytes: ByteArray) {
        val directory = System.getProperty("sdkeras.output") ?: return
        File(directory, name).writeBytes(bytes)
    }

    @Test
    fun latin1TextGoesIntoATextChunk() {
        val text = PngParameters.format("a red circle, on white", "blurry", listOf(
            "Steps" to 20, "Sampler" to "Euler a", "CFG scale" to 7.5f, "Seed" to 42L, "Size" to "128x128",
            "Model" to "shapes"
        ))
        assertEquals("a red circle, on white\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, " +
            "Seed: 42, Size: 128x128, Model: shapes", text)
        val png = PngParameters.withText(png(), "parameters", text)
        val found = chunks(png)
        assertEquals(listOf("IHDR", "tEXt"), found.take(2).map { it.first })
        assertEquals("parameters\u0000$text", String(found[1].second, Charsets.ISO_8859_1))
        assertEquals(4, ImageIO.read(ByteArrayInputStream(png)).width)
        write("parameters_latin1.png", png)
    }

    @Test
    fun otherTextGoesIntoAnInternationalChunk() {
        val text = PngParameters.format("東京タワー: 夜景 \"night\"", "", listOf(
            "Steps" to 4, "Sampler" to "DPM++ 2M Karras", "CFG scale" to 7.0f, "Seed" to 4294967294L,
            "Size" to "512x512", "Model" to "sd-v1"
        ))
        assertTrue(text, text.endsWith("\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 4294967294, " +
            "Size: 512x512, Model: sd-v1"))
        val png = PngParameters.withText(png(), "parameters", text)
        val found = chunks(png)
        assertEquals("iTXt", found[1].first)
        write("parameters_utf8.png", png)
    }

    @Test
    fun valuesWithSeparatorsAreQuoted() {
        val text = PngParameters.format("p", "", listOf("Model" to "a, b: \"c\"\n\td", "CFG scale" to 0.1f))
        assertEquals("p\nModel: \"a, b: \\\"c\\\"\\n\\td\", CFG scale: 0.1", text)
    }
}
