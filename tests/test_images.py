"""``sd_keras.images``: the image grid of the notebooks and the output path patterns of ``save``."""
import numpy as np
import pytest

from sd_keras.images import image_grid, output_paths


def test_image_grid_places_each_image_under_its_title():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    mask = np.zeros((16, 24), np.float32)
    mask[4:8] = 1.0  # a float mask in [0, 1] shows as black and white
    grid = np.asarray(image_grid(list(images) + [mask], columns=2, padding=3))
    assert grid.shape == (2 * 16 + 3 * 3, 2 * 24 + 3 * 3, 3)
    for index, image in enumerate(images):
        top, left = 3 + (index // 2) * 19, 3 + (index % 2) * 27
        np.testing.assert_array_equal(grid[top:top + 16, left:left + 24], image)
    np.testing.assert_array_equal(grid[22:38, 30:54, 0], (mask * 255).astype(np.uint8))
    titled = image_grid(images, titles=["seed 1", "seed 2\nnegative prompt 'orange'", "seed 3"], scale=2)
    width, height = titled.size
    assert width == 3 * 48 + 4 * 4 and height > 32 + 2 * 4 + 2 * 8  # two lines of text above the images
    body = np.asarray(titled)[height - 4 - 32:height - 4, 4:4 + 48]
    np.testing.assert_array_equal(body, images[0].repeat(2, 0).repeat(2, 1))
    assert (np.asarray(titled)[:height - 36] < 128).any()  # the titles are drawn


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
    with pytest.raises(ValueError, match="2 titles for 1 images"):
        image_grid([np.zeros((8, 8, 3), np.uint8)], titles=["a", "b"])
    with pytest.raises(ValueError, match=r"image 0 must be .*got shape \(8, 8, 5\)"):
        image_grid([np.zeros((8, 8, 5), np.uint8)])
    with pytest.raises(ValueError, match="columns"):
        image_grid([np.zeros((8, 8, 3), np.uint8)], columns=0)


def test_output_paths_follow_the_cli_pattern_rules():
    assert output_paths("out_%d.png", 3) == ["out_0.png", "out_1.png", "out_2.png"]
    assert output_paths("cat.png", 1) == ["cat.png"]
    assert output_paths("cat.png", 2) == ["cat_0.png", "cat_1.png"]
    assert output_paths("cat", 2) == ["cat_0.png", "cat_1.png"]
    for bad in ("a_%d_%d.png", "a_%s%q.png"):
        with pytest.raises(ValueError, match="one %d"):
            output_paths(bad, 2)
    with pytest.raises(ValueError, match="same file name"):
        output_paths("out%.0s.png", 2)
