package org.sdkeras.core

/** A bundle that cannot be used (no manifest, unknown format or version, missing or modified file, bad field). */
class BundleException(message: String, cause: Throwable? = null) : Exception(message, cause)

/** One input or output tensor of a component: its signature name, shape and dtype ("float32" or "int32"). */
class TensorSpec(val name: String, val shape: IntArray, val dtype: String) {
    val size: Int get() = shape.fold(1) { product, dimension -> product * dimension }

    override fun toString() = "$name${shape.joinToString(",", "(", ")")} $dtype"
}

/**
 * A component of the bundle and its named signature: one `.tflite` [file], or, for a UNet exported as consecutive
 * [parts] (each with its own file and signature; tensors pass from part to part by name), [file] and [sha256]
 * are null and [inputs]/[outputs] are those of the whole chain.
 */
class ComponentSpec(
    val name: String,
    val file: String?,
    val sha256: String?,
    val quantization: String?,
    val signature: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val parts: List<ComponentSpec> = emptyList()
) {
    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw BundleException("component ${this.name} has no input \"$name\" (inputs: ${inputs.joinToString()})")

    /** The entries that own a file: this component, or its parts in order. */
    val fileEntries: List<ComponentSpec> get() = if (parts.isEmpty()) listOf(this) else parts
}

/** The tokenizer entry: the merges file and the special ids. */
class TokenizerSpec(
    val file: String,
    val sha256: String,
    val contextLength: Int,
    val startId: Int,
    val endId: Int,
    val padId: Int
)

/**
 * `manifest.json` of a bundle made by `sd-keras export` (specification: export/BUNDLE.md), checked field by field.
 * Unknown extra fields are allowed; a missing or malformed one is a [BundleException] naming it.
 *
 * Example:
 * ```
 * val manifest = BundleManifest.parse(File(dir, "manifest.json").readText())
 * manifest.imageWidth        // 128
 * manifest.components.keys   // [text_encoder, diffusion_model, decoder, image_encoder]
 * ```
 */
