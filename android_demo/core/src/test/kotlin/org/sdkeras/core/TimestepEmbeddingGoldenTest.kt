package org.sdkeras.core

import org.junit.Test

/** The host-side timestep embedding against sd_keras.models.layers.timestep_embedding. */
class TimestepEmbeddingGoldenTest {
    @Test
    fun embeddingMatchesPython() {
        val golden = Golden.load("timestep_embedding.json")
        val dim = golden.int("dim")
        for (row in golden.objects("rows")) {
            val t = row.double("t").toFloat()
            // float32 exp is not correctly rounded in TensorFlow, JAX or numpy, and they differ among themselves:
            // a one-ulp difference in a frequency moves t·f by up to t·6e-8, so at t = 999 the two Keras backends
            // already disagree by 6e-5. The port computes the frequencies correctly rounded; 1e-4 covers that.
            Golden.assertClose("t = $t", row.floats("values"), TimestepEmbedding.compute(t, dim), 1e-4f)
        }
    }

    /** The bundle runner's embedding (export/runner.py) and this port compute the same float32 values. */
    @Test
    fun embeddingEqualsTheBundleRunnerBitForBit() {
        val golden = Golden.load("timestep_embedding.json")
        val dim = golden.int("dim")
        for (row in golden.objects("runner_rows")) {
            val t = row.double("t").toFloat()
            val expected = row.floats("values")
            val actual = TimestepEmbedding.compute(t, dim)
            val differing = expected.indices.filter {
                java.lang.Float.floatToIntBits(expected[it]) != java.lang.Float.floatToIntBits(actual[it])
            }
            if (differing.isNotEmpty()) {
                val first = differing[0]
                org.junit.Assert.fail("t = $t: ${differing.size} of ${expected.size} values differ from the bundle " +
                    "runner; first at [$first]: ${actual[first]} != ${expected[first]}")
            }
        }
    }

    @Test
    fun smallTimestepsAgreeTightly() {
        val golden = Golden.load("timestep_embedding.json")
        val dim = golden.int("dim")
        for (row in golden.objects("rows")) {
            val t = row.double("t").toFloat()
            if (t <= 20.5f) Golden.assertClose("t = $t", row.floats("values"), TimestepEmbedding.compute(t, dim))
        }
    }
}
