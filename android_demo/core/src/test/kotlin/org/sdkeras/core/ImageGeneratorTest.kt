package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The step-wise generation contract: inputs, previews, cancelling, errors. */
class ImageGeneratorTest {
    private val config = GeneratorConfig(16, 16, 2, 2, 4, 32, NoiseSchedule())

    private class ZeroTextEncoder : TextEncoder {
        val seen = ArrayList<IntArray>()
        override fun encode(tokens: IntArray): FloatArray {
            seen.add(tokens)
            return FloatArray(tokens.size * 8)
        }
    }

    private class ScaledUnet(private val factor: Float) : DiffusionModel {
        override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray) =
            FloatArray(latent.size) { latent[it] * factor }
    }

    private class Upsampler : Decoder {
        var calls = 0
        override fun decode(latent: FloatArray): FloatArray {
            calls++
            // 2x2x4 latent -> 16x16x3 image, nearest neighbour
            return FloatArray(16 * 16 * 3) {
                val pixel = it / 3
                val y = pixel / 16 / 8
                val x = pixel % 16 / 8
                Math.tanh(latent[(y * 2 + x) * 4 + it % 3].toDouble()).toFloat()
            }
        }
    }

    private fun generator(
        unet: DiffusionModel = ScaledUnet(0.5f),
        decoder: Decoder = Upsampler(),
        textEncoder: TextEncoder = ZeroTextEncoder()
    ) = ImageGenerator(Golden.tokenizer, textEncoder, unet, decoder, config)

    @Test
    fun stepsUntilTheFinalImageWithPreviewsOnRequest() {
        val decoder = Upsampler()
        val textEncoder = ZeroTextEncoder()
        val generator = generator(decoder = decoder, textEncoder = textEncoder)
        val inputs = generator.setInputs("a red circle", "blurry", 4, 7.5f, 42L, "Euler a")
        assertNull(inputs.truncationMessage())
        assertEquals(2, textEncoder.seen.size)
        assertEquals(listOf(49406, 320, 736, 7117, 49407), textEncoder.seen[0].take(5))
        val first = generator.execute(showResult = true)
        assertEquals(1, first.stepsDone)
        assertFalse(first.isFinal)
        assertNotNull(first.image)
        assertNull(generator.execute(showResult = false).image)
        generator.execute()
        val last = generator.execute()
        assertTrue(last.isFinal)
        assertEquals(16, last.image!!.width)
        assertEquals(2, decoder.calls)
        assertTrue(generator.isFinished)
        try {
            generator.execute()
            fail("a finished generation ran another step")
        } catch (expected: IllegalStateException) {
        }
    }

    @Test
    fun sameSeedSameImageOtherSeedOtherImage() {
        fun image(seed: Long): IntArray {
            val generator = generator()
            generator.setInputs("a red circle", "", 3, 5f, seed, "DPM++ 2M")
            return generator.run { true }!!.argb
        }
        assertTrue(image(7L).contentEquals(image(7L)))
        assertFalse(image(7L).contentEquals(image(8L)))
    }

    @Test
    fun runStopsWhenCancelled() {
        val generator = generator()
        generator.setInputs("a red circle", "", 10, 7.5f, 1L, "DDIM")
        var seen = 0
        val image = generator.run(previewEvery = 2) { result ->
            seen++
            if (result.stepsDone % 2 == 0) assertNotNull(result.image)
            result.stepsDone < 3
        }
        assertNull(image)
        assertEquals(3, seen)
        assertEquals(3, generator.stepsDone)
        assertFalse(generator.isFinished)
    }

    @Test
    fun longPromptsAreTruncatedAndReported() {
        val generator = generator()
        val inputs = generator.setInputs("a cat ".repeat(60), "", 2, 7.5f, 1L, "Euler")
        assertTrue(inputs.prompt.truncated)
        assertEquals(120, inputs.prompt.numTokens)
        val message = inputs.truncationMessage()!!
        assertTrue(message, message.contains("120 tokens") && message.contains("reads 75") && message.contains("dropped the last 45"))
    }

    @Test
    fun badSettingsNameTheSetting() {
        val generator = generator()
        // (word the message must contain, prompt, steps, guidance, sampler)
        val cases = listOf(
            listOf("steps", "x", 0, 7.5f, "DDIM"),
            listOf("steps", "x", 1001, 7.5f, "Euler"),
            listOf("guidance", "x", 2, Float.NaN, "DDIM"),
            listOf("guidance", "x", 2, -1f, "DDIM"),
            listOf("sampler", "x", 2, 7.5f, "LMS"),
            listOf("num_steps", "x", 1000, 7.5f, "DDIM"),
            listOf("surrogate", "\uD800", 2, 7.5f, "DDIM")
        )
        for (case in cases) {
            val word = case[0] as String
            try {
                generator.setInputs(case[1] as String, "", case[2] as Int, case[3] as Float, 1L, case[4] as String)
                fail("accepted a bad $word")
            } catch (expected: IllegalArgumentException) {
                assertTrue("'${expected.message}' should mention $word", expected.message!!.contains(word))
            }
        }
        try {
            generator.execute()
            fail("execute before setInputs")
        } catch (expected: IllegalStateException) {
        }
    }

    @Test
    fun brokenModelsGiveMessagesNotCrashes() {
        val nan = generator(unet = ScaledUnet(Float.NaN))
        nan.setInputs("x", "", 1, 7.5f, 1L, "DDIM")
        try {
            nan.execute()
            fail("a NaN image was returned")
        } catch (expected: ArithmeticException) {
            assertTrue(expected.message!!.contains("NaN"))
        }
        val wrongSize = generator(unet = object : DiffusionModel {
            override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray) = FloatArray(3)
        })
        wrongSize.setInputs("x", "", 1, 7.5f, 1L, "DDIM")
        try {
            wrongSize.execute()
            fail("a wrong-sized output was used")
        } catch (expected: IllegalStateException) {
            assertTrue(expected.message!!.contains("diffusion model"))
        }
    }

    @Test
    fun guidanceCombinesTheUnconditionalRowFirst() {
        val combined = ClassifierFreeGuidance.combine(floatArrayOf(1f, 2f, 3f, 6f), 2f)
        assertEquals(listOf(5f, 10f), combined.toList())
    }
}
