"""LiteRT (TFLite) export of sd_keras models: quantization, parity gates, the on-device bundle and its runner.

Installed as ``sd_keras.export``. ``export/BUNDLE.md`` specifies the bundle format.

Example:
    >>> from sd_keras import StableDiffusion                                          # doctest: +SKIP
    >>> from sd_keras.export import export_bundle, BundleRunner                       # doctest: +SKIP
    >>> report = export_bundle(StableDiffusion.from_preset("tiny"), "tiny-int8", quantization="int8")  # doctest: +SKIP
    >>> BundleRunner("tiny-int8").text_to_image("a red circle", num_steps=4, seed=1)  # doctest: +SKIP
"""

__all__ = ["export_bundle", "read_bundle", "BundleRunner", "BundleError", "ExportError", "MODES"]


def __getattr__(name):
    # Lazy: reading a bundle must not import TensorFlow or a Keras backend.
    if name in ("read_bundle", "BundleError"):
        from sd_keras.export import bundle

        return getattr(bundle, name)
    if name == "export_bundle":
        from sd_keras.export.exporter import export_bundle

        return export_bundle
    if name == "BundleRunner":
        from sd_keras.export.runner import BundleRunner

        return BundleRunner
    if name == "ExportError":
        from sd_keras.export.bundle import ExportError

        return ExportError
    if name == "MODES":
        from sd_keras.export.quantize import MODES

        return MODES
    raise AttributeError(f"module 'sd_keras.export' has no attribute {name!r}")
