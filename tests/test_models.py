"""sd_keras.config and sd_keras.models on tiny configs: shapes, sizes, serialization, attention maths."""
import dataclasses
import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from sd_keras import backend, models
from sd_keras.config import PRESETS, ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig, get_config
from sd_keras.errors import InputError
from sd_keras.models import layers

TINY = get_config("tiny")


def to_numpy(x):
    return ops.convert_to_numpy(x)


def run(model, inputs):
    """``model(inputs)``; on JAX as one compiled program (``predict_on_batch``): an eager JAX call compiles every
    operation again for each new shape, several times slower on a CPU than compiling the whole model once."""
    if keras.backend.backend() == "jax":
        return model.predict_on_batch(inputs)
    return model(inputs)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.abs(actual - expected).max() / np.abs(expected).max()


def text_inputs(batch, config=TINY.text_encoder, seed=0):
    rng = np.random.default_rng(seed)
    length = config.max_length
    return {"tokens": ops.convert_to_tensor(rng.integers(0, config.vocab_size, (batch, length)).astype("int32")),
            "positions": ops.convert_to_tensor(np.tile(np.arange(length, dtype="int32"), (batch, 1)))}


def unet_inputs(config, batch, height, width, seed=0, context_length=77):
    rng = np.random.default_rng(seed)
    unet = config.unet
    return {
        "latent": ops.convert_to_tensor(rng.standard_normal((batch, height, width, unet.in_channels), "float32")),
        "timestep_embedding": layers.timestep_embedding(ops.convert_to_tensor([981.0] * batch), unet.timestep_dim),
        "context": ops.convert_to_tensor(rng.standard_normal((batch, context_length, unet.context_dim), "float32")),
    }


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return {"text_encoder": models.build_text_encoder(TINY), "diffusion_model": models.build_diffusion_model(TINY),
            "decoder": models.build_decoder(TINY), "image_encoder": models.build_image_encoder(TINY)}


# -- configs and presets -------------------------------------------------------------------------------------


def test_presets_round_trip_through_json():
    assert {"sd-v1", "sd-v2", "tiny"} <= set(PRESETS)
    for name, config in PRESETS.items():
        assert config.name == name
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert get_config(name) is config


def test_unknown_preset_names_it_and_lists_the_known_ones():
    with pytest.raises(ValueError, match="'sd-v3'.*" + ", ".join(sorted(PRESETS))):
        get_config("sd-v3")


def test_keras_cv_preset_sizes():
    v1, v2 = get_config("sd-v1"), get_config("sd-v2")
    assert (v1.text_encoder.width, v1.text_encoder.num_layers, v1.text_encoder.num_heads) == (768, 12, 12)
    assert (v2.text_encoder.width, v2.text_encoder.num_layers, v2.text_encoder.num_heads) == (1024, 23, 16)
    assert (v1.text_encoder.activation, v2.text_encoder.activation) == ("quick_gelu", "gelu_tanh")
    assert v1.unet.attention_heads(640) == (8, 80) and v2.unet.attention_heads(640) == (10, 64)
    assert (v1.unet.linear_proj, v2.unet.linear_proj) == (False, True)
    assert v1.pad_token_id == v2.pad_token_id == 49407  # KerasCV pads both with the end token
    assert v1.vae.downsample_factor == TINY.vae.downsample_factor == 8
    assert v1.image_size == v2.image_size == (512, 512)


@pytest.mark.parametrize("bad", [
    lambda: UNetConfig(num_heads=8, head_size=64),
    lambda: UNetConfig(num_heads=None, head_size=None),
    lambda: UNetConfig(attention_levels=(True, False)),
    lambda: UNetConfig(block_out_channels=(320, 650, 1280, 1280)),
    lambda: TextEncoderConfig(activation="relu"),
    lambda: VAEConfig(block_out_channels=(100, 200)),
    lambda: ModelConfig(name="x", unet=UNetConfig(context_dim=1024)),
    lambda: ModelConfig(name="x", prediction_type="sample"),
    lambda: ModelConfig.from_dict({"name": "x", "unet": {"channels": (1,)}}),
])
def test_inconsistent_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()


