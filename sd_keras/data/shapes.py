"""Synthetic captioned images of simple shapes: the training data of the ``shapes`` demo model.

Every sample is a pure function of ``(seed, index)``, so a dataset needs no files and two processes (or a run
and its resume) see the same images. A caption follows a small grammar:

    caption    := object [" and " object] [" on a " COLOR " background"]
    object     := ("a" | "an") [SIZE " "] COLOR " " SHAPE [" in the " POSITION]
    COLOR      := red | green | blue | yellow | purple | orange | white | black
    SHAPE      := circle | square | triangle
    SIZE       := small | large                 (unstated: medium)
    POSITION   := top left | top right | bottom left | bottom right | center   (unstated: anywhere)
    background := the eight colours or gray     (unstated: gray, ``DEFAULT_BACKGROUND``)

for example "a small red circle in the top left", "an orange triangle and a blue square on a white
background". The objects of one image have different colours, and a stated background differs from them.
Squares are axis-aligned, triangles point up (apex at the top centre, base and height equal), so the three
shapes differ in how much of their bounding box they fill (1, pi/4, 1/2).

Drawing is analytic antialiasing in numpy: each pixel gets the exact area fraction of a box, and the clipped
signed distance of a circle or triangle edge (one pixel wide ramp). That is exact, much faster than drawing
with PIL at a higher resolution and downsampling, and puts the 50 % coverage boundary exactly where the
geometry says, which is what ``sd_keras.evaluate`` measures.

A deterministic share of all captions (``holdout_fraction``, default 10 %, chosen by a CRC32 of the caption)
never appears in the ``"train"`` split; the evaluator draws its prompts from the ``"heldout"`` split.

Example:
    >>> dataset = ShapesDataset(seed=0)
    >>> sample = dataset[3]
    >>> sample.image.shape, sample.image.dtype
    ((128, 128, 3), dtype('uint8'))
    >>> Scene.parse(sample.caption) == sample.scene
    True
"""

import dataclasses
import re
import zlib
from typing import Optional, Tuple

import numpy as np

from sd_keras.errors import InputError

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
OBJECT_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
BACKGROUND_COLORS = OBJECT_COLORS + ("gray",)
DEFAULT_BACKGROUND = "gray"
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SPLITS = ("train", "heldout", "all")

REFERENCE_SIZE = 128  # the geometry below is in pixels of a 128x128 image and scales with the image size
# Half of the bounding-box side (circle radius, half the square side, half the triangle base and height).
HALF_SIZE_RANGES = {"small": (9.0, 13.0), "medium": (16.0, 21.0), "large": (25.0, 30.0)}
# Bounding-box centre of a stated position, as (x, y) fractions of the image side, and its random jitter.
POSITION_ANCHORS = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
                    "bottom right": (0.75, 0.75), "center": (0.5, 0.5)}
