package org.sdkeras.core

import java.io.File
import java.nio.file.Files
import org.junit.After
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Before
import org.junit.Test

/** SDXL bundles (format_version 2, family "sdxl"): what the reader takes from the manifest, and what it refuses. */
class SdxlBundleTest {
    private lateinit var directory: File

    @Before
    fun createBundle() {
        directory = Files.createTempDirectory("sdkeras-sdxl-bundle").toFile()
        Golden.mergesFile().copyTo(File(directory, "merges.txt.gz"))
        for (name in listOf("text_encoder", "text_encoder_2", "diffusion_model", "decoder")) {
            File(directory, "$name.tflite").writeText("not really a model: $name")
        }
        File(directory, "manifest.json").writeText(manifest())
    }

    @After
    fun deleteBundle() {
        directory.deleteRecursively()
    }

    private fun hash(name: String) = Bundle.sha256(File(directory, name))

    private fun tensor(name: String, vararg shape: Int, dtype: String = "float32") =
        """{"name": "$name", "shape": [${shape.joinToString()}], "dtype": "$dtype"}"""

    private fun component(name: String, inputs: List<String>, outputs: List<String>) = """
        "$name": {"file": "$name.tflite", "sha256": "${hash("$name.tflite")}", "quantization": "fp16",
                  "signature": "$name", "inputs": [${inputs.joinToString()}], "outputs": [${outputs.joinToString()}]}"""

    private val tokens = listOf(tensor("tokens", 1, 77, dtype = "int32"), tensor("positions", 1, 77, dtype = "int32"))

    /** A base SDXL manifest at 64x64 with small widths (768 + 1280 context, 1280 pooled, 6 x 256 time ids). */
    private fun manifest(
        version: String = "2",
        family: String? = "\"sdxl\"",
        encoders: List<String> = listOf("text_encoder", "text_encoder_2"),
        unetContext: Int = 2048,
        micro: String = """{"original_size": [64, 64], "crops_coords_top_left": [0, 0], "target_size": [64, 64]}""",
        addedWidth: Int = 1280 + 6 * 256
    ): String {
        val components = ArrayList<String>()
        if ("text_encoder" in encoders) components.add(component("text_encoder", tokens, listOf(tensor("context", 1, 77, 768))))
        if ("text_encoder_2" in encoders) {
            components.add(component("text_encoder_2", tokens,
                listOf(tensor("context", 1, 77, 1280), tensor("pooled", 1, 1280))))
        }
        components.add(component("diffusion_model", listOf(tensor("latent", 2, 8, 8, 4),
            tensor("timestep_embedding", 2, 320), tensor("context", 2, 77, unetContext),
            tensor("added_embedding", 2, addedWidth)), listOf(tensor("model_output", 2, 8, 8, 4))))
        components.add(component("decoder", listOf(tensor("latent", 1, 8, 8, 4)), listOf(tensor("image", 1, 64, 64, 3))))
        val tokenizer = { pad: Int ->
            """{"file": "merges.txt.gz", "sha256": "${hash("merges.txt.gz")}", "context_length": 77,
                "start_id": 49406, "end_id": 49407, "pad_id": $pad}"""
        }
        return """{
          "format": "sd_keras.bundle", "format_version": $version, ${if (family == null) "" else "\"family\": $family,"}
          "model": "sd-xl", "image_size": [64, 64], "latent_size": [8, 8, 4], "latent_scale_factor": 0.13025,
          "prediction_type": "epsilon",
          "schedule": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "steps_offset": 1},
          "default_sampler": "Euler", "samplers": ["DDIM", "Euler", "Euler a"], "timestep_embedding_dim": 320,
          "tokenizer": ${tokenizer(49407)}, "tokenizer_2": ${tokenizer(0)},
          "pooled_dim": 1280, "addition_time_embed_dim": 256,
          "micro_conditioning": $micro, "force_zeros_for_empty_prompt": true,
          "components": {${components.joinToString(",")}},
          "quantization": "fp16"
        }"""
    }

    private fun expectRefused(text: String, vararg words: String) {
        File(directory, "manifest.json").writeText(text)
        try {
            Bundle.open(directory)
            fail("a bad SDXL bundle was opened")
        } catch (expected: BundleException) {
            for (word in words) assertTrue("'${expected.message}' should mention '$word'", expected.message!!.contains(word))
        }
    }

