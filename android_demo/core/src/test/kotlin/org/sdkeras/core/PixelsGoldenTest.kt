package org.sdkeras.core

import org.junit.Assert.assertEquals
import org.junit.Test

/** Decoder output to uint8 against sd_keras.pipeline.to_uint8. */
class PixelsGoldenTest {
    @Test
    fun toUint8MatchesPython() {
        val golden = Golden.load("pixels.json")
        val inputs = golden.floats("inputs")
        val outputs = golden.ints("outputs")
        for (index in inputs.indices) {
            assertEquals("to_uint8(${inputs[index]})", outputs[index], Pixels.toUint8(inputs[index]))
        }
    }

    @Test
    fun imageIsPackedArgbRowByRow() {
        // 1 row, 2 pixels: (-1, 0, 1) and (1, 1, -1)
        val image = Pixels.toImage(floatArrayOf(-1f, 0f, 1f, 1f, 1f, -1f), 1, 2)
        assertEquals(2, image.width)
        assertEquals(1, image.height)
        assertEquals(0xFF007FFF.toInt(), image.argb[0])
        assertEquals(0xFFFFFF00.toInt(), image.argb[1])
    }
}
