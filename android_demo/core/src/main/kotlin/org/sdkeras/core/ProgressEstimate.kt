package org.sdkeras.core

import java.util.Locale

/**
 * Progress and time left of a generation, for the status line and the notification. The first step also pays
 * for warm-up (GPU kernel compilation, XNNPACK weight packing), so once two steps are done the rate comes from
 * the steps after the first.
 */
class ProgressEstimate(val totalSteps: Int) {
    init {
        if (totalSteps < 0) throw IllegalArgumentException("totalSteps must be >= 0, got $totalSteps")
    }

    var stepsDone = 0
        private set
    var elapsedMillis = 0L
        private set
    private var firstStepMillis = 0L

    /** Record that [stepsDone] steps are finished after [elapsedMillis] since the generation started. */
    fun update(stepsDone: Int, elapsedMillis: Long) {
        if (stepsDone < this.stepsDone || stepsDone > totalSteps) {
            throw IllegalArgumentException("steps done must grow within [0, $totalSteps]: ${this.stepsDone} then $stepsDone")
        }
        if (elapsedMillis < this.elapsedMillis) throw IllegalArgumentException("elapsed time went backwards")
        if (this.stepsDone == 0 && stepsDone >= 1) firstStepMillis = elapsedMillis / stepsDone
        this.stepsDone = stepsDone
        this.elapsedMillis = elapsedMillis
    }

    /** Finished fraction in [0, 1] (1 for a generation of no steps). */
    val fraction: Double get() = if (totalSteps == 0) 1.0 else stepsDone.toDouble() / totalSteps

    /** Whole percent for a notification's progress bar. */
    val percent: Int get() = (fraction * 100).toInt()

    /** Milliseconds per step at the current rate; null before the first step. */
    val millisPerStep: Double?
        get() = when {
            stepsDone == 0 -> null
            stepsDone == 1 -> elapsedMillis.toDouble()
            else -> (elapsedMillis - firstStepMillis).toDouble() / (stepsDone - 1)
        }

    /** Estimated milliseconds until the last step; null before the first step. */
    val remainingMillis: Long?
        get() {
            val rate = millisPerStep ?: return null
            return Math.round(rate * (totalSteps - stepsDone))
        }

    /** e.g. `Step 3 of 20, 12.4 s, about 1:05 left`. */
    fun statusLine(): String {
        val base = String.format(Locale.ROOT, "Step %d of %d, %.1f s", stepsDone, totalSteps, elapsedMillis / 1000.0)
        val remaining = remainingMillis ?: return base
        return if (stepsDone >= totalSteps) base else "$base, about ${formatDuration(remaining)} left"
    }

    companion object {
        /** `0:07`, `1:05`, `1:02:03` (rounded to the second). */
        @JvmStatic
        fun formatDuration(millis: Long): String {
            if (millis < 0) throw IllegalArgumentException("duration must be >= 0, got $millis")
            val seconds = (millis + 500) / 1000
            val hours = seconds / 3600
            val minutes = seconds / 60 % 60
            val rest = seconds % 60
            return if (hours > 0) String.format(Locale.ROOT, "%d:%02d:%02d", hours, minutes, rest)
            else String.format(Locale.ROOT, "%d:%02d", minutes, rest)
        }
    }
}
