package org.sdkeras.core

import java.io.ByteArrayOutputStream
import java.io.File
import java.io.IOException
import java.util.zip.GZIPInputStream
import java.util.zip.GZIPOutputStream
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The merges file in both forms a bundle may ship, and the errors for broken ones. */
class MergesFileTest {
    private val gzipped = Golden.mergesFile().readBytes()
    private val plain = GZIPInputStream(gzipped.inputStream()).use { it.readBytes() }

    @Test
    fun plainAndGzipGiveTheSameTokenizer() {
        val fromPlain = ClipTokenizer.fromBytes(plain, "merges.txt")
        val fromGzip = ClipTokenizer.fromBytes(gzipped, "merges.txt.gz")
        val text = "a photograph of an astronaut riding a horse, 4k"
        assertEquals(fromGzip.encode(text).toList(), fromPlain.encode(text).toList())
        assertEquals(ClipTokenizer.readMerges(plain, "plain"), ClipTokenizer.readMerges(gzipped, "gz"))
    }

    private fun expectInvalid(data: ByteArray, vararg words: String) {
        try {
            ClipTokenizer.readMerges(data, "bad.txt")
            fail("accepted a broken merges file")
        } catch (expected: IllegalArgumentException) {
            for (word in words) assertTrue("'${expected.message}' should mention '$word'", expected.message!!.contains(word))
        }
    }

    @Test
    fun brokenFilesAreRejectedWithTheReason() {
        val lines = String(plain, Charsets.UTF_8).split('\n')
        expectInvalid((lines.take(1000).joinToString("\n") + "\n").toByteArray(), "999 merges")
        val badLine = lines.toMutableList()
        badLine[5] = "three symbols here"
        expectInvalid(badLine.joinToString("\n").toByteArray(), "line 6", "two symbols")
        expectInvalid(byteArrayOf(0x1f, 0x8b.toByte(), 1, 2, 3), "gzip")
        expectInvalid(byteArrayOf(0x61, 0x20, 0xff.toByte(), 0xfe.toByte()), "UTF-8")
        val buffer = ByteArrayOutputStream()
        GZIPOutputStream(buffer).use { it.write("#version: 0.2\n".toByteArray()) }
        expectInvalid(buffer.toByteArray(), "0 merges")
    }

    @Test
    fun missingFile() {
        try {
            ClipTokenizer.fromFile(File("/nonexistent/merges.txt"))
            fail("a missing file was read")
        } catch (expected: IOException) {
            assertTrue(expected.message!!.contains("not found"))
        }
    }

    @Test
    fun decodeInvertsEncode() {
        val tokenizer = Golden.tokenizer
        assertEquals("a photo of a cat , 4 k", tokenizer.decode(tokenizer.encode("A photo of a cat, 4k")))
        val padded = tokenizer.tokenize("café").ids
        assertEquals("café", tokenizer.decode(padded, skipSpecialTokens = true))
    }
}
