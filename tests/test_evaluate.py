"""The shapes evaluator: exact on dataset images, robust to noise, and the report / grid it writes."""

import dataclasses
import json

import numpy as np
import pytest

from sd_keras import evaluate
from sd_keras.data import OBJECT_COLORS, SHAPES, Placement, Scene, ShapeSpec, ShapesDataset, is_heldout, render


def _dataset_images(count, seed, image_size=128):
    dataset = ShapesDataset(seed, image_size, split="all")
    samples = [dataset[i] for i in range(count)]
    return [s.scene for s in samples], np.stack([s.image for s in samples])


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_measurement_recovers_the_captions_of_dataset_images():
    scenes, images = _dataset_images(400, seed=11)
    _, summary = evaluate.evaluate_images(scenes, images)
    for key, value in summary.items():
        assert value["count"] > 20, key
        assert value["accuracy"] >= 0.98, (key, value)


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_measurement_tolerates_noise_and_blur():
    from PIL import Image, ImageFilter

    scenes, images = _dataset_images(200, seed=12)
    rng = np.random.default_rng(0)
    noisy = []
    for image in images:
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), np.float32)
        noisy.append(np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8))
    _, summary = evaluate.evaluate_images(scenes, np.stack(noisy))
    for key in ("single_color", "single_shape", "single_background", "two_objects"):
        assert summary[key]["accuracy"] >= 0.95, (key, summary[key])
    assert summary["single_position"]["accuracy"] >= 0.95 and summary["single_size"]["accuracy"] >= 0.9


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_two_objects_are_measured_separately():
    scene = Scene((ShapeSpec("orange", "triangle", "large", "bottom left"),
                   ShapeSpec("yellow", "circle", "small", "top right")), "purple")
    placements = (Placement((33.0, 95.0), 27.0), Placement((97.0, 30.0), 11.0))
    analysis = evaluate.analyze_image(render(scene, placements))
    assert analysis.background == "purple"
    found = {obj.color: obj for obj in analysis.objects}
    assert set(found) == {"orange", "yellow"}
    assert (found["orange"].shape, found["orange"].size, found["orange"].position) == ("triangle", "large",
                                                                                         "bottom left")
    assert (found["yellow"].shape, found["yellow"].size, found["yellow"].position) == ("circle", "small", "top right")
    # the mask's box is the drawn box up to the pixels a sharp apex covers less than half
    assert np.abs(np.subtract(found["orange"].box, (6, 68, 60, 122))).max() <= 1
    assert all(evaluate.score_scene(scene, analysis)[key] for key in ("objects", "colors", "position", "background"))


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_a_wrong_prompt_scores_false():
    scene = Scene((ShapeSpec("green", "square", "small", "center"),))
    image = render(scene, (Placement((64.0, 64.0), 11.0),))
    analysis = evaluate.analyze_image(image)
    assert all(evaluate.score_scene(scene, analysis)[k] for k in ("color", "shape", "size", "position", "background"))
    for changed, key in ((ShapeSpec("blue", "square", "small", "center"), "color"),
                         (ShapeSpec("green", "circle", "small", "center"), "shape"),
                         (ShapeSpec("green", "square", "large", "center"), "size"),
                         (ShapeSpec("green", "square", "small", "top left"), "position")):
        assert evaluate.score_scene(Scene((changed,)), analysis)[key] is False
    assert evaluate.score_scene(Scene((scene.objects[0],), "white"), analysis)["background"] is False
    empty = evaluate.analyze_image(np.full((64, 64, 3), 128, np.uint8))
    assert empty.objects == () and evaluate.score_scene(scene, empty)["color"] is False


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_heldout_prompts_are_deterministic_held_out_and_cover_every_pair():
    scenes = evaluate.heldout_scenes(48, 16, seed=0)
    assert [s.caption for s in scenes] == [s.caption for s in evaluate.heldout_scenes(48, 16, seed=0)]
    assert len({s.caption for s in scenes}) == 64
    assert all(is_heldout(s) for s in scenes)
    single = [(s.objects[0].color, s.objects[0].shape) for s in scenes[:48]]
    assert sorted(set(single)) == sorted((c, s) for c in OBJECT_COLORS for s in SHAPES)
    assert all(len(s.objects) == 2 for s in scenes[48:])


@pytest.mark.slow
def test_evaluate_a_model_writes_report_and_grid(tmp_path):
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("tiny")  # random weights: only the report's form is checked
    scenes = evaluate.heldout_scenes(2, 1)
    report = evaluate.evaluate(model, scenes, num_steps=2, seed=3, batch_size=3, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"] == report["summary"] and saved["num_steps"] == 2
    assert [r["prompt"] for r in saved["records"]] == [s.caption for s in scenes]
    assert report["summary"]["single_color"]["count"] == 2 and report["summary"]["two_objects"]["count"] == 1
    assert set(report["passed"]) == set(evaluate.TARGETS)
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] == 8 * 64 and grid.size[1] > 64


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_command_line_ground_truth(capsys):
    from sd_keras import cli

    assert cli.main(["evaluate", "--ground-truth", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("single_color") and "1.000" in line for line in lines)


@pytest.mark.once  # numpy only: backend-independent (see conftest.py)
def test_analysis_is_plain_data():
    scenes, images = _dataset_images(1, seed=2)
    analysis = evaluate.analyze_image(images[0])
    assert json.loads(json.dumps(analysis.to_dict()))["background"] == analysis.background
    assert dataclasses.is_dataclass(analysis.objects[0])
    with pytest.raises(ValueError, match="square"):
        evaluate.analyze_image(np.zeros((10, 12, 3), np.uint8))


@pytest.mark.slow
def test_shipped_shapes_model_draws_what_held_out_prompts_say():
    """The packaged demo model at the documented settings (20 steps, default sampler) on 8 held-out prompts."""
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("shapes")
    report = evaluate.evaluate(model, evaluate.heldout_scenes(8, 0, seed=5), num_steps=20, batch_size=8)
    assert report["summary"]["single_color"]["accuracy"] >= 0.875, report["summary"]
    assert report["summary"]["single_shape"]["accuracy"] >= 0.75, report["summary"]
