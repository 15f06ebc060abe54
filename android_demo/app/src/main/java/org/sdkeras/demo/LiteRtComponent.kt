package org.sdkeras.demo

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import java.io.File
import org.sdkeras.core.ComponentSpec
import org.sdkeras.core.Decoder
import org.sdkeras.core.DiffusionModel
import org.sdkeras.core.ImageEncoder
import org.sdkeras.core.TextEncoder

/** How a component runs on the CPU: XNNPACK's thread count and its weight cache (null: no cache). */
class CpuSettings(val threads: Int, val weightCache: File?)

/**
 * One `.tflite` file of a bundle as a LiteRT [CompiledModel], run through the named signature the manifest lists.
 *
 * With [preferGpu] the model is compiled for the GPU *and* the CPU accelerator (the GPU one is the `litert-gpu`
 * artifact): LiteRT places every op the GPU can run on the GPU and leaves the others on the CPU, so one
 * unsupported op does not move the whole component to the CPU. If that compilation fails or the first run
 * fails, the component runs on the CPU alone and [accelerator] says why. The CPU path uses XNNPACK with
 * [cpu]'s thread count and weight cache (packed weights written once to a file next to the app's cache, then
 * memory-mapped by later starts instead of re-packed).
 */
class LiteRtComponent(
    private val file: File,
    private val spec: ComponentSpec,
    preferGpu: Boolean,
    private val cpu: CpuSettings
) : AutoCloseable {
    private class Compiled(
        val model: CompiledModel,
        val inputs: Map<String, TensorBuffer>,
        val outputs: Map<String, TensorBuffer>
    )

    /** "GPU+CPU" (GPU with CPU fallback per op) or "CPU", plus why the GPU is not used when it was asked for. */
    var accelerator: String = "CPU"
        private set

    private var compiled: Compiled
    private var verifiedOnGpu = false

    init {
        var gpu: Compiled? = null
        if (preferGpu) {
            try {
                gpu = compile(Accelerator.GPU, Accelerator.CPU)
                accelerator = "GPU+CPU"
            } catch (error: Exception) {
                accelerator = "CPU (GPU unavailable: ${describe(error)})"
            } catch (error: UnsatisfiedLinkError) {
                accelerator = "CPU (no GPU accelerator library)"
            }
        }
        compiled = gpu ?: compile(Accelerator.CPU)
    }

    private fun compile(vararg targets: Accelerator): Compiled {
        val options = CompiledModel.Options(*targets)
        options.cpuOptions = CompiledModel.CpuOptions(
            numThreads = cpu.threads,
            xnnPackWeightCachePath = cpu.weightCache?.let { cache ->
                cache.parentFile?.mkdirs()
                cache.path
            }
        )
        val model = CompiledModel.create(file.path, options)
        try {
            val inputs = LinkedHashMap<String, TensorBuffer>()
            for (input in spec.inputs) inputs[input.name] = model.createInputBuffer(input.name, spec.signature)
            val outputs = LinkedHashMap<String, TensorBuffer>()
            for (output in spec.outputs) outputs[output.name] = model.createOutputBuffer(output.name, spec.signature)
            return Compiled(model, inputs, outputs)
        } catch (error: Exception) {
            model.close()
            throw error
        }
    }

    /**
     * Run the signature on [values] (input name to `FloatArray` or `IntArray`, sizes as the manifest says) and
     * return the first output.
     */
    fun run(values: Map<String, Any>): FloatArray = runAll(values).getValue(spec.outputs[0].name)

    /** Run the signature on [values] and return every output by name (a UNet part passes several on). */
    fun runAll(values: Map<String, Any>): Map<String, FloatArray> {
        return try {
            val result = runOn(compiled, values)
            verifiedOnGpu = true
            result
        } catch (error: Exception) {
            if (!accelerator.startsWith("GPU") || verifiedOnGpu) throw error
            // a GPU that compiled the model but cannot run it: the CPU can
            closeCompiled(compiled)
            compiled = compile(Accelerator.CPU)
            accelerator = "CPU (GPU failed: ${describe(error)})"
            runOn(compiled, values)
        }
    }

    private fun runOn(target: Compiled, values: Map<String, Any>): Map<String, FloatArray> {
        for (input in spec.inputs) {
            val buffer = target.inputs.getValue(input.name)
            when (val value = values[input.name]) {
                is FloatArray -> {
                    check(value.size == input.size) { "${spec.name}.${input.name}: ${value.size} values, expected $input" }
                    buffer.writeFloat(value)
                }
                is IntArray -> {
                    check(value.size == input.size) { "${spec.name}.${input.name}: ${value.size} values, expected $input" }
                    buffer.writeInt(value)
                }
                else -> throw IllegalStateException("${spec.name}: no value for input ${input.name}")
            }
        }
        target.model.run(target.inputs, target.outputs, spec.signature)
        val results = LinkedHashMap<String, FloatArray>()
        for (output in spec.outputs) {
            val result = target.outputs.getValue(output.name).readFloat()
            check(result.size == output.size) { "${spec.name}.${output.name}: ${result.size} values, expected $output" }
            results[output.name] = result
        }
        return results
    }

    private fun closeCompiled(target: Compiled) {
        for (buffer in target.inputs.values) buffer.close()
        for (buffer in target.outputs.values) buffer.close()
        target.model.close()
    }

    override fun close() = closeCompiled(compiled)

    private fun describe(error: Throwable) = error.message?.lineSequence()?.firstOrNull() ?: error.javaClass.simpleName
}

