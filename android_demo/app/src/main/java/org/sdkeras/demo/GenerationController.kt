package org.sdkeras.demo

import android.content.Context
import android.graphics.Bitmap
import android.net.Uri
import android.os.Handler
import android.os.Looper
import android.os.SystemClock
import java.io.File
import java.io.IOException
import java.util.concurrent.CancellationException
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean
import org.sdkeras.core.BundleEntry
import org.sdkeras.core.BundleException
import org.sdkeras.core.BundleLibrary
import org.sdkeras.core.BundleManifest
import org.sdkeras.core.PngParameters
import org.sdkeras.core.ProgressEstimate
import org.sdkeras.core.RgbImage
import org.sdkeras.core.UpscalerManifest
import org.sdkeras.core.Upscaling

/** The settings a session is loaded with; a change reloads the models. */
class SessionSettings(val directory: File, val preferGpu: Boolean, val lowMemory: Boolean, val threads: Int) {
    fun matches(session: ModelSession) = session.bundle.directory == directory && session.preferGpu == preferGpu &&
        session.lowMemory == lowMemory && session.threads == threads
}

/** One generation's request, read from the screen on the main thread. */
class GenerationRequest(
    val session: SessionSettings,
    val prompt: String,
    val negativePrompt: String,
    val steps: Int,
    val guidanceScale: Float,
    val seed: Long,
    val sampler: String,
    val previewEvery: Int,
    /** The kept photo for image-to-image, or null for text-to-image. */
    val photo: File?,
    val strength: Double
)

/** A finished image and what the PNG's `parameters` chunk says about it. */
class GeneratedImage(val bitmap: Bitmap, val parameters: String, val fileName: String, val seed: Long)

/** What the screen shows about the loaded bundle. */
class LoadedBundle(val directory: File, val manifest: BundleManifest, val accelerators: String, val imageToImage: Boolean)

/**
 * The app's jobs (load, generate, import, delete), one at a time on one background thread, and what the screen
 * shows about them. It lives as long as the process, not the activity: rotating the phone, switching dark mode or
 * leaving the app does not stop a generation, and the activity that comes back shows its progress and result.
 * While a job runs, [GenerationService] keeps the process in the foreground and the CPU awake.
 *
 * Fields are read and written on the main thread; listeners are called there after every change.
 */
object GenerationController {
    private val main = Handler(Looper.getMainLooper())
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private val cancelRequested = AtomicBoolean(false)
    private val listeners = LinkedHashSet<() -> Unit>()
    private var session: ModelSession? = null // worker thread only

    var busy = false
        private set
    var status = ""
        private set
    var progressDone = 0
        private set
    var progressTotal = 0
        private set
    /** The latest preview or final image. */
    var image: Bitmap? = null
        private set
    var result: GeneratedImage? = null
        private set
    var loaded: LoadedBundle? = null
        private set
    /** Grows whenever bundles were imported or deleted (the screen re-reads the list). */
    var bundlesVersion = 0
        private set
    /** The bundle to select after the list changes. */
    var selectAfterChange: File? = null
        private set

    fun addListener(listener: () -> Unit) {
        listeners.add(listener)
        listener()
    }

    fun removeListener(listener: () -> Unit) {
        listeners.remove(listener)
    }

    private fun changed() {
        for (listener in listeners.toList()) listener()
    }

    private fun ui(action: () -> Unit) {
        main.post {
            action()
            changed()
        }
    }

    /** Show [text] in the status line (e.g. restored after the process was killed); ignored while a job runs. */
    fun showStatus(text: String) {
        if (busy) return
        status = text
        changed()
    }

    fun cancel(context: Context) {
        if (!busy) return
        cancelRequested.set(true)
        status = context.getString(R.string.cancelling)
        changed()
    }

    // -- jobs ------------------------------------------------------------------------------------------------------

    fun load(context: Context, settings: SessionSettings) {
        val app = context.applicationContext
        runJob(app, app.getString(R.string.loading_bundle, settings.directory.name), foreground = false) {
            val current = ensureSession(app, settings)
            ui {
                loaded = describe(current)
                status = ""
            }
        }
    }

