package org.sdkeras.core

/** Classifier-free guidance: `unconditional + scale · (conditional - unconditional)`, in float32. */
object ClassifierFreeGuidance {
    /** Combine a batch-2 model output (unconditional row first) into one prediction. */
    @JvmStatic
    fun combine(pair: FloatArray, scale: Float): FloatArray {
        require(pair.size % 2 == 0) { "a guidance pair has an even number of values, got ${pair.size}" }
        val half = pair.size / 2
        return FloatArray(half) {
            val unconditional = pair[it]
            unconditional + scale * (pair[half + it] - unconditional)
        }
    }
}
