"""Blocks shared by the text encoder, UNet and VAE (``keras`` + ``keras.ops`` only).

Every size is a constructor argument (filled from ``sd_keras.config``). Sub-layers are created in the same
order as KerasCV's so that ``model.weights`` lists tensors in KerasCV's order; their names follow diffusers'
(``norm1``, ``conv1``, ``time_emb_proj``, ``proj_in``, ``attn1``, ``q_proj``...). Attention runs through
``keras.ops.dot_product_attention`` so that backends may use fused kernels.
"""

import math

import keras
import numpy as np
from keras import ops

from sd_keras import backend

_serializable = keras.saving.register_keras_serializable(package="sd_keras")


@_serializable
class HostUniform(keras.initializers.Initializer):
    """Uniform in [-limit, limit] drawn with numpy on the host (``limit=None``: Glorot's).

    Seeded by ``keras.utils.set_random_seed`` (numpy's global RNG), so a seed gives the same random weights on
    every backend, and JAX compiles no RNG program per weight shape (that dominated building the tiny model).
    """

    skip = False  # set by ``filled_later``

    def __init__(self, limit=None):
        self.limit = limit

    def __call__(self, shape, dtype=None):
        if HostUniform.skip:  # the weights are assigned next: zeros, which the system hands over without work
            return ops.zeros(shape, dtype) if dtype is not None and \
                keras.backend.standardize_dtype(dtype) != "float32" else np.zeros(shape, np.float32)
        limit = self.limit
        if limit is None:
            receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
        rng = np.random.default_rng(np.random.randint(2**31))
        values = rng.random(shape, dtype=np.float32)
        values *= np.float32(2.0 * limit)
        values -= np.float32(limit)
        if dtype is None or keras.backend.standardize_dtype(dtype) == "float32":
            return values
        return ops.cast(values, dtype)  # e.g. bfloat16, which numpy lacks

    def get_config(self):
        return {"limit": self.limit}


class filled_later:
    """Within this context ``HostUniform`` draws nothing and returns zeros: for models whose every weight is
    assigned right after building (``registry.build`` with weights; ``assign`` checks that every one is). Drawing
    SDXL's 3.5 B random values was most of the time of loading it on a CPU."""

    def __enter__(self):
        self.previous, HostUniform.skip = HostUniform.skip, True
        return self

    def __exit__(self, *exc):
        HostUniform.skip = self.previous


def dense(units, **kwargs):
    """``keras.layers.Dense`` with host-seeded Glorot initialisation."""
    return keras.layers.Dense(units, kernel_initializer=HostUniform(), **kwargs)


@_serializable
class Conv2D(keras.layers.Conv2D):
    """Keras' Conv2D (same weights and config); where ``backend.conv_as_matmul`` says so (small, wide
    convolutions on a CPU-only TensorFlow), computed as im2col + one matrix product: the same sums in another
    order (float32 results within a few 1e-6 relative)."""

    def convolution_op(self, inputs, kernel):
        if (self.data_format == "channels_last" and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1 and self.padding in ("same", "valid")
                and backend.conv_as_matmul(inputs.shape, kernel.shape)):
            return _conv_as_matmul(inputs, kernel, self.padding)
        return super().convolution_op(inputs, kernel)


def _conv_as_matmul(inputs, kernel, padding):
    kernel_height, kernel_width, channels, filters = kernel.shape
    if padding == "same" and (kernel_height > 1 or kernel_width > 1):
        top, left = (kernel_height - 1) // 2, (kernel_width - 1) // 2
        inputs = ops.pad(inputs, [(0, 0), (top, kernel_height - 1 - top), (left, kernel_width - 1 - left), (0, 0)])
    batch, height, width = inputs.shape[0], inputs.shape[1] - kernel_height + 1, inputs.shape[2] - kernel_width + 1
    patches = [inputs[:, i:i + height, j:j + width, :] for i in range(kernel_height) for j in range(kernel_width)]
    columns = patches[0] if len(patches) == 1 else ops.concatenate(patches, axis=-1)
    product = ops.matmul(ops.reshape(columns, (-1, kernel_height * kernel_width * channels)),
                         ops.reshape(kernel, (kernel_height * kernel_width * channels, filters)))
    return ops.reshape(product, (batch, height, width, filters))


