package org.sdkeras.core

import java.math.BigInteger
import org.junit.Assert.assertEquals
import org.junit.Test

/** The seeded noise against sd_keras.noise, including negative seeds and seeds >= 2^63 (taken modulo 2^64). */
class SeedNoiseGoldenTest {
    private val golden = Golden.load("noise.json")

    private fun seedOf(value: Any?): Long = when (value) {
        is Long -> value
        is BigInteger -> value.toLong() // the low 64 bits: Python's seed modulo 2^64
        is String -> BigInteger(value).toLong()
        else -> throw AssertionError("bad seed $value")
    }

    @Test
    fun splitMix64OutputsAreThePythonOnes() {
        val streams = golden.obj("splitmix64")
        for (seedText in streams.map.keys) {
            val expected = streams.list(seedText).map { BigInteger(it.toString()) }
            val actual = SeedNoise.splitMix64(seedOf(seedText), expected.size).map {
                BigInteger(java.lang.Long.toUnsignedString(it))
            }
            assertEquals("seed $seedText", expected, actual)
        }
    }

    @Test
    fun gaussianValuesMatchPython() {
        for (case in golden.objects("gaussian")) {
            val expected = case.floats("values")
            val seed = seedOf(case.map["seed"])
            Golden.assertClose("seed ${case.map["seed"]}", expected, SeedNoise.gaussian(seed, expected.size))
        }
    }

    @Test
    fun latentNoiseOfABatchMatchesPython() {
        val case = golden.obj("latent_noise")
        val shape = case.ints("shape")
        val size = shape[0] * shape[1] * shape[2]
        val (initial, extra) = SeedNoise.latentNoise(case.long("seed"), case.int("batch"), size, case.int("extra_draws"))
        Golden.assertClose("initial", case.floats("initial"), initial)
        Golden.assertClose("extra", case.floats("extra"), extra)
    }

    @Test
    fun randomSeedsStayInPythonsRange() {
        for (trial in 0 until 100) {
            val seed = SeedNoise.randomSeed()
            assertEquals(true, seed >= 0 && seed < 4294967295L)
        }
    }
}