class BundleManifest(
    val model: String,
    val imageHeight: Int,
    val imageWidth: Int,
    val latentHeight: Int,
    val latentWidth: Int,
    val latentChannels: Int,
    val latentScaleFactor: Double,
    val schedule: NoiseSchedule,
    val defaultSampler: String,
    val samplers: List<String>,
    val timestepEmbeddingDim: Int,
    val tokenizer: TokenizerSpec,
    val components: Map<String, ComponentSpec>,
    val quantization: String?
) {
    val predictionType: String get() = schedule.predictionType

    fun component(name: String): ComponentSpec = components[name]
        ?: throw BundleException("the bundle has no $name component (it has ${components.keys.joinToString()})")

    companion object {
        const val FORMAT = "sd_keras.bundle"
        const val FORMAT_VERSION = 1L
        const val FILE_NAME = "manifest.json"
        val REQUIRED_COMPONENTS = listOf("text_encoder", "diffusion_model", "decoder")
        val KNOWN_COMPONENTS = REQUIRED_COMPONENTS + "image_encoder"

        /** Parse and check a manifest's text. */
        @JvmStatic
        fun parse(text: String): BundleManifest {
            val root = try {
                JsonObject.parse(text, "manifest")
            } catch (error: JsonException) {
                throw BundleException("$FILE_NAME is not valid JSON: ${error.message}", error)
            }
            try {
                return read(root)
            } catch (error: JsonException) {
                throw BundleException("$FILE_NAME: ${error.message}", error)
            } catch (error: IllegalArgumentException) {
                throw BundleException("$FILE_NAME: ${error.message}", error)
            }
        }

        private fun read(root: JsonObject): BundleManifest {
            val format = if (root.has("format")) root.map["format"] else null
            if (format != FORMAT) {
                throw BundleException("$FILE_NAME has format ${describe(format)}, expected \"$FORMAT\"; not an sd_keras bundle")
            }
            val version = root.map["format_version"]
            if (version != FORMAT_VERSION) {
                throw BundleException(
                    "format_version ${describe(version)} is not supported (this app reads version $FORMAT_VERSION); " +
                        "export the bundle with a matching sd-keras or update the app"
                )
            }
            val imageSize = root.ints("image_size")
            if (imageSize.size != 2 || imageSize.any { it < 8 }) {
                throw JsonException("manifest.image_size must be [height, width], got ${imageSize.joinToString()}")
            }
            val latentSize = root.ints("latent_size")
            if (latentSize.size != 3 || latentSize.any { it < 1 }) {
                throw JsonException("manifest.latent_size must be [height, width, channels], got ${latentSize.joinToString()}")
            }
            val scheduleJson = root.obj("schedule")
            val betaSchedule = scheduleJson.string("beta_schedule")
            if (betaSchedule != NoiseSchedule.SCALED_LINEAR) {
                throw JsonException("manifest.schedule.beta_schedule \"$betaSchedule\" is not supported (only " +
                    "\"${NoiseSchedule.SCALED_LINEAR}\")")
            }
            val schedule = NoiseSchedule(
                scheduleJson.int("num_train_timesteps"), scheduleJson.double("beta_start"),
                scheduleJson.double("beta_end"), root.string("prediction_type"), scheduleJson.int("steps_offset")
            )
            val tokenizerJson = root.obj("tokenizer")
            val tokenizer = TokenizerSpec(
                plainFileName(tokenizerJson, "file"), tokenizerJson.string("sha256"),
                tokenizerJson.int("context_length"), tokenizerJson.int("start_id"), tokenizerJson.int("end_id"),
                tokenizerJson.int("pad_id")
            )
            if (tokenizer.startId != ClipTokenizer.START_ID || tokenizer.endId != ClipTokenizer.END_ID) {
                throw JsonException("manifest.tokenizer start_id/end_id ${tokenizer.startId}/${tokenizer.endId} are " +
                    "not CLIP's ${ClipTokenizer.START_ID}/${ClipTokenizer.END_ID}")
            }
            if (tokenizer.contextLength < 2 || tokenizer.padId < 0 || tokenizer.padId >= ClipTokenizer.VOCAB_SIZE) {
                throw JsonException("manifest.tokenizer context_length/pad_id are out of range")
            }
            val componentsJson = root.obj("components")
            val components = LinkedHashMap<String, ComponentSpec>()
            for (name in componentsJson.map.keys) {
                if (name !in KNOWN_COMPONENTS) {
                    throw JsonException("manifest.components has an unknown component \"$name\" (known: " +
                        "${KNOWN_COMPONENTS.joinToString()})")
                }
                components[name] = readComponent(name, componentsJson.obj(name))
            }
            for (name in REQUIRED_COMPONENTS) {
                if (name !in components) throw JsonException("manifest.components lacks \"$name\"")
            }
            val samplers = root.strings("samplers")
            return BundleManifest(
                root.string("model"), imageSize[0], imageSize[1], latentSize[0], latentSize[1], latentSize[2],
                root.double("latent_scale_factor"), schedule, root.string("default_sampler"), samplers,
                root.int("timestep_embedding_dim"), tokenizer, components, root.optionalString("quantization")
            )
        }

        private fun readComponent(name: String, json: JsonObject): ComponentSpec {
            fun specs(key: String): List<TensorSpec> = json.objects(key).map {
                val dtype = it.string("dtype")
                if (dtype != "float32" && dtype != "int32") {
                    throw JsonException("${it.path}.dtype \"$dtype\" is not supported (float32 or int32)")
                }
                val shape = it.ints("shape")
                if (shape.any { dimension -> dimension < 1 }) throw JsonException("${it.path}.shape must be positive")
                TensorSpec(it.string("name"), shape, dtype)
            }
            if (json.has("parts")) {
                val parts = json.objects("parts").mapIndexed { index, part -> readComponent("$name part $index", part) }
                if (parts.isEmpty()) throw JsonException("${json.path}.parts must not be empty")
                return ComponentSpec(
                    name, null, null, json.optionalString("quantization"), json.string("signature"), specs("inputs"),
                    specs("outputs"), parts
                )
            }
            return ComponentSpec(
                name, plainFileName(json, "file"), json.string("sha256"), json.optionalString("quantization"),
                json.string("signature"), specs("inputs"), specs("outputs")
            )
        }

        private fun plainFileName(json: JsonObject, key: String): String {
            val name = json.string(key)
            if (name.length == 0 || name.contains('/') || name.contains('\\') || name == "." || name == "..") {
                throw JsonException("${json.path}.$key \"$name\" must be a plain file name inside the bundle")
            }
            return name
        }

        private fun describe(value: Any?) = when (value) {
            null -> "null (missing)"
            is String -> "\"$value\""
            else -> value.toString()
        }
    }
}