# -- the tiny models ---------------------------------------------------------------------------------------


def test_tiny_output_shapes_and_signatures(tiny):
    context = tiny["text_encoder"](text_inputs(2))
    assert tuple(context.shape) == (2, 77, 32)
    assert set(tiny["text_encoder"].input) == {"tokens", "positions"}
    unet = tiny["diffusion_model"]
    assert set(unet.input) == {"latent", "timestep_embedding", "context"}
    assert tuple(unet.input["latent"].shape) == (None, None, None, 4)
    assert unet.input["timestep_embedding"].shape[-1] == TINY.unet.timestep_dim
    inputs = unet_inputs(TINY, 2, 8, 8)
    inputs["context"] = context
    assert tuple(unet(inputs).shape) == (2, 8, 8, 4)
    latent = ops.convert_to_tensor(np.random.default_rng(1).standard_normal((2, 8, 8, 4), "float32"))
    image = tiny["decoder"](latent)
    assert tuple(image.shape) == (2, 64, 64, 3)
    assert tuple(tiny["image_encoder"](image).shape) == (2, 8, 8, 4)


def test_tiny_parameter_count(tiny):
    counts = {name: model.count_params() for name, model in tiny.items()}
    token_table = TINY.text_encoder.vocab_size * TINY.text_encoder.width  # 49408 x 32, a lookup table
    assert 100_000 < sum(counts.values()) - token_table < 1_500_000, counts
    assert sum(counts.values()) < 3_000_000, counts


@pytest.mark.parametrize("height,width", [(64, 64), (64, 128), (192, 128)])
def test_one_model_runs_any_size_that_is_a_multiple_of_64(tiny, height, width):
    h, w = height // 8, width // 8
    assert tuple(run(tiny["diffusion_model"], unet_inputs(TINY, 1, h, w)).shape) == (1, h, w, 4)
    latent = ops.convert_to_tensor(np.zeros((1, h, w, 4), "float32"))
    assert tuple(run(tiny["decoder"], latent).shape) == (1, height, width, 3)
    image = ops.convert_to_tensor(np.zeros((1, height, width, 3), "float32"))
    assert tuple(run(tiny["image_encoder"], image).shape) == (1, h, w, 4)


def test_nine_channel_inpainting_unet_builds_and_runs():
    config = dataclasses.replace(TINY, unet=dataclasses.replace(TINY.unet, in_channels=9))
    unet = models.build_diffusion_model(config)
    assert tuple(unet.get_layer("conv_in").kernel.shape) == (3, 3, 9, 32)
    assert tuple(unet(unet_inputs(config, 1, 8, 8)).shape) == (1, 8, 8, 4)


def test_sd1_style_unet_uses_conv_projections_and_fixed_head_count():
    unet_config = dataclasses.replace(TINY.unet, num_heads=2, head_size=None, linear_proj=False)
    config = dataclasses.replace(TINY, unet=unet_config)
    unet = models.build_diffusion_model(config)
    attention = unet.get_layer("down_1_attn_0")
    assert (attention.num_heads, attention.head_size) == (2, 32)
    assert isinstance(attention.proj_in, keras.layers.Conv2D)
    assert tuple(unet(unet_inputs(config, 1, 8, 8)).shape) == (1, 8, 8, 4)


