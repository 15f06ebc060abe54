package org.sdkeras.core

import java.io.File
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** upscaler.json as `sd-keras export-upscaler` writes it, and tiled upscaling with the manifest's tile grid. */
class UpscalerTest {
    private fun manifestText(): String {
        val resource = javaClass.classLoader.getResource("python/upscaler.json") ?: error("no python/upscaler.json")
        return File(resource.toURI()).readText()
    }

    @Test
    fun readsThePythonManifest() {
        val manifest = UpscalerManifest.parse(manifestText())
        assertEquals("srvgg", manifest.architecture)
        assertEquals(4, manifest.scale)
        assertEquals(128, manifest.tile)
        assertEquals(16, manifest.overlap)
        assertEquals("upscale", manifest.spec.signature)
        assertEquals("image", manifest.spec.inputs[0].name)
        assertEquals("upscaled", manifest.spec.outputs[0].name)
        assertEquals("upscaler_fp16.tflite", manifest.file())
        assertEquals("upscaler_int8.tflite", manifest.file(listOf("int8")))
    }

    @Test
    fun refusesAManifestThatDoesNotFitItsTile() {
        val broken = manifestText().replace("\"tile\": 128", "\"tile\": 64")
        try {
            UpscalerManifest.parse(broken)
            fail("a 64-pixel tile with 128-pixel signature shapes was accepted")
        } catch (error: BundleException) {
            assertTrue(error.message, error.message!!.contains("do not fit tile 64"))
        }
    }

    /** A stand-in for the model: nearest-neighbour x[scale] of a tile (what a real one adds a residual to). */
    private fun nearest(tile: FloatArray, size: Int, scale: Int): FloatArray {
        val out = FloatArray(size * scale * size * scale * 3)
        for (y in 0 until size * scale) for (x in 0 until size * scale) for (k in 0 until 3) {
            out[(y * size * scale + x) * 3 + k] = tile[((y / scale) * size + x / scale) * 3 + k]
        }
        return out
    }

    private fun expected(rgb: ByteArray, height: Int, width: Int, scale: Int) = ByteArray(rgb.size * scale * scale) {
        val pixel = it / 3
        val y = pixel / (width * scale) / scale
        val x = pixel % (width * scale) / scale
        rgb[(y * width + x) * 3 + it % 3]
    }

    @Test
    fun tiledUpscaleOfSmallAndLargeImagesIsExact() {
        val manifest = UpscalerManifest.parse(manifestText())
        for ((height, width) in listOf(5 to 7, 150 to 131, 128 to 300)) {
            val rgb = ByteArray(height * width * 3) { ((it * 37) % 256).toByte() }
            var calls = 0
            var reported = 0 to 0
            val out = Upscaling.upscale(rgb, height, width, manifest, { tile ->
                assertEquals(128 * 128 * 3, tile.size)
                calls += 1
                nearest(tile, 128, 4)
            }) { done, total -> reported = done to total }
            assertEquals(reported.second, calls)
            assertEquals(calls, reported.first)
            assertArrayEquals("${width}x$height", expected(rgb, height, width, 4), out)
        }
    }
}
