package org.sdkeras.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** The tile grid, feather weights and blended tiled run against sd_keras.tiling (tiling.json). */
class TilingGoldenTest {
    @Test
    fun gridsMatchPython() {
        for (grid in Golden.load("tiling.json").objects("grids")) {
            val starts = Tiling.tileStarts(grid.int("length"), grid.int("tile"), grid.int("overlap"), grid.int("align"))
            assertArrayEquals("grid $grid", grid.ints("starts"), starts)
        }
    }

    @Test
    fun weightsMatchPython() {
        for (entry in Golden.load("tiling.json").objects("weights")) {
            val weights = Tiling.featherWeights(entry.int("size"), entry.int("before"), entry.int("after"))
            Golden.assertClose("weights ${entry.int("size")}", entry.floats("values"), weights, 1e-7f)
        }
    }

    /** The function Python's fixture uses: nearest x2 of the tile plus the tile's mean (one channel). */
    private fun upsamplePlusMean(tile: FloatArray, height: Int, width: Int): FloatArray {
        val mean = tile.fold(0.0) { sum, value -> sum + value } / tile.size
        return FloatArray(4 * height * width) {
            val y = it / (2 * width) / 2
            val x = it % (2 * width) / 2
            (tile[y * width + x] + mean.toFloat())
        }
    }

    @Test
    fun blendedRunMatchesPython() {
        val run = Golden.load("tiling.json").obj("run")
        val height = run.int("height")
        val width = run.int("width")
        assertEquals(2, run.int("scale"))
        val out = Tiling.apply(run.floats("input"), height, width, 1, 2, run.int("tile"), run.int("overlap")) {
                tile, h, w -> upsamplePlusMean(tile, h, w)
        }
        Golden.assertClose("tiled run", run.floats("output"), out, 1e-5f)
    }

    @Test
    fun aTileIndependentFunctionIsReproducedExactly() {
        val image = FloatArray(23 * 17 * 3) { (it * 7 % 31) / 31.0f }
        val doubled = Tiling.apply(image, 23, 17, 3, 1, 8, 4) { tile, _, _ -> FloatArray(tile.size) { 2 * tile[it] } }
        Golden.assertClose("2x", FloatArray(image.size) { 2 * image[it] }, doubled, 1e-6f)
    }
}