/**
 * The text encoder signature: `tokens` and `positions` (0..76), each (1, 77) int32, to `context` (and, for SDXL's
 * `text_encoder_2`, `pooled`: [encodeOutputs] returns both by name).
 */
class LiteRtTextEncoder(private val component: LiteRtComponent, contextLength: Int) : TextEncoder {
    private val positions = IntArray(contextLength) { it }

    override fun encode(tokens: IntArray): FloatArray = encodeOutputs(tokens).getValue("context")

    override fun encodeOutputs(tokens: IntArray): Map<String, FloatArray> =
        component.runAll(mapOf("tokens" to tokens, "positions" to positions))
}

/**
 * The UNet signature: `latent`, `timestep_embedding`, `context`, batch 2 (unconditional, conditional). A UNet
 * exported as parts runs them in order: each part reads its inputs by name from the model inputs and the
 * outputs of the parts before it, and the last part gives `model_output`.
 */
class LiteRtDiffusionModel(private val parts: List<LiteRtComponent>) : DiffusionModel {
    override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray): FloatArray =
        run(latent, timestepEmbedding, context, null)

    /** An SDXL UNet: also `added_embedding` (2, pooled + time-id sinusoids), fed to whichever parts take it. */
    override fun predict(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray,
                         addedEmbedding: FloatArray): FloatArray = run(latent, timestepEmbedding, context, addedEmbedding)

    private fun run(latent: FloatArray, timestepEmbedding: FloatArray, context: FloatArray,
                    addedEmbedding: FloatArray?): FloatArray {
        val values = HashMap<String, Any>()
        values["latent"] = latent
        values["timestep_embedding"] = timestepEmbedding
        values["context"] = context
        if (addedEmbedding != null) values["added_embedding"] = addedEmbedding
        var outputs: Map<String, FloatArray> = emptyMap()
        for (part in parts) {
            outputs = part.runAll(values)
            values.putAll(outputs)
        }
        return outputs.getValue("model_output")
    }
}

/** The VAE decoder signature: `latent` (1, h, w, 4) to `image` (1, H, W, 3) in [-1, 1]. */
class LiteRtDecoder(private val component: LiteRtComponent) : Decoder {
    override fun decode(latent: FloatArray): FloatArray = component.run(mapOf("latent" to latent))
}

/** The VAE encoder signature: `image` (1, H, W, 3) in [-1, 1] to `latent` (1, h, w, 4), for image-to-image. */
class LiteRtImageEncoder(private val component: LiteRtComponent) : ImageEncoder {
    override fun encode(image: FloatArray): FloatArray = component.run(mapOf("image" to image))
}
