"""CLIP text encoder: KerasCV's ``TextEncoder`` (SD 1.x) and ``TextEncoderV2`` (SD 2.x) from one config."""

import functools

import keras

from sd_keras.config import TextEncoderConfig, get_config
from sd_keras.models.layers import CLIPEmbedding, CLIPEncoderLayer, LayerNormalization


def build_text_encoder(config, *, dtype=None, name="text_encoder"):
    """``{"tokens": int (B, L), "positions": int (B, L)} -> (B, L, width)``, L = ``max_length`` (77).

    ``config``: a ``ModelConfig``, a ``TextEncoderConfig`` or a preset name. ``dtype``: a Keras dtype policy
    (e.g. ``"mixed_bfloat16"``) for every layer.

    Example:
        >>> encoder = build_text_encoder("tiny")
        >>> import numpy as np
        >>> ids = np.zeros((1, 77), "int32"); pos = np.arange(77, dtype="int32")[None]
        >>> tuple(encoder({"tokens": ids, "positions": pos}).shape)
        (1, 77, 32)
    """
    cfg = config if isinstance(config, TextEncoderConfig) else get_config(config).text_encoder
    tokens = keras.Input((cfg.max_length,), dtype="int32", name="tokens")
    positions = keras.Input((cfg.max_length,), dtype="int32", name="positions")
    x = CLIPEmbedding(cfg.vocab_size, cfg.width, cfg.max_length, dtype=dtype, name="embeddings")(tokens, positions)
    for index in range(cfg.num_layers):
        x = CLIPEncoderLayer(cfg.width, cfg.num_heads, cfg.intermediate_size, cfg.activation, cfg.layer_norm_eps,
                             dtype=dtype, name=f"encoder_layer_{index}")(x)
    x = LayerNormalization(epsilon=cfg.layer_norm_eps, dtype=dtype, name="final_layer_norm")(x)
    model = keras.Model({"tokens": tokens, "positions": positions}, x, name=name)
    model.sd_keras_builder = functools.partial(build_text_encoder, cfg, name=name)
    return model

