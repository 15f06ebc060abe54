package org.sdkeras.core

import java.io.ByteArrayInputStream
import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import java.util.zip.GZIPInputStream

/**
 * A prompt's padded token ids and what truncation did to it.
 *
 * @property ids `contextLength` ids: start token, content tokens, end token, padding.
 * @property numTokens content tokens before truncation (no start/end).
 * @property truncated whether content tokens were dropped to fit.
 * @property droppedText the dropped tail, decoded (empty unless truncated), for a message to the user.
 */
class TokenizedPrompt(val ids: IntArray, val numTokens: Int, val truncated: Boolean, val droppedText: String)

/**
 * CLIP's byte-pair-encoding tokenizer with Stable Diffusion's padding to 77 ids: a port of
 * `sd_keras/tokenizer.py` that gives the same ids on every input (checked against golden vectors written by the
 * Python library).
 *
 * Steps: [TextCleaner.clean], [PreTokenizer.split], each piece's UTF-8 bytes mapped to printable characters with
 * `</w>` on the last, then BPE with the merges file (the earliest-learned adjacent pair merges first).
 *
 * Example:
 * ```
 * val tokenizer = ClipTokenizer.fromFile(File(bundleDir, "merges.txt"))
 * tokenizer.encode("a photo of a cat")              // [320, 1125, 539, 320, 2368]
 * tokenizer.tokenize("a cat").ids.take(4)           // [49406, 320, 2368, 49407]
 * ```
 */