def test_weights_have_meaningful_unique_names(tiny):
    paths = {name: [w.path for w in model.weights] for name, model in tiny.items()}
    for model_paths in paths.values():
        assert len(set(model_paths)) == len(model_paths)
    assert "encoder_layer_1/self_attn/q_proj/kernel" in paths["text_encoder"]
    for path in ["down_0_res_0/time_emb_proj/kernel", "mid_attn/transformer_block/attn2/k_proj/kernel",
                 "up_0_res_0/conv_shortcut/kernel", "up_1_attn_1/proj_out/kernel", "up_0_upsample/kernel"]:
        assert path in paths["diffusion_model"]
    assert "post_quant_conv/kernel" in paths["decoder"] and "mid_attn/to_q/kernel" in paths["decoder"]
    assert "quant_conv/kernel" in paths["image_encoder"]


def test_same_seed_gives_same_weights():
    keras.utils.set_random_seed(3)
    first = models.build_decoder(TINY).get_weights()
    keras.utils.set_random_seed(3)
    second = models.build_decoder(TINY).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_builders_accept_preset_names_and_sub_configs():
    assert models.build_decoder("tiny").count_params() == models.build_decoder(TINY.vae).count_params()
    assert models.build_text_encoder(TINY.text_encoder).count_params() == \
        models.build_text_encoder("tiny").count_params()
    with pytest.raises(ValueError, match="unknown preset"):
        models.build_diffusion_model("nope")


def test_dtype_policy_reaches_nested_layers(tiny):
    unet = tiny["diffusion_model"].sd_keras_builder(dtype="mixed_bfloat16")
    q_proj = unet.get_layer("down_1_attn_0").transformer_block.attn1.q_proj
    assert q_proj.dtype_policy.name == "mixed_bfloat16" and q_proj.kernel.dtype == "float32"
    unet.set_weights(tiny["diffusion_model"].get_weights())
    inputs = unet_inputs(TINY, 1, 8, 8)
    out = to_numpy(ops.cast(run(unet, inputs), "float32"))
    assert relative_error(out, to_numpy(run(tiny["diffusion_model"], inputs))) < 0.1


