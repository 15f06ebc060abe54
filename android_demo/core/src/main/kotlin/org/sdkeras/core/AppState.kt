package org.sdkeras.core

/**
 * Everything the demo screen keeps across pause/resume, rotation and process death: the form, the chosen bundle,
 * the status line and the seed of the last image. The app stores [toJson] in its saved instance state and in its
 * preferences and restores it with [fromJson]; a missing field (state saved by an older version) takes its
 * default, a malformed one is an [IllegalArgumentException] naming it.
 *
 * [seed] -1 draws a random seed at each generation; [strength] is used only when a photo is picked
 * (image-to-image); [cpuThreads] 0 lets the app choose ([ThreadChoice]).
 */
class AppState(
    val bundle: String? = null,
    val prompt: String = "a red circle on a white background",
    val negativePrompt: String = "",
    val steps: Int = 20,
    val guidanceScale: Float = 7.5f,
    val seed: Long = -1L,
    val sampler: String? = null,
    val previewEvery: Int = 5,
    val preferGpu: Boolean = true,
    val lowMemory: Boolean = false,
    val cpuThreads: Int = 0,
    val strength: Double = 0.75,
    val status: String = "",
    val lastSeed: Long? = null
) {
    /** The settings that cannot start a generation, one message per field; empty when all are usable. */
    fun problems(): List<String> {
        val found = ArrayList<String>()
        if (steps < 1 || steps > ImageGenerator.MAX_STEPS) found.add("steps must be in [1, ${ImageGenerator.MAX_STEPS}], got $steps")
        if (guidanceScale.isNaN() || guidanceScale.isInfinite() || guidanceScale < 0f) {
            found.add("guidance scale must be finite and >= 0, got $guidanceScale")
        }
        if (seed < -1L) found.add("seed must be -1 (random) or >= 0, got $seed")
        if (previewEvery < 0) found.add("preview every N steps must be >= 0, got $previewEvery")
        if (cpuThreads < 0 || cpuThreads > ThreadChoice.MAX_THREADS) {
            found.add("CPU threads must be in [0, ${ThreadChoice.MAX_THREADS}] (0: automatic), got $cpuThreads")
        }
        if (strength.isNaN() || strength < 0.0 || strength > 1.0) found.add("strength must be in [0, 1], got $strength")
        return found
    }

    fun copy(
        bundle: String? = this.bundle,
        prompt: String = this.prompt,
        negativePrompt: String = this.negativePrompt,
        steps: Int = this.steps,
        guidanceScale: Float = this.guidanceScale,
        seed: Long = this.seed,
        sampler: String? = this.sampler,
        previewEvery: Int = this.previewEvery,
        preferGpu: Boolean = this.preferGpu,
        lowMemory: Boolean = this.lowMemory,
        cpuThreads: Int = this.cpuThreads,
        strength: Double = this.strength,
        status: String = this.status,
        lastSeed: Long? = this.lastSeed
    ) = AppState(bundle, prompt, negativePrompt, steps, guidanceScale, seed, sampler, previewEvery, preferGpu,
        lowMemory, cpuThreads, strength, status, lastSeed)

    /** One JSON object; [fromJson] reads it back exactly (floats and doubles print with full precision). */
    fun toJson(): String {
        val fields = ArrayList<String>()
        fun add(key: String, value: String) = fields.add("${quote(key)}:$value")
        add("version", VERSION.toString())
        add("bundle", if (bundle == null) "null" else quote(bundle))
        add("prompt", quote(prompt))
        add("negative_prompt", quote(negativePrompt))
        add("steps", steps.toString())
        add("guidance_scale", guidanceScale.toDouble().toString())
        add("seed", seed.toString())
        add("sampler", if (sampler == null) "null" else quote(sampler))
        add("preview_every", previewEvery.toString())
        add("prefer_gpu", preferGpu.toString())
        add("low_memory", lowMemory.toString())
        add("cpu_threads", cpuThreads.toString())
        add("strength", strength.toString())
        add("status", quote(status))
        add("last_seed", lastSeed?.toString() ?: "null")
        return fields.joinToString(",", "{", "}")
    }

    override fun equals(other: Any?) = other is AppState && other.toJson() == toJson()

    override fun hashCode() = toJson().hashCode()

    override fun toString() = "AppState${toJson()}"

    companion object {
        const val VERSION = 1

        /**
         * Read [toJson]'s text. Unknown fields are ignored and missing ones take their defaults.
         *
         * @throws IllegalArgumentException not a JSON object, a field of the wrong type, or a newer version.
         */
        @JvmStatic
        fun fromJson(text: String): AppState {
            val json = JsonObject.parse(text, "state")
            val defaults = AppState()
            if (json.has("version") && json.long("version") > VERSION) {
                throw IllegalArgumentException("state.version ${json.long("version")} is newer than this app ($VERSION)")
            }
            fun nullableString(key: String, default: String?) = if (json.has(key)) json.optionalString(key) else default
            fun string(key: String, default: String) = if (json.has(key)) json.string(key) else default
            fun int(key: String, default: Int) = if (json.has(key)) json.int(key) else default
            fun long(key: String, default: Long) = if (json.has(key)) json.long(key) else default
            fun double(key: String, default: Double) = if (json.has(key)) json.double(key) else default
            fun boolean(key: String, default: Boolean) = if (json.has(key)) json.boolean(key) else default
            return AppState(
                bundle = nullableString("bundle", defaults.bundle),
                prompt = string("prompt", defaults.prompt),
                negativePrompt = string("negative_prompt", defaults.negativePrompt),
                steps = int("steps", defaults.steps),
                guidanceScale = double("guidance_scale", defaults.guidanceScale.toDouble()).toFloat(),
                seed = long("seed", defaults.seed),
                sampler = nullableString("sampler", defaults.sampler),
                previewEvery = int("preview_every", defaults.previewEvery),
                preferGpu = boolean("prefer_gpu", defaults.preferGpu),
                lowMemory = boolean("low_memory", defaults.lowMemory),
                cpuThreads = int("cpu_threads", defaults.cpuThreads),
                strength = double("strength", defaults.strength),
                status = string("status", defaults.status),
                lastSeed = if (json.has("last_seed") && json.map["last_seed"] != null) json.long("last_seed") else null
            )
        }

        /** A JSON string literal (quotes, backslashes and control characters escaped). */
        @JvmStatic
        fun quote(text: String): String {
            val out = StringBuilder(text.length + 2)
            out.append('"')
            for (index in text.indices) {
                val char = text[index]
                when {
                    char == '"' -> out.append("\\\"")
                    char == '\\' -> out.append("\\\\")
                    char == '\n' -> out.append("\\n")
                    char == '\r' -> out.append("\\r")
                    char == '\t' -> out.append("\\t")
                    char < ' ' -> out.append(String.format("\\u%04x", text.codePointAt(index)))
                    else -> out.append(char)
                }
            }
            out.append('"')
            return out.toString()
        }
    }
}

/**
 * The sampler to show when a bundle is loaded: the one the user chose before if this bundle offers it, else the
 * bundle's default, else its first.
 */
object SamplerChoice {
    @JvmStatic
    fun choose(previous: String?, available: List<String>, bundleDefault: String): String {
        if (available.isEmpty()) throw IllegalArgumentException("the bundle lists no samplers")
        if (previous != null && previous in available) return previous
        if (bundleDefault in available) return bundleDefault
        return available[0]
    }
}

/**
 * XNNPACK's thread count on the CPU path. Phones have big and little cores; more threads than big cores makes
 * a step slower, so "automatic" takes half the cores (at least 1, at most 4). A user's choice is capped at the
 * core count.
 */
object ThreadChoice {
    const val MAX_THREADS = 16

    @JvmStatic
    fun threads(requested: Int, availableProcessors: Int): Int {
        val cores = Math.max(1, availableProcessors)
        if (requested > 0) return Math.min(requested, cores)
        return Math.max(1, Math.min(4, cores / 2))
    }
}
