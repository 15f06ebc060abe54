package org.sdkeras.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** Image-to-image in the step-wise generator: start step, noised latent, steps run, strength 0. */
class ImageToImageTest {
    private val config = GeneratorConfig(16, 16, 2, 2, 4, 32, NoiseSchedule())

    private class FakeTextEncoder : TextEncoder {
        override fun encode(tokens: IntArray) = FloatArray(tokens.size * 8) { 0.01f * (it % 7) }
    }

    private class RecordingUnet : DiffusionModel {
        val latents = ArrayList<FloatArray>()
        override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray): FloatArray {
            latents.add(latent.copyOf())
            return FloatArray(latent.size) { latent[it] * 0.25f }
        }
    }

    private class MeanDecoder : Decoder {
        val seen = ArrayList<FloatArray>()
        override fun decode(latent: FloatArray): FloatArray {
            seen.add(latent.copyOf())
            return FloatArray(16 * 16 * 3) { Math.tanh(latent[it % latent.size].toDouble()).toFloat() }
        }
    }

    /** 16x16x3 image to a 2x2x4 latent: the mean of each 8x8 block's channels, scaled. */
    private class BlockEncoder : ImageEncoder {
        var calls = 0
        override fun encode(image: FloatArray): FloatArray {
            calls++
            return FloatArray(16) { index ->
                val block = index / 4
                val channel = index % 4
                var sum = 0f
                for (y in 0 until 8) for (x in 0 until 8) {
                    val pixel = ((block / 2) * 8 + y) * 16 + (block % 2) * 8 + x
                    sum += image[pixel * 3 + channel % 3]
                }
                sum / 64f * 0.18215f
            }
        }
    }

    private val photo = FloatArray(16 * 16 * 3) { ((it * 37) % 255) / 127.5f - 1f }

    @Test
    fun startIndexFollowsPythonsRule() {
        assertEquals(5, ImageToImage.startIndex(20, 0.75))
        assertEquals(13, ImageToImage.startIndex(50, 0.75))
        assertEquals(0, ImageToImage.startIndex(4, 1.0))
        assertEquals(4, ImageToImage.startIndex(4, 0.0))
        assertEquals(2, ImageToImage.startIndex(3, 0.5))
        assertEquals(7, ImageToImage.startIndex(10, 0.3)) // int(10 * 0.3) = int(3.0000000000000004) = 3
        for (bad in listOf(-0.1, 1.1, Double.NaN)) {
            try {
                ImageToImage.startIndex(10, bad)
                fail("accepted strength $bad")
            } catch (expected: IllegalArgumentException) {
                assertTrue(expected.message!!.contains("strength"))
            }
        }
    }

    @Test
    fun runsTheRemainingStepsFromTheNoisedImage() {
        val unet = RecordingUnet()
        val encoder = BlockEncoder()
        val generator = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), unet, MeanDecoder(), config, encoder)
        assertTrue(generator.supportsImageToImage)
        val inputs = generator.setImageInputs("a red circle", "", 10, 7.5f, 42L, "DDIM", photo, 0.5)
        assertEquals(5, inputs.startStep)
        assertEquals(5, inputs.stepsToRun)
        val sampler = Samplers.create("DDIM", 10, NoiseSchedule())
        val noise = SeedNoise.latentNoise(42L, 1, 16, 0).first
        val expected = ImageToImage.noised(BlockEncoder().encode(photo), noise, sampler.tables, 5)
        val first = generator.execute()
        assertEquals(1, first.stepsDone)
        assertEquals(5, first.totalSteps)
        val modelInput = sampler.scaleModelInput(expected, 5)
        assertArrayEquals(modelInput + modelInput, unet.latents[0], 0f)
        var last = first
        while (!generator.isFinished) last = generator.execute()
        assertTrue(last.isFinal)
        assertEquals(5, last.stepsDone)
        assertEquals(5, unet.latents.size)
        assertEquals(1, encoder.calls)
    }

    @Test
    fun strengthOneStartsAtStepZeroAndDiffersFromTextToImage() {
        val unet = RecordingUnet()
        val generator = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), unet, MeanDecoder(), config, BlockEncoder())
        generator.setImageInputs("a red circle", "", 4, 7.5f, 7L, "Euler", photo, 1.0)
        val fromImage = generator.run { true }!!.argb
        assertEquals(4, unet.latents.size)
        generator.setInputs("a red circle", "", 4, 7.5f, 7L, "Euler")
        val fromNoise = generator.run { true }!!.argb
        assertFalse(fromImage.contentEquals(fromNoise))
    }

    @Test
    fun strengthZeroRunsNoStepAndReturnsTheImageDecodedAgain() {
        val unet = RecordingUnet()
        val decoder = MeanDecoder()
        val generator = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), unet, decoder, config, BlockEncoder())
        val inputs = generator.setImageInputs("a red circle", "", 20, 7.5f, 1L, "Euler a", photo, 0.0)
        assertEquals(0, inputs.stepsToRun)
        assertFalse(generator.isFinished)
        val result = generator.execute()
        assertTrue(result.isFinal)
        assertEquals(0, result.totalSteps)
        assertEquals(0, unet.latents.size)
        assertArrayEquals(BlockEncoder().encode(photo), decoder.seen[0], 0f)
        assertTrue(generator.isFinished)
        try {
            generator.execute()
            fail("ran after the final image")
        } catch (expected: IllegalStateException) {
        }
    }

    @Test
    fun refusesWithoutAnEncoderOrWithAWrongImageSize() {
        val plain = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), RecordingUnet(), MeanDecoder(), config)
        assertFalse(plain.supportsImageToImage)
        val withEncoder = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), RecordingUnet(), MeanDecoder(), config,
            BlockEncoder())
        for ((generator, image, word) in listOf(
            Triple(plain, photo, "image_encoder"),
            Triple(withEncoder, FloatArray(10), "16x16"),
            Triple(withEncoder, photo, "strength")
        )) {
            try {
                generator.setImageInputs("a", "", 4, 7.5f, 1L, "DDIM", image, if (word == "strength") 2.0 else 0.5)
                fail("accepted: $word")
            } catch (expected: IllegalArgumentException) {
                assertTrue("'${expected.message}' should mention $word", expected.message!!.contains(word))
            }
        }
    }
}
