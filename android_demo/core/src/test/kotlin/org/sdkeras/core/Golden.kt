package org.sdkeras.core

import java.io.File
import org.junit.Assert.fail

/**
 * Access to the golden vectors written by the Python library (`sd-keras golden`, export/golden.py) and to the CLIP
 * merges file of the repository.
 */
internal object Golden {
    /** Relative float tolerance: |actual - expected| <= TOLERANCE * max(1, |expected|). */
    const val TOLERANCE = 1e-5f

    fun load(name: String): JsonObject {
        val stream = Golden::class.java.getResourceAsStream("/golden/$name")
            ?: throw AssertionError("golden file /golden/$name is not on the test classpath")
        val text = stream.use { String(it.readBytes(), Charsets.UTF_8) }
        return JsonObject.parse(text, name)
    }

    /** CLIP's merges file: the `sdkeras.merges` system property, else sd_keras/assets/ found from the working dir up. */
    fun mergesFile(): File {
        val property = System.getProperty("sdkeras.merges")
        if (property != null) return File(property)
        var directory: File? = File(System.getProperty("user.dir")).absoluteFile
        while (directory != null) {
            val candidate = File(directory, "sd_keras/assets/bpe_simple_vocab_16e6.txt.gz")
            if (candidate.isFile) return candidate
            directory = directory.parentFile
        }
        throw AssertionError("CLIP merges file not found: set -Dsdkeras.merges=.../bpe_simple_vocab_16e6.txt.gz")
    }

    val tokenizer: ClipTokenizer by lazy { ClipTokenizer.fromFile(mergesFile()) }

    fun close(expected: Float, actual: Float, tolerance: Float = TOLERANCE): Boolean =
        Math.abs(actual - expected) <= tolerance * Math.max(1.0f, Math.abs(expected))

    /** Null if [actual] matches [expected] within the tolerance, else a description of the first mismatch. */
    fun compare(expected: FloatArray, actual: FloatArray, tolerance: Float = TOLERANCE): String? {
        if (expected.size != actual.size) return "size ${actual.size} != expected ${expected.size}"
        var mismatches = 0
        var first = -1
        for (index in expected.indices) {
            if (!close(expected[index], actual[index], tolerance)) {
                if (first < 0) first = index
                mismatches++
            }
        }
        if (mismatches == 0) return null
        return "$mismatches of ${expected.size} values differ; first at [$first]: ${actual[first]} != expected " +
            "${expected[first]}"
    }

    fun assertClose(what: String, expected: FloatArray, actual: FloatArray, tolerance: Float = TOLERANCE) {
        val problem = compare(expected, actual, tolerance)
        if (problem != null) fail("$what: $problem")
    }

    /** Fails listing every problem at once (a port bug usually shows in several cases). */
    fun assertNoProblems(problems: List<String>) {
        if (problems.isNotEmpty()) fail("${problems.size} mismatches:\n" + problems.take(40).joinToString("\n"))
    }

    fun schedule(json: JsonObject, predictionType: String = NoiseSchedule.EPSILON) = NoiseSchedule(
        json.int("num_train_timesteps"), json.double("beta_start"), json.double("beta_end"), predictionType,
        json.int("steps_offset")
    )
}
