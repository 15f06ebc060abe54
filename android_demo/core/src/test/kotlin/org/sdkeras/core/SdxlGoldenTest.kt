package org.sdkeras.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertTrue
import org.junit.Test

/**
 * SDXL bundles against the Python library (golden sdxl.json, its description defines the fakes): the per-encoder
 * re-padding of token rows, the time ids and `added_embedding`, the force-zeros unconditional row, the context
 * concatenation, and whole short generations through [ImageGenerator] with two (base) or one (refiner) text
 * encoders.
 */
class SdxlGoldenTest {
    private val golden = Golden.load("sdxl.json")
    private val contextDims = golden.ints("context_dims")
    private val pooledDim = golden.int("pooled_dim")
    private val timeEmbedDim = golden.int("addition_time_embed_dim")
    private val embeddingDim = golden.int("timestep_embedding_dim")

    /** text_encoder: context[p, d] = (float32(ids[p]) * 1e-6) * float32(d + 1). */
    private inner class FakeEncoder1 : TextEncoder {
        val seen = ArrayList<IntArray>()
        override fun encode(tokens: IntArray): FloatArray {
            seen.add(tokens)
            val width = contextDims[0]
            return FloatArray(tokens.size * width) { (tokens[it / width].toFloat() * 1e-6f) * (it % width + 1).toFloat() }
        }
    }

    /** text_encoder_2: context[p, d] = ids[p] * 2e-6 + d * 1e-3; pooled[j] = ids[j + 1] * 1e-5 + ids[76] * 1e-6. */
    private inner class FakeEncoder2 : TextEncoder {
        val seen = ArrayList<IntArray>()
        override fun encode(tokens: IntArray): FloatArray = encodeOutputs(tokens).getValue("context")

        override fun encodeOutputs(tokens: IntArray): Map<String, FloatArray> {
            seen.add(tokens)
            val width = contextDims[1]
            val context = FloatArray(tokens.size * width) {
                tokens[it / width].toFloat() * 2e-6f + (it % width).toFloat() * 1e-3f
            }
            val pooled = FloatArray(pooledDim) { tokens[it + 1].toFloat() * 1e-5f + tokens[76].toFloat() * 1e-6f }
            return mapOf("context" to context, "pooled" to pooled)
        }
    }

    /** The description's UNet; records the text inputs it is given. */
    private inner class FakeUnet : DiffusionModel {
        var calls = 0
        var context = FloatArray(0)
        var added = FloatArray(0)

        override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray): FloatArray =
            throw AssertionError("an SDXL generation must pass added_embedding")

