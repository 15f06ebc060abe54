"""Tiled VAE (sd_keras.tiled_vae): the generation base's decode / encode in tiles of one shape, the automatic
threshold, and the difference from untiled decoding measured on the shapes model."""
import numpy as np
import pytest

from sd_keras import tiled_vae
from sd_keras.errors import InputError


def test_automatic_above_1024x1024_and_the_setting_is_checked():
    assert not tiled_vae.use_tiles(None, 1024, 1024)
    assert tiled_vae.use_tiles(None, 1024, 1088)
    assert tiled_vae.use_tiles(True, 64, 64) and not tiled_vae.use_tiles(False, 4096, 4096)
    with pytest.raises(InputError, match="tiled_vae must be True, False or None"):
        tiled_vae.use_tiles("yes", 64, 64)


def test_generator_decodes_and_encodes_in_tiles_of_one_shape(tiny_sd, monkeypatch):
    monkeypatch.setattr(tiled_vae, "DECODE_TILE", 16)
    monkeypatch.setattr(tiled_vae, "DECODE_OVERLAP", 8)
    monkeypatch.setattr(tiled_vae, "ENCODE_TILE", 128)
    monkeypatch.setattr(tiled_vae, "ENCODE_OVERLAP", 64)
    latent = np.random.default_rng(0).standard_normal((1, 32, 24, 4)).astype(np.float32)
    shapes = []
    decode = tiny_sd._decode

    def recording(tile):
        shapes.append(tuple(np.shape(tile)))
        return decode(tile)

    monkeypatch.setattr(tiny_sd, "_decode", recording)
    try:
        tiny_sd.tiled_vae = True
        tiled = tiny_sd.decode(latent)
        assert len(shapes) == 3 * 2 and set(shapes) == {(1, 16, 16, 4)}  # one tile shape: one compiled program
        expected = tiled_vae.decode_tiled(decode, latent)
        np.testing.assert_array_equal(tiled, np.clip((expected + 1) / 2 * 255, 0, 255).astype(np.uint8))
        tiny_sd.tiled_vae = False
        shapes.clear()
        assert tiny_sd.decode(latent).shape == (1, 256, 192, 3) and shapes == [(1, 32, 24, 4)]

        pixels = (tiled[:1].astype(np.float32) / 127.5 - 1.0)
        tiny_sd.tiled_vae = True
        encoded = tiny_sd._encode_pixels(pixels)
        assert encoded.shape == (1, 32, 24, tiny_sd.latent_channels)
        np.testing.assert_allclose(encoded, tiled_vae.encode_tiled(tiny_sd._encode_image, pixels), atol=1e-6)
    finally:
        tiny_sd.tiled_vae = None


@pytest.mark.slow
def test_tiled_decode_and_encode_stay_close_to_untiled_on_shapes():
    """Measured on a 256x256 shapes image with 24-latent tiles overlapping by 12 (3 x 3 tiles): max 30 and mean
    2.6 levels of 255 apart when decoding (the GroupNorm statistics and the middle block's attention of a tile
    differ from the whole image's), latents within 0.19 of their largest magnitude when encoding (192-pixel
    tiles, 96 shared)."""
    from sd_keras.hires import resize_latent
    from sd_keras.pipeline import StableDiffusion

    sd = StableDiffusion.from_preset("shapes")
    latent = sd.generate_image(sd.encode_text("a red circle"), num_steps=8, seed=1, sampler="Euler a",
                               return_latent=True)
    latent = resize_latent(latent, 32, 32)
    whole = np.asarray(sd._decode(latent))
    tiled = tiled_vae.decode_tiled(sd._decode, latent, tile=24, overlap=12)
    levels = np.abs(tiled - whole) * 127.5
    assert levels.max() <= 40 and levels.mean() <= 4
    pixels = np.clip(whole, -1, 1)
    encoded = np.asarray(sd._encode_image(pixels))
    tiled_latent = tiled_vae.encode_tiled(sd._encode_image, pixels, tile=192, overlap=96)
    assert np.abs(tiled_latent - encoded).max() <= 0.25 * np.abs(encoded).max()
