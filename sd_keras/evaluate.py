"""Evaluate a shapes model: generate held-out prompts and measure what the images show.

The measurement reads pixels only (no learned classifier), so it is exactly right on the synthetic images
(``sd_keras.data.shapes``) and robust on generated ones:

- background: the nearest palette colour of the median of the image border;
- objects: foreground pixels (far from the background colour) grouped by their nearest palette colour; a group
  is an object when its core (the group eroded by one pixel, which removes the antialiased rims between two
  colours) is large enough; a group mostly inside an object already found is a shade of it and is skipped;
- an object's mask: the pixels whose colour lies more than half-way from the background colour to the object's
  colour (the 50 % coverage boundary of the drawing), limited to the neighbourhood of its core;
- shape: the best intersection-over-union of the mask with a circle, a square and a triangle inscribed in the
  mask's bounding box (they fill 79 %, 100 % and 50 % of it);
- size: the box side that the mask's area implies for that shape, against the half-way points between the
  dataset's small / medium / large ranges;
- position: the bounding-box centre: "center" within 1/8 of the image side of the middle, else its quadrant.

Scores: single-object prompts report colour, shape, background, and size / position where the prompt states
them; two-object prompts report whether both objects were found with the right colour and shape.

Example:
    >>> from sd_keras.data import ShapesDataset
    >>> sample = ShapesDataset(seed=0)[0]
    >>> analysis = analyze_image(sample.image)
    >>> score_scene(sample.scene, analysis)["color"]
    True

Command line (``sd_keras/cli/evaluate.py``; writes ``report.json`` and ``grid.png`` into ``--out``)::

    sd-keras evaluate -m shapes --out eval/ [--steps 20] [--sampler "DDIM KerasCV"]
    sd-keras evaluate --ground-truth 1000      # the measurement on dataset images
"""

import dataclasses
import json
import os
import time
from typing import Tuple

import numpy as np

from sd_keras import files
from sd_keras.data.shapes import (BACKGROUND_COLORS, HALF_SIZE_RANGES, OBJECT_COLORS, PALETTE, REFERENCE_SIZE,
                                  SHAPES, ShapesDataset, coverage)

TARGETS = {"single_color": 0.90, "single_shape": 0.80}
DEFAULT_GUIDANCE = 7.5
FOREGROUND_DISTANCE = 38.0  # half the smallest distance between two palette colours (orange / yellow)
SHAPE_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


