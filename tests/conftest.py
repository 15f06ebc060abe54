"""Shared pytest setup. Keep it minimal: fixtures live in the test modules that use them."""


def pytest_configure(config):
    # Markers select groups (`-m "not slow"` for a quick run); CI runs everything, nothing is skipped.
    config.addinivalue_line("markers", "slow: builds full-size (sd-v1 / sd-v2) models; about a minute each")
    config.addinivalue_line("markers", "keras_cv: compares with keras_cv 0.9 (imports TensorFlow)")
