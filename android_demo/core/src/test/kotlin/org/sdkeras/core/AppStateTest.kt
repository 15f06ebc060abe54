package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The screen state that survives pause/resume and process death, the sampler and thread choices. */
class AppStateTest {
    @Test
    fun roundTripsEveryFieldExactly() {
        val state = AppState(
            bundle = "shapes-fp16", prompt = "東京 \"night\"\n\\ tab\t \u0001 end", negativePrompt = "blurry",
            steps = 37, guidanceScale = 7.3f, seed = 4294967294L, sampler = "DPM++ 2M Karras", previewEvery = 0,
            preferGpu = false, lowMemory = true, cpuThreads = 3, strength = 0.35, status = "Done: 37 steps",
            lastSeed = 9007199254740993L
        )
        val back = AppState.fromJson(state.toJson())
        assertEquals(state, back)
        assertEquals(7.3f, back.guidanceScale, 0f)
        assertEquals(0.35, back.strength, 0.0)
        assertEquals(9007199254740993L, back.lastSeed)
        assertEquals("東京 \"night\"\n\\ tab\t \u0001 end", back.prompt)
        assertEquals(null, AppState.fromJson(AppState().toJson()).bundle)
        assertNotEquals(state, state.copy(seed = 1L))
    }

    @Test
    fun missingFieldsTakeDefaultsAndBadOnesAreNamed() {
        val partial = AppState.fromJson("""{"version": 1, "steps": 8, "sampler": "Euler a"}""")
        assertEquals(8, partial.steps)
        assertEquals("Euler a", partial.sampler)
        assertEquals(AppState().prompt, partial.prompt)
        assertEquals(-1L, partial.seed)
        for ((text, field) in listOf(
            """{"steps": "many"}""" to "state.steps",
            """{"prefer_gpu": 1}""" to "state.prefer_gpu",
            """{"version": 2}""" to "version",
            """[1, 2]""" to "state"
        )) {
            try {
                AppState.fromJson(text)
                fail("accepted $text")
            } catch (expected: IllegalArgumentException) {
                assertTrue("'${expected.message}' should name $field", expected.message!!.contains(field))
            }
        }
    }

    @Test
    fun problemsNameEachBadSetting() {
        assertEquals(emptyList<String>(), AppState().problems())
        val bad = AppState(steps = 0, guidanceScale = Float.NaN, seed = -5L, previewEvery = -1, cpuThreads = 99,
            strength = 1.5).problems()
        assertEquals(6, bad.size)
        for (word in listOf("steps", "guidance", "seed", "preview", "threads", "strength")) {
            assertTrue("$word in $bad", bad.any { it.contains(word) })
        }
    }

    @Test
    fun samplerChoiceKeepsTheUsersSamplerWhenTheBundleHasIt() {
        val available = listOf("DDIM", "Euler a", "DPM++ 2M Karras")
        assertEquals("Euler a", SamplerChoice.choose("Euler a", available, "DDIM"))
        assertEquals("DDIM", SamplerChoice.choose("LMS", available, "DDIM"))
        assertEquals("DDIM", SamplerChoice.choose(null, available, "DDIM"))
        assertEquals("DDIM", SamplerChoice.choose(null, available, "not offered"))
        try {
            SamplerChoice.choose("DDIM", emptyList(), "DDIM")
            fail("chose from no samplers")
        } catch (expected: IllegalArgumentException) {
        }
    }

    @Test
    fun threadChoiceUsesHalfTheCoresAutomaticallyAndCapsRequests() {
        assertEquals(4, ThreadChoice.threads(0, 8))
        assertEquals(3, ThreadChoice.threads(0, 6))
        assertEquals(1, ThreadChoice.threads(0, 1))
        assertEquals(4, ThreadChoice.threads(0, 16))
        assertEquals(2, ThreadChoice.threads(2, 8))
        assertEquals(8, ThreadChoice.threads(12, 8))
    }
}
