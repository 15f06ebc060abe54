package org.sdkeras.demo

import android.Manifest
import android.content.Context
import android.content.pm.PackageManager
import android.net.Uri
import android.os.Build
import android.os.Bundle
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
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AlertDialog
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import java.io.File
import java.io.IOException
import org.sdkeras.core.AppState
import org.sdkeras.core.BundleEntry
import org.sdkeras.core.SamplerChoice
import org.sdkeras.core.SeedNoise
import org.sdkeras.core.ThreadChoice

/**
 * The demo screen: pick or delete a bundle, type a prompt, optionally pick a photo (image-to-image), generate
 * with progress and previews, save or share the result.
 *
 * The jobs run in [GenerationController], which outlives this activity, under [GenerationService] (foreground,
 * wake lock), so a generation continues with the screen off or the app in the background. The form, the chosen
 * bundle and sampler, the seed and the status line are an [AppState], kept in the saved instance state
 * (rotation, dark mode, the system reclaiming the activity) and in preferences (the app being killed).
 */
class MainActivity : AppCompatActivity() {
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
    private lateinit var threadsInput: EditText
    private lateinit var strengthInput: EditText
    private lateinit var samplerSpinner: Spinner
    private lateinit var gpuCheck: CheckBox
    private lateinit var lowMemoryCheck: CheckBox
    private lateinit var generateButton: Button
    private lateinit var cancelButton: Button
    private lateinit var importButton: Button
    private lateinit var deleteButton: Button
    private lateinit var pickPhotoButton: Button
    private lateinit var clearPhotoButton: Button
    private lateinit var photoView: ImageView
    private lateinit var saveButton: Button
    private lateinit var shareButton: Button
    private lateinit var upscaleButton: Button
    private lateinit var progressBar: ProgressBar
    private lateinit var statusText: TextView
    private lateinit var imageView: ImageView

    private var bundles: List<BundleEntry> = emptyList()
    private var shownBundlesVersion = -1
    private var samplersFor: File? = null
    private var restored = AppState()
    private val renderListener: () -> Unit = { render() }

    private val pickFolder = registerForActivityResult(ActivityResultContracts.OpenDocumentTree()) { tree: Uri? ->
        if (tree != null) GenerationController.importBundle(this, store, tree)
    }

