package org.sdkeras.demo

import android.graphics.Bitmap
import android.net.Uri
import android.os.Bundle
import android.os.SystemClock
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ImageView
import android.widget.ProgressBar
import android.widget.Spinner
import android.widget.TextView
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import java.io.File
import java.io.IOException
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean
import org.sdkeras.core.BundleException
import org.sdkeras.core.PngParameters
import org.sdkeras.core.RgbImage
import org.sdkeras.core.SeedNoise

/**
 * The demo screen: pick a bundle, type a prompt, generate with progress and previews, save or share the result.
 *
 * Everything slow runs on one background thread, one job at a time; the screen only draws. Every failure a
 * phone can produce (a broken bundle, a prompt that is too long, running out of memory, a model that fails on
 * the accelerator) ends as a message on screen, never as a crash.
 */
class MainActivity : AppCompatActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private val cancelRequested = AtomicBoolean(false)
    private lateinit var store: BundleStore
    private lateinit var export: ImageExport

    private lateinit var bundleSpinner: Spinner
    private lateinit var bundleStatus: TextView
    private lateinit var promptInput: EditText
    private lateinit var negativeInput: EditText
    private lateinit var stepsInput: EditText
    private lateinit var guidanceInput: EditText
    private lateinit var seedInput: EditText
    private lateinit var previewInput: EditText
    private lateinit var samplerSpinner: Spinner
    private lateinit var gpuCheck: CheckBox
    private lateinit var lowMemoryCheck: CheckBox
    private lateinit var generateButton: Button
    private lateinit var cancelButton: Button
    private lateinit var importButton: Button
    private lateinit var saveButton: Button
    private lateinit var shareButton: Button
    private lateinit var progressBar: ProgressBar
    private lateinit var statusText: TextView
    private lateinit var imageView: ImageView

    private var bundles: List<Pair<String, File>> = emptyList()
    private var session: ModelSession? = null // touched only on the worker thread
    private var busy = false
    private var result: Bitmap? = null
    private var resultParameters = ""
    private var resultName = ""

    private val pickFolder = registerForActivityResult(ActivityResultContracts.OpenDocumentTree()) { tree: Uri? ->
        if (tree != null) importBundle(tree)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        store = BundleStore(this)
        export = ImageExport(this)
        bundleSpinner = findViewById(R.id.bundle_spinner)
        bundleStatus = findViewById(R.id.bundle_status)
        promptInput = findViewById(R.id.prompt_input)
        negativeInput = findViewById(R.id.negative_input)
        stepsInput = findViewById(R.id.steps_input)
        guidanceInput = findViewById(R.id.guidance_input)
        seedInput = findViewById(R.id.seed_input)
        previewInput = findViewById(R.id.preview_input)
        samplerSpinner = findViewById(R.id.sampler_spinner)
        gpuCheck = findViewById(R.id.gpu_check)
        lowMemoryCheck = findViewById(R.id.low_memory_check)
        generateButton = findViewById(R.id.generate_button)
        cancelButton = findViewById(R.id.cancel_button)
        importButton = findViewById(R.id.import_button)
        saveButton = findViewById(R.id.save_button)
        shareButton = findViewById(R.id.share_button)
        progressBar = findViewById(R.id.progress_bar)
        statusText = findViewById(R.id.status_text)
        imageView = findViewById(R.id.image_view)

        generateButton.setOnClickListener { generate() }
        cancelButton.setOnClickListener {
            cancelRequested.set(true)
            statusText.text = getString(R.string.cancelling)
        }
        importButton.setOnClickListener { pickFolder.launch(null) }
        saveButton.setOnClickListener { saveResult() }
        shareButton.setOnClickListener { shareResult() }
        bundleSpinner.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = loadSelected()
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        updateButtons()
    }

    override fun onResume() {
        super.onResume()
        // bundles pushed with adb while the app was in the background appear without a restart
        if (!busy) refreshBundles(selectedBundle())
    }

    override fun onDestroy() {
        cancelRequested.set(true)
        worker.execute {
            session?.close()
            session = null
        }
        worker.shutdown()
        super.onDestroy()
    }

    // -- bundles -----------------------------------------------------------------------------------------------

    private fun refreshBundles(select: File?) {
        bundles = store.list()
        bundleSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, bundles.map { it.first })
        if (bundles.isEmpty()) {
            bundleStatus.text = getString(R.string.no_bundle, store.locations())
            return
        }
        val index = bundles.indexOfFirst { it.second == select }
        if (index >= 0) bundleSpinner.setSelection(index)
        if (bundles.size == 1 || index >= 0) loadSelected() // the spinner reports no change for the same index
    }

    private fun selectedBundle(): File? = bundles.getOrNull(bundleSpinner.selectedItemPosition)?.second

    private fun loadSelected() {
        val directory = selectedBundle() ?: return
        val preferGpu = gpuCheck.isChecked
        val lowMemory = lowMemoryCheck.isChecked
        runJob(getString(R.string.loading_bundle, directory.name)) {
            val loaded = ensureSession(directory, preferGpu, lowMemory)
            val manifest = loaded.bundle.manifest
            ui {
                samplerSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, manifest.samplers)
                samplerSpinner.setSelection(maxOf(0, manifest.samplers.indexOf(manifest.defaultSampler)))
                bundleStatus.text = getString(
                    R.string.bundle_loaded, manifest.model, manifest.imageWidth, manifest.imageHeight,
                    manifest.quantization ?: "?", loaded.accelerators
                )
                statusText.text = ""
            }
        }
    }

    /** The session for these settings, loading (and replacing the old one) if needed. Worker thread only. */
    private fun ensureSession(directory: File, preferGpu: Boolean, lowMemory: Boolean): ModelSession {
        val current = session
        if (current != null && current.bundle.directory == directory && current.preferGpu == preferGpu &&
            current.lowMemory == lowMemory) {
            return current
        }
        current?.close()
        session = null
        val loaded = ModelSession.open(directory, preferGpu, lowMemory, store.hashCache)
        session = loaded
        return loaded
    }

    private fun importBundle(tree: Uri) {
        runJob(getString(R.string.importing)) {
            var lastUpdate = 0L
            val destination = store.import(tree) { copied, total ->
                val now = SystemClock.uptimeMillis()
                if (now - lastUpdate > 250) {
                    lastUpdate = now
                    ui { statusText.text = getString(R.string.copying, copied / 1_000_000, total / 1_000_000) }
                }
            }
            ui {
                refreshBundles(destination)
                statusText.text = getString(R.string.imported, destination.name)
            }
        }
    }

    // -- generation --------------------------------------------------------------------------------------------

    private fun generate() {
        val directory = selectedBundle()
        if (directory == null) {
            statusText.text = getString(R.string.no_bundle, store.locations())
            return
        }
        val prompt = promptInput.text.toString()
        val negative = negativeInput.text.toString()
        val steps = stepsInput.text.toString().trim().toIntOrNull()
        val guidance = guidanceInput.text.toString().trim().toFloatOrNull()
        val previewEvery = previewInput.text.toString().trim().ifEmpty { "0" }.toIntOrNull()
        val seedText = seedInput.text.toString().trim()
        val seed = if (seedText.length == 0 || seedText == "-1") SeedNoise.randomSeed() else seedText.toLongOrNull()
        val sampler = samplerSpinner.selectedItem as? String
        val problem = when {
            steps == null -> getString(R.string.bad_number, getString(R.string.steps))
            guidance == null -> getString(R.string.bad_number, getString(R.string.guidance))
            seed == null -> getString(R.string.bad_number, getString(R.string.seed))
            previewEvery == null || previewEvery < 0 -> getString(R.string.bad_number, getString(R.string.preview_every))
            sampler == null -> getString(R.string.loading_first)
            else -> null
        }
        if (problem != null) {
            statusText.text = problem
            return
        }
        val stepCount: Int = steps!!
        val scale: Float = guidance!!
        val seedValue: Long = seed!!
        val every: Int = previewEvery!!
        val samplerName: String = sampler!!
        val preferGpu = gpuCheck.isChecked
        val lowMemory = lowMemoryCheck.isChecked
        runJob(getString(R.string.preparing)) {
            val loaded = ensureSession(directory, preferGpu, lowMemory)
            val generator = loaded.generator
            val started = SystemClock.elapsedRealtime()
            val inputs = generator.setInputs(prompt, negative, stepCount, scale, seedValue, samplerName)
            loaded.afterTextEncoding()
            val warning = inputs.truncationMessage()
            val manifest = loaded.bundle.manifest
            ui {
                progressBar.max = stepCount
                progressBar.progress = 0
                if (warning != null) Toast.makeText(this, warning, Toast.LENGTH_LONG).show()
            }
            var finalImage: RgbImage? = null
            while (!generator.isFinished) {
                if (cancelRequested.get()) {
                    ui { statusText.text = getString(R.string.cancelled, generator.stepsDone, stepCount) }
                    return@runJob
                }
                val upcoming = generator.stepsDone + 1
                val step = generator.execute(showResult = every > 0 && upcoming % every == 0)
                val image = step.image
                if (step.isFinal) finalImage = image
                val seconds = (SystemClock.elapsedRealtime() - started) / 1000.0
                ui {
                    progressBar.progress = step.stepsDone
                    statusText.text = getString(R.string.step_status, step.stepsDone, step.totalSteps, seconds,
                        loaded.accelerators)
                    if (image != null) imageView.setImageBitmap(toBitmap(image))
                }
            }
            val seconds = (SystemClock.elapsedRealtime() - started) / 1000.0
            val parameters = PngParameters.format(prompt, negative, listOf(
                "Steps" to stepCount, "Sampler" to samplerName, "CFG scale" to scale, "Seed" to seedValue,
                "Size" to "${manifest.imageWidth}x${manifest.imageHeight}", "Model" to manifest.model
            ))
            val bitmap = toBitmap(finalImage ?: throw IllegalStateException("no image after the last step"))
            ui {
                result = bitmap
                resultParameters = parameters
                resultName = "sd_keras_${seedValue}_${System.currentTimeMillis() / 1000}.png"
                imageView.setImageBitmap(bitmap)
                statusText.text = getString(R.string.done, stepCount, seconds, seedValue, loaded.accelerators) +
                    (if (warning != null) "\n" + warning else "")
            }
        }
    }

    private fun toBitmap(image: RgbImage): Bitmap =
        Bitmap.createBitmap(image.argb, image.width, image.height, Bitmap.Config.ARGB_8888)

    private fun saveResult() {
        val bitmap = result ?: return
        try {
            val where = export.save(bitmap, resultParameters, resultName)
            statusText.text = getString(R.string.saved, where)
        } catch (error: IOException) {
            statusText.text = getString(R.string.save_failed, error.message ?: error.javaClass.simpleName)
        }
    }

    private fun shareResult() {
        val bitmap = result ?: return
        try {
            startActivity(export.shareIntent(bitmap, resultParameters, resultName))
        } catch (error: Exception) {
            statusText.text = getString(R.string.save_failed, error.message ?: error.javaClass.simpleName)
        }
    }

    // -- background jobs -----------------------------------------------------------------------------------------

    private fun ui(action: () -> Unit) = runOnUiThread {
        if (!isDestroyed) action()
    }

    /** Run [job] on the worker thread with the screen in "busy" state; every failure becomes a message. */
    private fun runJob(status: String, job: () -> Unit) {
        if (busy) return
        busy = true
        cancelRequested.set(false)
        statusText.text = status
        updateButtons()
        worker.execute {
            val message: String? = try {
                job()
                null
            } catch (error: OutOfMemoryError) {
                session?.close()
                session = null
                getString(R.string.out_of_memory)
            } catch (error: BundleException) {
                getString(R.string.bad_bundle, error.message)
            } catch (error: IllegalArgumentException) {
                error.message ?: error.toString()
            } catch (error: IOException) {
                getString(R.string.io_error, error.message ?: error.javaClass.simpleName)
            } catch (error: Exception) {
                // LiteRT errors, a NaN image (ArithmeticException), a model of the wrong shape, ...
                getString(R.string.failed, error.javaClass.simpleName, error.message ?: "")
            }
            ui {
                busy = false
                if (message != null) statusText.text = message
                updateButtons()
            }
        }
    }

    private fun updateButtons() {
        generateButton.isEnabled = !busy
        importButton.isEnabled = !busy
        bundleSpinner.isEnabled = !busy
        cancelButton.isEnabled = busy
        saveButton.isEnabled = !busy && result != null
        shareButton.isEnabled = !busy && result != null
        progressBar.visibility = if (busy) View.VISIBLE else View.INVISIBLE
    }
}
