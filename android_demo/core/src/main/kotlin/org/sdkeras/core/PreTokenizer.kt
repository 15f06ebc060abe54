package org.sdkeras.core

/**
 * Splits cleaned text into the pieces BPE encodes one by one, a port of `pre_tokenize` in `sd_keras/tokenizer.py`
 * (CLIP's regular expression, applied case-insensitively).
 *
 * At each position the first rule that applies takes the longest piece it can:
 * 1. the literal `<|startoftext|>` or `<|endoftext|>`;
 * 2. an apostrophe followed by `s`, `t`, `re`, `ve`, `m`, `ll` or `d`;
 * 3. a run of letters (category L*);
 * 4. one number character (category N*);
 * 5. a run of characters that are neither letters, numbers nor White_Space.
 *
 * White_Space separates pieces and is dropped. Two quirks follow from the case-insensitive matching: in rules 1
 * and 2, U+017F (long s) counts as `s`, and U+0345 (which case-folds to a letter) matches no rule and is dropped.
 *
 * Example:
 * ```
 * PreTokenizer.split("it's 1984, (masterpiece:1.2)")
 * // [it, 's, 1, 9, 8, 4, ",", (, masterpiece, :, 1, ., 2, )]
 * ```
 */
object PreTokenizer {
    private const val SKIPPED = -1
    private const val APOSTROPHE = 0x27
    private const val LONG_S = 0x17F
    private const val SMALL_S = 0x73
    private const val YPOGEGRAMMENI = 0x345

    private val SPECIAL_TOKENS = listOf(ClipTokenizer.START_OF_TEXT, ClipTokenizer.END_OF_TEXT).map { CodePoints.of(it) }
    private val CONTRACTIONS = listOf("s", "t", "re", "ve", "m", "ll", "d").map { CodePoints.of(it) }

    /** The pieces of [cleaned] (the output of [TextCleaner.clean]), in order. */
    fun split(cleaned: String): List<String> {
        val text = CodePoints.of(cleaned)
        val pieces = ArrayList<String>()
        var position = 0
        while (position < text.size) {
            val charClass = charClass(text[position])
            if (charClass == SKIPPED) {
                position++
                continue
            }
            var end = specialTokenEnd(text, position)
            if (end == 0) end = contractionEnd(text, position)
            if (end == 0) {
                end = position + 1
                if (charClass != UnicodeData.NUMBER) {
                    while (end < text.size && charClass(text[end]) == charClass) end++
                }
            }
            pieces.add(CodePoints.string(text, position, end))
            position = end
        }
        return pieces
    }

    private fun charClass(codePoint: Int): Int {
        if (codePoint == YPOGEGRAMMENI || UnicodeData.isWhiteSpace(codePoint)) return SKIPPED
        return UnicodeData.categoryClass(codePoint)
    }

    private fun folded(codePoint: Int) = if (codePoint == LONG_S) SMALL_S else codePoint

    /** Whether [text] from [start] spells [word] (long s read as s). */
    private fun spells(text: IntArray, start: Int, word: IntArray): Boolean {
        if (start + word.size > text.size) return false
        for (index in word.indices) if (folded(text[start + index]) != word[index]) return false
        return true
    }

    private fun specialTokenEnd(text: IntArray, position: Int): Int {
        for (token in SPECIAL_TOKENS) if (spells(text, position, token)) return position + token.size
        return 0
    }

    private fun contractionEnd(text: IntArray, position: Int): Int {
        if (text[position] != APOSTROPHE) return 0
        for (suffix in CONTRACTIONS) if (spells(text, position + 1, suffix)) return position + 1 + suffix.size
        return 0
    }
}