POSITION_JITTER = 5.0
OBJECT_GAP = 4.0  # minimum empty space between the bounding boxes of two objects


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """One object as a caption states it; ``size`` / ``position`` are None when the caption leaves them out."""

    color: str
    shape: str
    size: Optional[str] = None
    position: Optional[str] = None

    def __post_init__(self):
        _check_choice("color", self.color, OBJECT_COLORS)
        _check_choice("shape", self.shape, SHAPES)
        if self.size is not None:
            _check_choice("size", self.size, SIZES)
        if self.position is not None:
            _check_choice("position", self.position, POSITIONS)

    def phrase(self):
        """``"a small red circle in the top left"``."""
        words = [self.size] if self.size else []
        words += [self.color, self.shape]
        text = " ".join([_article(words[0])] + words)
        return f"{text} in the {self.position}" if self.position else text


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a caption says: one or two ``ShapeSpec`` and an optional background colour."""

    objects: Tuple[ShapeSpec, ...]
    background: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= 2:
            raise InputError(f"a scene has one or two objects, got {len(self.objects)}")
        colors = [spec.color for spec in self.objects]
        if len(set(colors)) != len(colors):
            raise InputError(f"the objects of a scene need different colours, got {colors}")
        if self.background is not None:
            _check_choice("background", self.background, BACKGROUND_COLORS)
            if self.background in colors:
                raise InputError(f"background {self.background!r} is also an object colour")
        positions = [spec.position for spec in self.objects if spec.position]
        if len(set(positions)) != len(positions):
            raise InputError(f"two objects cannot share the position {positions[0]!r}")

    @property
    def background_color(self):
        """The colour name of the background pixels (``DEFAULT_BACKGROUND`` when the caption says none)."""
        return self.background or DEFAULT_BACKGROUND

    @property
    def caption(self):
        text = " and ".join(spec.phrase() for spec in self.objects)
        if not self.background:
            return text
        return f"{text} on {_article(self.background)} {self.background} background"

    @classmethod
    def parse(cls, caption):
        """The ``Scene`` of a caption written in the grammar above (InputError naming the caption otherwise).

        Example:
            >>> Scene.parse("a large blue square in the center on a white background").objects[0].size
            'large'
        """
        match = _CAPTION_RE.fullmatch(" ".join(str(caption).lower().split()))
        if match is None:
            raise InputError(f"caption {caption!r} is not in the shapes grammar (e.g. 'a small red circle in the "
                             f"top left and a blue square on a white background')")
        objects = []
        for prefix in ("a", "b"):
            if match.group(f"{prefix}_color"):
                objects.append(ShapeSpec(match.group(f"{prefix}_color"), match.group(f"{prefix}_shape"),
                                         match.group(f"{prefix}_size"), match.group(f"{prefix}_position")))
        return cls(tuple(objects), match.group("background"))


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _alternatives(names):
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


def _object_pattern(prefix):
    return (rf"an? (?:(?P<{prefix}_size>{_alternatives(SIZES)}) )?"
            rf"(?P<{prefix}_color>{_alternatives(OBJECT_COLORS)}) (?P<{prefix}_shape>{_alternatives(SHAPES)})"
            rf"(?: in the (?P<{prefix}_position>{_alternatives(POSITIONS)}))?")


_CAPTION_RE = re.compile(_object_pattern("a") + rf"(?: and {_object_pattern('b')})?"
                         rf"(?: on an? (?P<background>{_alternatives(BACKGROUND_COLORS)}) background)?")


def _check_choice(name, value, choices):
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one object is drawn: bounding-box centre (x, y) in pixels and half of the box side."""

    center: Tuple[float, float]
    half_size: float

    @property
    def box(self):
        """(x0, y0, x1, y1) of the bounding box in pixel coordinates."""
        (x, y), half = self.center, self.half_size
        return (x - half, y - half, x + half, y + half)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One dataset item: the uint8 (H, W, 3) image, its scene (caption) and the objects' placements."""

    image: np.ndarray
    scene: Scene
    placements: Tuple[Placement, ...]

    @property
    def caption(self):
        return self.scene.caption


# -- drawing -----------------------------------------------------------------------------------------------------
def coverage(shape, center, half_width, half_height, image_size):
    """Antialiased coverage in [0, 1] (float32 (H, W)) of a shape inscribed in a box.

    ``center`` is the box centre (x, y) in pixels (pixel ``(i, j)`` spans ``[j, j+1] x [i, i+1]``); the circle is
    the inscribed ellipse, the triangle has its apex at the top centre and its base on the box bottom.
    """
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    cx, cy = center
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    if shape == "square":
        # exact area of the pixel inside the box
        cover_x = np.clip(np.minimum(xs + 1, cx + half_width) - np.maximum(xs, cx - half_width), 0, 1)
        cover_y = np.clip(np.minimum(ys + 1, cy + half_height) - np.maximum(ys, cy - half_height), 0, 1)
        return (cover_y * cover_x).astype(np.float32)
    px, py = xs + 0.5 - cx, ys + 0.5 - cy  # pixel centres relative to the box centre
    if shape == "circle":
        # distance to an ellipse, first order: (|p/r| - 1) scaled by the local radius
        radius = np.sqrt((px / half_width) ** 2 + (py / half_height) ** 2)
        distance = (radius - 1.0) * min(half_width, half_height)
    elif shape == "triangle":
        # convex polygon: the largest signed distance to its three edge lines
        slope_norm = np.hypot(2 * half_height, half_width)
        left = (-2 * half_height * px - half_width * py - half_width * half_height) / slope_norm
        right = (2 * half_height * px - half_width * py - half_width * half_height) / slope_norm
        bottom = py - half_height
        distance = np.maximum(np.maximum(left, right), bottom)
    else:
        raise InputError(f"shape must be one of {SHAPES}, got {shape!r}")
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


