package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** Every sampler's tables against sd_keras.schedulers (1, 4, 20, 50 steps, both prediction types, two schedules). */
class SamplerGoldenTest {
    private val golden = Golden.load("samplers.json")

    private fun check(entries: List<JsonObject>, scheduleJson: JsonObject): Int {
        val problems = ArrayList<String>()
        var compared = 0
        for (entry in entries) {
            val name = entry.string("sampler")
            val steps = entry.int("steps")
            val predictionType = entry.string("prediction_type")
            val sampler = Samplers.create(name, steps, Golden.schedule(scheduleJson), predictionType)
            val label = "$name, $steps steps, $predictionType"
            if (sampler.needsNoise != entry.boolean("needs_noise")) problems.add("$label: needs_noise")
            if (sampler.isMultistep != entry.boolean("is_multistep")) problems.add("$label: is_multistep")
            val tables = entry.obj("tables")
            for (key in tables.map.keys) {
                if (key == "init_noise_sigma") {
                    val expected = tables.double(key).toFloat()
                    if (!Golden.close(expected, sampler.tables.initNoiseSigma)) {
                        problems.add("$label: init_noise_sigma ${sampler.tables.initNoiseSigma} != $expected")
                    }
                } else {
                    val problem = Golden.compare(tables.floats(key), sampler.tables.table(key))
                    if (problem != null) problems.add("$label: $key: $problem")
                }
                compared++
            }
            if (predictionType == NoiseSchedule.EPSILON) {
                // every table Python has, and no other
                val pythonKeys = tables.map.keys - "init_noise_sigma"
                if (pythonKeys != sampler.tables.names) problems.add("$label: tables ${sampler.tables.names} != $pythonKeys")
            }
        }
        Golden.assertNoProblems(problems)
        return compared
    }

    @Test
    fun tablesMatchPythonForTheDefaultSchedule() {
        val compared = check(golden.objects("entries"), golden.obj("schedule"))
        assertTrue("compared $compared tables", compared > 8 * 4 * 12)
    }

    @Test
    fun tablesFollowTheScheduleConfig() {
        check(golden.objects("custom_entries"), golden.obj("custom_schedule"))
    }

    @Test
    fun rejectsTheStepCountsPythonRejects() {
        for (case in golden.objects("errors")) {
            try {
                Samplers.create(case.string("sampler"), case.int("steps"), Golden.schedule(golden.obj("schedule")))
                fail("${case.string("sampler")} accepted ${case.int("steps")} steps; Python: ${case.string("python_error")}")
            } catch (expected: IllegalArgumentException) {
            }
        }
    }

    @Test
    fun namesAndAliases() {
        assertEquals("DPM++ 2M Karras", Samplers.canonicalName("  dpm++   2m KARRAS "))
        assertEquals("Euler a", Samplers.canonicalName("EulerAncestralDiscreteScheduler"))
        try {
            Samplers.canonicalName("LMS")
            fail("unknown sampler accepted")
        } catch (expected: IllegalArgumentException) {
            assertTrue(expected.message!!.contains("LMS"))
        }
    }

    @Test
    fun stepFormulaOfAMultistepSampler() {
        // The first step taken uses its own denoised latent as "previous"; later steps the carried one.
        val sampler = Samplers.create("DPM++ 2M", 4, NoiseSchedule())
        val state = sampler.newState()
        val latent = floatArrayOf(1.0f, -2.0f)
        val output = floatArrayOf(0.5f, 0.25f)
        val t = sampler.tables
        val first = sampler.step(latent, output, 0, state)
        val denoised0 = FloatArray(2) { t.denoiseLatent[0] * latent[it] + t.denoiseOutput[0] * output[it] }
        for (index in 0..1) {
            val expected = t.stepLatent[0] * latent[index] + t.stepDenoised[0] * denoised0[index] +
                t.stepPreviousDenoised[0] * denoised0[index]
            assertEquals(expected, first[index], 0.0f)
        }
        val second = sampler.step(first, output, 1, state)
        val denoised1 = FloatArray(2) { t.denoiseLatent[1] * first[it] + t.denoiseOutput[1] * output[it] }
        for (index in 0..1) {
            val expected = t.stepLatent[1] * first[index] + t.stepDenoised[1] * denoised1[index] +
                t.stepPreviousDenoised[1] * denoised0[index]
            assertEquals(expected, second[index], 0.0f)
        }
    }

    @Test
    fun ancestralSamplersNeedNoise() {
        val sampler = Samplers.create("Euler a", 4, NoiseSchedule())
        try {
            sampler.step(floatArrayOf(1f), floatArrayOf(1f), 0, sampler.newState(), null)
            fail("step without noise accepted")
        } catch (expected: IllegalArgumentException) {
            assertTrue(expected.message!!.startsWith("noise"))
        }
    }
}
