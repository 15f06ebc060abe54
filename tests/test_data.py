"""The synthetic shapes dataset and the image-folder dataset (numpy only: the same on every backend)."""

import numpy as np
import pytest
from PIL import Image

from sd_keras.data import (BACKGROUND_COLORS, PALETTE, ImageFolderDataset, Placement, Scene, ShapeSpec, ShapesDataset,
                           is_heldout, render, render_dataset)
from sd_keras.data.shapes import coverage

pytestmark = pytest.mark.once  # numpy only: backend-independent (see conftest.py)


def test_items_depend_only_on_seed_and_index():
    first, again = ShapesDataset(seed=3), ShapesDataset(seed=3)
    for index in (0, 1, 17, 1000):
        a, b = first[index], again[index]
        assert a.caption == b.caption and np.array_equal(a.image, b.image) and a.placements == b.placements
    other = ShapesDataset(seed=4)
    assert [other[i].caption for i in range(20)] != [first[i].caption for i in range(20)]
    # order of access does not matter, and the parallel renderer gives the same items
    images, captions = render_dataset(6, seed=3)
    assert captions == [first[i].caption for i in range(6)]
    assert np.array_equal(images[5], first[5].image)


def test_captions_follow_the_grammar_and_parse_back():
    dataset = ShapesDataset(seed=0)
    scenes = [dataset.scene(i)[0] for i in range(400)]
    for scene in scenes:
        assert Scene.parse(scene.caption) == scene
    counts = [len(s.objects) for s in scenes]
    assert 0.2 < counts.count(2) / len(counts) < 0.5
    stated = {attr: sum(getattr(o, attr) is not None for s in scenes for o in s.objects)
              for attr in ("size", "position")}
    assert min(stated.values()) > 100
    assert sum(s.background is not None for s in scenes) > 100
    words = " ".join(s.caption for s in scenes)
    for word in ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "circle", "square",
                 "triangle", "small", "large", "top left", "bottom right", "center", "background", " and "):
        assert word in words
    assert "an orange" in words and "a orange" not in words


@pytest.mark.parametrize("caption", ["a red hexagon", "two red circles", "a red circle and a red square",
                                     "a red circle on a red background", "a red circle in the middle", ""])
def test_parse_rejects_captions_outside_the_grammar(caption):
    with pytest.raises(ValueError):
        Scene.parse(caption)


def test_pixels_agree_with_the_scene():
    scene = Scene((ShapeSpec("red", "square", "large", "top left"), ShapeSpec("blue", "circle", None, None)), "white")
    placements = (Placement((32.0, 32.0), 20.0), Placement((90.5, 90.0), 15.0))
    image = render(scene, placements, 128).astype(int)
    assert tuple(image[32, 32]) == PALETTE["red"] and tuple(image[90, 90]) == PALETTE["blue"]
    assert tuple(image[0, 127]) == PALETTE["white"] and tuple(image[127, 0]) == PALETTE["white"]
    red = np.all(image == PALETTE["red"], axis=-1).sum()
    assert red == 40 * 40  # a box on whole pixels covers them exactly
    # antialiasing: the circle's rim has colours between blue and white
    rim = image[90, 74:76]
    assert np.all(rim.min(-1) > min(PALETTE["blue"])) and np.any(rim != PALETTE["white"])


@pytest.mark.parametrize("shape, area", [("circle", np.pi * 12.3**2), ("square", (2 * 12.3) ** 2),
                                         ("triangle", 0.5 * (2 * 12.3) ** 2)])
def test_coverage_integrates_to_the_shape_area(shape, area):
    total = coverage(shape, (40.3, 51.7), 12.3, 12.3, 128).sum()
    assert total == pytest.approx(area, rel=0.01)


def test_heldout_split_is_disjoint_from_training():
    train = ShapesDataset(seed=1, holdout_fraction=0.2)
    heldout = ShapesDataset(seed=1, split="heldout", holdout_fraction=0.2)
    assert not any(is_heldout(train.scene(i)[0], 0.2) for i in range(300))
    assert all(is_heldout(heldout.scene(i)[0], 0.2) for i in range(100))
    everything = ShapesDataset(seed=1, split="all", holdout_fraction=0.2)
    share = np.mean([is_heldout(everything.scene(i)[0], 0.2) for i in range(1000)])
    assert 0.14 < share < 0.26


def test_every_object_fits_and_objects_keep_apart():
    dataset = ShapesDataset(seed=5, image_size=64, two_object_fraction=1.0)
    for index in range(200):
        scene, placements = dataset.scene(index)
        for placement in placements:
            x0, y0, x1, y1 = placement.box
            assert 0 < x0 and 0 < y0 and x1 < 64 and y1 < 64
        a, b = (p.box for p in placements)
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert scene.background_color in BACKGROUND_COLORS


@pytest.mark.parametrize("kwargs, message", [({"seed": -1}, "seed"), ({"image_size": 16}, "image_size"),
                                             ({"split": "test"}, "split"), ({"two_object_fraction": 2}, "two_object"),
                                             ({"holdout_fraction": 0, "split": "heldout"}, "holdout_fraction")])
def test_bad_dataset_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)


def test_image_folder_dataset(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, color in enumerate(colors):
        Image.new("RGB", (96 + 32 * i, 64), color).save(tmp_path / f"img_{i}.png")
        (tmp_path / f"img_{i}.txt").write_text(f"  a photo \n number {i} ")
    dataset = ImageFolderDataset(str(tmp_path), image_size=32)
    assert len(dataset) == 3
    images, captions = dataset.batch([2, 0, 4])
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert captions == ["a photo number 2", "a photo number 0", "a photo number 1"]
    assert tuple(images[0, 16, 16]) == colors[2]


def test_image_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        ImageFolderDataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    with pytest.raises(ValueError, match="cat.png"):
        ImageFolderDataset(str(tmp_path))
    (tmp_path / "cat.txt").write_text("   ")
    with pytest.raises(ValueError, match="caption of cat.png is empty"):
        ImageFolderDataset(str(tmp_path))
