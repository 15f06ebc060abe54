package org.sdkeras.core

/**
 * Tiled inference with feathered blending, as Python's `sd_keras.tiling`: the same tile grid, the same weights,
 * the same blend (checked against `tiling.json`), so an upscaler (or a VAE) runs on a phone one tile at a time.
 *
 * Grid along one axis: `n = ceil((length - overlap) / (tile - overlap))` tiles of size `min(tile, length)`, starts
 * `(i * (length - tile) / (n - 1)) / align * align` (integer division), the last at `length - tile`. Weights along
 * one axis, in output pixels: inside the `shared` pixels a tile has in common with a neighbour, 0 over the outer
 * quarter, linear over the middle half, 1 beyond; image borders are not feathered. A pixel's output is the
 * weighted mean of the tiles covering it (weights: product of the two axes').
 */
object Tiling {
    /** Starts of the tiles covering [length] pixels. */
    @JvmStatic
    fun tileStarts(length: Int, tile: Int, overlap: Int, align: Int = 1): IntArray {
        require(align >= 1) { "align $align: must be a positive integer" }
        require(tile >= 1 && tile % align == 0) { "tile $tile: must be a positive integer and a multiple of $align" }
        require(overlap in 0 until tile && overlap % align == 0) {
            "overlap $overlap: must be an integer from 0 to tile - 1 (${tile - 1}) and a multiple of $align"
        }
        if (length <= tile) return intArrayOf(0)
        require(length % align == 0) { "length $length: must be a multiple of $align to be tiled" }
        val stride = tile - overlap
        val count = (length - overlap + stride - 1) / stride
        val span = length - tile
        return IntArray(count) { if (it < count - 1) (it.toLong() * span / (count - 1)).toInt() / align * align else span }
    }

    /** Weights of one tile along one axis ([size] output pixels; [sharedBefore] / [sharedAfter] shared pixels). */
    @JvmStatic
    fun featherWeights(size: Int, sharedBefore: Int, sharedAfter: Int): FloatArray = FloatArray(size) {
        val position = it + 0.5f
        var weight = 1.0f
        if (sharedBefore > 0) weight = minOf(weight, ramp(position, sharedBefore))
        if (sharedAfter > 0) weight = minOf(weight, ramp(size - position, sharedAfter))
        weight
    }

    private fun ramp(distance: Float, shared: Int): Float =
        ((distance - shared / 4.0f) / (shared / 2.0f)).coerceIn(0.0f, 1.0f)

    private fun axisWeights(starts: IntArray, size: Int, scale: Int): List<FloatArray> = starts.indices.map { index ->
        val before = if (index > 0) starts[index - 1] + size - starts[index] else 0
        val after = if (index + 1 < starts.size) starts[index] + size - starts[index + 1] else 0
        featherWeights(size * scale, before * scale, after * scale)
    }

    /**
     * [function] applied to an `(height, width, channels)` image tile by tile and blended: [function] takes a
     * `(h, w, channels)` tile with its height and width and returns `(h * scale, w * scale, outChannels)`; tile
     * starts are multiples of [align].
     */
    @JvmStatic
    fun apply(
        image: FloatArray, height: Int, width: Int, channels: Int, scale: Int, tile: Int, overlap: Int,
        outChannels: Int = channels, align: Int = 1, function: (FloatArray, Int, Int) -> FloatArray
    ): FloatArray {
        require(image.size == height * width * channels) {
            "image has ${image.size} values; ${height}x${width}x$channels needs ${height * width * channels}"
        }
        val rows = tileStarts(height, tile, overlap, align)
        val cols = tileStarts(width, tile, overlap, align)
        val tileH = minOf(tile, height)
        val tileW = minOf(tile, width)
        val rowWeights = axisWeights(rows, tileH, scale)
        val colWeights = axisWeights(cols, tileW, scale)
        val outH = tileH * scale
        val outW = tileW * scale
        val outWidth = width * scale
        val canvas = FloatArray(height * scale * outWidth * outChannels)
        val total = FloatArray(height * scale * outWidth)
        val piece = FloatArray(tileH * tileW * channels)
        for ((r, row) in rows.withIndex()) {
            for ((c, col) in cols.withIndex()) {
                for (y in 0 until tileH) {
                    System.arraycopy(image, ((row + y) * width + col) * channels, piece, y * tileW * channels, tileW * channels)
                }
                val out = function(piece.copyOf(), tileH, tileW)
                require(out.size == outH * outW * outChannels) {
                    "a ${tileH}x$tileW tile gave ${out.size} values, not ${outH}x${outW}x$outChannels"
                }
                for (y in 0 until outH) {
                    val wy = rowWeights[r][y]
                    for (x in 0 until outW) {
                        val weight = wy * colWeights[c][x]
                        val pixel = (row * scale + y) * outWidth + col * scale + x
                        total[pixel] += weight
                        for (k in 0 until outChannels) {
                            canvas[pixel * outChannels + k] += out[(y * outW + x) * outChannels + k] * weight
                        }
                    }
                }
            }
        }
        for (pixel in total.indices) {
            for (k in 0 until outChannels) canvas[pixel * outChannels + k] /= total[pixel]
        }
        return canvas
    }
}
