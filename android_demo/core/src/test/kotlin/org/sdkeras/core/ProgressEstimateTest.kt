package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.fail
import org.junit.Test

/** Progress and time left: the first step's warm-up does not skew the estimate. */
class ProgressEstimateTest {
    @Test
    fun estimatesFromTheStepsAfterTheFirst() {
        val progress = ProgressEstimate(20)
        assertNull(progress.remainingMillis)
        assertEquals("Step 0 of 20, 0.0 s", progress.statusLine())
        progress.update(1, 5000) // warm-up: 5 s
        assertEquals(5000.0, progress.millisPerStep!!, 0.0)
        assertEquals(95000L, progress.remainingMillis)
        progress.update(3, 7000) // then 1 s per step
        assertEquals(1000.0, progress.millisPerStep!!, 0.0)
        assertEquals(17000L, progress.remainingMillis)
        assertEquals(15, progress.percent)
        assertEquals("Step 3 of 20, 7.0 s, about 0:17 left", progress.statusLine())
        progress.update(20, 24000)
        assertEquals(0L, progress.remainingMillis)
        assertEquals(100, progress.percent)
        assertEquals("Step 20 of 20, 24.0 s", progress.statusLine())
    }

    @Test
    fun formatsDurations() {
        assertEquals("0:00", ProgressEstimate.formatDuration(0))
        assertEquals("0:07", ProgressEstimate.formatDuration(6500))
        assertEquals("1:05", ProgressEstimate.formatDuration(65_000))
        assertEquals("1:02:03", ProgressEstimate.formatDuration(3_723_000))
    }

    @Test
    fun rejectsStepsGoingBackwardsOrPastTheEnd() {
        val progress = ProgressEstimate(4)
        progress.update(2, 100)
        for ((steps, millis) in listOf(1 to 200L, 5 to 300L, 3 to 50L)) {
            try {
                progress.update(steps, millis)
                fail("accepted $steps steps at $millis ms")
            } catch (expected: IllegalArgumentException) {
            }
        }
        assertEquals(1.0, ProgressEstimate(0).fraction, 0.0)
    }
}
