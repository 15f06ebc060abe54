"""Optional quality filter: keep only the images that a judge accepts, recording its verdict.

``"shapes"``: for the shapes demo model, the prompt is parsed with the shapes grammar (``Scene.parse``; a prompt
outside it rejects the row before any generation) and the image measured with ``sd_keras.evaluate``
(``analyze_image`` + ``score_scene``); the image is kept when every stated object is found with its colour and
shape (the ``objects`` score). The verdict (all scores) goes into the image's JSON as ``quality``; a dropped
image is listed in the manifest's ``filtered`` entries with its verdict.

A user's filter is ``callable(image, item)`` (or its import path ``"module:function"``, which the CLI and the
Ray actors take), ``image`` uint8 (H, W, 3) and ``item`` a
``sd_keras.dataset.table.Item`` (prompt, seed, labels, ...), returning a bool or ``(bool, verdict)`` with a
JSON-serialisable verdict.
"""

from sd_keras.errors import InputError

NAMES = ("shapes",)


def _shapes_check(item):
    from sd_keras.data.shapes import Scene

    try:
        Scene.parse(item.prompt)
    except ValueError as error:
        raise InputError(f"quality filter shapes: {error}") from None
    if item.width is not None and item.width != item.height:
        raise InputError(f"quality filter shapes: needs square images, got {item.width}x{item.height}")


def shapes_filter(image, item):
    """``(keep, verdict)`` for a shapes-model image of ``item.prompt``."""
    from sd_keras import evaluate
    from sd_keras.data.shapes import Scene

    scene = Scene.parse(item.prompt)
    analysis = evaluate.analyze_image(image, max_objects=max(2, len(scene.objects)))
    scores = evaluate.score_scene(scene, analysis)
    return bool(scores["objects"]), {"judge": "shapes", "scores": scores}


def _wrap_user(function):
    def judged(image, item):
        result = function(image, item)
        if isinstance(result, tuple):
            keep, verdict = result
        else:
            keep, verdict = result, None
        return bool(keep), {"judge": getattr(function, "__name__", "user"), "verdict": verdict}

    return judged


def resolve(quality_filter):
    """``(filter, name, per-row check)`` for ``generate``'s ``quality_filter`` argument."""
    if quality_filter is None:
        return None, None, None
    if quality_filter == "shapes":
        return shapes_filter, "shapes", _shapes_check
    if isinstance(quality_filter, str) and ":" in quality_filter:
        return _wrap_user(_import(quality_filter)), quality_filter, None
    if callable(quality_filter):
        name = f"{getattr(quality_filter, '__module__', '?')}.{getattr(quality_filter, '__qualname__', '?')}"
        return _wrap_user(quality_filter), name, None
    raise InputError(f"quality filter must be one of {', '.join(NAMES)}, 'module:function' or a function, got "
                     f"{quality_filter!r}")


def _import(path):
    import importlib

    module_name, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise InputError(f"quality filter {path}: cannot import it ({error})") from None
    if not callable(function):
        raise InputError(f"quality filter {path}: not a function")
    return function
