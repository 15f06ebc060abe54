package org.sdkeras.core

/**
 * Strings as arrays of Unicode code points, the unit Python's `str` indexes by (a Kotlin `String` indexes UTF-16
 * units, where an emoji is two).
 */
internal object CodePoints {
    /**
     * The code points of [text]; IllegalArgumentException for a lone surrogate, which is not valid Unicode text
     * (Python's tokenizer rejects it the same way).
     */
    fun of(text: String): IntArray {
        val result = IntArrayBuilder(text.length)
        var index = 0
        while (index < text.length) {
            val char = text[index]
            if (Character.isHighSurrogate(char) && index + 1 < text.length && Character.isLowSurrogate(text[index + 1])) {
                result.add(Character.toCodePoint(char, text[index + 1]))
                index += 2
                continue
            }
            if (Character.isSurrogate(char)) {
                val unit = "%04X".format(text.codePointAt(index))
                throw IllegalArgumentException(
                    "text has a lone surrogate U+$unit at index ${result.size}; it is not valid Unicode text"
                )
            }
            result.add(text.codePointAt(index))
            index++
        }
        return result.toArray()
    }

    fun string(codePoints: IntArray, from: Int = 0, to: Int = codePoints.size): String {
        val builder = StringBuilder(to - from)
        for (index in from until to) builder.appendCodePoint(codePoints[index])
        return builder.toString()
    }
}
