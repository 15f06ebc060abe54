"""GPU experiments behind the layer choices: alternative UNet layer implementations and attention kernels.

Each variant replaces one piece of ``sd_keras.models.layers`` in a fresh process and times the batch-8 SD 1.x
denoising loop alone (random weights, bf16, 512x512, 50 DDIM steps, CFG 7.5; median of 3 after a warm-up):

    base          the layers as they are
    fused_qkv     self-attention q/k/v (and cross-attention k/v) as one matrix product with concatenated kernels
    geglu_split   the GEGLU feed-forward as two matrix products (hidden, gate) instead of one product and a split
    ln_keras      Keras' two-pass LayerNorm everywhere;  ln_onepass: one-pass statistics everywhere
    gn_rows       GroupNorm statistics summing image rows first at every batch size

``--attention`` times the SD 1.x 64x64-level attention (batch 16 = 8 images with CFG, 4096 tokens, 8 heads of
40) through Keras, cuDNN, cuDNN with the head zero-padded to 48 and 64, and XLA's unfused attention.

    KERAS_BACKEND=jax python benchmarks/gpu_variants.py --out variants.json
    KERAS_BACKEND=jax python benchmarks/gpu_variants.py --smoke      # tiny preset on the CPU (checks the script)

Not a test: numbers depend on the card.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import _median_time  # noqa: E402

VARIANTS = ("base", "fused_qkv", "geglu_split", "ln_keras", "ln_onepass", "gn_rows")


def _patch(variant):
    from keras import ops

    from sd_keras.models import layers

    if variant == "fused_qkv":
        def attention_call(self, inputs, context=None):
            dtype = inputs.dtype
            if self.qkv_bias:
                context = inputs if context is None else context
                query, key, value = self.q_proj(inputs), self.k_proj(context), self.v_proj(context)
            elif context is None:
                kernel = ops.concatenate([self.q_proj.kernel, self.k_proj.kernel, self.v_proj.kernel], axis=-1)
                query, key, value = ops.split(ops.matmul(inputs, ops.cast(kernel, dtype)), 3, axis=-1)
            else:
                query = self.q_proj(inputs)
                kernel = ops.concatenate([self.k_proj.kernel, self.v_proj.kernel], axis=-1)
                key, value = ops.split(ops.matmul(ops.cast(context, dtype), ops.cast(kernel, dtype)), 2, axis=-1)
            query, key, value = map(self._split_heads, (query, key, value))
            out = ops.dot_product_attention(query, key, value, scale=self.head_size**-0.5, is_causal=self.causal)
            return self.out_proj(ops.reshape(out, (-1, ops.shape(out)[1], self.num_heads * self.head_size)))

        layers.MultiHeadAttention.call = attention_call
    elif variant == "geglu_split":
        def transformer_call(self, inputs, context):
            x = self.attn1(self.norm1(inputs)) + inputs
            x = self.attn2(self.norm2(x), context) + x
            h = self.norm3(x)
            kernel, bias = ops.cast(self.ff_proj.kernel, h.dtype), ops.cast(self.ff_proj.bias, h.dtype)
            n = self.ff_inner
            hidden = ops.matmul(h, kernel[:, :n]) + bias[:n]
            gate = ops.gelu(ops.matmul(h, kernel[:, n:]) + bias[n:], approximate=self.gelu_approximate)
            return self.ff_out(hidden * gate) + x

        layers.TransformerBlock.call = transformer_call
    elif variant == "ln_keras":
        layers.LAYER_ONE_PASS_MIN_ROWS = 2**62
    elif variant == "ln_onepass":
        layers.LAYER_ONE_PASS_MIN_ROWS = 0
    elif variant == "gn_rows":
        layers.GROUP_STATS = "rows"
    elif variant != "base":
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def run_variant(variant, preset, size, steps, batch, repeats):
    """In this process: patch, build, time the loop (``generate_image(..., return_latent=True)``)."""
    _patch(variant)
    from sd_keras.pipeline import StableDiffusion

    sd = StableDiffusion.from_config(preset, dtype="bfloat16")
    context = sd.encode_text("a photograph of an astronaut riding a horse")

    def loop():
        return sd.generate_image(context, batch_size=batch, num_steps=steps, seed=0, sampler="DDIM", height=size,
                                 width=size, return_latent=True)

    first, _ = _median_time(loop, 1)
    loop()
    median, times = _median_time(loop, repeats)
    return {"loop_s": median, "times": times, "first_s": first}


def attention(batch, tokens, heads=8, head_size=40, context_tokens=77):
    """Microseconds per attention call, by implementation."""
    import jax
    import jax.numpy as jnp
    from keras import ops

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(key, (batch, tokens, heads, head_size), jnp.bfloat16) for key in keys[:3])
    ctx = jax.random.normal(keys[3], (batch, context_tokens, heads, head_size), jnp.bfloat16)
    scale = head_size**-0.5

    def padded(width):
        pad = ((0, 0), (0, 0), (0, 0), (0, width - head_size))

        def fn(q, k, v):
            out = jax.nn.dot_product_attention(jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad), scale=scale,
                                               implementation="cudnn")
            return out[..., :head_size]
        return fn

    cases = {
        "self keras.ops": (lambda q, k, v: ops.dot_product_attention(q, k, v, scale=scale), (q, k, v)),
        "self cudnn": (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn"),
                       (q, k, v)),
        "self cudnn head padded to 48": (padded(48), (q, k, v)),
        "self cudnn head padded to 64": (padded(64), (q, k, v)),
        "self xla": (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla"),
                     (q, k, v)),
        "cross keras.ops": (lambda q, k: ops.dot_product_attention(q, k, k, scale=scale), (q, ctx)),
        "cross cudnn": (lambda q, k: jax.nn.dot_product_attention(q, k, k, scale=scale, implementation="cudnn"),
                        (q, ctx)),
        "cross xla": (lambda q, k: jax.nn.dot_product_attention(q, k, k, scale=scale, implementation="xla"),
                      (q, ctx)),
    }
    results = {}
    for name, (fn, args) in cases.items():
        compiled = jax.jit(fn)
        try:
            compiled(*args).block_until_ready()
        except Exception as error:  # noqa: BLE001 - e.g. no cuDNN on this machine
            results[name] = f"unavailable: {type(error).__name__}"
            continue
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                out = compiled(*args)
            out.block_until_ready()
            times.append((time.perf_counter() - start) / 20)
        results[name] = round(statistics.median(times) * 1e6, 1)
        print(f"attention {name}: {results[name]} us", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_variants.json")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--attention", action="store_true", help="also the attention micro-benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 64x64, 2 steps (checks the script)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset, size, steps, batch = ("tiny", 64, 2, 2) if args.smoke else ("sd-v1", 512, 50, 8)
    if args.child:
        print("VARIANT", json.dumps(run_variant(args.child, preset, size, steps, batch, args.repeats)))
        return
    import jax

    results = {"card": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d"), "preset": preset,
               "size": size, "steps": steps, "batch": batch, "loop_s": {}}
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--child", variant, "--repeats", str(args.repeats)]
        done = subprocess.run(command + (["--smoke"] if args.smoke else []), capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("VARIANT ")]
        results["loop_s"][variant] = json.loads(lines[-1][8:]) if lines else {"error": done.stderr[-1500:]}
        print(variant, results["loop_s"][variant], flush=True)
    if args.attention:
        results["attention_us"] = attention(2 * batch, (size // 8) ** 2)
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
