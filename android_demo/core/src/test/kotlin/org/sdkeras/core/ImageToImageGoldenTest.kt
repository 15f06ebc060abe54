package org.sdkeras.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/**
 * Image-to-image's start against Python (`python/image_to_image.json`, written and kept current by
 * tests/test_android_core.py): the start step of every sampler, step count and strength, and the noised start
 * latent bit for bit.
 */
class ImageToImageGoldenTest {
    private fun fixture(): JsonObject {
        val stream = ImageToImageGoldenTest::class.java.getResourceAsStream("/python/image_to_image.json")
            ?: throw AssertionError("/python/image_to_image.json is not on the test classpath")
        return JsonObject.parse(stream.use { String(it.readBytes(), Charsets.UTF_8) }, "image_to_image.json")
    }

    @Test
    fun startStepsEqualPythons() {
        val cases = fixture().objects("start_index")
        val wrong = ArrayList<String>()
        for (case in cases) {
            val steps = case.int("steps")
            val strength = case.double("strength")
            val actual = ImageToImage.startIndex(steps, strength)
            if (actual != case.int("start")) wrong.add("${case.string("sampler")} $steps steps, strength $strength: $actual")
        }
        assertEquals(168, cases.size)
        assertEquals(emptyList<String>(), wrong)
    }

    @Test
    fun noisedStartLatentEqualsPythonsBitForBit() {
        for (case in fixture().objects("noised_latent")) {
            val steps = case.int("steps")
            val sampler = Samplers.create(case.string("sampler"), steps, NoiseSchedule())
            val start = ImageToImage.startIndex(steps, case.double("strength"))
            assertEquals(case.int("start"), start)
            val original = case.floats("original")
            val noise = SeedNoise.latentNoise(case.long("seed"), 1, original.size, 0).first
            val noised = ImageToImage.noised(original, noise, sampler.tables, start)
            assertArrayEquals(case.string("sampler"), case.floats("noised"), noised, 0f)
        }
    }
}
