package org.sdkeras.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.media.ExifInterface
import android.net.Uri
import java.io.File
import java.io.IOException
import org.sdkeras.core.ImagePreprocessing

/**
 * The photo for image-to-image. The picked photo is copied into the app's files (the Photo Picker's read
 * permission ends with the activity), so the choice survives rotation, pause and process death; at generation
 * time it is decoded subsampled, turned upright by its EXIF orientation and passed through the core's
 * [ImagePreprocessing] (centre crop to the model's aspect ratio, resize, [-1, 1]).
 */
object PhotoInput {
    fun file(context: Context) = File(context.filesDir, "img2img_photo")

    /** Copy the photo at [uri] into [file] atomically; returns that file. */
    fun keep(context: Context, uri: Uri): File {
        val target = file(context)
        val partial = File(context.filesDir, ".img2img_photo.partial")
        val input = context.contentResolver.openInputStream(uri) ?: throw IOException("cannot open the picked photo")
        input.use { source -> partial.outputStream().use { source.copyTo(it) } }
        val bounds = BitmapFactory.Options()
        bounds.inJustDecodeBounds = true
        BitmapFactory.decodeFile(partial.path, bounds)
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
            partial.delete()
            throw IOException("the picked file is not an image this phone can decode")
        }
        if (!partial.renameTo(target)) {
            partial.delete()
            throw IOException("cannot store the picked photo")
        }
        return target
    }

    fun forget(context: Context) {
        file(context).delete()
    }

    /** The `(height, width, 3)` input of the image encoder, in [-1, 1]. */
    fun encoderInput(photo: File, width: Int, height: Int): FloatArray {
        val bounds = BitmapFactory.Options()
        bounds.inJustDecodeBounds = true
        BitmapFactory.decodeFile(photo.path, bounds)
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IOException("the photo can no longer be decoded; pick it again")
        val options = BitmapFactory.Options()
        options.inSampleSize = ImagePreprocessing.decodeSubsampling(bounds.outWidth, bounds.outHeight, width, height)
        options.inPreferredConfig = Bitmap.Config.ARGB_8888
        val bitmap = BitmapFactory.decodeFile(photo.path, options) ?: throw IOException("cannot decode the photo")
        val pixels = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(pixels, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        val orientation = try {
            ExifInterface(photo.path).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        } catch (error: IOException) {
            ExifInterface.ORIENTATION_NORMAL
        }
        val upright = ImagePreprocessing.upright(pixels, bitmap.width, bitmap.height, orientation)
        bitmap.recycle()
        return ImagePreprocessing.encoderInput(upright.argb, upright.width, upright.height, width, height)
    }

    /** A small upright preview of the kept photo for the screen, or null when none is kept. */
    fun thumbnail(context: Context, size: Int): Bitmap? {
        val photo = file(context)
        if (!photo.isFile) return null
        val bounds = BitmapFactory.Options()
        bounds.inJustDecodeBounds = true
        BitmapFactory.decodeFile(photo.path, bounds)
        if (bounds.outWidth <= 0) return null
        val options = BitmapFactory.Options()
        options.inSampleSize = ImagePreprocessing.decodeSubsampling(bounds.outWidth, bounds.outHeight, size, size)
        return BitmapFactory.decodeFile(photo.path, options)
    }
}
