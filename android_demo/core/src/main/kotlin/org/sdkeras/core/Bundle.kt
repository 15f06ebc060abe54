package org.sdkeras.core

import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.security.MessageDigest

/**
 * A checked bundle folder: `manifest.json`, the `.tflite` files and the tokenizer merges file it names.
 *
 * [open] refuses a folder whose manifest is missing, malformed, of another format or an unknown version, or whose
 * files are missing or differ from their sha256 (an interrupted `adb push` or copy), with a message saying which.
 *
 * Example:
 * ```
 * val bundle = Bundle.open(File(context.filesDir, "bundles/shapes"), hashCache = File(context.filesDir, "hashes.txt"))
 * val tokenizer = bundle.tokenizer()
 * val unetFile = bundle.file("diffusion_model")
 * ```
 */
class Bundle private constructor(val directory: File, val manifest: BundleManifest) {
    /** The file of component [name] ("text_encoder", "diffusion_model", "decoder", "image_encoder"). */
    fun file(name: String): File {
        val spec = manifest.component(name)
        val file = spec.file ?: throw BundleException("component $name is exported as ${spec.parts.size} parts: " +
            "use files(\"$name\")")
        return File(directory, file)
    }

    /** The files of component [name]: one, or its parts in order (see [ComponentSpec.parts]). */
    fun files(name: String): List<File> = manifest.component(name).fileEntries.map { File(directory, it.file!!) }

    val tokenizerFile: File get() = File(directory, manifest.tokenizer.file)

    /** The bundle's tokenizer, padding as the manifest says. */
    fun tokenizer(): ClipTokenizer = try {
        ClipTokenizer.fromFile(tokenizerFile, manifest.tokenizer.contextLength, manifest.tokenizer.padId)
    } catch (error: IllegalArgumentException) {
        throw BundleException("bundle ${directory.path}: ${error.message}", error)
    }

    companion object {
        /**
         * Open and check the bundle in [directory].
         *
         * @param verifyHashes compare every file with its manifest sha256 (hundreds of MB are read once).
         * @param hashCache a file that remembers verified hashes by size and modification time, so that opening the
         *     same bundle again is instant; null hashes every time.
         * @throws BundleException the bundle cannot be used (the message names the file or field).
         */
        @JvmStatic
        fun open(directory: File, verifyHashes: Boolean = true, hashCache: File? = null): Bundle {
            val manifestFile = File(directory, BundleManifest.FILE_NAME)
            if (!manifestFile.isFile) {
                throw BundleException("${directory.path} is not a bundle: no ${BundleManifest.FILE_NAME} (copy the " +
                    "whole folder written by sd-keras export)")
            }
            val text = try {
                manifestFile.readText(Charsets.UTF_8)
            } catch (error: IOException) {
                throw BundleException("cannot read ${manifestFile.path}: ${error.message}", error)
            }
            val manifest = try {
                BundleManifest.parse(text)
            } catch (error: BundleException) {
                throw BundleException("bundle ${directory.path}: ${error.message}", error)
            }
            val cache = HashCache(hashCache)
            val entries = ArrayList<Triple<String, String, String>>()
            entries.add(Triple("tokenizer", manifest.tokenizer.file, manifest.tokenizer.sha256))
            manifest.tokenizer2?.let { entries.add(Triple("tokenizer_2", it.file, it.sha256)) }
            for (component in manifest.components.values) {
                for (entry in component.fileEntries) entries.add(Triple(entry.name, entry.file!!, entry.sha256!!))
            }
            for ((what, name, expected) in entries) {
                val file = File(directory, name)
                if (!file.isFile) {
                    throw BundleException("bundle ${directory.path}: the $what file \"$name\" is missing")
                }
                if (verifyHashes) {
                    val actual = try {
                        cache.sha256(file)
                    } catch (error: IOException) {
                        throw BundleException("bundle ${directory.path}: cannot read \"$name\": ${error.message}", error)
                    }
                    if (!actual.equals(expected, ignoreCase = true)) {
                        throw BundleException("bundle ${directory.path}: the $what file \"$name\" was modified or " +
                            "copied incompletely (sha256 ${actual.take(12)}... differs from the manifest's " +
                            "${expected.take(12)}...)")
                    }
                }
            }
            cache.save()
            return Bundle(directory, manifest)
        }

        /** Hex sha256 of a file, read in 1 MB blocks. */
        @JvmStatic
        fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            FileInputStream(file).use { stream ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val count = stream.read(buffer)
                    if (count < 0) break
                    digest.update(buffer, 0, count)
                }
            }
            val builder = StringBuilder(64)
            for (byte in digest.digest()) builder.append("%02x".format(byte.toInt() and 0xFF))
            return builder.toString()
        }
    }

    /** Remembered hashes: one line per file, "path<TAB>size<TAB>mtime<TAB>sha256"; written atomically. */
    private class HashCache(private val file: File?) {
        private val entries = LinkedHashMap<String, String>()
        private var changed = false

        init {
            if (file != null && file.isFile) {
                try {
                    for (line in file.readLines(Charsets.UTF_8)) {
                        val tab = line.lastIndexOf('\t')
                        if (tab > 0) entries[line.substring(0, tab)] = line.substring(tab + 1)
                    }
                } catch (error: IOException) {
                    entries.clear() // a damaged cache only costs time
                }
            }
        }

        private fun key(target: File) = "${target.absolutePath}\t${target.length()}\t${target.lastModified()}"

        fun sha256(target: File): String {
            val key = key(target)
            entries[key]?.let { return it }
            val digest = Bundle.sha256(target)
            if (file != null) {
                entries[key] = digest
                changed = true
            }
            return digest
        }

        fun save() {
            if (file == null || !changed) return
            val temporary = File(file.path + ".tmp")
            try {
                temporary.writeText(entries.entries.joinToString("") { "${it.key}\t${it.value}\n" }, Charsets.UTF_8)
                if (!temporary.renameTo(file)) {
                    file.delete()
                    temporary.renameTo(file)
                }
            } catch (error: IOException) {
                temporary.delete() // the cache is an optimisation; the bundle was verified anyway
            }
        }
    }
}