    fun generate(context: Context, request: GenerationRequest) {
        val app = context.applicationContext
        runJob(app, app.getString(R.string.preparing), foreground = true) {
            val current = ensureSession(app, request.session)
            ui { loaded = describe(current) }
            val generator = current.generator
            val manifest = current.bundle.manifest
            val started = SystemClock.elapsedRealtime()
            val inputs = if (request.photo != null) {
                val pixels = PhotoInput.encoderInput(request.photo, manifest.imageWidth, manifest.imageHeight)
                generator.setImageInputs(request.prompt, request.negativePrompt, request.steps, request.guidanceScale,
                    request.seed, request.sampler, pixels, request.strength)
            } else {
                generator.setInputs(request.prompt, request.negativePrompt, request.steps, request.guidanceScale,
                    request.seed, request.sampler)
            }
            current.afterTextEncoding()
            val warning = inputs.truncationMessage()
            val progress = ProgressEstimate(inputs.stepsToRun)
            ui {
                progressDone = 0
                progressTotal = inputs.stepsToRun
            }
            var finalImage: RgbImage? = null
            while (!generator.isFinished) {
                if (cancelRequested.get()) {
                    val done = generator.stepsDone
                    ui { status = app.getString(R.string.cancelled, done, inputs.stepsToRun) }
                    return@runJob
                }
                val upcoming = generator.stepsDone + 1
                val step = generator.execute(showResult = request.previewEvery > 0 && upcoming % request.previewEvery == 0)
                progress.update(step.stepsDone, SystemClock.elapsedRealtime() - started)
                if (step.isFinal) finalImage = step.image
                val preview = if (!step.isFinal && step.image != null) toBitmap(step.image!!) else null
                val line = progress.statusLine() + " (" + current.accelerators + ")"
                ui {
                    progressDone = step.stepsDone
                    status = line
                    if (preview != null) image = preview
                    GenerationService.update(app, progress.statusLine(), progress.percent)
                }
            }
            val seconds = (SystemClock.elapsedRealtime() - started) / 1000.0
            val settings = ArrayList<Pair<String, Any>>()
            settings.add("Steps" to request.steps)
            settings.add("Sampler" to request.sampler)
            settings.add("CFG scale" to request.guidanceScale)
            settings.add("Seed" to request.seed)
            if (request.photo != null) settings.add("Denoising strength" to request.strength)
            settings.add("Size" to "${manifest.imageWidth}x${manifest.imageHeight}")
            settings.add("Model" to manifest.model)
            val parameters = PngParameters.format(request.prompt, request.negativePrompt, settings)
            val bitmap = toBitmap(finalImage ?: throw IllegalStateException("no image after the last step"))
            val name = "sd_keras_${request.seed}_${System.currentTimeMillis() / 1000}.png"
            ui {
                result = GeneratedImage(bitmap, parameters, name, request.seed)
                image = bitmap
                progressDone = progressTotal
                status = app.getString(R.string.done, inputs.stepsToRun, seconds, request.seed, current.accelerators) +
                    (if (warning != null) "\n" + warning else "")
            }
        }
    }

    /**
     * Enlarge the current result with the first exported upscaler of [store] (CPU, [threads] XNNPACK threads), tile
     * by tile with the core's [Upscaling]; the upscaled image becomes the result (Save and Share write it).
     */
    fun upscale(context: Context, store: BundleStore, threads: Int) {
        val app = context.applicationContext
        val source = result ?: return
        runJob(app, app.getString(R.string.upscaling), foreground = true) {
            val folder = store.upscalers().firstOrNull()
                ?: throw IllegalArgumentException(app.getString(R.string.no_upscaler, store.locations()))
            val manifest = UpscalerManifest.parse(File(folder, UpscalerManifest.FILE_NAME).readText(Charsets.UTF_8))
            val bitmap = source.bitmap
            val width = bitmap.width
            val height = bitmap.height
            val argb = IntArray(width * height)
            bitmap.getPixels(argb, 0, width, 0, 0, width, height)
            val rgb = ByteArray(width * height * 3)
            for (index in argb.indices) {
                rgb[3 * index] = (argb[index] shr 16).toByte()
                rgb[3 * index + 1] = (argb[index] shr 8).toByte()
                rgb[3 * index + 2] = argb[index].toByte()
            }
            val started = SystemClock.elapsedRealtime()
            val cpu = CpuSettings(threads, null)
            val input = manifest.spec.inputs[0].name
            val model = LiteRtComponent(File(folder, manifest.file()), manifest.spec, false, cpu)
            val upscaled = try {
                Upscaling.upscale(rgb, height, width, manifest, { tile -> model.run(mapOf(input to tile)) }) { done, total ->
                    if (cancelRequested.get()) throw CancellationException()
                    ui {
                        progressDone = done
                        progressTotal = total
                        status = app.getString(R.string.upscaling_tiles, done, total)
                        GenerationService.update(app, status, done * 100 / total)
                    }
                }
            } finally {
                model.close()
            }
            val scale = manifest.scale
            val pixels = IntArray(width * scale * height * scale) {
                val r = upscaled[3 * it].toInt() and 0xFF
                val g = upscaled[3 * it + 1].toInt() and 0xFF
                val b = upscaled[3 * it + 2].toInt() and 0xFF
                (0xFF shl 24) or (r shl 16) or (g shl 8) or b
            }
            val big = Bitmap.createBitmap(pixels, width * scale, height * scale, Bitmap.Config.ARGB_8888)
            val seconds = (SystemClock.elapsedRealtime() - started) / 1000.0
            val name = source.fileName.removeSuffix(".png") + "_x$scale.png"
            ui {
                result = GeneratedImage(big, source.parameters, name, source.seed)
                image = big
                status = app.getString(R.string.upscaled, scale, width * scale, height * scale, seconds, folder.name)
            }
        }
    }

