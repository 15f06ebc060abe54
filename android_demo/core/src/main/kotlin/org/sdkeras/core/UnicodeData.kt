package org.sdkeras.core

import java.io.BufferedReader
import java.io.InputStreamReader

/**
 * The Unicode facts the CLIP tokenizer depends on, exactly as the Python reference sees them.
 *
 * Java's and Android's `Character` tables follow their own Unicode versions (and Android's ICU differs again), so
 * the core does not use them: `unicode_data.txt`, written from Python's `unicodedata` by `sd-keras golden --tables`,
 * holds the general-category class of every code point, `str.lower`'s mappings, the Cased/Case_Ignorable
 * properties behind the final-sigma rule, `str.isspace` and CLIP's White_Space set. A prompt therefore gets the
 * same token ids on every phone as in Python.
 */
internal object UnicodeData {
    const val OTHER = 0
    const val LETTER = 1
    const val NUMBER = 2

    private const val CASED = 1
    private const val CASE_IGNORABLE = 2

    private const val CAPITAL_SIGMA = 0x3A3
    private const val SMALL_SIGMA = 0x3C3
    private const val FINAL_SIGMA = 0x3C2

    /** The Unicode version of the tables (the Python it was written from). */
    val version: String

    private val classStarts: IntArray
    private val classValues: IntArray
    private val caseStarts: IntArray
    private val caseValues: IntArray
    private val lowerMap = HashMap<Int, IntArray>()
    private val pythonSpace = HashSet<Int>()
    private val whiteSpace = HashSet<Int>()

    init {
        val stream = UnicodeData::class.java.getResourceAsStream("unicode_data.txt")
            ?: throw IllegalStateException("resource org/sdkeras/core/unicode_data.txt is missing from the core")
        var unicodeVersion: String? = null
        val classStartList = ArrayList<Int>()
        val classValueList = ArrayList<Int>()
        val caseStartList = ArrayList<Int>()
        val caseValueList = ArrayList<Int>()
        BufferedReader(InputStreamReader(stream, Charsets.UTF_8)).use { reader ->
            while (true) {
                val line = reader.readLine() ?: break
                if (line.length == 0 || line.startsWith("#")) continue
                val fields = line.split(' ')
                when (fields[0]) {
                    "unicode" -> unicodeVersion = fields[1]
                    "class" -> {
                        classStartList.add(fields[1].toInt(16))
                        classValueList.add(
                            when (fields[2]) {
                                "L" -> LETTER
                                "N" -> NUMBER
                                else -> OTHER // "O", and "S" (surrogates never reach the tokenizer)
                            }
                        )
                    }
                    "case" -> {
                        caseStartList.add(fields[1].toInt(16))
                        caseValueList.add(
                            when (fields[2]) {
                                "C" -> CASED
                                "I" -> CASE_IGNORABLE
                                else -> 0
                            }
                        )
                    }
                    "lower" -> {
                        val mapped = IntArray(fields.size - 2)
                        for (index in mapped.indices) mapped[index] = fields[index + 2].toInt(16)
                        lowerMap[fields[1].toInt(16)] = mapped
                    }
                    "isspace" -> for (index in 1 until fields.size) pythonSpace.add(fields[index].toInt(16))
                    "white_space" -> for (index in 1 until fields.size) whiteSpace.add(fields[index].toInt(16))
                    else -> throw IllegalStateException("unicode_data.txt: unknown line \"$line\"")
                }
            }
        }
        version = unicodeVersion ?: throw IllegalStateException("unicode_data.txt has no version line")
        classStarts = classStartList.toIntArray()
        classValues = classValueList.toIntArray()
        caseStarts = caseStartList.toIntArray()
        caseValues = caseValueList.toIntArray()
        if (classStarts.isEmpty() || classStarts[0] != 0 || caseStarts.isEmpty() || caseStarts[0] != 0) {
            throw IllegalStateException("unicode_data.txt: the class and case runs must start at code point 0")
        }
    }

    private fun lookup(starts: IntArray, values: IntArray, codePoint: Int): Int {
        // the last run whose start is <= codePoint
        var low = 0
        var high = starts.size - 1
        while (low < high) {
            val middle = (low + high + 1) ushr 1
            if (starts[middle] <= codePoint) low = middle else high = middle - 1
        }
        return values[low]
    }

    /** [LETTER] (category L*), [NUMBER] (N*) or [OTHER] (everything else, unassigned code points included). */
    fun categoryClass(codePoint: Int): Int = lookup(classStarts, classValues, codePoint)

    /** Python's `str.isspace`: what `str.strip` removes (CLIP's White_Space plus U+001C..U+001F). */
    fun isPythonSpace(codePoint: Int): Boolean = codePoint in pythonSpace

    /** CLIP's `\s`: Unicode White_Space. */
    fun isWhiteSpace(codePoint: Int): Boolean = codePoint in whiteSpace

    private fun isCaseIgnorable(codePoint: Int) = lookup(caseStarts, caseValues, codePoint) == CASE_IGNORABLE

    private fun isCased(codePoint: Int) = lookup(caseStarts, caseValues, codePoint) == CASED

    /**
     * Python's `str.lower`: the full lowercase mapping of each code point (U+0130 becomes two), and U+03A3 becomes
     * final sigma U+03C2 where a cased letter precedes it and none follows (case-ignorable characters skipped),
     * as CPython decides it.
     */
    fun pythonLower(text: IntArray): IntArray {
        val result = IntArrayBuilder(text.size)
        for (index in text.indices) {
            val codePoint = text[index]
            if (codePoint == CAPITAL_SIGMA) {
                result.add(if (isFinalSigma(text, index)) FINAL_SIGMA else SMALL_SIGMA)
                continue
            }
            val mapped = lowerMap[codePoint]
            if (mapped == null) result.add(codePoint) else result.addAll(mapped)
        }
        return result.toArray()
    }

    private fun isFinalSigma(text: IntArray, index: Int): Boolean {
        var before = index - 1
        while (before >= 0 && isCaseIgnorable(text[before])) before--
        if (before < 0 || !isCased(text[before])) return false
        var after = index + 1
        while (after < text.size && isCaseIgnorable(text[after])) after++
        return after == text.size || !isCased(text[after])
    }
}

/** A growable int array (code points, token ids) without boxing. */
internal class IntArrayBuilder(capacity: Int = 16) {
    private var data = IntArray(maxOf(capacity, 4))
    var size = 0
        private set

    fun add(value: Int) {
        if (size == data.size) data = data.copyOf(data.size * 2)
        data[size++] = value
    }

    fun addAll(values: IntArray) {
        for (value in values) add(value)
    }

    operator fun get(index: Int): Int {
        if (index < 0 || index >= size) throw IndexOutOfBoundsException("index $index, size $size")
        return data[index]
    }

    fun toArray(): IntArray = data.copyOf(size)
}