        override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray,
                             addedEmbedding: FloatArray): FloatArray {
            calls++
            this.context = context
            this.added = addedEmbedding
            val half = latent.size / 2
            val contextRow = context.size / 2
            val width = contextRow / 77
            val addedRow = addedEmbedding.size / 2
            return FloatArray(latent.size) {
                val row = it / half
                val sinT = timestepEmbedding[row * embeddingDim + embeddingDim / 2]
                var value = 0.1f * latent[it] + 0.01f * sinT
                value += context[row * contextRow + width]  // position 1, channel 0
                value += context[row * contextRow + 76 * width + width - contextDims[1]]  // position 76, encoder 2's first
                value += 0.1f * addedEmbedding[row * addedRow]
                value += 0.01f * addedEmbedding[row * addedRow + pooledDim + 4 * timeEmbedDim + timeEmbedDim / 2]
                value
            }
        }
    }

    private class FakeDecoder(private val channels: Int) : Decoder {
        override fun decode(latent: FloatArray): FloatArray {
            val pixels = latent.size / channels
            return FloatArray(pixels * 3) { 0.25f * latent[(it / 3) * channels + it % 3] }
        }
    }

    private fun floats(value: Any?, label: String) = JsonObject(mapOf("v" to value), label).floats("v")

    private fun ints(value: Any?, label: String) = JsonObject(mapOf("v" to value), label).ints("v")

    @Test
    fun tokenRowsArePaddedAgainForEachEncoder() {
        val pads = golden.ints("pad_ids")
        val entries = golden.objects("repadding")
        assertTrue(entries.any { it.string("text").contains("<|endoftext|>") })
        for (entry in entries) {
            val text = entry.string("text")
            val ids = Golden.tokenizer.tokenize(text, pads[0]).ids
            assertArrayEquals(text, entry.ints("ids"), ids)
            val rows = entry.list("encoder_ids")
            for ((index, pad) in pads.withIndex()) {
                assertArrayEquals("$text, pad $pad", ints(rows[index], text), SdxlConditioning.encoderIds(ids, pad))
            }
        }
    }

    @Test
    fun addedEmbeddingIsPooledThenTimeIdSinusoidsBitForBit() {
        val cases = golden.objects("added_embedding")
        assertTrue(cases.any { it.obj("micro_conditioning").has("aesthetic_score") })
        for (case in cases) {
            val micro = case.obj("micro_conditioning")
            val (timeIds, negativeTimeIds) = BundleManifest.timeIds(micro)
            assertArrayEquals(micro.map.toString(), case.floats("time_ids"), timeIds, 0f)
            assertArrayEquals(micro.map.toString(), case.floats("negative_time_ids"), negativeTimeIds, 0f)
            val pooled = case.list("pooled")
            val added = case.list("added")
            val dim = case.int("addition_time_embed_dim")
            // row 0 is the unconditional one (negative time ids)
            for ((row, ids) in listOf(negativeTimeIds, timeIds).withIndex()) {
                val actual = SdxlConditioning.addedEmbedding(floats(pooled[row], "pooled"), ids, dim)
                Golden.assertClose("${micro.map} row $row", floats(added[row], "added"), actual, 0f)
            }
        }
    }

    @Test
    fun contextsAreConcatenatedTokenByToken() {
        val first = FloatArray(2 * 3) { it.toFloat() }          // (2 tokens, 3)
        val second = FloatArray(2 * 2) { 100f + it.toFloat() } // (2 tokens, 2)
        val joined = SdxlConditioning.concatContexts(listOf(first, second), intArrayOf(3, 2), 2)
        assertArrayEquals(floatArrayOf(0f, 1f, 2f, 100f, 101f, 3f, 4f, 5f, 102f, 103f), joined, 0f)
    }

    @Test
    fun shortGenerationsFollowThePythonTrajectories() {
        val shape = golden.ints("latent_shape")
        val steps = golden.int("steps")
        val problems = ArrayList<String>()
        val cases = golden.objects("cases")
        assertTrue(cases.any { it.boolean("force_zeros_for_empty_prompt") && it.string("negative_prompt") == "" })
        assertTrue(cases.any { it.strings("encoders") == listOf("text_encoder_2") })
        for (case in cases) {
            val encoders = case.strings("encoders")
            val pads = case.ints("pad_ids")
            val (timeIds, negativeTimeIds) = BundleManifest.timeIds(case.obj("micro_conditioning"))
            val widths = encoders.map { if (it == "text_encoder") contextDims[0] else contextDims[1] }.toIntArray()
            val spec = SdxlSpec(encoders, pads, widths, pooledDim, timeEmbedDim, timeIds, negativeTimeIds,
                case.boolean("force_zeros_for_empty_prompt"))
            // the fake decoder's "image" has the latent's grid (as trajectories.json)
            val config = GeneratorConfig(shape[0], shape[1], shape[0], shape[1], shape[2], embeddingDim,
                NoiseSchedule(), pads[0], spec)
            val encoder1 = FakeEncoder1()
            val encoder2 = FakeEncoder2()
            val unet = FakeUnet()
            val generator = if (encoders.size == 2) {
                ImageGenerator(Golden.tokenizer, encoder1, unet, FakeDecoder(shape[2]), config, null, encoder2)
            } else {
                ImageGenerator(Golden.tokenizer, encoder2, unet, FakeDecoder(shape[2]), config)
            }
            val seed = when (val value = case.map["seed"]) {
                is Long -> value
                is java.math.BigInteger -> value.toLong()
                else -> throw AssertionError("bad seed")
            }
            val negative = case.string("negative_prompt")
            val label = "${case.string("sampler")} ($encoders, seed $seed, negative \"$negative\")"
            generator.setInputs(case.string("prompt"), negative, steps, golden.double("guidance_scale").toFloat(), seed,
                case.string("sampler"))
            // the force-zeros row runs no encoder; every other row runs each encoder once on its own padding
            val zeroRow = case.boolean("force_zeros_for_empty_prompt") && negative == ""
            val runs = if (zeroRow) 1 else 2
            assertEquals(label, if (encoders.size == 2) runs else 0, encoder1.seen.size)
            assertEquals(label, runs, encoder2.seen.size)
            for (row in encoder2.seen) {
                val end = row.indexOf(ClipTokenizer.END_ID)
                for (position in end + 1 until row.size) assertEquals(label, pads.last(), row[position])
            }
            val latents = case.list("latents")
            var last: StepResult? = null
            for (step in 0 until steps) {
                last = generator.execute(showResult = false)
                if (step == 0) {
                    Golden.compare(case.floats("contexts"), unet.context)?.let { problems.add("$label, contexts: $it") }
                    Golden.compare(case.floats("added"), unet.added)?.let { problems.add("$label, added: $it") }
                }
                Golden.compare(floats(latents[step], label), generator.currentLatent())
                    ?.let { problems.add("$label, step ${step + 1}: $it") }
            }
            assertEquals(steps, unet.calls)
            val result = last!!
            assertTrue(result.isFinal)
            assertNotNull(result.image)
            val pixels = case.ints("pixels")
            for (index in 0 until result.image!!.argb.size) {
                val argb = result.image!!.argb[index]
                val rgb = intArrayOf((argb shr 16) and 0xFF, (argb shr 8) and 0xFF, argb and 0xFF)
                for (channel in 0..2) {
                    if (Math.abs(rgb[channel] - pixels[3 * index + channel]) > 1) {
                        problems.add("$label: pixel $index channel $channel ${rgb[channel]} != ${pixels[3 * index + channel]}")
                    }
                }
            }
        }
        Golden.assertNoProblems(problems)
    }

    @Test
    fun readsTheManifestThePythonExporterWrites() {
        val manifest = BundleManifest.parse(golden.string("manifest_text"))
        assertEquals(2, manifest.formatVersion)
        assertEquals("sdxl", manifest.family)
        val sdxl = manifest.sdxl!!
        assertEquals(listOf("text_encoder", "text_encoder_2"), sdxl.textEncoders)
        assertArrayEquals(golden.ints("pad_ids"), sdxl.padIds)
        assertArrayEquals(contextDims, sdxl.contextWidths)
        assertEquals(pooledDim, sdxl.pooledDim)
        assertEquals(timeEmbedDim, sdxl.additionTimeEmbedDim)
        assertTrue(sdxl.forceZerosForEmptyPrompt)
        val size = manifest.imageHeight.toFloat()
        assertArrayEquals(floatArrayOf(size, size, 0f, 0f, size, size), sdxl.timeIds, 0f)
        assertEquals("Euler", manifest.defaultSampler)
    }

    @Test
    fun imageToImageRunsTheStepsTheStrengthLeavesWithTheAddedEmbedding() {
        val case = golden.objects("cases")[0]
        val shape = golden.ints("latent_shape")
        val (timeIds, negativeTimeIds) = BundleManifest.timeIds(case.obj("micro_conditioning"))
        val spec = SdxlSpec(case.strings("encoders"), case.ints("pad_ids"), contextDims, pooledDim, timeEmbedDim,
            timeIds, negativeTimeIds, true)
        val config = GeneratorConfig(shape[0], shape[1], shape[0], shape[1], shape[2], embeddingDim,
            NoiseSchedule(), 49407, spec)
        val encoder = object : ImageEncoder {
            // "image" (h, w, 3) to a latent (h, w, 4): the channels, then a constant fourth
            override fun encode(image: FloatArray): FloatArray =
                FloatArray(shape[0] * shape[1] * shape[2]) { if (it % 4 == 3) 0.5f else image[(it / 4) * 3 + it % 4] }
        }
        val unet = FakeUnet()
        val generator = ImageGenerator(Golden.tokenizer, FakeEncoder1(), unet, FakeDecoder(shape[2]), config, encoder,
            FakeEncoder2())
        val image = FloatArray(shape[0] * shape[1] * 3) { (it % 7) / 7f - 0.5f }
        val inputs = generator.setImageInputs(case.string("prompt"), "", 10, 5f, 1L, "Euler", image, 0.5)
        assertEquals(5, inputs.stepsToRun)
        var result: StepResult
        do {
            result = generator.execute()
        } while (!result.isFinal)
        assertEquals(5, unet.calls)
        // the same text inputs as text-to-image: the golden case's zero unconditional row and its conditional row
        Golden.assertClose("added", case.floats("added"), unet.added)
        Golden.assertClose("contexts", case.floats("contexts"), unet.context)
    }

    @Test
    fun aGeneratorRefusesTheWrongNumberOfTextEncoders() {
        val spec = SdxlSpec(listOf("text_encoder", "text_encoder_2"), intArrayOf(49407, 0), intArrayOf(3, 5), 4, 8,
            FloatArray(6), FloatArray(6), true)
        val config = GeneratorConfig(32, 32, 4, 4, 4, embeddingDim, NoiseSchedule(), 49407, spec)
        try {
            ImageGenerator(Golden.tokenizer, FakeEncoder1(), FakeUnet(), FakeDecoder(4), config)
            throw AssertionError("an SDXL base generator without text_encoder_2 was built")
        } catch (expected: IllegalArgumentException) {
            assertTrue(expected.message!!, expected.message!!.contains("2 text encoders"))
        }
    }
}
