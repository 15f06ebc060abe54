package org.sdkeras.demo

import android.content.ContentValues
import android.content.Context
import android.content.Intent
import android.graphics.Bitmap
import android.os.Build
import android.os.Environment
import android.provider.MediaStore
import androidx.core.content.FileProvider
import java.io.ByteArrayOutputStream
import java.io.File
import java.io.IOException
import org.sdkeras.core.PngParameters

/**
 * Saving and sharing results as PNG with the AUTOMATIC1111-style `parameters` chunk (prompt, steps, sampler,
 * guidance, seed, size, model), which `sd-keras info` and other SD tools read.
 */
class ImageExport(private val context: Context) {
    fun pngBytes(bitmap: Bitmap, parameters: String): ByteArray {
        val out = ByteArrayOutputStream()
        if (!bitmap.compress(Bitmap.CompressFormat.PNG, 100, out)) throw IOException("PNG encoding failed")
        return PngParameters.withText(out.toByteArray(), "parameters", parameters)
    }

    /**
     * Save into the gallery (Pictures/sd_keras) and return where it went. Android 8-9 without storage permission:
     * the app's own Pictures folder.
     */
    fun save(bitmap: Bitmap, parameters: String, name: String): String {
        val bytes = pngBytes(bitmap, parameters)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
            val resolver = context.contentResolver
            val values = ContentValues()
            values.put(MediaStore.Images.Media.DISPLAY_NAME, name)
            values.put(MediaStore.Images.Media.MIME_TYPE, "image/png")
            values.put(MediaStore.Images.Media.RELATIVE_PATH, Environment.DIRECTORY_PICTURES + "/sd_keras")
            values.put(MediaStore.Images.Media.IS_PENDING, 1)
            val uri = resolver.insert(MediaStore.Images.Media.EXTERNAL_CONTENT_URI, values)
                ?: throw IOException("the gallery refused the image")
            try {
                val stream = resolver.openOutputStream(uri) ?: throw IOException("cannot write $uri")
                stream.use { it.write(bytes) }
                values.clear()
                values.put(MediaStore.Images.Media.IS_PENDING, 0)
                resolver.update(uri, values, null, null)
            } catch (error: IOException) {
                resolver.delete(uri, null, null)
                throw error
            }
            return "Pictures/sd_keras/$name"
        }
        val folder = context.getExternalFilesDir(Environment.DIRECTORY_PICTURES) ?: context.filesDir
        val file = File(folder, name)
        val temporary = File(folder, ".$name.tmp")
        temporary.writeBytes(bytes)
        if (!temporary.renameTo(file)) throw IOException("cannot write $file")
        return file.path
    }

    /** An ACTION_SEND chooser for the image (shared through this app's FileProvider). */
    fun shareIntent(bitmap: Bitmap, parameters: String, name: String): Intent {
        val folder = File(context.cacheDir, "shared")
        folder.mkdirs()
        folder.listFiles()?.forEach { it.delete() } // only the latest shared image is kept
        val file = File(folder, name)
        file.writeBytes(pngBytes(bitmap, parameters))
        val uri = FileProvider.getUriForFile(context, context.packageName + ".files", file)
        val send = Intent(Intent.ACTION_SEND)
        send.type = "image/png"
        send.putExtra(Intent.EXTRA_STREAM, uri)
        send.putExtra(Intent.EXTRA_TEXT, parameters)
        send.addFlags(Intent.FLAG_GRANT_READ_URI_PERMISSION)
        return Intent.createChooser(send, null)
    }
}
