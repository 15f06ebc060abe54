package org.sdkeras.core

import java.io.File
import java.io.IOException

/**
 * A bundle folder found by [BundleLibrary.list]: its [manifest] when `manifest.json` reads as a bundle, else the
 * [problem]. Listing does not hash the model files (that happens when a bundle is opened, see [Bundle.open]).
 */
class BundleEntry(
    val name: String,
    /** The name shown in the app: [name], plus the root's label (e.g. " (private)"). */
    val label: String,
    val directory: File,
    val sizeBytes: Long,
    val manifest: BundleManifest?,
    val problem: String?
) {
    val isUsable: Boolean get() = manifest != null

    /** One line for the bundle list, e.g. `shapes-fp16: shapes 128x128, fp16, 16.3 MB`. */
    fun describe(): String {
        val size = BundleLibrary.formatSize(sizeBytes)
        val manifest = this.manifest ?: return "$label: unusable ($problem), $size"
        return "$label: ${manifest.model}${if (manifest.isSdxl) " (SDXL)" else ""} " +
            "${manifest.imageWidth}x${manifest.imageHeight}, " +
            "${manifest.quantization ?: "unknown quantization"}, $size" +
            (if ("image_encoder" in manifest.components) ", image-to-image" else "")
    }
}

/**
 * The bundles on the phone: listing, checking and deleting the sub-folders of a few roots (the app's private
 * `files/bundles` and the `adb push` folder). Every operation stays inside the roots: a folder elsewhere, a
 * hidden folder or one without `manifest.json` is never deleted.
 */
class BundleLibrary(private val roots: List<Pair<File, String>>) {
    /** Every sub-folder of the roots with a `manifest.json`, sorted by root then name; hidden folders skipped. */
    fun list(): List<BundleEntry> {
        val found = ArrayList<BundleEntry>()
        for ((root, suffix) in roots) {
            val children = root.listFiles() ?: continue
            for (child in children.sortedBy { it.name }) {
                if (!child.isDirectory || child.name.startsWith(".")) continue
                val manifestFile = File(child, BundleManifest.FILE_NAME)
                if (!manifestFile.isFile) continue
                var manifest: BundleManifest? = null
                var problem: String? = null
                try {
                    manifest = BundleManifest.parse(manifestFile.readText(Charsets.UTF_8))
                } catch (error: BundleException) {
                    problem = error.message
                } catch (error: IOException) {
                    problem = "cannot read ${BundleManifest.FILE_NAME}: ${error.message}"
                }
                found.add(BundleEntry(child.name, child.name + suffix, child, folderSize(child), manifest, problem))
            }
        }
        return found
    }

    /**
     * Check every file of the bundle in [directory] against the manifest's sha256 (see [Bundle.open]); null when
     * the bundle is complete and unmodified, else the reason.
     */
    fun validate(directory: File, hashCache: File? = null): String? = try {
        Bundle.open(directory, verifyHashes = true, hashCache = hashCache)
        null
    } catch (error: BundleException) {
        error.message ?: error.toString()
    }

    /**
     * Delete the bundle folder [directory] and return the bytes freed. The folder is first renamed to a hidden
     * name, so a crash half-way leaves no half bundle in the list ([cleanUp] removes the rest later).
     *
     * @throws IllegalArgumentException the folder is not a bundle directly inside one of the roots.
     * @throws IOException the folder could not be removed.
     */
    fun delete(directory: File): Long {
        checkDeletable(directory)
        val size = folderSize(directory)
        val doomed = File(directory.parentFile, ".${directory.name}.deleting")
        if (doomed.exists() && !doomed.deleteRecursively()) throw IOException("cannot remove $doomed")
        if (!directory.renameTo(doomed)) throw IOException("cannot delete $directory (rename failed)")
        if (!doomed.deleteRecursively()) throw IOException("deleted ${directory.name} only partly; ${doomed.path} remains")
        return size
    }

    /** Remove what interrupted imports and deletions left behind (`.NAME.partial`, `.NAME.old`, `.NAME.deleting`). */
    fun cleanUp(): Int {
        var removed = 0
        for ((root, _) in roots) {
            for (child in root.listFiles() ?: continue) {
                val name = child.name
                if (name.startsWith(".") && LEFTOVER_SUFFIXES.any { name.endsWith(it) } && child.deleteRecursively()) removed++
            }
        }
        return removed
    }

    private fun checkDeletable(directory: File) {
        val parent = directory.canonicalFile.parentFile
        val inRoot = roots.any { (root, _) -> root.canonicalFile == parent }
        if (!inRoot) {
            throw IllegalArgumentException("$directory is not inside a bundle folder (${roots.joinToString { it.first.path }})")
        }
        if (directory.name.startsWith(".") || !directory.isDirectory) {
            throw IllegalArgumentException("$directory is not a bundle folder")
        }
        if (!File(directory, BundleManifest.FILE_NAME).isFile) {
            throw IllegalArgumentException("$directory has no ${BundleManifest.FILE_NAME}; not deleting a folder that is not a bundle")
        }
    }

    companion object {
        val LEFTOVER_SUFFIXES = listOf(".partial", ".old", ".deleting")

        /** The bytes of every file under [directory] (symbolic links are not followed). */
        @JvmStatic
        fun folderSize(directory: File): Long {
            var total = 0L
            for (file in directory.walkTopDown().onEnter { java.nio.file.Files.isSymbolicLink(it.toPath()).not() }) {
                if (file.isFile) total += file.length()
            }
            return total
        }

        /** `512 B`, `16.3 MB`, `1.07 GB` (decimal units, as phones show storage). */
        @JvmStatic
        fun formatSize(bytes: Long): String = when {
            bytes < 1000L -> "$bytes B"
            bytes < 1000_000L -> String.format(java.util.Locale.ROOT, "%.1f kB", bytes / 1e3)
            bytes < 1000_000_000L -> String.format(java.util.Locale.ROOT, "%.1f MB", bytes / 1e6)
            else -> String.format(java.util.Locale.ROOT, "%.2f GB", bytes / 1e9)
        }

        /**
         * The XNNPACK weight-cache file for one model file of a bundle: named by the file's sha256, so a changed
         * or re-exported bundle never reads a stale cache and two bundles never share one.
         */
        @JvmStatic
        fun weightCacheFile(cacheDirectory: File, spec: ComponentSpec): File {
            val sha = spec.sha256 ?: throw IllegalArgumentException("component ${spec.name} has no file of its own")
            if (!sha.matches(Regex("[0-9a-fA-F]{16,64}"))) throw IllegalArgumentException("component ${spec.name}: bad sha256")
            return File(cacheDirectory, "${spec.signature}-${sha.substring(0, 16)}.xnnpack_cache")
        }
    }
}
