package org.sdkeras.core

import java.io.BufferedReader
import java.io.InputStreamReader
import java.math.BigInteger

/**
 * Python's `html.unescape` on code points: HTML5 named references (all 2231 of `html.entities.html5`, legacy ones
 * without ';', longest-prefix matching), decimal and hex numeric references with the HTML5 fix-ups for invalid
 * numbers. The tables come from `html_entities.txt`, written from Python by `sd-keras golden --tables`.
 *
 * The scanner follows Python's pattern `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` left to right.
 */
internal object HtmlUnescape {
    private const val AMPERSAND = 0x26 // '&'
    private const val HASH = 0x23 // '#'
    private const val SEMICOLON = 0x3B // ';'
    private const val LOWER_X = 0x78
    private const val UPPER_X = 0x58
    private const val REPLACEMENT = 0xFFFD

    // Python refuses to convert decimal strings longer than this (sys.get_int_max_str_digits()).
    private const val MAX_DECIMAL_DIGITS = 4300

    private val entities = HashMap<String, IntArray>()
    private val charrefs = HashMap<Int, IntArray>()
    private val dropped = HashSet<Int>()

    init {
        val stream = HtmlUnescape::class.java.getResourceAsStream("html_entities.txt")
            ?: throw IllegalStateException("resource org/sdkeras/core/html_entities.txt is missing from the core")
        BufferedReader(InputStreamReader(stream, Charsets.UTF_8)).use { reader ->
            while (true) {
                val line = reader.readLine() ?: break
                if (line.length == 0 || line.startsWith("#")) continue
                val fields = line.split(' ')
                when (fields[0]) {
                    "entity" -> entities[fields[1]] = hexList(fields, 2)
                    "charref" -> charrefs[fields[1].toInt(16)] = hexList(fields, 2)
                    "dropped" -> for (value in hexList(fields, 1)) dropped.add(value)
                    else -> throw IllegalStateException("html_entities.txt: unknown line \"$line\"")
                }
            }
        }
    }

    private fun hexList(fields: List<String>, from: Int): IntArray {
        val result = IntArray(fields.size - from)
        for (index in result.indices) result[index] = fields[index + from].toInt(16)
        return result
    }

    /** Replace every character reference in [text] as `html.unescape` does. */
    fun unescape(text: IntArray): IntArray {
        if (AMPERSAND !in text) return text
        val result = IntArrayBuilder(text.size)
        var index = 0
        while (index < text.size) {
            val codePoint = text[index]
            if (codePoint != AMPERSAND) {
                result.add(codePoint)
                index++
                continue
            }
            val end = referenceEnd(text, index + 1)
            if (end < 0) {
                result.add(codePoint)
                index++
                continue
            }
            result.addAll(replacement(text, index + 1, end))
            index = end
        }
        return result.toArray()
    }

    private fun isDigit(codePoint: Int) = codePoint in 0x30..0x39

    private fun isHexDigit(codePoint: Int) = isDigit(codePoint) || codePoint in 0x61..0x66 || codePoint in 0x41..0x46

    private fun endsName(codePoint: Int) = when (codePoint) {
        0x09, 0x0A, 0x0C, 0x20, AMPERSAND, HASH, SEMICOLON -> true // tab, newline, form feed, space, & # ;
        else -> false
    }

    /** End (exclusive) of the reference whose body starts at [start] (after '&'), or -1 if none matches. */
    private fun referenceEnd(text: IntArray, start: Int): Int {
        var position = start
        if (position < text.size && text[position] == HASH) {
            position++
            var hex = false
            if (position < text.size && (text[position] == LOWER_X || text[position] == UPPER_X)) {
                // "#x" + hex digits; if none follow, "#" + decimal digits cannot match either ('x' is no digit)
                hex = true
                position++
            }
            val digitsStart = position
            while (position < text.size && (if (hex) isHexDigit(text[position]) else isDigit(text[position]))) position++
            if (position == digitsStart) return -1
        } else {
            while (position < text.size && position - start < 32 && !endsName(text[position])) position++
            if (position == start) return -1
        }
        if (position < text.size && text[position] == SEMICOLON) position++
        return position
    }

    private fun replacement(text: IntArray, start: Int, end: Int): IntArray {
        if (text[start] == HASH) return numericReplacement(text, start + 1, end)
        val name = CodePoints.string(text, start, end)
        entities[name]?.let { return it }
        // the longest name (at least two characters) that starts the reference; the rest stays as text
        var length = end - start - 1
        while (length > 1) {
            val value = entities[CodePoints.string(text, start, start + length)]
            if (value != null) {
                val result = IntArrayBuilder(value.size + end - start - length)
                result.addAll(value)
                for (index in start + length until end) result.add(text[index])
                return result.toArray()
            }
            length--
        }
        val result = IntArrayBuilder(end - start + 1)
        result.add(AMPERSAND)
        for (index in start until end) result.add(text[index])
        return result.toArray()
    }

    private fun numericReplacement(text: IntArray, start: Int, end: Int): IntArray {
        var digitsStart = start
        val radix = if (text[start] == LOWER_X || text[start] == UPPER_X) 16 else 10
        if (radix == 16) digitsStart++
        var digitsEnd = end
        if (text[digitsEnd - 1] == SEMICOLON) digitsEnd--
        val digits = CodePoints.string(text, digitsStart, digitsEnd)
        if (radix == 10 && digits.length > MAX_DECIMAL_DIGITS) {
            throw IllegalArgumentException(
                "Exceeds the limit ($MAX_DECIMAL_DIGITS digits) for integer string conversion: value has " +
                    "${digits.length} digits (a numeric character reference in the text)"
            )
        }
        val big = BigInteger(digits, radix)
        val number = if (big.bitLength() > 31) Int.MAX_VALUE else big.toInt()
        charrefs[number]?.let { return it }
        if (number in 0xD800..0xDFFF || number > 0x10FFFF) return intArrayOf(REPLACEMENT)
        if (number in dropped) return IntArray(0)
        return intArrayOf(number)
    }
}