class ClipTokenizer private constructor(
    private val merges: List<Pair<String, String>>,
    val contextLength: Int,
    val padId: Int
) {
    private val mergeRanks = HashMap<String, Int>(merges.size * 2)
    private val tokenToId = HashMap<String, Int>(VOCAB_SIZE * 2)
    private val idToToken = ArrayList<String>(VOCAB_SIZE)
    private val byteToChar = bytesToUnicode()
    private val charToByte = HashMap<Char, Int>()
    private val cache = HashMap<String, IntArray>()

    init {
        require(contextLength >= 2) { "contextLength must be >= 2 (start + end token), got $contextLength" }
        checkId(padId, "padId")
        for ((rank, merge) in merges.withIndex()) mergeRanks[merge.first + " " + merge.second] = rank
        for ((byte, char) in byteToChar.withIndex()) charToByte[char] = byte
        // vocabulary order: byte characters in table order, the same with </w>, the merges, the two specials
        val byteChars = vocabularyByteOrder().map { byteToChar[it].toString() }
        idToToken.addAll(byteChars)
        for (char in byteChars) idToToken.add(char + END_OF_WORD)
        for (merge in merges) idToToken.add(merge.first + merge.second)
        idToToken.add(START_OF_TEXT)
        idToToken.add(END_OF_TEXT)
        for ((id, token) in idToToken.withIndex()) tokenToId[token] = id
        if (tokenToId.size != VOCAB_SIZE) {
            throw IllegalArgumentException(
                "CLIP merges yield ${VOCAB_SIZE - tokenToId.size} duplicate vocabulary entries; not CLIP's merges file"
            )
        }
    }

    /** Content token ids of [text]: no start/end token, no length limit. */
    fun encode(text: String): IntArray {
        val cleaned = CodePoints.string(TextCleaner.cleanCodePoints(CodePoints.of(text)))
        val ids = IntArrayBuilder()
        for (piece in PreTokenizer.split(cleaned)) ids.addAll(encodePiece(piece))
        return ids.toArray()
    }

    /**
     * The [contextLength] ids the text encoder reads: `[49406, content..., 49407, pad...]`. A prompt with more than
     * `contextLength - 2` content tokens keeps the first ones (the result says so, as Python warns).
     */
    fun tokenize(text: String, padId: Int = this.padId): TokenizedPrompt {
        checkId(padId, "padId")
        val content = encode(text)
        val capacity = contextLength - 2
        val kept = minOf(content.size, capacity)
        val ids = IntArray(contextLength) { padId }
        ids[0] = START_ID
        for (index in 0 until kept) ids[index + 1] = content[index]
        ids[kept + 1] = END_ID
        val truncated = content.size > capacity
        val dropped = if (truncated) decode(content.copyOfRange(capacity, content.size)) else ""
        return TokenizedPrompt(ids, content.size, truncated, dropped)
    }

    /**
     * Text of token ids, the inverse of [encode] up to cleanup and spacing (each end-of-word marker becomes a
     * space). Bytes that are not valid UTF-8 become U+FFFD.
     */
    fun decode(ids: IntArray, skipSpecialTokens: Boolean = false): String {
        val joined = StringBuilder()
        for (id in ids) {
            checkId(id, "token id")
            if (skipSpecialTokens && (id == START_ID || id == END_ID)) continue
            joined.append(idToToken[id])
        }
        val bytes = ByteArray(joined.length)
        for (index in 0 until joined.length) {
            // every vocabulary token, the special ones included, is spelled in byte characters
            bytes[index] = (charToByte[joined[index]] ?: throw IllegalStateException("not a byte character")).toByte()
        }
        val text = String(bytes, Charsets.UTF_8).replace(END_OF_WORD, " ")
        val codePoints = CodePoints.of(text)
        var start = 0
        var end = codePoints.size
        while (start < end && UnicodeData.isPythonSpace(codePoints[start])) start++
        while (end > start && UnicodeData.isPythonSpace(codePoints[end - 1])) end--
        return CodePoints.string(codePoints, start, end)
    }

    private fun checkId(id: Int, name: String) {
        if (id < 0 || id >= VOCAB_SIZE) {
            throw IllegalArgumentException("$name $id is outside the CLIP vocabulary (0 .. ${VOCAB_SIZE - 1})")
        }
    }

    private fun encodePiece(piece: String): IntArray {
        if (piece == START_OF_TEXT) return intArrayOf(START_ID)
        if (piece == END_OF_TEXT) return intArrayOf(END_ID)
        cache[piece]?.let { return it }
        val bytes = piece.toByteArray(Charsets.UTF_8)
        val word = CharArray(bytes.size)
        for (index in bytes.indices) word[index] = byteToChar[bytes[index].toInt() and 0xFF]
        val symbols = bpe(word)
        val ids = IntArray(symbols.size)
        for (index in symbols.indices) {
            ids[index] = tokenToId[symbols[index]] ?: throw IllegalStateException("BPE symbol not in the vocabulary")
        }
        // The cache only bounds repeated work; clearing it all keeps it simple and memory-bounded.
        if (cache.size >= CACHE_LIMIT) cache.clear()
        cache[piece] = ids
        return ids
    }

    private fun bpe(word: CharArray): List<String> {
        var symbols = ArrayList<String>(word.size)
        for (index in 0 until word.size - 1) symbols.add(word[index].toString())
        symbols.add(word[word.size - 1].toString() + END_OF_WORD)
        while (symbols.size > 1) {
            var bestRank = NUM_MERGES
            var bestIndex = -1
            for (index in 0 until symbols.size - 1) {
                val rank = mergeRanks[symbols[index] + " " + symbols[index + 1]] ?: continue
                if (rank < bestRank) {
                    bestRank = rank
                    bestIndex = index
                }
            }
            if (bestIndex < 0) break
            val first = symbols[bestIndex]
            val second = symbols[bestIndex + 1]
            val merged = ArrayList<String>(symbols.size)
            var index = 0
            while (index < symbols.size) {
                if (index + 1 < symbols.size && symbols[index] == first && symbols[index + 1] == second) {
                    merged.add(first + second)
                    index += 2
                } else {
                    merged.add(symbols[index])
                    index++
                }
            }
            symbols = merged
        }
        return symbols
    }

    companion object {
        const val START_ID = 49406
        const val END_ID = 49407
        const val VOCAB_SIZE = 49408
        const val NUM_MERGES = 48894
        const val CONTEXT_LENGTH = 77
        const val START_OF_TEXT = "<|startoftext|>"
        const val END_OF_TEXT = "<|endoftext|>"
        private const val END_OF_WORD = "</w>"
        private const val CACHE_LIMIT = 50000

        /**
         * A tokenizer from a merges file: CLIP's `bpe_simple_vocab_16e6.txt.gz` or a bundle's plain `merges.txt`.
         *
         * @throws IOException the file cannot be read.
         * @throws IllegalArgumentException the file is not a valid merges file (the message says why).
         */
        @JvmStatic
        fun fromFile(file: File, contextLength: Int = CONTEXT_LENGTH, padId: Int = END_ID): ClipTokenizer {
            if (!file.isFile) throw IOException("CLIP merges file not found: $file")
            return ClipTokenizer(readMerges(file.readBytes(), file.path), contextLength, padId)
        }

        /** A tokenizer from the bytes of a merges file (gzip or plain); [source] names it in error messages. */
        @JvmStatic
        fun fromBytes(data: ByteArray, source: String, contextLength: Int = CONTEXT_LENGTH, padId: Int = END_ID) =
            ClipTokenizer(readMerges(data, source), contextLength, padId)

        /**
         * The first 48894 merges of a merges file, gzip-compressed or plain UTF-8: one merge per line, two symbols
         * separated by one space, an optional first line containing `#version`.
         */
        @JvmStatic
        fun readMerges(data: ByteArray, source: String): List<Pair<String, String>> {
            var raw = data
            if (raw.size >= 2 && raw[0] == 0x1f.toByte() && raw[1] == 0x8b.toByte()) {
                raw = try {
                    GZIPInputStream(ByteArrayInputStream(raw)).use { it.readBytes() }
                } catch (error: IOException) {
                    throw IllegalArgumentException("CLIP merges file $source is not a valid gzip file: ${error.message}")
                }
            }
            val text = try {
                Charsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(raw)).toString()
            } catch (error: CharacterCodingException) {
                throw IllegalArgumentException("CLIP merges file $source is not UTF-8 text: $error")
            }
            var lines = text.split('\n')
            var firstLineNumber = 1
            if (lines.isNotEmpty() && lines[0].contains("#version")) {
                lines = lines.subList(1, lines.size)
                firstLineNumber = 2
            }
            val merges = ArrayList<Pair<String, String>>(NUM_MERGES)
            for ((offset, line) in lines.take(NUM_MERGES).withIndex()) {
                if (line.isBlank()) break // the end of the merges; the count check below reports missing ones
                val symbols = line.trimEnd('\r').split(' ')
                if (symbols.size != 2 || symbols[0].length == 0 || symbols[1].length == 0) {
                    throw IllegalArgumentException(
                        "CLIP merges file $source, line ${firstLineNumber + offset}: expected two symbols " +
                            "separated by one space, got \"$line\""
                    )
                }
                merges.add(Pair(symbols[0], symbols[1]))
            }
            if (merges.size != NUM_MERGES) {
                throw IllegalArgumentException(
                    "CLIP merges file $source has ${merges.size} merges; CLIP's vocabulary needs $NUM_MERGES"
                )
            }
            return merges
        }

        /**
         * Map each byte 0..255 to the character standing for it in BPE symbols: the 188 printable Latin-1 bytes
         * stand for themselves, the other 68 (controls, space, U+00AD) for U+0100, U+0101, ... in byte order.
         */
        internal fun bytesToUnicode(): CharArray {
            val table = CharArray(256)
            var next = 0x100
            for (byte in 0 until 256) {
                table[byte] = if (isPrintable(byte)) byte.toChar() else (next++).toChar()
            }
            return table
        }

        private fun isPrintable(byte: Int) = byte in 0x21..0x7E || byte in 0xA1..0xAC || byte in 0xAE..0xFF

        // The vocabulary lists the byte characters printable bytes first (in byte order), then the remapped ones.
        private fun vocabularyByteOrder(): List<Int> =
            (0 until 256).filter { isPrintable(it) } + (0 until 256).filter { !isPrintable(it) }
    }
}
