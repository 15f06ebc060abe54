package org.sdkeras.core

import java.io.ByteArrayOutputStream
import java.io.PrintStream
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** The command-line entry points print what the Python library computes. */
class CoreCliTest {
    private fun run(vararg args: String): Triple<Int, String, String> {
        val out = ByteArrayOutputStream()
        val err = ByteArrayOutputStream()
        val status = CoreCli.run(arrayOf(*args), PrintStream(out, true, "UTF-8"), PrintStream(err, true, "UTF-8"))
        return Triple(status, out.toString("UTF-8"), err.toString("UTF-8"))
    }

    @Test
    fun tokenizePrintsTheGoldenIds() {
        val prompt = Golden.load("tokenizer.json").objects("prompts")[0]
        val (status, out, _) = run("tokenize", "--merges", Golden.mergesFile().path, prompt.string("text"))
        assertEquals(0, status)
        assertTrue(out, out.startsWith("ids: " + prompt.ints("ids").joinToString(", ", "[", "]")))
    }

    @Test
    fun samplerPrintsTimestepsAndSigmas() {
        val (status, out, _) = run("sampler", "DDIM", "50")
        assertEquals(0, status)
        assertTrue(out, out.contains("timesteps: [981.0, 961.0, 941.0,"))
        val (allStatus, allOut, _) = run("sampler", "Euler a", "4", "--prediction-type", "v_prediction", "--all")
        assertEquals(0, allStatus)
        assertTrue(allOut, allOut.contains("step_noise: [") && allOut.contains("prediction type: v_prediction"))
    }

    @Test
    fun noisePrintsTheGoldenValues() {
        val case = Golden.load("noise.json").objects("gaussian").first { it.map["seed"] == -1L }
        val (status, out, _) = run("noise", "-1", "3")
        assertEquals(0, status)
        val printed = out.trim().removePrefix("[").removeSuffix("]").split(", ").map { it.toFloat() }
        Golden.assertClose("noise -1", case.floats("values").copyOf(3), printed.toFloatArray())
        // a seed >= 2^63 is taken modulo 2^64, as in Python
        assertEquals(run("noise", "18446744073709551615", "2").second, run("noise", "-1", "2").second)
    }

    @Test
    fun badInputExitsWithStatus2() {
        assertEquals(2, run().first)
        assertEquals(2, run("sampler", "LMS", "10").first)
        assertEquals(2, run("noise", "x").first)
        val (status, _, err) = run("sampler", "DDIM", "0")
        assertEquals(2, status)
        assertTrue(err, err.contains("num_steps"))
    }
}