def render(scene, placements, image_size=REFERENCE_SIZE):
    """Draw ``scene`` with ``placements`` into a uint8 (image_size, image_size, 3) image."""
    if len(placements) != len(scene.objects):
        raise InputError(f"{len(scene.objects)} objects but {len(placements)} placements")
    image = np.empty((image_size, image_size, 3), np.float32)
    image[:] = PALETTE[scene.background_color]
    for spec, placement in zip(scene.objects, placements):
        x0, y0, x1, y1 = placement.box
        # only the box (plus the antialiasing margin) can change
        top, left = max(int(np.floor(y0)) - 1, 0), max(int(np.floor(x0)) - 1, 0)
        bottom, right = min(int(np.ceil(y1)) + 2, image_size), min(int(np.ceil(x1)) + 2, image_size)
        center = (placement.center[0] - left, placement.center[1] - top)
        alpha = coverage(spec.shape, center, placement.half_size, placement.half_size,
                         (bottom - top, right - left))[..., None]
        window = image[top:bottom, left:right]
        window += alpha * (np.asarray(PALETTE[spec.color], np.float32) - window)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def is_heldout(scene, fraction=0.1):
    """Whether the exact caption of ``scene`` belongs to the held-out split (a CRC32 of the caption)."""
    caption = scene.caption if isinstance(scene, Scene) else str(scene)
    return zlib.crc32(caption.encode("utf-8")) % 1000 < round(fraction * 1000)


