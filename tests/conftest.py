"""Shared pytest setup: the two test tiers, the backend-independent modules and the session fixtures.

Tiers. ``python -m pytest tests`` runs the fast tier: everything on tiny models, in-process. Tests marked
``slow`` (full-size models, LiteRT exports, notebooks, kotlinc/JUnit, the browser, subprocesses of the CLI or of
Python, Ray clusters, long trainings: anything over a few seconds) are skipped unless ``--slow`` is given;
CI (``.ci/run``) runs both tiers under both backends.

Backends. CI runs the suite under both Keras backends. Modules marked ``once`` check things that do not depend on
the backend the suite runs under (the Kotlin port, golden fixtures, the tokenizer, LiteRT conversion, which always
runs on TensorFlow, the notebooks, the web page): they run in the TensorFlow suite only.

Fixtures. ``tiny_sd`` is one ``StableDiffusion.from_preset("tiny")`` for the whole session (its compiled
programs are shared too): a test that changes its weights restores them (``try``/``finally``), and a test that
counts compilations builds its own model.
"""
import os

import pytest

ONCE_BACKEND = "tensorflow"
SLOW_REASON = "slow tier: run with --slow"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier (tests marked slow: full-size models, LiteRT exports, notebooks, "
                          "kotlinc, the browser, subprocesses); CI runs it")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier (over a few seconds: full-size models, LiteRT exports, "
                                       "notebooks, kotlinc, the browser, subprocesses); runs with --slow")
    config.addinivalue_line("markers", "keras_cv: compares with keras_cv 0.9 (imports TensorFlow)")
    config.addinivalue_line("markers", f"once: backend-independent; runs in the KERAS_BACKEND={ONCE_BACKEND} suite")


def pytest_collection_modifyitems(config, items):
    skip_slow = None if config.getoption("--slow") else pytest.mark.skip(reason=SLOW_REASON)
    skip_once = None
    if os.environ.get("KERAS_BACKEND", "tensorflow") != ONCE_BACKEND:
        skip_once = pytest.mark.skip(reason=f"backend-independent: runs in the KERAS_BACKEND={ONCE_BACKEND} suite")
    for item in items:
        if skip_once is not None and "once" in item.keywords:
            item.add_marker(skip_once)
        elif skip_slow is not None and "slow" in item.keywords:
            item.add_marker(skip_slow)


_shared = {}


@pytest.fixture(scope="session")
def tiny_sd():
    """The tiny preset's ``StableDiffusion`` (random weights, seed 0), built once per session."""
    from sd_keras.pipeline import StableDiffusion

    _shared["tiny_sd"] = StableDiffusion.from_preset("tiny")
    return _shared["tiny_sd"]


@pytest.fixture(autouse=True)
def _tiny_sd_reads_plain_prompts_again():
    # The front ends set a model's prompt syntax and LoRA folder (sd-keras generate: AUTOMATIC1111's); the shared
    # model goes back to the Python API's plain prompts after every test.
    yield
    model = _shared.get("tiny_sd")
    if model is not None:
        model.prompt_syntax, model.lora_dir = None, None
