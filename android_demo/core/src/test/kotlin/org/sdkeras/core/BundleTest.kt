package org.sdkeras.core

import java.io.File
import java.nio.file.Files
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Before
import org.junit.Test

/** Opening bundles: the manifest fields, and every way a bundle on a phone can be broken. */
class BundleTest {
    private lateinit var directory: File

    @Before
    fun createBundle() {
        directory = Files.createTempDirectory("sdkeras-bundle").toFile()
        Golden.mergesFile().copyTo(File(directory, "merges.txt.gz"))
        for (name in listOf("text_encoder", "diffusion_model", "decoder")) {
            File(directory, "$name.tflite").writeText("not really a model: $name")
        }
        writeManifest()
    }

    @After
    fun deleteBundle() {
        directory.deleteRecursively()
    }

    private fun hash(name: String) = Bundle.sha256(File(directory, name))

    private fun component(name: String, inputs: String, outputs: String) = """
        "$name": {"file": "$name.tflite", "sha256": "${hash("$name.tflite")}", "quantization": "fp32",
                  "signature": "$name", "inputs": [$inputs], "outputs": [$outputs], "large_model_layout": false}"""

    private fun writeManifest(format: String = "\"sd_keras.bundle\"", version: String = "1", withDecoder: Boolean = true) {
        val latent = """{"name": "latent", "shape": [2, 16, 16, 4], "dtype": "float32"}"""
        File(directory, "manifest.json").writeText("""{
          "format": $format, "format_version": $version, "model": "shapes",
          "image_size": [128, 128], "latent_size": [16, 16, 4], "latent_scale_factor": 0.18215,
          "prediction_type": "epsilon",
          "schedule": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "steps_offset": 1},
          "default_sampler": "DDIM KerasCV", "samplers": ["DDIM", "Euler a"], "timestep_embedding_dim": 320,
          "tokenizer": {"file": "merges.txt.gz", "sha256": "${hash("merges.txt.gz")}", "context_length": 77,
                        "start_id": 49406, "end_id": 49407, "pad_id": 49407},
          "components": {${component("text_encoder",
            """{"name": "tokens", "shape": [1, 77], "dtype": "int32"}, {"name": "positions", "shape": [1, 77], "dtype": "int32"}""",
            """{"name": "context", "shape": [1, 77, 64], "dtype": "float32"}""")},
            ${component("diffusion_model", latent, """{"name": "model_output", "shape": [2, 16, 16, 4], "dtype": "float32"}""")}
            ${if (!withDecoder) "" else "," + component("decoder", """{"name": "latent", "shape": [1, 16, 16, 4], "dtype": "float32"}""",
            """{"name": "image", "shape": [1, 128, 128, 3], "dtype": "float32"}""")}},
          "quantization": "fp32", "producer": {"name": "sd_keras"}
        }""")
    }

    private fun expectBroken(vararg words: String) {
        try {
            Bundle.open(directory)
            fail("a broken bundle was opened")
        } catch (expected: BundleException) {
            for (word in words) assertTrue("'${expected.message}' should mention '$word'", expected.message!!.contains(word))
        }
    }

    @Test
    fun opensAGoodBundle() {
        val bundle = Bundle.open(directory)
        val manifest = bundle.manifest
        assertEquals("shapes", manifest.model)
        assertEquals(128, manifest.imageHeight)
        assertEquals(16, manifest.latentWidth)
        assertEquals(320, manifest.timestepEmbeddingDim)
        assertEquals(listOf("text_encoder", "diffusion_model", "decoder"), manifest.components.keys.toList())
        assertEquals(listOf(2, 16, 16, 4), manifest.component("diffusion_model").input("latent").shape.toList())
        assertEquals("int32", manifest.component("text_encoder").inputs[0].dtype)
        assertEquals(File(directory, "decoder.tflite"), bundle.file("decoder"))
        val config = GeneratorConfig.fromManifest(manifest)
        assertEquals(16 * 16 * 4, config.latentSize)
        // the tokenizer comes from the bundle's merges file
        assertEquals(listOf(320, 2368), bundle.tokenizer().encode("a cat").toList())
    }

    @Test
    fun opensAUnetExportedAsParts() {
        for (index in 0..1) File(directory, "diffusion_model_part$index.tflite").writeText("part $index")
        val parts = (0..1).joinToString(",") { index ->
            """{"file": "diffusion_model_part$index.tflite", "sha256": "${hash("diffusion_model_part$index.tflite")}",
                "signature": "diffusion_model_part$index", "inputs": [{"name": "h", "shape": [2, 4], "dtype": "float32"}],
                "outputs": [{"name": "h", "shape": [2, 4], "dtype": "float32"}]}"""
        }
        val manifest = File(directory, "manifest.json")
        val single = Regex("\"diffusion_model\": \\{\"file\": \"diffusion_model.tflite\", \"sha256\": \"[0-9a-f]+\",")
        manifest.writeText(manifest.readText().replace(single, "\"diffusion_model\": {\"parts\": [$parts],"))
        val bundle = Bundle.open(directory)
        val unet = bundle.manifest.component("diffusion_model")
        assertEquals(null, unet.file)
        assertEquals(listOf("diffusion_model part 0", "diffusion_model part 1"), unet.parts.map { it.name })
        assertEquals(listOf("diffusion_model_part0", "diffusion_model_part1"), unet.parts.map { it.signature })
        assertEquals(listOf(File(directory, "diffusion_model_part0.tflite"), File(directory, "diffusion_model_part1.tflite")),
            bundle.files("diffusion_model"))
        assertEquals(listOf(2, 16, 16, 4), unet.input("latent").shape.toList())  // the whole chain's inputs
        try {
            bundle.file("diffusion_model")
            fail("a parted component has no single file")
        } catch (expected: BundleException) {
            assertTrue(expected.message!!.contains("2 parts"))
        }
        File(directory, "diffusion_model_part1.tflite").appendText("truncated copy")
        expectBroken("diffusion_model part 1", "diffusion_model_part1.tflite", "sha256")
    }

    @Test
    fun missingManifest() {
        File(directory, "manifest.json").delete()
        expectBroken("not a bundle", "manifest.json")
    }

    @Test
    fun missingFile() {
        File(directory, "decoder.tflite").delete()
        expectBroken("decoder", "missing")
    }

    @Test
    fun modifiedFile() {
        File(directory, "diffusion_model.tflite").appendText("truncated copy")
        expectBroken("diffusion_model", "sha256")
    }

    @Test
    fun unknownVersion() {
        writeManifest(version = "3")
        expectBroken("format_version 3", "not supported")
    }

    @Test
    fun otherFormat() {
        writeManifest(format = "\"something.else\"")
        expectBroken("format", "something.else")
    }

    @Test
    fun notJson() {
        File(directory, "manifest.json").writeText("{\"format\": ")
        expectBroken("not valid JSON")
    }

    @Test
    fun missingComponent() {
        writeManifest(withDecoder = false)
        expectBroken("lacks", "decoder")
    }

    @Test
    fun hashCacheSkipsUnchangedFilesButNotModifiedOnes() {
        val cache = File(directory, "hashes.txt")
        Bundle.open(directory, hashCache = cache)
        assertTrue(cache.isFile)
        assertEquals(4, cache.readLines().size)
        Bundle.open(directory, hashCache = cache)
        File(directory, "decoder.tflite").appendText("!")
        try {
            Bundle.open(directory, hashCache = cache)
            fail("a modified file passed with a cache")
        } catch (expected: BundleException) {
            assertTrue(expected.message!!.contains("decoder"))
        }
    }
}