# -- the dataset -------------------------------------------------------------------------------------------------
class ShapesDataset:
    """An endless, deterministic sequence of captioned shape images.

    Args:
        seed: item ``i`` depends only on ``(seed, i)`` and the options below.
        image_size: side of the square images (128 for the ``shapes`` model; geometry scales with it).
        split: ``"train"`` (held-out captions never appear), ``"heldout"`` (only those) or ``"all"``.
        two_object_fraction: share of captions with two objects.
        holdout_fraction: share of all captions held out of ``"train"``.
        background_fraction: share of captions that state a background colour.

    Example:
        >>> images, captions = ShapesDataset(seed=1, image_size=64).batch(range(4))
        >>> images.shape, len(captions)
        ((4, 64, 64, 3), 4)
    """

    def __init__(self, seed=0, image_size=REFERENCE_SIZE, *, split="train", two_object_fraction=0.35,
                 holdout_fraction=0.1, background_fraction=0.5):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 32:
            raise InputError(f"image_size must be an integer >= 32, got {image_size!r}")
        _check_choice("split", split, SPLITS)
        for name, value in (("two_object_fraction", two_object_fraction), ("holdout_fraction", holdout_fraction),
                            ("background_fraction", background_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
        if split == "heldout" and holdout_fraction == 0:
            raise InputError("split='heldout' needs holdout_fraction > 0")
        if split == "train" and holdout_fraction == 1:
            raise InputError("split='train' needs holdout_fraction < 1")
        self.seed, self.image_size, self.split = int(seed), int(image_size), split
        self.two_object_fraction, self.holdout_fraction = float(two_object_fraction), float(holdout_fraction)
        self.background_fraction = float(background_fraction)
        self._scale = self.image_size / REFERENCE_SIZE

    def __getitem__(self, index):
        scene, placements = self.scene(index)
        return Sample(render(scene, placements, self.image_size), scene, placements)

    def scene(self, index):
        """``(Scene, placements)`` of item ``index`` without drawing it."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"index must be an integer >= 0, got {index!r}")
        rng = np.random.default_rng([self.seed, int(index)])
        while True:
            scene = self._draw_scene(rng)
            if self.split == "train" and is_heldout(scene, self.holdout_fraction):
                continue
            if self.split == "heldout" and not is_heldout(scene, self.holdout_fraction):
                continue
            placements = self._place(scene, rng)
            if placements is not None:
                return scene, placements

    def batch(self, indices):
        """uint8 images (B, H, W, 3) and the list of captions of ``indices``."""
        samples = [self[int(i)] for i in indices]
        return np.stack([s.image for s in samples]), [s.caption for s in samples]

    def _draw_scene(self, rng):
        count = 2 if rng.random() < self.two_object_fraction else 1
        colors = rng.choice(len(OBJECT_COLORS), size=count, replace=False)
        if count == 1:
            positions = [POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < 0.65 else None]
        elif rng.random() < 0.5:
            positions = [POSITIONS[i] for i in rng.choice(len(POSITIONS), size=2, replace=False)]
        else:
            positions = [None, None]
        objects = []
        for color, position in zip(colors, positions):
            size_draw = rng.random()
            size = None if size_draw < 0.4 else ("small" if size_draw < 0.7 else "large")
            objects.append(ShapeSpec(OBJECT_COLORS[color], SHAPES[rng.integers(len(SHAPES))], size, position))
        background = None
        if rng.random() < self.background_fraction:
            options = [name for name in BACKGROUND_COLORS if name not in {spec.color for spec in objects}]
            background = options[rng.integers(len(options))]
        return Scene(tuple(objects), background)

    def _place(self, scene, rng, attempts=50):
        """Random placements that fit the image and keep objects apart; None if none was found."""
        size, scale = self.image_size, self._scale
        for _ in range(attempts):
            placements = []
            for spec in scene.objects:
                low, high = HALF_SIZE_RANGES[spec.size or "medium"]
                half = float(rng.uniform(low, high)) * scale
                lowest, highest = half + 1.0, size - 1.0 - half
                if spec.position:
                    anchor = np.asarray(POSITION_ANCHORS[spec.position]) * size
                    center = anchor + rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2) * scale
                else:
                    center = rng.uniform(lowest, highest, size=2)
                center = np.clip(center, lowest, highest)
                placements.append(Placement((float(center[0]), float(center[1])), half))
            if len(placements) == 1 or _apart(placements[0], placements[1], OBJECT_GAP * scale):
                return tuple(placements)
        return None


def _render_range(arguments):
    options, start, stop = arguments
    return ShapesDataset(**options).batch(range(start, stop))


def render_dataset(count, *, workers=1, **options):
    """Items ``0 .. count-1`` of ``ShapesDataset(**options)``: uint8 images (count, H, W, 3) and their captions.

    ``workers`` > 1 renders chunks in that many processes (started with "spawn", which is safe after a
    compiler runtime has started threads in this process).

    Example:
        >>> images, captions = render_dataset(8, seed=0, image_size=64)
        >>> images.shape
        (8, 64, 64, 3)
    """
    import concurrent.futures
    import multiprocessing

    ShapesDataset(**options)  # bad options fail here, not in a worker
    workers = max(1, min(int(workers), count // 500 or 1))
    chunk = -(-count // (workers * 4))
    ranges = [(options, start, min(start + chunk, count)) for start in range(0, count, chunk)]
    if workers == 1:
        results = [_render_range(item) for item in ranges]
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_render_range, ranges))
    return np.concatenate([r[0] for r in results]), [c for r in results for c in r[1]]


def _apart(first, second, gap):
    ax0, ay0, ax1, ay1 = first.box
    bx0, by0, bx1, by1 = second.box
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0