# -- serialization -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [
    layers.CLIPEmbedding(100, 16, 7, name="embeddings"),
    layers.MultiHeadAttention(3, 8, qkv_bias=False, causal=True),
    layers.CLIPEncoderLayer(16, 2, 48, activation="gelu", epsilon=1e-6),
    layers.ResnetBlock(16, norm_groups=4, epsilon=1e-6, use_time_embedding=True),
    layers.TransformerBlock(2, 8, ff_mult=3, gelu_approximate=False),
    layers.SpatialTransformer(2, 8, linear_proj=True, ff_mult=2, gelu_approximate=False, norm_groups=4),
    layers.AttentionBlock(16, norm_groups=4, epsilon=1e-6),
    layers.LatentMean(4, 0.5),
])
def test_custom_layers_round_trip_through_get_config(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    registered = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(registered) is type(layer) and registered.get_config() == config


def test_model_saves_and_reloads_as_keras_file(tiny, tmp_path):
    unet = tiny["diffusion_model"]
    path = str(tmp_path / "unet.keras")
    unet.save(path)
    reloaded = keras.saving.load_model(path)
    inputs = unet_inputs(TINY, 1, 8, 16)
    np.testing.assert_allclose(to_numpy(reloaded(inputs)), to_numpy(unet(inputs)), rtol=1e-6, atol=1e-6)
    rebuilt = keras.Model.from_config(tiny["image_encoder"].get_config())
    assert [tuple(w.shape) for w in rebuilt.weights] == [tuple(w.shape) for w in tiny["image_encoder"].weights]


# -- attention and timestep maths --------------------------------------------------------------------------


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _explicit_attention(q, k, v, num_heads, causal=False):
    """KerasCV's formulation: per-head softmax(q k^T / sqrt(d)) v with an additive -inf causal mask."""
    (b, t, width), s = q.shape, k.shape[1]
    head = width // num_heads
    q = q.reshape(b, t, num_heads, head).transpose(0, 2, 1, 3)
    k = k.reshape(b, s, num_heads, head).transpose(0, 2, 3, 1)
    v = v.reshape(b, s, num_heads, head).transpose(0, 2, 1, 3)
    scores = (q * head**-0.5) @ k
    if causal:
        scores = scores + np.triu(np.full((t, s), -np.inf), k=1)
    out = _softmax(scores) @ v
    return out.transpose(0, 2, 1, 3).reshape(b, t, width)


def _dense(x, layer):
    out = x @ to_numpy(layer.kernel).astype(np.float64)
    return out + to_numpy(layer.bias) if layer.use_bias else out


@pytest.mark.parametrize("causal,context_length", [(True, None), (False, 5)])
def test_dot_product_attention_equals_explicit_softmax_attention(causal, context_length):
    rng = np.random.default_rng(0)
    attention = layers.MultiHeadAttention(4, 8, qkv_bias=causal, causal=causal)
    x = rng.standard_normal((2, 7, 24)).astype("float32")
    context = None if context_length is None else rng.standard_normal((2, context_length, 12)).astype("float32")
    out = to_numpy(attention(x, None if context is None else ops.convert_to_tensor(context)))
    source = x if context is None else context
    x64, source64 = x.astype(np.float64), source.astype(np.float64)
    expected = _explicit_attention(_dense(x64, attention.q_proj), _dense(source64, attention.k_proj),
                                   _dense(source64, attention.v_proj), 4, causal)
    expected = _dense(expected, attention.out_proj)
    assert relative_error(out, expected) < 1e-5


def test_vae_attention_block_equals_explicit_single_head_attention():
    rng = np.random.default_rng(1)
    block = layers.AttentionBlock(8, norm_groups=2)
    x = rng.standard_normal((1, 3, 5, 8)).astype("float32")
    out = to_numpy(block(ops.convert_to_tensor(x)))
    normed = to_numpy(block.norm(ops.convert_to_tensor(x))).astype(np.float64).reshape(1, 15, 8)

    def conv1x1(t, conv):
        return t @ to_numpy(conv.kernel)[0, 0].astype(np.float64) + to_numpy(conv.bias)

    attended = _explicit_attention(conv1x1(normed, block.to_q), conv1x1(normed, block.to_k),
                                   conv1x1(normed, block.to_v), 1)
    expected = conv1x1(attended, block.proj_out).reshape(x.shape) + x
    assert relative_error(out, expected) < 1e-5


def _keras_cv_timestep_embedding(timestep, dim, max_period=10000):
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(0, half, dtype=np.float32) / half).astype(np.float32)
    args = np.float32(timestep) * freqs
    return np.concatenate([np.cos(args), np.sin(args)])


def test_timestep_embedding_matches_keras_cv_and_traces():
    expected = np.stack([_keras_cv_timestep_embedding(t, 320) for t in (1.0, 501.0, 999.0)])
    eager = to_numpy(models.timestep_embedding(ops.convert_to_tensor([1.0, 501.0, 999.0]), 320))
    # Same float32 formula; backends' sin/cos of arguments near 1000 differ by a few float32 ulps of the argument
    # (bit-exactness with KerasCV on the same backend is checked in test_keras_cv_interop.py).
    np.testing.assert_allclose(eager, expected, rtol=0, atol=2e-4)
    assert tuple(models.timestep_embedding(999.0, 320).shape) == (320,)

    timesteps = ops.convert_to_tensor(np.array([1.0, 501.0, 999.0], "float32"))

    def loop(timesteps):
        def body(i, total):
            return total + models.timestep_embedding(ops.reshape(ops.take(timesteps, i), (1,)), 320)
        return ops.fori_loop(0, 3, body, ops.zeros((1, 320)))

    traced = to_numpy(backend.jit(loop)(timesteps))
    np.testing.assert_allclose(traced[0], eager.sum(0), rtol=0, atol=3e-4)  # XLA may fuse differently