@dataclasses.dataclass(frozen=True)
class DetectedObject:
    """One object found in an image; ``box`` is (x0, y0, x1, y1) in pixels, ``shape_iou`` per shape."""

    color: str
    shape: str
    size: str
    position: str
    box: Tuple[int, int, int, int]
    area: int
    shape_iou: Tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What ``analyze_image`` measured: the background colour and the objects, largest first."""

    background: str
    objects: Tuple[DetectedObject, ...]

    def to_dict(self):
        return dataclasses.asdict(self)


# -- measurement ------------------------------------------------------------------------------------------------
def _nearest(rgb, names):
    table = np.asarray([PALETTE[name] for name in names], np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(-1)))]


def _shift_reduce(mask, radius, reduce):
    """3x3 (Chebyshev) erosion / dilation repeated ``radius`` times."""
    fill = reduce is np.logical_and
    for _ in range(radius):
        padded = np.pad(mask, 1, constant_values=fill)
        out = padded[1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = reduce(out, padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]])
        mask = out
    return mask


def erode(mask, radius=1):
    return _shift_reduce(mask, radius, np.logical_and)


def dilate(mask, radius=1):
    return _shift_reduce(mask, radius, np.logical_or)


def largest_component(mask):
    """The largest 4-connected component of a boolean mask (all False if the mask is empty).

    Labels are pixel indices: each pixel takes the smallest label of its neighbours, and a pixel's label jumps to
    its label's label, until nothing changes (a few dozen numpy passes for an image of shapes).
    """
    if not mask.any():
        return mask
    labels = component_labels(mask)
    counts = np.bincount(labels[mask])
    return labels == int(np.argmax(counts))


def component_labels(mask):
    """Labels of the 4-connected components of a boolean mask: each component's pixels share one label (the
    smallest pixel index in it); pixels outside the mask get ``mask.size``."""
    height, width = mask.shape
    none = height * width
    labels = np.where(mask, np.arange(none).reshape(height, width), none)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        smallest = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                      padded[1:-1, 2:]])
        smallest = np.where(mask, smallest, none)
        flat = smallest.ravel()
        inside = flat < none
        jumped = flat.copy()
        jumped[inside] = flat[flat[inside]]
        jumped = jumped.reshape(height, width)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    return labels


def _shape_ious(mask, box):
    x0, y0, x1, y1 = box
    window = mask[y0:y1, x0:x1]
    center, half_w, half_h = ((x1 - x0) / 2, (y1 - y0) / 2), (x1 - x0) / 2, (y1 - y0) / 2
    ious = []
    for shape in SHAPES:
        template = coverage(shape, center, half_w, half_h, window.shape) > 0.5
        union = np.logical_or(template, window).sum()
        ious.append(float(np.logical_and(template, window).sum() / union) if union else 0.0)
    return tuple(ious)


def _size_class(side, image_size):
    scale = image_size / REFERENCE_SIZE
    small_max, medium_min = HALF_SIZE_RANGES["small"][1], HALF_SIZE_RANGES["medium"][0]
    medium_max, large_min = HALF_SIZE_RANGES["medium"][1], HALF_SIZE_RANGES["large"][0]
    if side < (small_max + medium_min) * scale:  # sides are twice the half sizes: the sum is the mid-point
        return "small"
    if side > (medium_max + large_min) * scale:
        return "large"
    return "medium"


def _position_class(center, image_size):
    dx, dy = center[0] - image_size / 2, center[1] - image_size / 2
    if max(abs(dx), abs(dy)) < image_size / 8:
        return "center"
    return ("top" if dy < 0 else "bottom") + " " + ("left" if dx < 0 else "right")


def _color_cores(image):
    """(pixels, background rgb, background name, object colour names, their cores, the smallest core an object
    has): the first steps of ``analyze_image``."""
    pixels = np.asarray(image, np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"image must be a square (H, W, 3) array, got shape {pixels.shape}")
    scale = pixels.shape[0] / REFERENCE_SIZE
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                             pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, BACKGROUND_COLORS)
    foreground = np.sqrt(((pixels - background_rgb) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    names = [name for name in OBJECT_COLORS if name != background]
    table = np.asarray([PALETTE[name] for name in names], np.float32)
    labels = np.argmin(((pixels[:, :, None, :] - table) ** 2).sum(-1), axis=-1)
    cores = [erode(foreground & (labels == index)) for index in range(len(names))]
    return pixels, background_rgb, background, names, cores, max(4, int(12 * scale * scale))


def count_objects(image):
    """How many separate objects of each colour a uint8 (H, W, 3) image shows: {colour: count}, colours with
    none left out. ``analyze_image`` keeps one object per colour (the largest); this counts every 4-connected
    core (as ``analyze_image`` finds them, at least as large as it requires) so that a model that repeats an
    object across a picture larger than its native size is seen doing so.

    Example:
        >>> from sd_keras.data import ShapesDataset
        >>> sample = ShapesDataset(seed=0, two_object_fraction=0.0)[0]
        >>> count_objects(sample.image) == {sample.scene.objects[0].color: 1}
        True
    """
    _, _, _, names, cores, min_core = _color_cores(image)
    counts = {}
    for name, core in zip(names, cores):
        if core.sum() >= min_core:
            labels = component_labels(core)
            sizes = np.bincount(labels[core])
            number = int((sizes >= min_core).sum())
            if number:
                counts[name] = number
    return counts


def analyze_image(image, max_objects=2):
    """Measure the background and up to ``max_objects`` objects of a uint8 (H, W, 3) image.

    Example:
        >>> from sd_keras.data import ShapesDataset
        >>> analyze_image(ShapesDataset(seed=0)[0].image).objects[0].shape  # doctest: +SKIP
        'square'
    """
    pixels, background_rgb, background, names, cores, min_core = _color_cores(image)
    size = pixels.shape[0]
    scale = size / REFERENCE_SIZE
    offset = pixels - background_rgb

    candidates = []
    for name, core in zip(names, cores):
        if core.sum() >= min_core:
            core = largest_component(core)
            if core.sum() >= min_core:
                candidates.append((int(core.sum()), name, core))
    candidates.sort(key=lambda item: -item[0])

    objects, taken = [], np.zeros(pixels.shape[:2], bool)
    for _, name, core in candidates:
        if len(objects) == max_objects:
            break
        if (core & taken).sum() > 0.5 * core.sum():
            continue  # a shade of an object already found
        region = dilate(core, max(2, round(4 * scale)))
        direction = np.asarray(PALETTE[name], np.float32) - background_rgb
        alpha = (offset @ direction) / max(float(direction @ direction), 1e-6)
        mask = largest_component(region & (alpha > 0.5))
        if not mask.any():
            continue
        taken |= dilate(mask, 2)
        rows, cols = np.nonzero(mask)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        ious = _shape_ious(mask, box)
        shape = SHAPES[int(np.argmax(ious))]
        area = int(mask.sum())
        side = np.sqrt(area / SHAPE_FILL[shape])
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        objects.append(DetectedObject(name, shape, _size_class(side, size), _position_class(center, size), box,
                                      area, tuple(round(v, 4) for v in ious)))
    return Analysis(background, tuple(objects))


def score_scene(scene, analysis):
    """Compare what a scene (prompt) states with an ``Analysis``: a dict of booleans, None where not stated.

    Keys: ``color``, ``shape``, ``size``, ``position`` (of the largest object; single-object scenes),
    ``background``, and ``objects`` (every stated object found with its colour and shape) and ``colors`` (every
    stated colour found) for any scene.
    """
    found = {obj.color: obj for obj in analysis.objects}
    result = {"background": analysis.background == scene.background_color,
              "objects": all(spec.color in found and found[spec.color].shape == spec.shape for spec in scene.objects),
              "colors": all(spec.color in found for spec in scene.objects)}
    if len(scene.objects) == 1:
        spec = scene.objects[0]
        main = analysis.objects[0] if analysis.objects else None
        result["color"] = main is not None and main.color == spec.color
        result["shape"] = main is not None and main.shape == spec.shape
        result["size"] = None if spec.size is None else (main is not None and main.size == spec.size)
        result["position"] = None if spec.position is None else (main is not None and main.position == spec.position)
    else:
        positions = [found[spec.color].position == spec.position for spec in scene.objects
                     if spec.position and spec.color in found]
        stated = [spec for spec in scene.objects if spec.position]
        result["position"] = None if not stated else (len(positions) == len(stated) and all(positions))
    return result


# -- prompts ------------------------------------------------------------------------------------------------------
def heldout_scenes(num_single=48, num_double=16, *, seed=0, holdout_fraction=0.1):
    """Deterministic prompts whose exact captions the ``"train"`` split never shows.

    Single-object prompts cycle through all colour/shape pairs (so 48 covers each pair twice); the rest of each
    scene (size, position, background) is drawn from the held-out split with ``seed``.
    """
    single = ShapesDataset(seed, split="heldout", two_object_fraction=0.0, holdout_fraction=holdout_fraction)
    double = ShapesDataset(seed + 1, split="heldout", two_object_fraction=1.0, holdout_fraction=holdout_fraction)
    pairs = [(color, shape) for color in OBJECT_COLORS for shape in SHAPES]
    scenes, index = [], 0
    wanted = [pairs[i % len(pairs)] for i in range(num_single)]
    seen = set()
    while wanted:
        scene, _ = single.scene(index)
        index += 1
        key = (scene.objects[0].color, scene.objects[0].shape)
        if key in wanted and scene.caption not in seen:
            wanted.remove(key)
            seen.add(scene.caption)
            scenes.append(scene)
    order = {pair: i for i, pair in enumerate(pairs)}
    scenes.sort(key=lambda s: order[(s.objects[0].color, s.objects[0].shape)])
    index = 0
    while len(scenes) < num_single + num_double:
        scene, _ = double.scene(index)
        index += 1
        if scene.caption not in seen:
            seen.add(scene.caption)
            scenes.append(scene)
    return scenes


# -- reports --------------------------------------------------------------------------------------------------
def _rate(values):
    values = [v for v in values if v is not None]
    return (round(sum(values) / len(values), 4), len(values)) if values else (None, 0)


def summarize(scenes, scores):
    """Accuracies (value, count) per measure, split into single- and two-object prompts."""
    single = [s for scene, s in zip(scenes, scores) if len(scene.objects) == 1]
    double = [s for scene, s in zip(scenes, scores) if len(scene.objects) == 2]
    summary = {}
    for key in ("color", "shape", "size", "position", "background"):
        summary[f"single_{key}"] = _rate([s[key] for s in single])
    for key in ("objects", "colors", "position", "background"):
        summary[f"two_{key}"] = _rate([s[key] for s in double])
    return {key: {"accuracy": value, "count": count} for key, (value, count) in summary.items()}


def evaluate_images(scenes, images):
    """Analyse ``images`` (uint8 (N, H, W, 3)) of ``scenes``: (per-prompt records, summary)."""
    records, scores = [], []
    for scene, image in zip(scenes, images):
        analysis = analyze_image(image, max_objects=max(2, len(scene.objects)))
        score = score_scene(scene, analysis)
        scores.append(score)
        records.append({"prompt": scene.caption, "scores": score, "analysis": analysis.to_dict()})
    return records, summarize(scenes, scores)


def evaluate_ground_truth(num_samples=1000, *, seed=12345, image_size=REFERENCE_SIZE):
    """The measurement on dataset images (should be ~100 %): the summary dict."""
    dataset = ShapesDataset(seed, image_size, split="all")
    samples = [dataset[i] for i in range(num_samples)]
    _, summary = evaluate_images([s.scene for s in samples], np.stack([s.image for s in samples]))
    return summary


def evaluate(model, scenes=None, *, num_steps=20, sampler=None, guidance_scale=DEFAULT_GUIDANCE, seed=0,
             batch_size=8, out_dir=None, progress=None, image_size=None):
    """Generate one image per held-out prompt with ``model`` and measure it.

    Args:
        model: a ``StableDiffusion`` (or anything with its ``text_to_image`` / ``config``).
        scenes: ``Scene`` list (default: ``heldout_scenes()``, 48 single- and 16 two-object prompts).
        num_steps, sampler, guidance_scale: generation settings (sampler None = the pipeline's default).
        seed: prompt ``i`` uses seed ``seed + i``.
        out_dir: when given, writes ``report.json`` and ``grid.png`` there (atomically).
        progress: ``callable(images_done, total)``.
        image_size: (height, width) to generate at; default the model's native size.

    Returns:
        The report dict: settings, ``summary`` (accuracy and count per measure), ``targets``, ``passed``,
        ``records`` (per prompt: prompt, scores, analysis).

    Example:
        >>> report = evaluate(StableDiffusion.from_preset("shapes"), out_dir="eval")  # doctest: +SKIP
        >>> report["summary"]["single_color"]["accuracy"]                               # doctest: +SKIP
    """
    from sd_keras.pipeline import DEFAULT_SAMPLER

    sampler = sampler or DEFAULT_SAMPLER
    scenes = heldout_scenes() if scenes is None else list(scenes)
    if not scenes:
        raise ValueError("scenes: nothing to evaluate")
    height, width = image_size or model.config.image_size
    started = time.time()
    images = []
    for start in range(0, len(scenes), batch_size):
        chunk = [scene.caption for scene in scenes[start:start + batch_size]]
        images.append(np.asarray(model.text_to_image(chunk, batch_size=len(chunk), num_steps=num_steps,
                                                     unconditional_guidance_scale=guidance_scale, seed=seed + start,
                                                     sampler=sampler, height=height, width=width)))
        if progress:
            progress(min(start + batch_size, len(scenes)), len(scenes))
    images = np.concatenate(images)
    records, summary = evaluate_images(scenes, images)
    passed = {key: summary[key]["accuracy"] is not None and summary[key]["accuracy"] >= target
              for key, target in TARGETS.items()}
    report = {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale, "seed": seed,
              "image_size": [height, width], "seconds": round(time.time() - started, 2), "summary": summary,
              "targets": TARGETS, "passed": passed, "records": records}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        _write_json(report, os.path.join(out_dir, "report.json"))
        save_grid(images, [scene.caption for scene in scenes], os.path.join(out_dir, "grid.png"),
                  ok=[r["scores"]["objects"] for r in records])
    return report


def _atomic_path(path, write):
    """``write(temporary_path)``, then rename it to ``path``."""
    with files.atomic_path(path) as temporary:
        write(temporary)


def _write_json(data, path):
    def write(temporary):
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=1)

    _atomic_path(path, write)


def save_grid(images, captions, path, *, columns=8, ok=None):
    """A PNG grid: each image above its caption (green caption: colour and shape right; red: wrong)."""
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    count, side = len(images), images.shape[1]
    label_height = 40
    rows = -(-count // columns)
    canvas = Image.new("RGB", (columns * side, rows * (side + label_height)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * side, (i // columns) * (side + label_height)
        canvas.paste(Image.fromarray(image), (x, y))
        color = (0, 0, 0) if ok is None else ((0, 120, 0) if ok[i] else (200, 0, 0))
        draw.multiline_text((x + 2, y + side + 1), _wrap(caption, max(8, side // 6)), fill=color, spacing=0)
    _atomic_path(path, lambda temporary: canvas.save(temporary, format="PNG"))
    return path


def _wrap(text, width):
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:4])


def format_summary(summary):
    """One line per measure: ``single_color  0.958 (48)``."""
    lines = []
    for key, value in summary.items():
        accuracy = "  n/a" if value["accuracy"] is None else f"{value['accuracy']:.3f}"
        lines.append(f"{key:<18}{accuracy} ({value['count']})")
    return "\n".join(lines)