    private val pickPhoto = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        if (uri != null) {
            try {
                PhotoInput.keep(this, uri)
            } catch (error: IOException) {
                GenerationController.showStatus(getString(R.string.io_error, error.message ?: ""))
            }
            showPhoto()
        }
    }

    private val askNotifications = registerForActivityResult(ActivityResultContracts.RequestPermission()) { }

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
        threadsInput = findViewById(R.id.threads_input)
        strengthInput = findViewById(R.id.strength_input)
        samplerSpinner = findViewById(R.id.sampler_spinner)
        gpuCheck = findViewById(R.id.gpu_check)
        lowMemoryCheck = findViewById(R.id.low_memory_check)
        generateButton = findViewById(R.id.generate_button)
        cancelButton = findViewById(R.id.cancel_button)
        importButton = findViewById(R.id.import_button)
        deleteButton = findViewById(R.id.delete_button)
        pickPhotoButton = findViewById(R.id.pick_photo_button)
        clearPhotoButton = findViewById(R.id.clear_photo_button)
        photoView = findViewById(R.id.photo_view)
        saveButton = findViewById(R.id.save_button)
        shareButton = findViewById(R.id.share_button)
        upscaleButton = findViewById(R.id.upscale_button)
        progressBar = findViewById(R.id.progress_bar)
        statusText = findViewById(R.id.status_text)
        imageView = findViewById(R.id.image_view)

        restored = restoreState(savedInstanceState)
        fillForm(restored)
        if (GenerationController.status.isEmpty()) GenerationController.showStatus(restored.status)

        generateButton.setOnClickListener { generate() }
        cancelButton.setOnClickListener { GenerationController.cancel(this) }
        importButton.setOnClickListener { pickFolder.launch(null) }
        deleteButton.setOnClickListener { confirmDelete() }
        pickPhotoButton.setOnClickListener {
            pickPhoto.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        clearPhotoButton.setOnClickListener {
            PhotoInput.forget(this)
            showPhoto()
        }
        saveButton.setOnClickListener { saveResult() }
        shareButton.setOnClickListener { shareResult() }
        upscaleButton.setOnClickListener { upscaleResult() }
        bundleSpinner.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = loadSelected()
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        showPhoto()
    }

    override fun onStart() {
        super.onStart()
        GenerationController.addListener(renderListener)
    }

    override fun onResume() {
        super.onResume()
        // bundles pushed with adb while the app was in the background appear without a restart
        if (!GenerationController.busy) refreshBundles(selectedBundle()?.directory ?: restored.bundle?.let { File(it) })
    }

    override fun onPause() {
        super.onPause()
        val text = currentState().toJson()
        getSharedPreferences(PREFERENCES, Context.MODE_PRIVATE).edit().putString(STATE_KEY, text).apply()
    }

    override fun onStop() {
        GenerationController.removeListener(renderListener)
        super.onStop()
    }

    override fun onSaveInstanceState(outState: Bundle) {
        super.onSaveInstanceState(outState)
        outState.putString(STATE_KEY, currentState().toJson())
    }

    // -- state -----------------------------------------------------------------------------------------------------

    private fun restoreState(savedInstanceState: Bundle?): AppState {
        val text = savedInstanceState?.getString(STATE_KEY)
            ?: getSharedPreferences(PREFERENCES, Context.MODE_PRIVATE).getString(STATE_KEY, null)
            ?: return AppState()
        return try {
            AppState.fromJson(text)
        } catch (error: IllegalArgumentException) {
            AppState() // state from a newer or broken version: start fresh
        }
    }

    private fun fillForm(state: AppState) {
        promptInput.setText(state.prompt)
        negativeInput.setText(state.negativePrompt)
        stepsInput.setText(state.steps.toString())
        guidanceInput.setText(state.guidanceScale.toString())
        seedInput.setText(state.seed.toString())
        previewInput.setText(state.previewEvery.toString())
        threadsInput.setText(state.cpuThreads.toString())
        strengthInput.setText(state.strength.toString())
        gpuCheck.isChecked = state.preferGpu
        lowMemoryCheck.isChecked = state.lowMemory
    }

    /** The screen as an [AppState]; fields that do not parse keep their last good value. */
    private fun currentState(): AppState {
        val base = restored
        return AppState(
            bundle = selectedBundle()?.directory?.path ?: base.bundle,
            prompt = promptInput.text.toString(),
            negativePrompt = negativeInput.text.toString(),
            steps = stepsInput.text.toString().trim().toIntOrNull() ?: base.steps,
            guidanceScale = guidanceInput.text.toString().trim().toFloatOrNull() ?: base.guidanceScale,
            seed = seedInput.text.toString().trim().ifEmpty { "-1" }.toLongOrNull() ?: base.seed,
            sampler = (samplerSpinner.selectedItem as? String) ?: base.sampler,
            previewEvery = previewInput.text.toString().trim().ifEmpty { "0" }.toIntOrNull() ?: base.previewEvery,
            preferGpu = gpuCheck.isChecked,
            lowMemory = lowMemoryCheck.isChecked,
            cpuThreads = threadsInput.text.toString().trim().ifEmpty { "0" }.toIntOrNull() ?: base.cpuThreads,
            strength = strengthInput.text.toString().trim().toDoubleOrNull() ?: base.strength,
            status = GenerationController.status,
            lastSeed = GenerationController.result?.seed ?: base.lastSeed
        )
    }

    // -- bundles -----------------------------------------------------------------------------------------------

    private fun refreshBundles(select: File?) {
        bundles = store.list()
        bundleSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, bundles.map { it.label })
        if (bundles.isEmpty()) {
            bundleStatus.text = getString(R.string.no_bundle, store.locations())
            return
        }
        val index = bundles.indexOfFirst { it.directory == select }
        if (index >= 0) bundleSpinner.setSelection(index)
        if (bundles.size == 1 || index >= 0) loadSelected() // the spinner reports no change for the same index
    }

    private fun selectedBundle(): BundleEntry? = bundles.getOrNull(bundleSpinner.selectedItemPosition)

    private fun sessionSettings(entry: BundleEntry): SessionSettings {
        val requested = threadsInput.text.toString().trim().ifEmpty { "0" }.toIntOrNull() ?: 0
        val threads = ThreadChoice.threads(requested, Runtime.getRuntime().availableProcessors())
        return SessionSettings(entry.directory, gpuCheck.isChecked, lowMemoryCheck.isChecked, threads)
    }

    private fun loadSelected() {
        val entry = selectedBundle() ?: return
        if (!entry.isUsable) {
            bundleStatus.text = entry.describe()
            return
        }
        bundleStatus.text = entry.describe()
        val loaded = GenerationController.loaded
        if (loaded != null && loaded.directory == entry.directory) {
            render()
            return
        }
        GenerationController.load(this, sessionSettings(entry))
    }

    private fun confirmDelete() {
        val entry = selectedBundle() ?: return
        AlertDialog.Builder(this)
            .setTitle(R.string.delete_bundle)
            .setMessage(getString(R.string.delete_confirm, entry.describe()))
            .setPositiveButton(R.string.delete) { _, _ -> GenerationController.deleteBundle(this, store, entry) }
            .setNegativeButton(android.R.string.cancel, null)
            .show()
    }

    // -- generation --------------------------------------------------------------------------------------------

    private fun generate() {
        val entry = selectedBundle()
        if (entry == null) {
            GenerationController.showStatus(getString(R.string.no_bundle, store.locations()))
            return
        }
        val state = currentState()
        val steps = stepsInput.text.toString().trim().toIntOrNull()
        val guidance = guidanceInput.text.toString().trim().toFloatOrNull()
        val seedText = seedInput.text.toString().trim()
        val seed = if (seedText.isEmpty() || seedText == "-1") SeedNoise.randomSeed() else seedText.toLongOrNull()
        val sampler = samplerSpinner.selectedItem as? String
        val photo = PhotoInput.file(this).takeIf { it.isFile }
        val problem = when {
            steps == null -> getString(R.string.bad_number, getString(R.string.steps))
            guidance == null -> getString(R.string.bad_number, getString(R.string.guidance))
            seed == null -> getString(R.string.bad_number, getString(R.string.seed))
            sampler == null -> getString(R.string.loading_first)
            photo != null && GenerationController.loaded?.imageToImage == false -> getString(R.string.no_image_encoder)
            else -> state.problems().firstOrNull()
        }
        if (problem != null) {
            GenerationController.showStatus(problem)
            return
        }
        if (Build.VERSION.SDK_INT >= 33 && ContextCompat.checkSelfPermission(this,
                Manifest.permission.POST_NOTIFICATIONS) != PackageManager.PERMISSION_GRANTED) {
            askNotifications.launch(Manifest.permission.POST_NOTIFICATIONS) // progress in the notification
        }
        GenerationController.generate(this, GenerationRequest(
            sessionSettings(entry), state.prompt, state.negativePrompt, steps!!, guidance!!, seed!!, sampler!!,
            state.previewEvery, photo, state.strength
        ))
    }

    private fun saveResult() {
        val result = GenerationController.result ?: return
        try {
            val where = export.save(result.bitmap, result.parameters, result.fileName)
            GenerationController.showStatus(getString(R.string.saved, where))
        } catch (error: IOException) {
            GenerationController.showStatus(getString(R.string.save_failed, error.message ?: error.javaClass.simpleName))
        }
    }

    private fun upscaleResult() {
        if (GenerationController.result == null) return
        val requested = threadsInput.text.toString().trim().ifEmpty { "0" }.toIntOrNull() ?: 0
        val threads = ThreadChoice.threads(requested, Runtime.getRuntime().availableProcessors())
        GenerationController.upscale(this, store, threads)
    }

    private fun shareResult() {
        val result = GenerationController.result ?: return
        try {
            startActivity(export.shareIntent(result.bitmap, result.parameters, result.fileName))
        } catch (error: Exception) {
            GenerationController.showStatus(getString(R.string.save_failed, error.message ?: error.javaClass.simpleName))
        }
    }

    // -- drawing -----------------------------------------------------------------------------------------------

    private fun showPhoto() {
        val thumbnail = PhotoInput.thumbnail(this, 256)
        photoView.setImageBitmap(thumbnail)
        photoView.visibility = if (thumbnail == null) View.GONE else View.VISIBLE
        clearPhotoButton.isEnabled = thumbnail != null
        strengthInput.isEnabled = thumbnail != null
    }

    /** Draw what the controller reports (called after each of its changes, on the main thread). */
    private fun render() {
        val controller = GenerationController
        if (controller.bundlesVersion != shownBundlesVersion && !controller.busy) {
            // an import or deletion finished (the first call only records the version: onResume lists the bundles)
            val first = shownBundlesVersion < 0
            shownBundlesVersion = controller.bundlesVersion
            if (!first) refreshBundles(controller.selectAfterChange)
        }
        val loaded = controller.loaded
        if (loaded != null && loaded.directory == selectedBundle()?.directory) {
            val manifest = loaded.manifest
            bundleStatus.text = getString(R.string.bundle_loaded, manifest.model, manifest.imageWidth,
                manifest.imageHeight, manifest.quantization ?: "?", loaded.accelerators) +
                (if (loaded.imageToImage) "" else "\n" + getString(R.string.no_image_encoder))
            if (samplersFor != loaded.directory) {
                samplersFor = loaded.directory
                val previous = (samplerSpinner.selectedItem as? String) ?: restored.sampler
                val chosen = SamplerChoice.choose(previous, manifest.samplers, manifest.defaultSampler)
                samplerSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, manifest.samplers)
                samplerSpinner.setSelection(manifest.samplers.indexOf(chosen))
            }
        }
        statusText.text = controller.status
        progressBar.max = Math.max(1, controller.progressTotal)
        progressBar.progress = controller.progressDone
        progressBar.visibility = if (controller.busy) View.VISIBLE else View.INVISIBLE
        imageView.setImageBitmap(controller.image)
        val busy = controller.busy
        generateButton.isEnabled = !busy
        importButton.isEnabled = !busy
        deleteButton.isEnabled = !busy && selectedBundle() != null
        bundleSpinner.isEnabled = !busy
        pickPhotoButton.isEnabled = !busy && loaded?.imageToImage != false
        cancelButton.isEnabled = busy
        saveButton.isEnabled = !busy && controller.result != null
        shareButton.isEnabled = !busy && controller.result != null
        upscaleButton.isEnabled = !busy && controller.result != null
    }

    companion object {
        private const val PREFERENCES = "sd_keras_demo"
        private const val STATE_KEY = "app_state"
    }
}