def _norm_pair(kind, shape):
    """(Keras' layer, ours) in mixed bfloat16 with the same random gamma/beta, built for ``shape``."""
    make = {"group": lambda cls: cls(groups=4, epsilon=1e-5, dtype="mixed_bfloat16"),
            "layer": lambda cls: cls(epsilon=1e-5, dtype="mixed_bfloat16")}[kind]
    base = {"group": keras.layers.GroupNormalization, "layer": keras.layers.LayerNormalization}[kind]
    ours = {"group": layers.GroupNormalization, "layer": layers.LayerNormalization}[kind]
    reference, fast = make(base), make(ours)
    reference.build(shape)
    fast.build(shape)
    rng = np.random.default_rng(1)
    values = [rng.standard_normal(w.shape).astype("float32") for w in reference.weights]
    reference.set_weights(values)
    fast.set_weights(values)
    return reference, fast


@pytest.mark.parametrize("kind,shape,group_stats", [("group", (2, 8, 8, 32), "rows"),
                                                     ("group", (2, 8, 8, 32), "one_pass"),
                                                     ("group", (2, 8, 8, 32), "auto"),
                                                     ("layer", (2, 64, 48), None)])
def test_half_precision_norms_equal_keras_within_bfloat16_rounding(kind, shape, group_stats, monkeypatch):
    # Statistics in one pass (E[x], E[x^2] in float32) must give Keras' two-pass result to bf16 precision, also
    # for inputs whose mean is large next to their spread (the case a one-pass variance is weakest at).
    if group_stats:
        monkeypatch.setattr(layers, "GROUP_STATS", group_stats)
    monkeypatch.setattr(layers, "LAYER_ONE_PASS_MIN_ROWS", 1)  # the one-pass path at this small size too
    reference, fast = _norm_pair(kind, shape)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 0.5 + 20.0).astype("float32")
    x = ops.cast(ops.convert_to_tensor(x), "bfloat16")
    expected = to_numpy(ops.cast(reference(x), "float32"))
    actual = to_numpy(ops.cast(fast(x), "float32"))
    assert fast(x).dtype == reference(x).dtype
    assert np.abs(actual - expected).max() <= 0.02 * np.abs(expected).max()
    # Per element: at most a few bf16 ulps apart.
    assert np.mean(np.abs(actual - expected) > 1e-2 * (np.abs(expected) + 1)) < 0.01


@pytest.mark.parametrize("kind,shape", [("group", (2, 8, 8, 32)), ("layer", (2, 64, 48))])
def test_float32_norms_are_keras_own(kind, shape):
    reference, fast = _norm_pair(kind, shape)
    reference.dtype_policy = fast.dtype_policy = keras.DTypePolicy("float32")
    x = ops.convert_to_tensor(np.random.default_rng(3).standard_normal(shape).astype("float32"))
    np.testing.assert_array_equal(to_numpy(fast(x)), to_numpy(reference(x)))
    assert isinstance(fast, type(reference))


# -- small, wide convolutions as one matrix product (CPU-only TensorFlow) ----------------------------------------
@pytest.mark.parametrize("kernel_size,padding,shape", [(3, "same", (2, 4, 4, 24)), (3, "valid", (1, 5, 6, 24)),
                                                       (1, "same", (2, 3, 3, 24))])
