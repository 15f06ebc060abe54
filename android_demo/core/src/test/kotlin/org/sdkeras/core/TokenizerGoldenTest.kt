package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The tokenizer port against sd_keras.tokenizer on every prompt of the golden file (exact ids). */
class TokenizerGoldenTest {
    private val golden = Golden.load("tokenizer.json")

    @Test
    fun unicodeTablesMatchThePythonThatWroteTheGoldenFile() {
        assertEquals(golden.string("unidata_version"), UnicodeData.version)
    }

    @Test
    fun cleanTextMatchesPython() {
        val problems = ArrayList<String>()
        for (prompt in golden.objects("prompts")) {
            val actual = TextCleaner.clean(prompt.string("text"))
            if (actual != prompt.string("clean")) {
                problems.add("${prompt.path} (${prompt.string("note")}): clean ${quote(actual)} != ${quote(prompt.string("clean"))}")
            }
        }
        Golden.assertNoProblems(problems)
    }

    @Test
    fun preTokenizeMatchesPython() {
        val problems = ArrayList<String>()
        for (prompt in golden.objects("prompts")) {
            val actual = PreTokenizer.split(prompt.string("clean"))
            val expected = prompt.strings("pieces")
            if (actual != expected) {
                problems.add("${prompt.path} (${prompt.string("note")}): pieces ${actual.map { quote(it) }} != ${expected.map { quote(it) }}")
            }
        }
        Golden.assertNoProblems(problems)
    }

    @Test
    fun encodeMatchesPythonOnEveryPrompt() {
        val problems = ArrayList<String>()
        val prompts = golden.objects("prompts")
        assertTrue("the golden file lists prompts", prompts.size >= 100)
        for (prompt in prompts) {
            val actual = Golden.tokenizer.encode(prompt.string("text"))
            val expected = prompt.ints("ids")
            if (!actual.contentEquals(expected)) {
                problems.add("${prompt.path} (${prompt.string("note")}) ${quote(prompt.string("text"))}: " +
                    "${actual.toList()} != ${expected.toList()}")
            }
        }
        Golden.assertNoProblems(problems)
    }

    @Test
    fun paddingAndTruncationMatchPython() {
        val tokenizer = Golden.tokenizer
        val capacity = golden.int("context_length") - 2
        var truncatedSeen = 0
        for (prompt in golden.objects("prompts")) {
            val text = prompt.string("text")
            val result = tokenizer.tokenize(text)
            assertEquals("${prompt.path} num_tokens", prompt.int("num_tokens"), result.numTokens)
            assertEquals("${prompt.path} truncated", prompt.boolean("truncated"), result.truncated)
            // the documented layout, from the content ids
            val ids = prompt.ints("ids")
            val kept = minOf(ids.size, capacity)
            val layout = IntArray(capacity + 2) { ClipTokenizer.END_ID }
            layout[0] = ClipTokenizer.START_ID
            for (index in 0 until kept) layout[index + 1] = ids[index]
            assertEquals("${prompt.path} padded", layout.toList(), result.ids.toList())
            if (prompt.has("padded")) {
                assertEquals("${prompt.path} padded", prompt.ints("padded").toList(), result.ids.toList())
                assertEquals("${prompt.path} padded_pad0", prompt.ints("padded_pad0").toList(),
                    tokenizer.tokenize(text, padId = 0).ids.toList())
            }
            if (result.truncated) {
                truncatedSeen++
                assertTrue("${prompt.path}: the dropped text is reported", result.droppedText.length > 0)
            }
        }
        assertTrue("the golden file has a truncated prompt", truncatedSeen > 0)
    }

    @Test
    fun rejectsWhatPythonRejects() {
        for (case in golden.objects("errors")) {
            try {
                Golden.tokenizer.encode(case.string("text"))
                fail("${case.path}: accepted ${case.string("reason")}")
            } catch (expected: IllegalArgumentException) {
                // Python raises ValueError for the same text
            }
        }
    }

    private fun quote(text: String): String {
        val builder = StringBuilder("\"")
        for (codePoint in CodePoints.of(text)) {
            if (codePoint in 0x20..0x7E) builder.appendCodePoint(codePoint) else builder.append("\\u{%X}".format(codePoint))
        }
        return builder.append('"').toString()
    }
}