def conv2d(filters, kernel_size, **kwargs):
    """``Conv2D`` with host-seeded Glorot initialisation."""
    return Conv2D(filters, kernel_size, kernel_initializer=HostUniform(), **kwargs)


def embedding(input_dim, output_dim, **kwargs):
    """``keras.layers.Embedding`` with host-seeded uniform(-0.05, 0.05) initialisation (Keras' default)."""
    return keras.layers.Embedding(input_dim, output_dim, embeddings_initializer=HostUniform(0.05), **kwargs)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal timestep embedding, exactly as KerasCV's ``_get_timestep_embedding``: ``[cos, sin]``.

    ``timesteps`` may be a Python number or a (traced) tensor of any shape; the result has shape
    ``timesteps.shape + (dim,)`` in float32.

    Example:
        >>> tuple(timestep_embedding([999.0], 320).shape)
        (1, 320)
    """
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.cast(ops.arange(0, half), "float32") / half)
    args = ops.expand_dims(ops.cast(timesteps, "float32"), -1) * freqs
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)


def apply_activation(x, name):
    """The text encoder's MLP activation by config name."""
    if name == "quick_gelu":
        return x * ops.sigmoid(x * 1.702)
    if name == "gelu":
        return ops.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return ops.gelu(x, approximate=True)
    raise ValueError(f"unknown activation {name!r}")


_HALF = ("float16", "bfloat16")


