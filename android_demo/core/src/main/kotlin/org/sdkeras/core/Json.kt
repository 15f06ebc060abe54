package org.sdkeras.core

import java.math.BigInteger

/** Malformed JSON text, or a JSON value that is not what a reader expected; the message names where. */
class JsonException(message: String) : IllegalArgumentException(message)

/**
 * A small JSON reader (RFC 8259) for bundle manifests and golden files, so the core needs no library.
 *
 * Values come back as plain Kotlin objects: objects as `Map<String, Any?>` (key order kept), arrays as `List<Any?>`,
 * strings as `String`, `true`/`false` as `Boolean`, `null` as `null`, and numbers as `Long` (integers that fit),
 * `BigInteger` (larger integers, e.g. 64-bit unsigned seeds) or `Double` (anything with a fraction or exponent).
 *
 * Example:
 * ```
 * val manifest = Json.parse("""{"format_version": 1, "image_size": [128, 128]}""") as Map<*, *>
 * manifest["image_size"]  // [128, 128] (Longs)
 * ```
 */
object Json {
    /** Parse [text] holding exactly one JSON value (whitespace around it is allowed). */
    fun parse(text: String): Any? {
        val reader = Reader(text)
        reader.skipWhitespace()
        val value = reader.readValue(0)
        reader.skipWhitespace()
        if (!reader.atEnd()) reader.fail("unexpected text after the JSON value")
        return value
    }

    private const val MAX_DEPTH = 512

    private class Reader(private val text: String) {
        private var position = 0

        fun atEnd() = position >= text.length

        fun fail(message: String): Nothing {
            var line = 1
            var column = 1
            for (index in 0 until minOf(position, text.length)) {
                if (text[index] == '\n') {
                    line++
                    column = 1
                } else {
                    column++
                }
            }
            throw JsonException("JSON: $message at line $line, column $column")
        }

        fun skipWhitespace() {
            while (position < text.length) {
                val char = text[position]
                if (char == ' ' || char == '\t' || char == '\n' || char == '\r') position++ else return
            }
        }

        fun readValue(depth: Int): Any? {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH")
            if (atEnd()) fail("a value is missing")
            return when (text[position]) {
                '{' -> readObject(depth)
                '[' -> readArray(depth)
                '"' -> readString()
                't' -> readLiteral("true", true)
                'f' -> readLiteral("false", false)
                'n' -> readLiteral("null", null)
                else -> readNumber()
            }
        }

        private fun readLiteral(word: String, value: Any?): Any? {
            if (!text.startsWith(word, position)) fail("unknown literal")
            position += word.length
            return value
        }

        private fun expect(char: Char) {
            if (atEnd() || text[position] != char) fail("expected '$char'")
            position++
        }

        private fun readObject(depth: Int): Map<String, Any?> {
            expect('{')
            val result = LinkedHashMap<String, Any?>()
            skipWhitespace()
            if (!atEnd() && text[position] == '}') {
                position++
                return result
            }
            while (true) {
                skipWhitespace()
                if (atEnd() || text[position] != '"') fail("expected a string key")
                val key = readString()
                skipWhitespace()
                expect(':')
                skipWhitespace()
                if (result.containsKey(key)) fail("duplicate key \"$key\"")
                result[key] = readValue(depth + 1)
                skipWhitespace()
                if (atEnd()) fail("unterminated object")
                val char = text[position++]
                if (char == '}') return result
                if (char != ',') {
                    position--
                    fail("expected ',' or '}'")
                }
            }
        }

        private fun readArray(depth: Int): List<Any?> {
            expect('[')
            val result = ArrayList<Any?>()
            skipWhitespace()
            if (!atEnd() && text[position] == ']') {
                position++
                return result
            }
            while (true) {
                skipWhitespace()
                result.add(readValue(depth + 1))
                skipWhitespace()
                if (atEnd()) fail("unterminated array")
                val char = text[position++]
                if (char == ']') return result
                if (char != ',') {
                    position--
                    fail("expected ',' or ']'")
                }
            }
        }

        private fun readString(): String {
            expect('"')
            val builder = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val char = text[position++]
                when {
                    char == '"' -> return builder.toString()
                    char == '\\' -> {
                        if (atEnd()) fail("unterminated escape")
                        when (val escaped = text[position++]) {
                            '"', '\\', '/' -> builder.append(escaped)
                            'b' -> builder.append('\b')
                            'f' -> builder.append('\u000C')
                            'n' -> builder.append('\n')
                            'r' -> builder.append('\r')
                            't' -> builder.append('\t')
                            // Escaped surrogates are copied as they are: a pair forms one character again and a
                            // lone one stays lone (Python writes those for strings that are not valid Unicode).
                            'u' -> {
                                if (position + 4 > text.length) fail("short \\u escape")
                                val hex = text.substring(position, position + 4)
                                val value = hexValue(hex) ?: fail("bad \\u escape \"$hex\"")
                                builder.append(value.toChar())
                                position += 4
                            }
                            else -> {
                                position--
                                fail("unknown escape '\\$escaped'")
                            }
                        }
                    }
                    char < ' ' -> {
                        position--
                        fail("control character in a string")
                    }
                    else -> builder.append(char)
                }
            }
        }

        private fun hexValue(hex: String): Int? {
            var value = 0
            for (char in hex) {
                val digit = Character.digit(char, 16)
                if (digit < 0) return null
                value = value * 16 + digit
            }
            return value
        }

        private fun readNumber(): Any {
            val start = position
            if (position < text.length && text[position] == '-') position++
            val integerStart = position
            while (position < text.length && text[position] in '0'..'9') position++
            if (position == integerStart) fail("unexpected character '${text[start]}'")
            if (text[integerStart] == '0' && position - integerStart > 1) fail("leading zero in a number")
            var integral = true
            if (position < text.length && text[position] == '.') {
                integral = false
                position++
                val fractionStart = position
                while (position < text.length && text[position] in '0'..'9') position++
                if (position == fractionStart) fail("digits expected after '.'")
            }
            if (position < text.length && (text[position] == 'e' || text[position] == 'E')) {
                integral = false
                position++
                if (position < text.length && (text[position] == '+' || text[position] == '-')) position++
                val exponentStart = position
                while (position < text.length && text[position] in '0'..'9') position++
                if (position == exponentStart) fail("digits expected in the exponent")
            }
            val literal = text.substring(start, position)
            if (!integral) return literal.toDouble()
            val big = BigInteger(literal)
            return if (big.bitLength() < 64) big.toLong() else big
        }
    }
}
