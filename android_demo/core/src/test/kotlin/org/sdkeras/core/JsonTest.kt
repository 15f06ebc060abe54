package org.sdkeras.core

import java.math.BigInteger
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesEveryKindOfValue() {
        val value = Json.parse(
            """ {"a": [1, -2, 3.5, 1e3, -0.25E-2, 18446744073709551615], "b": {"c": null, "d": true, "e": false},
               "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 x", "empty": [], "nested": [[{}]]} """
        ) as Map<*, *>
        assertEquals(listOf(1L, -2L, 3.5, 1000.0, -0.0025, BigInteger("18446744073709551615")), value["a"])
        val inner = value["b"] as Map<*, *>
        assertNull(inner["c"])
        assertEquals(true, inner["d"])
        assertEquals(false, inner["e"])
        assertEquals("q\"\\/\b\u000C\n\r\t\u00e9\uD83D\uDE00 x", value["s"])
        assertEquals(emptyList<Any?>(), value["empty"])
        assertEquals(listOf("a", "b", "s", "empty", "nested"), value.keys.toList())
    }

    @Test
    fun keepsLoneSurrogateEscapes() {
        assertEquals("\uD800x", Json.parse("\"\\ud800x\""))
    }

    @Test
    fun rejectsMalformedText() {
        for (text in listOf("", "{", "[1,]", "{\"a\" 1}", "01", "1.", "\"abc", "tru", "[1] 2", "{\"a\":1,\"a\":2}",
            "\"\\x\"", "\"a\u0001\"", "-", "{1: 2}")) {
            try {
                Json.parse(text)
                fail("accepted malformed JSON: $text")
            } catch (expected: JsonException) {
                assertTrue(expected.message!!.startsWith("JSON: "))
            }
        }
    }

    @Test
    fun errorsNameTheLineAndColumn() {
        try {
            Json.parse("{\n  \"a\": [1, 2,\n  ]\n}")
            fail("accepted a trailing comma")
        } catch (expected: JsonException) {
            assertTrue(expected.message, expected.message!!.contains("line 3"))
        }
    }

    @Test
    fun typedAccessNamesTheField() {
        val root = JsonObject.parse("{\"x\": {\"y\": \"text\"}}", "manifest")
        try {
            root.obj("x").int("y")
            fail("a string was read as an integer")
        } catch (expected: JsonException) {
            assertEquals("manifest.x.y must be an integer", expected.message)
        }
        try {
            root.obj("x").string("z")
            fail("a missing field was read")
        } catch (expected: JsonException) {
            assertEquals("manifest.x.z is missing", expected.message)
        }
    }
}
