package org.sdkeras.core

import java.io.File
import java.nio.file.Files
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Before
import org.junit.Test

/** Managing the bundles on the phone: listing, checking, deleting, cleaning up. */
class BundleLibraryTest {
    private lateinit var base: File
    private lateinit var private: File
    private lateinit var pushed: File
    private lateinit var library: BundleLibrary

    @Before
    fun createRoots() {
        base = Files.createTempDirectory("sdkeras-library").toFile()
        private = File(base, "files/bundles")
        pushed = File(base, "external/bundles")
        private.mkdirs()
        pushed.mkdirs()
        library = BundleLibrary(listOf(pushed to "", private to " (private)"))
    }

    @After
    fun deleteRoots() {
        base.deleteRecursively()
    }

    private fun component(directory: File, name: String, inputs: String, outputs: String): String {
        val file = File(directory, "$name.tflite")
        file.writeText("not really a model: $name ${directory.name}")
        return """"$name": {"file": "$name.tflite", "sha256": "${Bundle.sha256(file)}", "quantization": "fp16",
            "signature": "$name", "inputs": [$inputs], "outputs": [$outputs]}"""
    }

    private fun makeBundle(root: File, name: String, withEncoder: Boolean = false): File {
        val directory = File(root, name)
        directory.mkdirs()
        val merges = File(directory, "merges.txt")
        merges.writeText("#version: 0.2\n")
        val latent = """{"name": "latent", "shape": [1, 16, 16, 4], "dtype": "float32"}"""
        val image = """{"name": "image", "shape": [1, 128, 128, 3], "dtype": "float32"}"""
        val components = arrayListOf(
            component(directory, "text_encoder", """{"name": "tokens", "shape": [1, 77], "dtype": "int32"}""",
                """{"name": "context", "shape": [1, 77, 64], "dtype": "float32"}"""),
            component(directory, "diffusion_model", latent, latent),
            component(directory, "decoder", latent, image)
        )
        if (withEncoder) components.add(component(directory, "image_encoder", image, latent))
        File(directory, "manifest.json").writeText("""{
          "format": "sd_keras.bundle", "format_version": 1, "model": "shapes",
          "image_size": [128, 128], "latent_size": [16, 16, 4], "latent_scale_factor": 0.18215,
          "prediction_type": "epsilon",
          "schedule": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "steps_offset": 1},
          "default_sampler": "DDIM", "samplers": ["DDIM", "Euler a"], "timestep_embedding_dim": 320,
          "tokenizer": {"file": "merges.txt", "sha256": "${Bundle.sha256(merges)}", "context_length": 77,
                        "start_id": 49406, "end_id": 49407, "pad_id": 49407},
          "components": {${components.joinToString(",")}},
          "quantization": "fp16"
        }""")
        return directory
    }

    @Test
    fun listsBundlesOfEveryRootWithWhatTheyAre() {
        makeBundle(private, "b-fp16", withEncoder = true)
        makeBundle(pushed, "a-fp16")
        File(private, "not-a-bundle").mkdirs()
        makeBundle(private, ".hidden.partial")
        val broken = File(private, "broken")
        broken.mkdirs()
        File(broken, "manifest.json").writeText("{\"format\": \"other\"}")
        val entries = library.list()
        assertEquals(listOf("a-fp16", "b-fp16 (private)", "broken (private)"), entries.map { it.label })
        assertTrue(entries[0].isUsable)
        assertEquals("fp16", entries[0].manifest!!.quantization)
        assertTrue(entries[0].describe(), entries[0].describe().startsWith("a-fp16: shapes 128x128, fp16, "))
        assertFalse(entries[0].describe().contains("image-to-image"))
        assertTrue(entries[1].describe().endsWith(", image-to-image"))
        assertFalse(entries[2].isUsable)
        assertTrue(entries[2].problem!!, entries[2].problem!!.contains("not an sd_keras bundle"))
        assertEquals(BundleLibrary.folderSize(File(private, "b-fp16")), entries[1].sizeBytes)
        assertTrue(entries[1].sizeBytes > 100)
    }

    @Test
    fun validateHashesEveryFile() {
        val directory = makeBundle(private, "shapes")
        assertNull(library.validate(directory))
        File(directory, "decoder.tflite").appendText("!")
        val problem = library.validate(directory)
        assertNotNull(problem)
        assertTrue(problem!!, problem.contains("decoder.tflite"))
    }

    @Test
    fun deletesABundleInsideARootAndNothingElse() {
        val keep = makeBundle(pushed, "keep")
        val doomed = makeBundle(private, "doomed")
        val size = BundleLibrary.folderSize(doomed)
        assertEquals(size, library.delete(doomed))
        assertFalse(doomed.exists())
        assertEquals(listOf("keep"), library.list().map { it.label })
        val outside = makeBundle(base, "outside")
        val plain = File(private, "plain")
        plain.mkdirs()
        val nested = makeBundle(keep, "nested")
        for (target in listOf(outside, plain, nested, File(private, "missing"), private)) {
            try {
                library.delete(target)
                fail("deleted $target")
            } catch (expected: IllegalArgumentException) {
                assertTrue(expected.message!!.isNotEmpty())
            }
            if (target != File(private, "missing")) assertTrue("$target", target.exists())
        }
    }

    @Test
    fun cleanUpRemovesLeftoversOfInterruptedImportsAndDeletions() {
        makeBundle(private, "shapes")
        for (name in listOf(".shapes.partial", ".old-one.old", ".x.deleting")) makeBundle(private, name)
        File(private, ".keep-me").mkdirs()
        assertEquals(3, library.cleanUp())
        assertEquals(setOf("shapes", ".keep-me"), private.list()!!.toSet())
    }

    @Test
    fun formatsSizesAndNamesWeightCachesBySha256() {
        assertEquals("512 B", BundleLibrary.formatSize(512))
        assertEquals("16.3 MB", BundleLibrary.formatSize(16_300_000))
        assertEquals("1.07 GB", BundleLibrary.formatSize(1_070_000_000))
        val directory = makeBundle(private, "shapes")
        val manifest = BundleManifest.parse(File(directory, "manifest.json").readText())
        val spec = manifest.component("decoder")
        val cache = BundleLibrary.weightCacheFile(File("/cache"), spec)
        assertEquals("decoder-${spec.sha256!!.substring(0, 16)}.xnnpack_cache", cache.name)
        val other = BundleLibrary.weightCacheFile(File("/cache"), manifest.component("text_encoder"))
        assertFalse(cache == other)
    }
}