    fun importBundle(context: Context, store: BundleStore, tree: Uri) {
        val app = context.applicationContext
        runJob(app, app.getString(R.string.importing), foreground = true) {
            var lastUpdate = 0L
            val destination = store.import(tree) { copied, total ->
                val now = SystemClock.uptimeMillis()
                if (now - lastUpdate > 250) {
                    lastUpdate = now
                    val percent = if (total > 0) (copied * 100 / total).toInt() else -1
                    ui {
                        status = app.getString(R.string.copying, copied / 1_000_000, total / 1_000_000)
                        GenerationService.update(app, status, percent)
                    }
                }
            }
            ui {
                status = app.getString(R.string.imported, destination.name)
                selectAfterChange = destination
                bundlesVersion++
            }
        }
    }

    fun deleteBundle(context: Context, store: BundleStore, entry: BundleEntry) {
        val app = context.applicationContext
        runJob(app, app.getString(R.string.deleting, entry.label), foreground = false) {
            if (session?.bundle?.directory == entry.directory) {
                session?.close()
                session = null
                ui { loaded = null }
            }
            val freed = store.delete(entry)
            ui {
                status = app.getString(R.string.deleted, entry.label, BundleLibrary.formatSize(freed))
                selectAfterChange = null
                bundlesVersion++
            }
        }
    }

    // -- helpers -----------------------------------------------------------------------------------------------

    /** The session for these settings, loading (and replacing the old one) if needed. Worker thread only. */
    private fun ensureSession(context: Context, settings: SessionSettings): ModelSession {
        val current = session
        if (current != null && settings.matches(current)) return current
        current?.close()
        session = null
        val store = BundleStore(context)
        val opened = ModelSession.open(settings.directory, settings.preferGpu, settings.lowMemory, settings.threads,
            store.hashCache, store.weightCacheDirectory)
        session = opened
        return opened
    }

    private fun describe(session: ModelSession) = LoadedBundle(session.bundle.directory, session.bundle.manifest,
        session.accelerators, session.generator.supportsImageToImage)

    private fun toBitmap(image: RgbImage): Bitmap =
        Bitmap.createBitmap(image.argb, image.width, image.height, Bitmap.Config.ARGB_8888)

    /** Run [job] on the worker thread; every failure becomes the status line, never a crash. Main thread. */
    private fun runJob(context: Context, startStatus: String, foreground: Boolean, job: () -> Unit) {
        if (busy) return
        busy = true
        cancelRequested.set(false)
        status = startStatus
        if (foreground) GenerationService.start(context)
        changed()
        worker.execute {
            val message: String? = try {
                job()
                null
            } catch (error: CancellationException) {
                context.getString(R.string.upscale_cancelled)
            } catch (error: OutOfMemoryError) {
                session?.close()
                session = null
                context.getString(R.string.out_of_memory)
            } catch (error: BundleException) {
                context.getString(R.string.bad_bundle, error.message)
            } catch (error: IllegalArgumentException) {
                error.message ?: error.toString()
            } catch (error: IOException) {
                context.getString(R.string.io_error, error.message ?: error.javaClass.simpleName)
            } catch (error: Exception) {
                // LiteRT errors, a NaN image (ArithmeticException), a model of the wrong shape, ...
                context.getString(R.string.failed, error.javaClass.simpleName, error.message ?: "")
            }
            ui {
                busy = false
                if (message != null) status = message
                if (foreground) GenerationService.stop()
            }
        }
    }
}
