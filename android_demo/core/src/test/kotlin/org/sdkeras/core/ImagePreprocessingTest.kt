package org.sdkeras.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** A picked photo to the image encoder's input: crop, subsampling, resize and normalisation. */
class ImagePreprocessingTest {
    private fun argb(red: Int, green: Int, blue: Int) = (0xFF shl 24) or (red shl 16) or (green shl 8) or blue

    @Test
    fun cropsTheCentreToTheModelsAspectRatio() {
        assertEquals(CropRect(420, 0, 3000, 3000), ImagePreprocessing.centerCrop(3840, 3000, 512, 512))
        assertEquals(CropRect(0, 420, 3000, 3000), ImagePreprocessing.centerCrop(3000, 3840, 512, 512))
        assertEquals(CropRect(0, 0, 640, 480), ImagePreprocessing.centerCrop(640, 480, 768, 576))
        assertEquals(CropRect(0, 60, 640, 360), ImagePreprocessing.centerCrop(640, 480, 512, 288))
        assertEquals(CropRect(0, 0, 1, 1), ImagePreprocessing.centerCrop(1, 1, 128, 128))
    }

    @Test
    fun subsamplesLargePhotosButKeepsTwiceTheTargetSize() {
        assertEquals(4, ImagePreprocessing.decodeSubsampling(8000, 6000, 512, 512))
        assertEquals(1, ImagePreprocessing.decodeSubsampling(1000, 1000, 512, 512))
        assertEquals(2, ImagePreprocessing.decodeSubsampling(1024, 1024, 256, 256))
        assertEquals(1, ImagePreprocessing.decodeSubsampling(200, 200, 512, 512))
    }

    @Test
    fun aConstantImageStaysConstantAndMapsToMinusOneToOne() {
        val photo = IntArray(37 * 23) { argb(255, 0, 51) }
        val input = ImagePreprocessing.encoderInput(photo, 37, 23, 16, 16)
        assertEquals(16 * 16 * 3, input.size)
        for (pixel in 0 until 256) {
            assertEquals(1.0f, input[3 * pixel], 1e-6f)
            assertEquals(-1.0f, input[3 * pixel + 1], 1e-6f)
            assertEquals(51f / 127.5f - 1f, input[3 * pixel + 2], 1e-6f)
        }
        // numpy: np.array([128, 51, 200], np.float32) / 127.5 - 1.0, printed with float32 repr
        assertArrayEquals(floatArrayOf(0.003921628f, -0.6f, 0.5686275f),
            ImagePreprocessing.normalize(floatArrayOf(128f, 51f, 200f)), 0f)
    }

    @Test
    fun halvingAveragesPairsAndTheSameSizeIsTheIdentity() {
        // a 4x1 row 0, 100, 200, 250 (red) halves to the means of the pairs' triangle windows
        val row = intArrayOf(argb(0, 0, 0), argb(100, 0, 0), argb(200, 0, 0), argb(250, 0, 0))
        val same = ImagePreprocessing.resizeRgb(row, 4, 1, CropRect(0, 0, 4, 1), 4, 1)
        assertEquals(listOf(0f, 100f, 200f, 250f), (0 until 4).map { same[3 * it] })
        val half = ImagePreprocessing.resizeRgb(row, 4, 1, CropRect(0, 0, 4, 1), 2, 1)
        // output pixel 0 centre at 1.0, support 2: weights 0.75, 0.75, 0.25 on pixels 0, 1, 2 (normalised)
        assertEquals((0.75 * 0 + 0.75 * 100 + 0.25 * 200) / 1.75, half[0].toDouble(), 1e-4)
        assertEquals((0.25 * 100 + 0.75 * 200 + 0.75 * 250) / 1.75, half[3].toDouble(), 1e-4)
        // a checkerboard shrinks to grey, not to an aliased pattern
        val board = IntArray(64 * 64) { if ((it % 64 + it / 64) % 2 == 0) argb(255, 255, 255) else argb(0, 0, 0) }
        val grey = ImagePreprocessing.resizeRgb(board, 64, 64, CropRect(0, 0, 64, 64), 8, 8)
        for (value in grey) assertTrue("$value", Math.abs(value - 127.5f) < 8f)
    }

    @Test
    fun exifOrientationTurnsThePhotoUpright() {
        // a 3x2 photo:  0 1 2 / 3 4 5
        val photo = intArrayOf(0, 1, 2, 3, 4, 5)
        fun turned(orientation: Int): Triple<Int, Int, List<Int>> {
            val image = ImagePreprocessing.upright(photo, 3, 2, orientation)
            return Triple(image.width, image.height, image.argb.toList())
        }
        assertEquals(Triple(3, 2, listOf(0, 1, 2, 3, 4, 5)), turned(1))
        assertEquals(Triple(3, 2, listOf(0, 1, 2, 3, 4, 5)), turned(0))
        assertEquals(Triple(3, 2, listOf(2, 1, 0, 5, 4, 3)), turned(2))
        assertEquals(Triple(3, 2, listOf(5, 4, 3, 2, 1, 0)), turned(3))
        assertEquals(Triple(3, 2, listOf(3, 4, 5, 0, 1, 2)), turned(4))
        assertEquals(Triple(2, 3, listOf(0, 3, 1, 4, 2, 5)), turned(5))
        assertEquals(Triple(2, 3, listOf(3, 0, 4, 1, 5, 2)), turned(6)) // 90 degrees clockwise
        assertEquals(Triple(2, 3, listOf(5, 2, 4, 1, 3, 0)), turned(7))
        assertEquals(Triple(2, 3, listOf(2, 5, 1, 4, 0, 3)), turned(8)) // 90 degrees counter-clockwise
    }

    @Test
    fun badSizesAreRefusedWithTheReason() {
        for (call in listOf<() -> Any>(
            { ImagePreprocessing.encoderInput(IntArray(10), 4, 4, 8, 8) },
            { ImagePreprocessing.centerCrop(0, 10, 8, 8) },
            { ImagePreprocessing.resizeRgb(IntArray(16), 4, 4, CropRect(2, 0, 4, 4), 2, 2) }
        )) {
            try {
                call()
                fail("accepted a bad size")
            } catch (expected: IllegalArgumentException) {
                assertTrue(expected.message!!.isNotEmpty())
            }
        }
    }
}
