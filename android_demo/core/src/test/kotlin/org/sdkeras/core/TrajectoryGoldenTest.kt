package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertTrue
import org.junit.Test

/**
 * Full generations with the fake models of trajectories.json (its description defines them) through
 * [ImageGenerator], against the Python host loop: every sampler, latents after each step and the final pixels.
 */
class TrajectoryGoldenTest {
    private val golden = Golden.load("trajectories.json")
    private val contextDim = golden.int("context_dim")
    private val embeddingDim = golden.int("timestep_embedding_dim")

    /** context[p, d] = float32(ids[p]) * 1e-6 for every channel. */
    private inner class FakeTextEncoder : TextEncoder {
        override fun encode(tokens: IntArray): FloatArray =
            FloatArray(tokens.size * contextDim) { tokens[it / contextDim].toFloat() * 1e-6f }
    }

    /** eps[b] = (0.1 * latent[b] + 0.01 * embedding[b][dim/2]) + context[b][1][0]. */
    private inner class FakeDiffusionModel : DiffusionModel {
        var calls = 0

        override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray): FloatArray {
            calls++
            val half = latent.size / 2
            val contextRow = context.size / 2
            return FloatArray(latent.size) {
                val row = it / half
                val sinT = timestepEmbedding[row * embeddingDim + embeddingDim / 2]
                val shift = context[row * contextRow + contextDim] // position 1, channel 0
                (0.1f * latent[it] + 0.01f * sinT) + shift
            }
        }
    }

    /** image[y, x, c] = 0.25 * latent[y, x, c] for c < 3. */
    private class FakeDecoder(private val channels: Int) : Decoder {
        override fun decode(latent: FloatArray): FloatArray {
            val pixels = latent.size / channels
            return FloatArray(pixels * 3) { 0.25f * latent[(it / 3) * channels + it % 3] }
        }
    }

    @Test
    fun everySamplerFollowsThePythonTrajectory() {
        val shape = golden.ints("latent_shape")
        val steps = golden.int("steps")
        val problems = ArrayList<String>()
        val cases = golden.objects("cases")
        assertTrue(cases.map { it.string("sampler") }.toSet().containsAll(Samplers.NAMES))
        for (case in cases) {
            val config = GeneratorConfig(
                shape[0], shape[1], shape[0], shape[1], shape[2], embeddingDim,
                NoiseSchedule(predictionType = case.string("prediction_type")), golden.int("pad_id")
            )
            val unet = FakeDiffusionModel()
            val generator = ImageGenerator(Golden.tokenizer, FakeTextEncoder(), unet, FakeDecoder(shape[2]), config)
            val seed = when (val value = case.map["seed"]) {
                is Long -> value
                is java.math.BigInteger -> value.toLong()
                else -> throw AssertionError("bad seed")
            }
            val label = "${case.string("sampler")} (${case.string("prediction_type")}, seed $seed)"
            generator.setInputs(case.string("prompt"), case.string("negative_prompt"), steps,
                golden.double("guidance_scale").toFloat(), seed, case.string("sampler"))
            val latents = case.list("latents")
            var last: StepResult? = null
            for (step in 0 until steps) {
                last = generator.execute(showResult = false)
                val expected = JsonObject(mapOf("latent" to latents[step]), label).floats("latent")
                val problem = Golden.compare(expected, generator.currentLatent())
                if (problem != null) problems.add("$label, step ${step + 1}: $problem")
            }
            assertEquals(steps, unet.calls)
            val result = last!!
            assertTrue(result.isFinal)
            val image = result.image
            assertNotNull(image)
            val pixels = case.ints("pixels")
            for (index in 0 until image!!.argb.size) {
                val argb = image.argb[index]
                val rgb = intArrayOf((argb shr 16) and 0xFF, (argb shr 8) and 0xFF, argb and 0xFF)
                for (channel in 0..2) {
                    // the latents agree to float rounding; a value on a uint8 boundary may round either way
                    if (Math.abs(rgb[channel] - pixels[3 * index + channel]) > 1) {
                        problems.add("$label: pixel $index channel $channel ${rgb[channel]} != ${pixels[3 * index + channel]}")
                    }
                }
            }
        }
        Golden.assertNoProblems(problems)
    }
}
