package org.sdkeras.core

/**
 * The few numpy routines the sampler tables are built with, written to do the same float64 operations in the
 * same order, so the tables round to the same float32 values as Python's.
 */
internal object NumpyMath {
    /** `np.linspace(start, stop, num)` (float64): `i * step + start`, the last value set to `stop`. */
    fun linspace(start: Double, stop: Double, num: Int): DoubleArray {
        val result = DoubleArray(num)
        if (num == 0) return result
        val divisions = num - 1
        if (divisions == 0) {
            // numpy's step is undefined here; the only value is 0 * delta + start
            result[0] = 0.0 * (stop - start) + start
            return result
        }
        val delta = stop - start
        val step = delta / divisions
        for (index in 0 until num) {
            result[index] = if (step == 0.0) index.toDouble() / divisions * delta + start else index * step + start
        }
        result[num - 1] = stop
        return result
    }

    /** `np.linspace(start, stop, num, dtype=np.float32)` read back as float64 (numpy computes in float64, then casts). */
    fun linspaceFloat32(start: Double, stop: Double, num: Int): DoubleArray {
        val values = linspace(start, stop, num)
        for (index in values.indices) values[index] = values[index].toFloat().toDouble()
        return values
    }

    /** `np.round` / `np.rint`: to the nearest integer, halves to even. */
    fun rint(values: DoubleArray): DoubleArray = DoubleArray(values.size) { Math.rint(values[it]) }

    fun reversed(values: DoubleArray): DoubleArray = DoubleArray(values.size) { values[values.size - 1 - it] }

    /** `np.searchsorted(sorted, value, side="right")`: how many entries are <= value. */
    fun searchSortedRight(sorted: DoubleArray, value: Double): Int {
        var low = 0
        var high = sorted.size
        while (low < high) {
            val middle = (low + high) ushr 1
            if (sorted[middle] <= value) low = middle + 1 else high = middle
        }
        return low
    }

    /** `np.interp(x, xp, fp)` for increasing `xp`, with numpy's handling of exact hits and the ends. */
    fun interp(x: Double, xp: DoubleArray, fp: DoubleArray): Double {
        val last = xp.size - 1
        if (x.isNaN()) return x
        if (x < xp[0]) return fp[0]
        if (x > xp[last]) return fp[last]
        if (x == xp[last]) return fp[last]
        val j = searchSortedRight(xp, x) - 1
        if (x == xp[j]) return fp[j]
        val slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
        var result = slope * (x - xp[j]) + fp[j]
        if (result.isNaN()) {
            result = slope * (x - xp[j + 1]) + fp[j + 1]
            if (result.isNaN() && fp[j] == fp[j + 1]) result = fp[j]
        }
        return result
    }

    /** Karras et al. (2022) noise levels: [count] values from [sigmaMax] down to [sigmaMin], even in σ^(1/rho). */
    fun karrasSigmas(sigmaMin: Double, sigmaMax: Double, count: Int, rho: Double = KARRAS_RHO): DoubleArray {
        val ramp = linspace(0.0, 1.0, count)
        val top = Math.pow(sigmaMax, 1.0 / rho)
        val bottom = Math.pow(sigmaMin, 1.0 / rho)
        return DoubleArray(count) { Math.pow(top + ramp[it] * (bottom - top), rho) }
    }

    /** [count] integer timesteps [ratio] apart from the schedule's steps_offset upwards, highest first. */
    fun leadingTimesteps(schedule: NoiseSchedule, count: Int, ratio: Int): DoubleArray =
        DoubleArray(count) { (count - 1 - it).toDouble() * ratio + schedule.stepsOffset }

    /** The rho of Karras et al. (2022), Eq. 5; every SD UI uses it. */
    const val KARRAS_RHO = 7.0
}