def test_small_convolutions_as_matmul_equal_the_convolution(kernel_size, padding, shape, monkeypatch):
    layer = layers.conv2d(16, kernel_size, padding=padding)
    x = ops.convert_to_tensor(np.random.default_rng(4).standard_normal(shape).astype("float32"))
    layer.build(shape)
    with backend.native_convolutions():
        assert not backend.conv_as_matmul(shape, layer.kernel.shape)
        expected = to_numpy(layer(x))
    monkeypatch.setattr(backend, "CONV_MATMUL_MIN_DEPTH", 1)
    eligible = backend.conv_as_matmul(shape, layer.kernel.shape)
    # Only a CPU-only TensorFlow takes the matrix-product path; elsewhere the rule says no.
    assert eligible == (keras.backend.backend() == "tensorflow")
    actual = to_numpy(layer(x))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert not backend.conv_as_matmul((64, 64, 64, 24), layer.kernel.shape)  # a large output keeps the conv


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the rule concerns TensorFlow graphs")
def test_graph_ops_follow_the_convolution_rule(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(backend, "CONV_MATMUL_MIN_DEPTH", 1)
    layer = layers.conv2d(8, 3, padding="same")
    layer.build((1, 4, 4, 16))

    def op_types():
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec((1, 4, 4, 16))).graph
        return {op.type for op in graph.get_operations()}

    assert "Conv2D" not in op_types() and ("MatMul" in op_types() or "BatchMatMulV2" in op_types())
    with backend.native_convolutions():
        assert "Conv2D" in op_types()


# -- the component registry ----------------------------------------------------------------------------------


def test_registry_builds_every_component_as_its_builder_does(tiny):
    assert list(models.COMPONENTS) == ["text_encoder", "diffusion_model", "decoder", "image_encoder"]
    assert models.components(TINY) == models.components("tiny") == list(models.COMPONENTS)
    for name, model in tiny.items():
        built = models.build(name, TINY)
        assert built.name == name
        assert [v.path for v in built.weights] == [v.path for v in model.weights]
        assert [tuple(v.shape) for v in built.weights] == [tuple(v.shape) for v in model.weights]
    assert models.COMPONENTS["image_encoder"].optional and not models.COMPONENTS["decoder"].optional
    with pytest.raises(InputError, match="'vae'.*text_encoder, diffusion_model, decoder, image_encoder"):
        models.build("vae", TINY)
    with pytest.raises(InputError, match="a VAEConfig belongs to no model family"):
        models.build("decoder", TINY.vae)
    with pytest.raises(TypeError):
        models.COMPONENTS["decoder"] = None  # the registry is read-only outside register_family


def test_build_under_a_policy_and_rebuild_keep_the_weights(tiny):
    source = tiny["diffusion_model"]
    assert models.built_with(source, "float32") and models.rebuild(source, "diffusion_model", TINY) is source
    mixed = models.rebuild(source, "diffusion_model", TINY, "mixed_bfloat16")
    assert mixed is not source and models.built_with(mixed, "mixed_bfloat16")
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), source.get_weights()))
    back = models.rebuild(mixed, "diffusion_model", TINY, keras.DTypePolicy("float32"))
    assert models.built_with(back, None)
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), source.get_weights()))


def test_build_all_applies_weights_per_component(tiny):
    weights = models.Weights({name: models.tensors(model) for name, model in tiny.items()
                              if name != "image_encoder"}, source="test weights")
    parts = models.build_all(TINY, weights, dtype="mixed_float16")
    assert parts["image_encoder"] is None  # optional and absent
    assert models.built_with(parts["diffusion_model"], "mixed_float16")
    assert models.built_with(parts["decoder"], "float32")  # the VAE stays float32
    for name in ("text_encoder", "diffusion_model", "decoder"):
        assert all(np.array_equal(a, b) for a, b in zip(parts[name].get_weights(), tiny[name].get_weights()))
    no_decoder = models.Weights({"text_encoder": tiny["text_encoder"]}, source="half a model")
    with pytest.raises(InputError, match="half a model: no diffusion_model weights"):
        models.build_all(TINY, no_decoder)
    first = models.build_all(TINY, models.Weights.random_weights(3))
    second = models.build_all(TINY, models.Weights.random_weights(3))
    assert all(np.array_equal(a, b) for a, b in zip(first["decoder"].get_weights(), second["decoder"].get_weights()))


