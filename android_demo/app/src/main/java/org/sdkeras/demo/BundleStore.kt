package org.sdkeras.demo

import android.content.Context
import android.net.Uri
import android.provider.DocumentsContract
import java.io.File
import java.io.IOException
import org.sdkeras.core.Bundle
import org.sdkeras.core.BundleEntry
import org.sdkeras.core.BundleException
import org.sdkeras.core.BundleLibrary
import org.sdkeras.core.BundleManifest
import org.sdkeras.core.UpscalerManifest

/**
 * Where bundles live on the phone, copying one in from any folder the system file picker can open, and deleting
 * one (listing, checking and deleting are the core's [BundleLibrary]).
 *
 * Two places are searched, each for sub-folders holding a `manifest.json`:
 * - `/sdcard/Android/data/org.sdkeras.demo/files/bundles/NAME` (what `adb push` writes, see the README);
 * - the app's private `files/bundles/NAME` (where "Import bundle" copies to; also `adb shell run-as`).
 */
class BundleStore(private val context: Context) {
    private val privateRoot = File(context.filesDir, "bundles")
    private val externalRoot: File? = context.getExternalFilesDir(null)?.let { File(it, "bundles") }

    /** Remembers verified sha256 values, so a bundle is hashed once, not at every start. */
    val hashCache = File(context.filesDir, "bundle_hashes.txt")

    /** XNNPACK weight caches, one file per model file (named by its sha256); rebuilt if the system clears it. */
    val weightCacheDirectory = File(context.cacheDir, "xnnpack")

    private val library = BundleLibrary(listOfNotNull(externalRoot?.let { it to "" }, privateRoot to " (private)"))

    /** The folders that look like bundles, with what their manifests say (or why they cannot be read). */
    fun list(): List<BundleEntry> {
        library.cleanUp() // what an interrupted import or deletion left behind
        return library.list()
    }

    /**
     * Delete [entry]'s folder and its XNNPACK weight caches; returns the bytes freed.
     *
     * @throws IllegalArgumentException the folder is not a bundle inside the app's bundle folders.
     * @throws IOException the folder could not be removed.
     */
    fun delete(entry: BundleEntry): Long {
        val caches = entry.manifest?.components?.values?.flatMap { it.fileEntries }
            ?.filter { it.sha256 != null }
            ?.map { BundleLibrary.weightCacheFile(weightCacheDirectory, it) } ?: emptyList()
        val freed = library.delete(entry.directory)
        var cacheBytes = 0L
        for (cache in caches) {
            val length = cache.length()
            if (cache.delete()) cacheBytes += length
        }
        return freed + cacheBytes
    }

    /**
     * Folders holding an exported upscaler (`upscaler.json`, from `sd-keras export-upscaler`), in the same two places
     * as bundles; the first one is used by "Upscale".
     */
    fun upscalers(): List<File> = listOfNotNull(externalRoot, privateRoot).flatMap { root ->
        (root.listFiles() ?: emptyArray()).sortedBy { it.name }
            .filter { it.isDirectory && !it.name.startsWith(".") && File(it, UpscalerManifest.FILE_NAME).isFile }
    }

    /** Human-readable locations for the "no bundle" message. */
    fun locations(): String = listOfNotNull(externalRoot?.path, privateRoot.path).joinToString(" or ")

    /**
     * Copy the folder [tree] (from ACTION_OPEN_DOCUMENT_TREE) into private storage, check it as a bundle and move
     * it into place; [progress] receives copied and total bytes. Returns the new bundle folder.
     *
     * @throws BundleException the folder is not a complete, unmodified bundle (nothing is left behind).
     * @throws IOException a read or write failed (e.g. the phone is full).
     */
    fun import(tree: Uri, progress: (Long, Long) -> Unit): File {
        val resolver = context.contentResolver
        val treeId = DocumentsContract.getTreeDocumentId(tree)
        val name = queryName(DocumentsContract.buildDocumentUriUsingTree(tree, treeId)) ?: "bundle"
        val safeName = name.replace(Regex("[^A-Za-z0-9._-]"), "_").trimStart('.').ifEmpty { "bundle" }
        val files = ArrayList<Triple<String, Uri, Long>>()
        val children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, treeId)
        val columns = arrayOf(
            DocumentsContract.Document.COLUMN_DOCUMENT_ID,
            DocumentsContract.Document.COLUMN_DISPLAY_NAME,
            DocumentsContract.Document.COLUMN_MIME_TYPE,
            DocumentsContract.Document.COLUMN_SIZE
        )
        resolver.query(children, columns, null, null, null)?.use { cursor ->
            while (cursor.moveToNext()) {
                if (cursor.getString(2) == DocumentsContract.Document.MIME_TYPE_DIR) continue
                val uri = DocumentsContract.buildDocumentUriUsingTree(tree, cursor.getString(0))
                files.add(Triple(cursor.getString(1), uri, if (cursor.isNull(3)) 0L else cursor.getLong(3)))
            }
        }
        if (files.none { it.first == BundleManifest.FILE_NAME }) {
            throw BundleException("the folder \"$name\" has no ${BundleManifest.FILE_NAME}; pick the folder written " +
                "by sd-keras export")
        }
        privateRoot.mkdirs()
        val staging = File(privateRoot, ".$safeName.partial")
        staging.deleteRecursively()
        staging.mkdirs()
        try {
            val total = files.sumOf { it.third }
            var copied = 0L
            val buffer = ByteArray(1 shl 20)
            for ((fileName, uri, _) in files) {
                if (fileName.contains('/') || fileName.startsWith(".")) continue
                val input = resolver.openInputStream(uri) ?: throw IOException("cannot open $fileName")
                input.use { source ->
                    File(staging, fileName).outputStream().use { target ->
                        while (true) {
                            val count = source.read(buffer)
                            if (count < 0) break
                            target.write(buffer, 0, count)
                            copied += count
                            progress(copied, total)
                        }
                    }
                }
            }
            Bundle.open(staging, verifyHashes = true, hashCache = null) // a bad copy never replaces a good bundle
            val destination = File(privateRoot, safeName)
            val old = File(privateRoot, ".$safeName.old")
            old.deleteRecursively()
            if (destination.exists() && !destination.renameTo(old)) throw IOException("cannot replace $destination")
            if (!staging.renameTo(destination)) {
                old.renameTo(destination)
                throw IOException("cannot move the bundle into $destination")
            }
            old.deleteRecursively()
            return destination
        } catch (error: Throwable) {
            staging.deleteRecursively()
            throw error
        }
    }

    private fun queryName(document: Uri): String? {
        val columns = arrayOf(DocumentsContract.Document.COLUMN_DISPLAY_NAME)
        return context.contentResolver.query(document, columns, null, null, null)?.use { cursor ->
            if (cursor.moveToFirst()) cursor.getString(0) else null
        }
    }
}
