package org.sdkeras.core

/**
 * CLIP's prompt normalization, a port of `clean_text` in `sd_keras/tokenizer.py`.
 *
 * HTML-unescape twice (Python's `html.unescape`, so `&amp;amp;` becomes `&`), collapse every run of White_Space
 * characters into one space, strip the ends (Python's `str.strip`, which also removes U+001C..U+001F), then
 * lowercase with Python's `str.lower` (final sigma included). No Unicode normalization happens.
 *
 * Example:
 * ```
 * TextCleaner.clean("  A &amp;amp; B\t\tC ")  // "a & b c"
 * ```
 */
object TextCleaner {
    private const val SPACE = 0x20

    /** The cleaned prompt; IllegalArgumentException if [text] is not valid Unicode (a lone surrogate). */
    fun clean(text: String): String = CodePoints.string(cleanCodePoints(CodePoints.of(text)))

    internal fun cleanCodePoints(text: IntArray): IntArray {
        val unescaped = HtmlUnescape.unescape(HtmlUnescape.unescape(text))
        val collapsed = IntArrayBuilder(unescaped.size)
        var previousWasSpace = false
        for (codePoint in unescaped) {
            if (UnicodeData.isWhiteSpace(codePoint)) {
                if (!previousWasSpace) collapsed.add(SPACE)
                previousWasSpace = true
            } else {
                collapsed.add(codePoint)
                previousWasSpace = false
            }
        }
        val spaced = collapsed.toArray()
        var start = 0
        var end = spaced.size
        while (start < end && UnicodeData.isPythonSpace(spaced[start])) start++
        while (end > start && UnicodeData.isPythonSpace(spaced[end - 1])) end--
        return UnicodeData.pythonLower(spaced.copyOfRange(start, end))
    }
}