def test_assign_checks_every_key_and_shape_before_assigning(tiny):
    decoder = models.build("decoder", TINY)
    before = decoder.get_weights()
    values = models.tensors(tiny["decoder"])
    values.pop("conv_out/bias")
    with pytest.raises(InputError, match="my file: does not fit decoder: 1 missing"):
        models.assign(decoder, values, source="my file")
    values["conv_out/bias"] = np.zeros((5,), "float32")
    with pytest.raises(InputError, match="conv_out/bias has shape \\(5,\\)"):
        models.assign(decoder, values, source="my file")
    assert all(np.array_equal(a, b) for a, b in zip(decoder.get_weights(), before))


def test_a_second_family_registers_without_touching_the_first(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class TwoEncoderConfig:
        text_encoder: TextEncoderConfig
        text_encoder_2: TextEncoderConfig

    monkeypatch.setattr(models.registry, "FAMILIES", dict(models.registry.FAMILIES))
    models.registry.register_family("two-encoders", TwoEncoderConfig, [
        models.Component("text_encoder", models.build_text_encoder, "text_encoder"),
        models.Component("text_encoder_2", models.build_text_encoder, "text_encoder_2")])
    small = TextEncoderConfig(width=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=100)
    wide = dataclasses.replace(small, width=32)
    parts = models.build_all(TwoEncoderConfig(small, wide), models.Weights.random_weights(0))
    assert {name: (model.name, model.output.shape[-1]) for name, model in parts.items()} == {
        "text_encoder": ("text_encoder", 16), "text_encoder_2": ("text_encoder_2", 32)}
    assert models.components(TINY) == list(models.COMPONENTS)


# -- the UNet's block layout (what the LiteRT exporter cuts into parts) ----------------------------------------


@pytest.mark.parametrize("unet_change", [
    {},
    {"block_out_channels": (32, 32, 64), "layers_per_block": 2, "attention_levels": (False, True, True)},
])
def test_unet_parts_follow_the_builder(unet_change):
    from sd_keras.export import unet_parts
    from sd_keras.models.unet import unet_layout

    config = dataclasses.replace(TINY, unet=dataclasses.replace(TINY.unet, **unet_change))
    keras.utils.set_random_seed(0)
    unet = models.build("diffusion_model", config)
    steps = unet_parts.unet_steps(unet)
    assert [step.name for step in steps] == [block.name for block in unet_layout(unet)]
    weighted = sorted(layer.name for layer in unet.layers if layer.weights)
    assert sorted(name for step in steps for name in step.layers) == weighted  # each weighted layer once
    inputs = unet_inputs(config, 1, 8, 8)
    whole = to_numpy(unet(inputs))
    feed = {name: to_numpy(value) for name, value in inputs.items()}
    parts = unet_parts.plan_parts(unet, steps, 1)  # every block a part of its own
    _, outputs = unet_parts.trace_values(steps, parts, unet_parts.part_interfaces(steps, parts), feed)
    np.testing.assert_allclose(outputs[-1]["model_output"], whole, rtol=0, atol=1e-5)


def test_unet_parts_refuse_a_layout_they_cannot_run(tiny):
    from sd_keras.export import unet_parts
    from sd_keras.models.unet import UNetBlock, unet_layout

    unet = tiny["diffusion_model"]
    layout = unet_layout(unet)
    try:
        object.__setattr__(unet, "sd_keras_layout", layout[:1] + (UNetBlock("gated", "gate", ()),) + layout[1:])
        with pytest.raises(ValueError, match="'gated' block"):
            unet_parts.unet_steps(unet)
        object.__setattr__(unet, "sd_keras_layout", tuple(b for b in layout if b.name != "mid"))
        with pytest.raises(ValueError, match="leaves out the weighted layers \\['mid_res_0'"):
            unet_parts.unet_steps(unet)
    finally:
        object.__setattr__(unet, "sd_keras_layout", layout)
    with pytest.raises(ValueError, match="decoder: not a UNet built by"):
        unet_parts.unet_steps(tiny["decoder"])