def _one_pass_moments(x, axes):
    """Mean and variance of float32 ``x`` over ``axes`` from one read of ``x`` (E[x] and E[x^2], fused by XLA)."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    mean_square = ops.mean(ops.square(x), axis=axes, keepdims=True)
    return mean, ops.maximum(mean_square - ops.square(mean), 0.0)


# How the half-precision norms take their statistics, by the size of the reduction (static shapes: one compiled
# program per shape). Measured on an H200 (benchmarks/results/norm_kernels_h200.json, bf16, GroupNorm/LayerNorm +
# SiLU, microseconds per call; Keras' layer / one pass / rows first):
#   GroupNorm (2, 64, 64, 320): 44.8 / 37.1 / 21.6    (16, 32, 32, 640): 32.9 / 26.5 / 61.1
#   LayerNorm (2, 4096, 320): Keras 13.7 / one pass 23.8    (16, 4096, 320): 56.2 / 45.7
# GroupNorm sums each image row first when the reduction has at most ``GROUP_ROWS_MAX_OUTPUTS`` outputs (batch x
# channels), else reduces each group at once; LayerNorm takes one pass from ``LAYER_ONE_PASS_MIN_ROWS`` rows on and
# is Keras' below. "auto" follows these rules; "rows" / "one_pass" force one way (benchmarks compare them).
GROUP_STATS = "auto"
GROUP_ROWS_MAX_OUTPUTS = 4096
LAYER_ONE_PASS_MIN_ROWS = 16384


def _group_moments(x, groups):
    """Per-(image, group) mean and variance of float32 channels-last ``x`` (B, H, W, C), shaped (B, 1, G, C/G).

    A GroupNorm reduction keeps the channels (the fastest-varying axis) and sums over height and width, which
    XLA emits as a column reduction with only B*C outputs: at batch 1-2 it leaves most of a GPU idle. Summing over
    W first (B*H*C outputs), then over H and the group's channels, is then up to 2x faster.
    """
    channels = x.shape[-1]
    rows = GROUP_STATS == "rows"
    if GROUP_STATS == "auto":
        rows = x.shape[0] is not None and x.shape[0] * channels <= GROUP_ROWS_MAX_OUTPUTS
    if rows and len(x.shape) == 4:
        sums = (ops.sum(x, axis=2), ops.sum(ops.square(x), axis=2))
        row_sum, row_square_sum = backend.optimization_barrier(sums)
        count = ops.cast(ops.shape(x)[1] * ops.shape(x)[2] * (channels // groups), "float32")
        shape = (ops.shape(x)[0], -1, groups, channels // groups)
        mean = ops.sum(ops.reshape(row_sum, shape), axis=(1, 3), keepdims=True) / count
        mean_square = ops.sum(ops.reshape(row_square_sum, shape), axis=(1, 3), keepdims=True) / count
        return mean, ops.maximum(mean_square - ops.square(mean), 0.0)
    return _one_pass_moments(ops.reshape(x, (ops.shape(x)[0], -1, groups, channels // groups)), (1, 3))


@_serializable
class GroupNormalization(keras.layers.GroupNormalization):
    """Keras' GroupNormalization (same weights and config), faster in 16-bit compute on channels-last inputs.

    In float16/bfloat16 the group statistics are float32 sums of x and x^2 taken in one pass over the input (Keras
    takes the mean, then the variance in a second pass; see ``_group_moments`` for the order of the sums); the
    result is then one fused scale-and-shift. The float32 path is Keras' own, so float32 results are exactly
    Keras'.
    """

    def call(self, inputs):
        if self.compute_dtype not in _HALF or self.axis not in (-1, len(inputs.shape) - 1):
            return super().call(inputs)
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        x = ops.cast(inputs, "float32")
        mean, variance = _group_moments(x, self.groups)
        groups = ops.reshape(x, (shape[0], -1, self.groups, channels // self.groups))
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.reshape(ops.cast(self.gamma, "float32"), (1, 1, self.groups, -1))
        shift = -mean * scale
        if self.center:
            shift = shift + ops.reshape(ops.cast(self.beta, "float32"), (1, 1, self.groups, -1))
        return ops.reshape(ops.cast(groups * scale + shift, self.compute_dtype), shape)


@_serializable
class LayerNormalization(keras.layers.LayerNormalization):
    """Keras' LayerNormalization (same weights and config); in 16-bit compute on large inputs, statistics in one
    pass (see ``LAYER_ONE_PASS_MIN_ROWS``).

    Over the last axis only; float32 (and every other case) is Keras' own path.
    """

    def call(self, inputs):
        last = len(inputs.shape) - 1
        rows = math.prod(inputs.shape[:-1]) if None not in inputs.shape[:-1] else 0
        if (self.compute_dtype not in _HALF or self.rms_scaling or list(self.axis) not in ([-1], [last])
                or rows < LAYER_ONE_PASS_MIN_ROWS):
            return super().call(inputs)
        x = ops.cast(inputs, "float32")
        mean, variance = _one_pass_moments(x, (-1,))
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, "float32")
        shift = -mean * scale
        if self.center:
            shift = shift + ops.cast(self.beta, "float32")
        return ops.cast(x * scale + shift, self.compute_dtype)


def _with_channels(shape, channels):
    return tuple(shape[:-1]) + (channels,)


class _Block(keras.layers.Layer):
    """Base: sub-layers share the block's dtype policy; ``get_config`` returns the constructor arguments."""

    _arg_names = ()

    def _sub(self, layer_cls, *args, **kwargs):
        return layer_cls(*args, dtype=self.dtype_policy, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._arg_names})
        return config