    @Test
    fun readsTheSdxlFields() {
        val bundle = Bundle.open(directory)
        val manifest = bundle.manifest
        assertEquals(2, manifest.formatVersion)
        assertEquals("sdxl", manifest.family)
        assertEquals(0, manifest.tokenizer2!!.padId)
        val sdxl = manifest.sdxl!!
        assertEquals(listOf("text_encoder", "text_encoder_2"), sdxl.textEncoders)
        assertArrayEquals(intArrayOf(49407, 0), sdxl.padIds)
        assertArrayEquals(intArrayOf(768, 1280), sdxl.contextWidths)
        assertEquals(1280, sdxl.pooledDim)
        assertEquals(256, sdxl.additionTimeEmbedDim)
        assertEquals(1280 + 6 * 256, sdxl.addedEmbeddingDim)
        assertArrayEquals(floatArrayOf(64f, 64f, 0f, 0f, 64f, 64f), sdxl.timeIds, 0f)
        assertArrayEquals(sdxl.timeIds, sdxl.negativeTimeIds, 0f)
        assertTrue(sdxl.forceZerosForEmptyPrompt)
        assertEquals(0.13025, manifest.latentScaleFactor, 0.0)
        assertTrue(GeneratorConfig.fromManifest(manifest).sdxl === sdxl)
        assertEquals(File(directory, "text_encoder_2.tflite"), bundle.file("text_encoder_2"))
    }

    @Test
    fun readsARefinerWithOneEncoderAndAestheticScores() {
        File(directory, "text_encoder.tflite").delete()
        File(directory, "manifest.json").writeText(manifest(encoders = listOf("text_encoder_2"), unetContext = 1280,
            micro = """{"original_size": [64, 64], "crops_coords_top_left": [0, 0], "aesthetic_score": 6.0,
                        "negative_aesthetic_score": 2.5}""", addedWidth = 1280 + 5 * 256))
        val sdxl = Bundle.open(directory).manifest.sdxl!!
        assertEquals(listOf("text_encoder_2"), sdxl.textEncoders)
        assertArrayEquals(intArrayOf(0), sdxl.padIds)
        assertArrayEquals(floatArrayOf(64f, 64f, 0f, 0f, 6f), sdxl.timeIds, 0f)
        assertArrayEquals(floatArrayOf(64f, 64f, 0f, 0f, 2.5f), sdxl.negativeTimeIds, 0f)
    }

    @Test
    fun refusesOtherVersionsAndFamilies() {
        expectRefused(manifest(version = "3"), "format_version 3", "not supported")
        expectRefused(manifest(family = "\"sd\""), "format_version 2", "family", "\"sdxl\"")
        expectRefused(manifest(family = null), "format_version 2", "family", "missing")
        expectRefused(manifest(version = "1"), "format_version 1", "\"sdxl\"")
    }

    @Test
    fun refusesAMissingSecondTextEncoder() {
        expectRefused(manifest(encoders = listOf("text_encoder"), unetContext = 768), "text_encoder_2")
    }

    @Test
    fun refusesShapesThatDoNotFitTogether() {
        expectRefused(manifest(unetContext = 1280), "context", "2048")
        expectRefused(manifest(addedWidth = 1280 + 6 * 128), "addition_time_embed_dim 256", "added_embedding")
        expectRefused(manifest(micro = """{"original_size": [64], "crops_coords_top_left": [0, 0], "target_size": [64, 64]}"""),
            "original_size", "two numbers")
        expectRefused(manifest().replace("\"tokenizer_2\"", "\"tokenizer_x\""), "tokenizer_2")
        expectRefused(manifest().replace("\"pooled_dim\": 1280", "\"pooled_dim\": 1024"), "pooled_dim 1024", "1280")
    }

    @Test
    fun checksTheSecondTokenizerFile() {
        File(directory, "merges_2.txt.gz").writeBytes(File(directory, "merges.txt.gz").readBytes() + 0)
        val text = manifest()
        val second = text.indexOf("\"tokenizer_2\"")
        File(directory, "manifest.json").writeText(text.substring(0, second) +
            text.substring(second).replaceFirst("\"file\": \"merges.txt.gz\"", "\"file\": \"merges_2.txt.gz\""))
        try {
            Bundle.open(directory)
            fail("a modified tokenizer_2 file was accepted")
        } catch (expected: BundleException) {
            assertTrue(expected.message!!, expected.message!!.contains("tokenizer_2") && expected.message!!.contains("sha256"))
        }
    }
}
