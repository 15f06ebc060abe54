package org.sdkeras.core

import java.io.File
import java.io.PrintStream
import java.math.BigInteger

/**
 * Command-line entry points to compare the Kotlin core with Python by hand (see android_demo/README.md):
 *
 * ```
 * java -cp core.jar org.sdkeras.core.CoreCli tokenize [--merges FILE] [--pad ID] PROMPT
 * java -cp core.jar org.sdkeras.core.CoreCli sampler NAME STEPS [--prediction-type v_prediction] [--all]
 * java -cp core.jar org.sdkeras.core.CoreCli noise SEED [COUNT]
 * ```
 *
 * The merges file defaults to sd_keras/assets/bpe_simple_vocab_16e6.txt.gz found from the working directory up.
 */
object CoreCli {
    private const val USAGE = """usage:
  CoreCli tokenize [--merges FILE] [--pad ID] PROMPT     token ids (content, then the padded row)
  CoreCli sampler NAME STEPS [--prediction-type TYPE] [--all]   timesteps and sigmas (--all: every table)
  CoreCli noise SEED [COUNT]                             first COUNT (default 8) values of the seed's noise"""

    @JvmStatic
    fun main(args: Array<String>) {
        System.exit(run(args, System.out, System.err))
    }

    /** Run one command; returns the exit status (0 ok, 2 bad usage or input). */
    @JvmStatic
    fun run(args: Array<String>, out: PrintStream, err: PrintStream): Int {
        if (args.isEmpty()) {
            err.println(USAGE)
            return 2
        }
        return try {
            when (args[0]) {
                "tokenize" -> tokenize(args.drop(1), out)
                "sampler" -> sampler(args.drop(1), out)
                "noise" -> noise(args.drop(1), out)
                else -> throw IllegalArgumentException("unknown command \"${args[0]}\"\n$USAGE")
            }
            0
        } catch (error: IllegalArgumentException) {
            err.println("error: ${error.message}")
            2
        } catch (error: java.io.IOException) {
            err.println("error: ${error.message}")
            2
        }
    }

    private class Options(arguments: List<String>, valued: Set<String>, flags: Set<String>) {
        val values = HashMap<String, String>()
        val present = HashSet<String>()
        val positional = ArrayList<String>()

        init {
            var index = 0
            while (index < arguments.size) {
                val argument = arguments[index]
                when {
                    argument in valued -> {
                        if (index + 1 >= arguments.size) throw IllegalArgumentException("$argument needs a value")
                        index++
                        values[argument] = arguments[index]
                    }
                    argument in flags -> present.add(argument)
                    argument.startsWith("--") -> throw IllegalArgumentException("unknown option $argument")
                    else -> positional.add(argument)
                }
                index++
            }
        }
    }

    private fun tokenize(arguments: List<String>, out: PrintStream) {
        val options = Options(arguments, setOf("--merges", "--pad"), emptySet())
        if (options.positional.size != 1) throw IllegalArgumentException("tokenize takes one PROMPT argument")
        val merges = options.values["--merges"]?.let { File(it) } ?: defaultMerges()
        val pad = options.values["--pad"]?.let { parseInt(it, "--pad") } ?: ClipTokenizer.END_ID
        val tokenizer = ClipTokenizer.fromFile(merges, padId = pad)
        val prompt = options.positional[0]
        out.println("ids: " + tokenizer.encode(prompt).joinToString(", ", "[", "]"))
        val tokenized = tokenizer.tokenize(prompt)
        out.println("padded: " + tokenized.ids.joinToString(", ", "[", "]"))
        if (tokenized.truncated) {
            out.println("truncated: ${tokenized.numTokens} tokens, dropped: \"${tokenized.droppedText}\"")
        }
    }

    private fun sampler(arguments: List<String>, out: PrintStream) {
        val options = Options(arguments, setOf("--prediction-type"), setOf("--all"))
        if (options.positional.size != 2) throw IllegalArgumentException("sampler takes NAME and STEPS")
        val steps = parseInt(options.positional[1], "STEPS")
        val sampler = Samplers.create(options.positional[0], steps, NoiseSchedule(), options.values["--prediction-type"])
        out.println("sampler: ${sampler.name}, steps: ${sampler.numSteps}, prediction type: ${sampler.predictionType}")
        out.println("init_noise_sigma: ${sampler.tables.initNoiseSigma}")
        val names = if ("--all" in options.present) sampler.tables.names.sorted() else listOf("timesteps", "sigmas")
        for (name in names) out.println("$name: " + sampler.tables.table(name).joinToString(", ", "[", "]"))
    }

    private fun noise(arguments: List<String>, out: PrintStream) {
        val options = Options(arguments, emptySet(), emptySet())
        if (options.positional.size !in 1..2) throw IllegalArgumentException("noise takes SEED [COUNT]")
        val seed = parseSeed(options.positional[0])
        val count = if (options.positional.size == 2) parseInt(options.positional[1], "COUNT") else 8
        if (count < 0) throw IllegalArgumentException("COUNT must be >= 0, got $count")
        out.println(SeedNoise.gaussian(seed, count).joinToString(", ", "[", "]"))
    }

    /** A seed as Python takes it: any integer, used modulo 2^64. */
    internal fun parseSeed(text: String): Long = try {
        BigInteger(text).toLong()
    } catch (error: NumberFormatException) {
        throw IllegalArgumentException("SEED must be an integer, got \"$text\"")
    }

    private fun parseInt(text: String, what: String): Int = try {
        text.toInt()
    } catch (error: NumberFormatException) {
        throw IllegalArgumentException("$what must be an integer, got \"$text\"")
    }

    /** sd_keras/assets/bpe_simple_vocab_16e6.txt.gz in the working directory or the closest parent that has it. */
    internal fun defaultMerges(): File {
        var directory: File? = File(System.getProperty("user.dir")).absoluteFile
        while (directory != null) {
            val candidate = File(directory, "sd_keras/assets/bpe_simple_vocab_16e6.txt.gz")
            if (candidate.isFile) return candidate
            directory = directory.parentFile
        }
        throw IllegalArgumentException("no merges file: pass --merges (a bundle's merges.txt or CLIP's .txt.gz)")
    }
}