@_serializable
class CLIPEmbedding(_Block):
    """Token embedding + learned position embedding. Called as ``layer(tokens, positions)``."""

    _arg_names = ("vocab_size", "width", "max_length")

    def __init__(self, vocab_size, width, max_length, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.width, self.max_length = vocab_size, width, max_length
        self.token_embedding = self._sub(embedding, vocab_size, width, name="token_embedding")
        self.position_embedding = self._sub(embedding, max_length, width, name="position_embedding")

    def build(self, tokens_shape):
        self.token_embedding.build(tokens_shape)
        self.position_embedding.build(tokens_shape)

    def call(self, tokens, positions):
        return self.token_embedding(tokens) + self.position_embedding(positions)

    def compute_output_shape(self, tokens_shape):
        return tuple(tokens_shape) + (self.width,)


@_serializable
class MultiHeadAttention(_Block):
    """Multi-head (cross-)attention: ``layer(inputs, context=None)``; self-attention when context is None.

    CLIP's self-attention has biased q/k/v projections and a causal mask; the UNet's has unbiased q/k/v.
    """

    _arg_names = ("num_heads", "head_size", "qkv_bias", "causal")

    def __init__(self, num_heads, head_size, qkv_bias=True, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_size, self.qkv_bias, self.causal = num_heads, head_size, qkv_bias, causal
        width = num_heads * head_size
        self.q_proj = self._sub(dense, width, use_bias=qkv_bias, name="q_proj")
        self.k_proj = self._sub(dense, width, use_bias=qkv_bias, name="k_proj")
        self.v_proj = self._sub(dense, width, use_bias=qkv_bias, name="v_proj")
        self.out_proj = self._sub(dense, width, name="out_proj")

    def build(self, inputs_shape, context_shape=None):
        context_shape = inputs_shape if context_shape is None else context_shape
        self.q_proj.build(inputs_shape)
        self.k_proj.build(context_shape)
        self.v_proj.build(context_shape)
        self.out_proj.build(_with_channels(inputs_shape, self.num_heads * self.head_size))

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return _with_channels(inputs_shape, self.num_heads * self.head_size)

    def _split_heads(self, x):
        return ops.reshape(x, (-1, ops.shape(x)[1], self.num_heads, self.head_size))

    def call(self, inputs, context=None):
        context = inputs if context is None else context
        query = self._split_heads(self.q_proj(inputs))
        key = self._split_heads(self.k_proj(context))
        value = self._split_heads(self.v_proj(context))
        out = ops.dot_product_attention(query, key, value, scale=self.head_size**-0.5, is_causal=self.causal)
        out = ops.reshape(out, (-1, ops.shape(out)[1], self.num_heads * self.head_size))
        return self.out_proj(out)


@_serializable
class CLIPEncoderLayer(_Block):
    """Pre-LayerNorm transformer layer of the CLIP text model (causal self-attention + MLP)."""

    _arg_names = ("width", "num_heads", "intermediate_size", "activation", "epsilon")

    def __init__(self, width, num_heads, intermediate_size, activation="quick_gelu", epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.width, self.num_heads, self.intermediate_size = width, num_heads, intermediate_size
        self.activation, self.epsilon = activation, epsilon
        self.layer_norm1 = self._sub(LayerNormalization, epsilon=epsilon, name="layer_norm1")
        self.self_attn = self._sub(MultiHeadAttention, num_heads, width // num_heads, qkv_bias=True, causal=True,
                                   name="self_attn")
        self.layer_norm2 = self._sub(LayerNormalization, epsilon=epsilon, name="layer_norm2")
        self.fc1 = self._sub(dense, intermediate_size, name="fc1")
        self.fc2 = self._sub(dense, width, name="fc2")

    def build(self, input_shape):
        for layer in (self.layer_norm1, self.self_attn, self.layer_norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(_with_channels(input_shape, self.intermediate_size))

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x = self.self_attn(self.layer_norm1(inputs)) + inputs
        return self.fc2(apply_activation(self.fc1(self.layer_norm2(x)), self.activation)) + x


@_serializable
class ResnetBlock(_Block):
    """GroupNorm-swish-conv residual block: ``layer(x)`` (VAE) or ``layer(x, time_embedding)`` (UNet).

    A 1x1 ``conv_shortcut`` is created at build time when the input width differs from ``channels``.
    """

    _arg_names = ("channels", "norm_groups", "epsilon", "use_time_embedding")

    def __init__(self, channels, norm_groups=32, epsilon=1e-5, use_time_embedding=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.norm_groups, self.epsilon = channels, norm_groups, epsilon
        self.use_time_embedding = use_time_embedding
        norm = GroupNormalization
        self.norm1 = self._sub(norm, groups=norm_groups, epsilon=epsilon, name="norm1")
        self.conv1 = self._sub(conv2d, channels, 3, padding="same", name="conv1")
        if use_time_embedding:
            self.time_emb_proj = self._sub(dense, channels, name="time_emb_proj")
        self.norm2 = self._sub(norm, groups=norm_groups, epsilon=epsilon, name="norm2")
        self.conv2 = self._sub(conv2d, channels, 3, padding="same", name="conv2")

    def build(self, inputs_shape, time_embedding_shape=None):
        output_shape = _with_channels(inputs_shape, self.channels)
        self.norm1.build(inputs_shape)
        self.conv1.build(inputs_shape)
        if self.use_time_embedding:
            self.time_emb_proj.build(time_embedding_shape)
        self.norm2.build(output_shape)
        self.conv2.build(output_shape)
        # Created last, as KerasCV does, so that it comes last in the weight order.
        self.conv_shortcut = None
        if inputs_shape[-1] != self.channels:
            self.conv_shortcut = self._sub(conv2d, self.channels, 1, name="conv_shortcut")
            self.conv_shortcut.build(inputs_shape)

    def compute_output_shape(self, inputs_shape, time_embedding_shape=None):
        return _with_channels(inputs_shape, self.channels)

    def call(self, inputs, time_embedding=None):
        x = self.conv1(ops.silu(self.norm1(inputs)))
        if self.use_time_embedding:
            x = x + self.time_emb_proj(ops.silu(time_embedding))[:, None, None, :]
        x = self.conv2(ops.silu(self.norm2(x)))
        shortcut = inputs if self.conv_shortcut is None else self.conv_shortcut(inputs)
        return x + shortcut


@_serializable
class TransformerBlock(_Block):
    """Self-attention, cross-attention on ``context``, GEGLU feed-forward; each pre-LayerNorm + residual."""

    _arg_names = ("num_heads", "head_size", "ff_mult", "gelu_approximate")

    def __init__(self, num_heads, head_size, ff_mult=4, gelu_approximate=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_size, self.ff_mult = num_heads, head_size, ff_mult
        self.gelu_approximate = gelu_approximate
        width = num_heads * head_size
        self.ff_inner = width * ff_mult
        layer_norm = LayerNormalization
        self.norm1 = self._sub(layer_norm, epsilon=1e-5, name="norm1")
        self.attn1 = self._sub(MultiHeadAttention, num_heads, head_size, qkv_bias=False, name="attn1")
        self.norm2 = self._sub(layer_norm, epsilon=1e-5, name="norm2")
        self.attn2 = self._sub(MultiHeadAttention, num_heads, head_size, qkv_bias=False, name="attn2")
        self.norm3 = self._sub(layer_norm, epsilon=1e-5, name="norm3")
        self.ff_proj = self._sub(dense, self.ff_inner * 2, name="ff_proj")
        self.ff_out = self._sub(dense, width, name="ff_out")

    def build(self, inputs_shape, context_shape):
        for layer in (self.norm1, self.attn1, self.norm2):
            layer.build(inputs_shape)
        self.attn2.build(inputs_shape, context_shape)
        self.norm3.build(inputs_shape)
        self.ff_proj.build(inputs_shape)
        self.ff_out.build(_with_channels(inputs_shape, self.ff_inner))

    def compute_output_shape(self, inputs_shape, context_shape):
        return inputs_shape

    def call(self, inputs, context):
        x = self.attn1(self.norm1(inputs)) + inputs
        x = self.attn2(self.norm2(x), context) + x
        hidden, gate = ops.split(self.ff_proj(self.norm3(x)), 2, axis=-1)
        return self.ff_out(hidden * ops.gelu(gate, approximate=self.gelu_approximate)) + x


@_serializable
class SpatialTransformer(_Block):
    """GroupNorm, proj_in, ``depth`` ``TransformerBlock``s over the h*w tokens, proj_out, residual.

    ``layer(x, context)``; ``linear_proj`` picks Dense projections (SD 2, SDXL) over 1x1 convolutions (SD 1).
    ``depth`` > 1 (SDXL) chains blocks named ``transformer_block``, ``transformer_block_1``, ...
    """

    _arg_names = ("num_heads", "head_size", "linear_proj", "ff_mult", "gelu_approximate", "norm_groups",
                  "epsilon", "depth")

    def __init__(self, num_heads, head_size, linear_proj=False, ff_mult=4, gelu_approximate=True, norm_groups=32,
                 epsilon=1e-5, depth=1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_size, self.linear_proj = num_heads, head_size, linear_proj
        self.ff_mult, self.gelu_approximate = ff_mult, gelu_approximate
        self.norm_groups, self.epsilon, self.depth = norm_groups, epsilon, depth
        self.channels = num_heads * head_size
        self.norm = self._sub(GroupNormalization, groups=norm_groups, epsilon=epsilon, name="norm")
        self.proj_in = self._projection("proj_in")
        self.transformer_block = self._sub(TransformerBlock, num_heads, head_size, ff_mult, gelu_approximate,
                                           name="transformer_block")
        self.more_blocks = [self._sub(TransformerBlock, num_heads, head_size, ff_mult, gelu_approximate,
                                      name=f"transformer_block_{index}") for index in range(1, depth)]
        self.proj_out = self._projection("proj_out")

    def _projection(self, name):
        if self.linear_proj:
            return self._sub(dense, self.channels, name=name)
        return self._sub(conv2d, self.channels, 1, name=name)

    def build(self, inputs_shape, context_shape):
        self.norm.build(inputs_shape)
        self.proj_in.build(inputs_shape)
        for block in [self.transformer_block] + self.more_blocks:
            block.build((None, None, self.channels), context_shape)
        self.proj_out.build(_with_channels(inputs_shape, self.channels))

    def compute_output_shape(self, inputs_shape, context_shape):
        return inputs_shape

    def call(self, inputs, context):
        shape = ops.shape(inputs)
        height, width = shape[1], shape[2]
        x = self.proj_in(self.norm(inputs))
        x = ops.reshape(x, (-1, height * width, self.channels))
        for block in [self.transformer_block] + self.more_blocks:
            x = block(x, context)
        x = ops.reshape(x, (-1, height, width, self.channels))
        return self.proj_out(x) + inputs


@_serializable
class AttentionBlock(_Block):
    """The VAE's single-head spatial self-attention (1x1 conv projections), with residual."""

    _arg_names = ("channels", "norm_groups", "epsilon")

    def __init__(self, channels, norm_groups=32, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.norm_groups, self.epsilon = channels, norm_groups, epsilon
        self.norm = self._sub(GroupNormalization, groups=norm_groups, epsilon=epsilon, name="norm")
        self.to_q = self._sub(conv2d, channels, 1, name="to_q")
        self.to_k = self._sub(conv2d, channels, 1, name="to_k")
        self.to_v = self._sub(conv2d, channels, 1, name="to_v")
        self.proj_out = self._sub(conv2d, channels, 1, name="proj_out")

    def build(self, input_shape):
        for layer in (self.norm, self.to_q, self.to_k, self.to_v, self.proj_out):
            layer.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        shape = ops.shape(inputs)
        height, width = shape[1], shape[2]
        x = self.norm(inputs)

        def tokens(t):
            return ops.reshape(t, (-1, height * width, 1, self.channels))

        out = ops.dot_product_attention(tokens(self.to_q(x)), tokens(self.to_k(x)), tokens(self.to_v(x)),
                                        scale=self.channels**-0.5)
        out = ops.reshape(out, (-1, height, width, self.channels))
        return self.proj_out(out) + inputs


@_serializable
class TimeIdsEmbedding(keras.layers.Layer):
    """SDXL's micro-conditioning: each of the (B, n) time ids through ``timestep_embedding`` (``dim`` wide),
    concatenated to (B, n * dim). Always float32 (ids up to 1024 and beyond are not exact in bfloat16)."""

    def __init__(self, dim, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.dim = dim

    def call(self, time_ids):
        embedded = timestep_embedding(ops.cast(time_ids, "float32"), self.dim)
        return ops.reshape(embedded, (-1, time_ids.shape[-1] * self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1] * self.dim)

    def get_config(self):
        config = super().get_config()
        config["dim"] = self.dim
        return config


@_serializable
class LatentMean(_Block):
    """The mean half of the encoder's moments, times the VAE scaling factor (KerasCV's ImageEncoder output)."""

    _arg_names = ("latent_channels", "scaling_factor")

    def __init__(self, latent_channels, scaling_factor, **kwargs):
        super().__init__(**kwargs)
        self.latent_channels, self.scaling_factor = latent_channels, scaling_factor

    def call(self, moments):
        return moments[..., : self.latent_channels] * self.scaling_factor

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.latent_channels,)
