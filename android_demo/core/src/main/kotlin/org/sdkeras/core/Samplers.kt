package org.sdkeras.core

/**
 * The samplers by the names UIs use, as in `sd_keras.schedulers.get_sampler`: every table computed from the
 * schedule exactly as the Python library does, cast to float32, and rejected when not finite.
 *
 * Example:
 * ```
 * val sampler = Samplers.create("DPM++ 2M Karras", 25, NoiseSchedule())
 * sampler.tables.timesteps[0]   // 999.0
 * ```
 */
object Samplers {
    /** The canonical names, in Python's order. */
    val NAMES = listOf(
        "DDIM", "DDIM KerasCV", "Euler", "Euler Karras", "Euler a", "Euler a Karras", "DPM++ 2M", "DPM++ 2M Karras"
    )

    /** diffusers' class names accepted for the basic samplers. */
    val ALIASES = mapOf(
        "DDIMScheduler" to "DDIM",
        "EulerDiscreteScheduler" to "Euler",
        "EulerAncestralDiscreteScheduler" to "Euler a",
        "DPMSolverMultistepScheduler" to "DPM++ 2M"
    )

    private fun key(name: String): String {
        val words = name.trim().split(Regex("\\s+"))
        val builder = StringBuilder()
        for (char in words.joinToString(" ")) builder.append(if (char in 'A'..'Z') char + ('a' - 'A') else char)
        return builder.toString()
    }

    private val lookup: Map<String, String> by lazy {
        val table = HashMap<String, String>()
        for (name in NAMES) table[key(name)] = name
        for ((alias, name) in ALIASES) table[key(alias)] = name
        table
    }

    /** The canonical name of [name] (case and repeated spaces ignored); IllegalArgumentException if unknown. */
    fun canonicalName(name: String): String = lookup[key(name)] ?: throw IllegalArgumentException(
        "sampler name \"$name\" is unknown; known names: ${(NAMES + ALIASES.keys).joinToString(", ")}"
    )

    /**
     * The sampler [name] for [numSteps] steps on [schedule] ([predictionType] overrides the schedule's).
     *
     * @throws IllegalArgumentException unknown name, a step count outside the schedule's range, or one that gives
     *     a degenerate schedule (repeated noise levels).
     */
    @JvmStatic
    fun create(name: String, numSteps: Int, schedule: NoiseSchedule, predictionType: String? = null): Sampler {
        val canonical = canonicalName(name)
        val effective = if (predictionType == null) schedule else schedule.withPredictionType(predictionType)
        val leading = canonical == "DDIM"
        val maxSteps = effective.numTrainTimesteps - (if (leading) effective.stepsOffset else 0)
        if (numSteps < 1 || numSteps > maxSteps) {
            throw IllegalArgumentException(
                "num_steps must be an integer in [1, $maxSteps] for '${if (leading) "leading" else "linspace"}' " +
                    "timestep spacing, got $numSteps"
            )
        }
        val karras = canonical.endsWith(" Karras")
        val raw = when (canonical) {
            "DDIM" -> DdimTables.build(effective, numSteps, linspace = false)
            "DDIM KerasCV" -> DdimTables.build(effective, numSteps, linspace = true)
            "Euler", "Euler Karras" -> EulerTables.build(effective, numSteps, karras)
            "Euler a", "Euler a Karras" -> EulerAncestralTables.build(effective, numSteps, karras)
            else -> DpmSolverTables.build(effective, numSteps, karras)
        }
        val displayName = if (canonical == "DDIM KerasCV") "DDIM KerasCV" else canonical
        val tables = LinkedHashMap<String, FloatArray>()
        for ((key, values) in raw.tables) {
            val cast = FloatArray(values.size) { values[it].toFloat() }
            for (value in cast) {
                if (value.isNaN() || value.isInfinite()) {
                    throw IllegalArgumentException(
                        "num_steps=$numSteps gives a degenerate $displayName schedule (repeated noise levels); " +
                            "use fewer steps"
                    )
                }
            }
            tables[key] = cast
        }
        val sigma = raw.initNoiseSigma.toFloat()
        val ancestral = canonical.startsWith("Euler a")
        val multistep = canonical.startsWith("DPM++")
        return Sampler(displayName, numSteps, effective.predictionType, ancestral, multistep, SamplerTables(tables, sigma))
    }
}
