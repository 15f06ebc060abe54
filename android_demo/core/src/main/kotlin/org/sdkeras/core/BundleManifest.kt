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
 * What an SDXL bundle (`format_version` 2, `"family": "sdxl"`) adds to the manifest: its text encoders in context
 * order with the pad id of each, the UNet's `added_embedding` recipe and the micro-conditioning values.
 *
 * @property textEncoders the bundle's text encoders in the order their contexts are concatenated: `text_encoder`
 *   and `text_encoder_2` (the base model), or `text_encoder_2` alone (the refiner).
 * @property padIds what each of [textEncoders] pads its token row with after the first end token (its tokenizer
 *   entry's `pad_id`: 49407 for CLIP ViT-L, 0 for OpenCLIP ViT-bigG).
 * @property contextWidths the `context` width of each of [textEncoders]; the UNet's context is their sum.
 * @property pooledDim the width of `text_encoder_2`'s `pooled` output.
 * @property additionTimeEmbedDim the sinusoid width of each time id in `added_embedding`.
 * @property timeIds the conditional row's time ids: original_size + crops_coords_top_left + target_size (base) or
 *   original_size + crops_coords_top_left + aesthetic_score (refiner).
 * @property negativeTimeIds the unconditional row's: the same, with `negative_aesthetic_score` for a refiner.
 * @property forceZerosForEmptyPrompt an empty negative prompt is a zero context and a zero pooled embedding.
 */
class SdxlSpec(
    val textEncoders: List<String>,
    val padIds: IntArray,
    val contextWidths: IntArray,
    val pooledDim: Int,
    val additionTimeEmbedDim: Int,
    val timeIds: FloatArray,
    val negativeTimeIds: FloatArray,
    val forceZerosForEmptyPrompt: Boolean
) {
    val contextWidth: Int get() = contextWidths.sum()

    /** The width of the UNet's `added_embedding` input: pooled + one sinusoid per time id. */
    val addedEmbeddingDim: Int get() = pooledDim + timeIds.size * additionTimeEmbedDim
}

/**
 * `manifest.json` of a bundle made by `sd-keras export` (specification: export/BUNDLE.md), checked field by field.
 * Unknown extra fields are allowed; a missing or malformed one is a [BundleException] naming it.
 *
 * `format_version` 1 is an SD 1.x/2.x bundle; 2 an SDXL one (`"family": "sdxl"`: two text encoders, the
 * `tokenizer_2` entry, `micro_conditioning` and the UNet's `added_embedding` input, see [SdxlSpec]). Any other
 * version, or a version 2 manifest of another family, is refused.
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
    val quantization: String?,
    /** 1 (SD 1.x/2.x) or 2 (SDXL). */
    val formatVersion: Int = 1,
    /** "sd" for version 1 bundles, "sdxl" for version 2. */
    val family: String = FAMILY_SD,
    /** The second text encoder's tokenizer entry (SDXL); same merges file, its own pad id. */
    val tokenizer2: TokenizerSpec? = null,
    /** The SDXL conditioning (version 2), else null. */
    val sdxl: SdxlSpec? = null
) {
    val predictionType: String get() = schedule.predictionType

    val isSdxl: Boolean get() = sdxl != null

    fun component(name: String): ComponentSpec = components[name]
        ?: throw BundleException("the bundle has no $name component (it has ${components.keys.joinToString()})")

    companion object {
        const val FORMAT = "sd_keras.bundle"
        const val FORMAT_VERSION = 1L
        /** The SDXL bundle version (`"family": "sdxl"`). */
        const val SDXL_FORMAT_VERSION = 2L
        val SUPPORTED_VERSIONS = listOf(FORMAT_VERSION, SDXL_FORMAT_VERSION)
        const val FAMILY_SD = "sd"
        const val FAMILY_SDXL = "sdxl"
        const val FILE_NAME = "manifest.json"
        val REQUIRED_COMPONENTS = listOf("text_encoder", "diffusion_model", "decoder")
        val KNOWN_COMPONENTS = REQUIRED_COMPONENTS + "image_encoder"
        /** SDXL: `text_encoder` is absent in a refiner bundle (one OpenCLIP encoder). */
        val SDXL_REQUIRED_COMPONENTS = listOf("text_encoder_2", "diffusion_model", "decoder")
        val SDXL_KNOWN_COMPONENTS = listOf("text_encoder", "text_encoder_2", "diffusion_model", "decoder",
            "image_encoder")

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
            if (SUPPORTED_VERSIONS.none { it == version }) {
                throw BundleException(
                    "format_version ${describe(version)} is not supported (this app reads versions " +
                        "${SUPPORTED_VERSIONS.joinToString(" and ")}); export the bundle with a matching sd-keras " +
                        "or update the app"
                )
            }
            val sdxlBundle = version == SDXL_FORMAT_VERSION
            val familyValue = if (root.has("family")) root.map["family"] else null
            if (sdxlBundle && familyValue != FAMILY_SDXL) {
                throw BundleException("format_version 2 is an SDXL bundle but its family is ${describe(familyValue)}, " +
                    "expected \"$FAMILY_SDXL\"")
            }
            if (!sdxlBundle && familyValue != null && familyValue != FAMILY_SD) {
                throw BundleException("format_version 1 is an SD 1.x/2.x bundle but its family is " +
                    "${describe(familyValue)}; an SDXL bundle has format_version 2")
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
            val tokenizer = readTokenizer(root, "tokenizer")
            val tokenizer2 = if (sdxlBundle) readTokenizer(root, "tokenizer_2") else null
            if (tokenizer2 != null && tokenizer2.contextLength != tokenizer.contextLength) {
                throw JsonException("manifest.tokenizer_2.context_length ${tokenizer2.contextLength} differs from " +
                    "manifest.tokenizer's ${tokenizer.contextLength} (the prompt is tokenized once)")
            }
            val known = if (sdxlBundle) SDXL_KNOWN_COMPONENTS else KNOWN_COMPONENTS
            val componentsJson = root.obj("components")
            val components = LinkedHashMap<String, ComponentSpec>()
            for (name in componentsJson.map.keys) {
                if (name !in known) {
                    throw JsonException("manifest.components has an unknown component \"$name\" (known: " +
                        "${known.joinToString()})")
                }
                components[name] = readComponent(name, componentsJson.obj(name))
            }
            for (name in if (sdxlBundle) SDXL_REQUIRED_COMPONENTS else REQUIRED_COMPONENTS) {
                if (name !in components) throw JsonException("manifest.components lacks \"$name\"")
            }
            val samplers = root.strings("samplers")
            val sdxl = if (sdxlBundle) readSdxl(root, components, tokenizer, tokenizer2!!) else null
            return BundleManifest(
                root.string("model"), imageSize[0], imageSize[1], latentSize[0], latentSize[1], latentSize[2],
                root.double("latent_scale_factor"), schedule, root.string("default_sampler"), samplers,
                root.int("timestep_embedding_dim"), tokenizer, components, root.optionalString("quantization"),
                version.toString().toInt(), if (sdxlBundle) FAMILY_SDXL else FAMILY_SD, tokenizer2, sdxl
            )
        }

        private fun readTokenizer(root: JsonObject, key: String): TokenizerSpec {
            val json = root.obj(key)
            val tokenizer = TokenizerSpec(
                plainFileName(json, "file"), json.string("sha256"), json.int("context_length"),
                json.int("start_id"), json.int("end_id"), json.int("pad_id")
            )
            if (tokenizer.startId != ClipTokenizer.START_ID || tokenizer.endId != ClipTokenizer.END_ID) {
                throw JsonException("manifest.$key start_id/end_id ${tokenizer.startId}/${tokenizer.endId} are " +
                    "not CLIP's ${ClipTokenizer.START_ID}/${ClipTokenizer.END_ID}")
            }
            if (tokenizer.contextLength < 2 || tokenizer.padId < 0 || tokenizer.padId >= ClipTokenizer.VOCAB_SIZE) {
                throw JsonException("manifest.$key context_length/pad_id are out of range")
            }
            return tokenizer
        }

        /** The SDXL fields, checked against the components' signatures (export/BUNDLE.md "SDXL bundles"). */
        private fun readSdxl(
            root: JsonObject,
            components: Map<String, ComponentSpec>,
            tokenizer: TokenizerSpec,
            tokenizer2: TokenizerSpec
        ): SdxlSpec {
            val encoders = listOf("text_encoder", "text_encoder_2").filter { it in components }
            val padIds = encoders.map { if (it == "text_encoder") tokenizer.padId else tokenizer2.padId }.toIntArray()
            val widths = IntArray(encoders.size)
            for ((index, name) in encoders.withIndex()) {
                val spec = components.getValue(name)
                val context = output(spec, "context")
                if (context.shape.size != 3 || context.shape[1] != tokenizer.contextLength) {
                    throw JsonException("manifest.components.$name output \"context\" must be (1, " +
                        "${tokenizer.contextLength}, width), got $context")
                }
                widths[index] = context.shape[2]
            }
            val pooled = output(components.getValue("text_encoder_2"), "pooled")
            if (pooled.shape.size != 2) {
                throw JsonException("manifest.components.text_encoder_2 output \"pooled\" must be (1, width), got $pooled")
            }
            val pooledDim = pooled.shape[1]
            if (root.has("pooled_dim") && root.int("pooled_dim") != pooledDim) {
                throw JsonException("manifest.pooled_dim ${root.int("pooled_dim")} differs from text_encoder_2's " +
                    "\"pooled\" output width $pooledDim")
            }
            val micro = root.obj("micro_conditioning")
            val (timeIds, negativeTimeIds) = timeIds(micro)
            val unet = components.getValue("diffusion_model")
            for (name in listOf("latent", "timestep_embedding", "context", "added_embedding")) unet.input(name)
            val contextShape = unet.input("context").shape
            if (contextShape.size != 3 || contextShape[2] != widths.sum()) {
                throw JsonException("manifest.components.diffusion_model input \"context\" is " +
                    "${unet.input("context")}, but the text encoders' contexts concatenate to width ${widths.sum()} " +
                    "(${encoders.joinToString(" + ")})")
            }
            val added = unet.input("added_embedding").shape
            val timeWidth = added.last() - pooledDim
            if (added.size != 2 || timeWidth <= 0 || timeWidth % timeIds.size != 0) {
                throw JsonException("manifest.components.diffusion_model input \"added_embedding\" " +
                    "${unet.input("added_embedding")} is not pooled ($pooledDim) + ${timeIds.size} time-id sinusoids")
            }
            val derived = timeWidth / timeIds.size
            val dim = when {
                root.has("addition_time_embed_dim") -> root.int("addition_time_embed_dim")
                micro.has("addition_time_embed_dim") -> micro.int("addition_time_embed_dim")
                else -> derived
            }
            if (dim != derived || dim % 2 != 0) {
                throw JsonException("manifest addition_time_embed_dim $dim does not match the UNet's " +
                    "added_embedding width ${added.last()} = $pooledDim + ${timeIds.size} x $derived (and must be even)")
            }
            val forceZeros = if (root.has("force_zeros_for_empty_prompt")) root.boolean("force_zeros_for_empty_prompt") else false
            return SdxlSpec(encoders, padIds, widths, pooledDim, dim, timeIds, negativeTimeIds, forceZeros)
        }

        /**
         * The (conditional, unconditional) time ids of a manifest's `micro_conditioning`: `original_size` +
         * `crops_coords_top_left` + `target_size` for both rows (base), or `original_size` +
         * `crops_coords_top_left` + `aesthetic_score` / `negative_aesthetic_score` (refiner).
         */
        internal fun timeIds(micro: JsonObject): Pair<FloatArray, FloatArray> {
            fun pair(key: String): FloatArray {
                val values = micro.floats(key)
                if (values.size != 2) throw JsonException("${micro.path}.$key must be two numbers, got ${values.size}")
                return values
            }
            val original = pair("original_size")
            val crops = pair("crops_coords_top_left")
            if (micro.has("aesthetic_score")) {  // the refiner
                return Pair(original + crops + floatArrayOf(micro.double("aesthetic_score").toFloat()),
                    original + crops + floatArrayOf(micro.double("negative_aesthetic_score").toFloat()))
            }
            val positive = original + crops + pair("target_size")
            return Pair(positive, positive)
        }

        private fun output(spec: ComponentSpec, name: String): TensorSpec = spec.outputs.firstOrNull { it.name == name }
            ?: throw JsonException("manifest.components.${spec.name} has no output \"$name\" (outputs: " +
                "${spec.outputs.joinToString()})")

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
