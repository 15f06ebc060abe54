"""Shared pytest setup. Keep it minimal: fixtures live in the test modules that use them."""
import os

import pytest

# CI runs the suite under both Keras backends. Modules marked ``once`` check things that do not depend on the
# backend the suite runs under (the Kotlin port, golden fixtures, the tokenizer, LiteRT conversion, which always
# runs on TensorFlow, the notebooks, the web page): they run in the TensorFlow suite only.
ONCE_BACKEND = "tensorflow"


def pytest_configure(config):
    # Markers select groups (`-m "not slow"` for a quick run); CI runs everything.
    config.addinivalue_line("markers", "slow: builds full-size (sd-v1 / sd-v2) models; about a minute each")
    config.addinivalue_line("markers", "keras_cv: compares with keras_cv 0.9 (imports TensorFlow)")
    config.addinivalue_line("markers", f"once: backend-independent; runs in the KERAS_BACKEND={ONCE_BACKEND} suite")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KERAS_BACKEND", "tensorflow") == ONCE_BACKEND:
        return
    skip = pytest.mark.skip(reason=f"backend-independent: runs in the KERAS_BACKEND={ONCE_BACKEND} suite")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)
