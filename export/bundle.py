"""The on-device bundle: ``manifest.json`` next to the ``.tflite`` files and the tokenizer merges file.

``export/BUNDLE.md`` is the specification (field by field); this module writes and reads it
(``sd_keras.export.exporter.export_bundle`` makes one). Reading checks the
format name and version and the sha256 of every file the manifest names, so a bundle that was cut short,
edited or written by a newer exporter fails with an error that names the problem instead of generating noise.

Example:
    >>> bundle = read_bundle("bundles/tiny-fp32")                     # doctest: +SKIP
    >>> bundle.manifest["image_size"], bundle.component_path("decoder")  # doctest: +SKIP
    ([64, 64], '.../bundles/tiny-fp32/decoder.tflite')
"""

import dataclasses
import hashlib
import json
import os

from sd_keras import files
from sd_keras.errors import InputError

FORMAT = "sd_keras.bundle"
FORMAT_VERSION = 1  # SD 1.x / 2.x bundles
SDXL_FORMAT_VERSION = 2  # SDXL bundles (two text encoders, added conditioning): "family": "sdxl"
FORMAT_VERSIONS = (FORMAT_VERSION, SDXL_FORMAT_VERSION)  # what this reader reads
SDXL_FAMILY = "sdxl"
MANIFEST = "manifest.json"
REPORT = "report.json"
TOKENIZER_FILE = "merges.txt"
COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")
REQUIRED_COMPONENTS = ("text_encoder", "diffusion_model", "decoder")
SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", "diffusion_model", "decoder", "image_encoder")
SDXL_REQUIRED_COMPONENTS = ("text_encoder", "text_encoder_2", "diffusion_model", "decoder")
_REQUIRED_KEYS = ("model", "image_size", "latent_size", "latent_scale_factor", "prediction_type", "schedule",
                  "default_sampler", "samplers", "timestep_embedding_dim", "tokenizer", "components")
SDXL_REQUIRED_KEYS = ("family", "tokenizer_2", "micro_conditioning", "force_zeros_for_empty_prompt", "pooled_dim",
                      "addition_time_embed_dim")


class ExportError(RuntimeError):
    """The export could not produce a valid model (unsupported ops, a failed parity gate, a failed worker)."""


class BundleError(InputError):
    """A bundle folder that cannot be used: missing or modified file, unknown format or version."""


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file, read in chunks (UNet files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path, data):
    """Write ``data`` as indented JSON, atomically and with the umask's permissions; returns ``path``."""
    return files.write_json(path, data, indent=2)


def build_manifest(*, model, image_size, latent_size, latent_scale_factor, prediction_type, schedule,
                   default_sampler, samplers, timestep_embedding_dim, tokenizer, components, quantization,
                   model_config=None, producer=None, sdxl=None):
    """The manifest dict in the order BUNDLE.md lists its fields (``components`` entries already complete).

    ``sdxl``: for an SDXL bundle (format version 2), ``{"tokenizer_2", "pooled_dim", "addition_time_embed_dim",
    "micro_conditioning", "force_zeros_for_empty_prompt"}``; ``family`` is set to ``"sdxl"``."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if sdxl is None else SDXL_FORMAT_VERSION,
        **({} if sdxl is None else {"family": SDXL_FAMILY}),
        "model": model,
        "image_size": [int(v) for v in image_size],
        "latent_size": [int(v) for v in latent_size],
        "latent_scale_factor": float(latent_scale_factor),
        "prediction_type": prediction_type,
        "schedule": dict(schedule),
        "default_sampler": default_sampler,
        "samplers": list(samplers),
        "timestep_embedding_dim": int(timestep_embedding_dim),
        "tokenizer": dict(tokenizer),
        **({} if sdxl is None else {
            "tokenizer_2": dict(sdxl["tokenizer_2"]), "pooled_dim": int(sdxl["pooled_dim"]),
            "addition_time_embed_dim": int(sdxl["addition_time_embed_dim"]),
            "micro_conditioning": {key: [_number(v) for v in value] if isinstance(value, (list, tuple)) else
                                   _number(value) for key, value in sdxl["micro_conditioning"].items()},
            "force_zeros_for_empty_prompt": bool(sdxl["force_zeros_for_empty_prompt"])}),
        "components": {name: dict(entry) for name, entry in components.items()},
        "quantization": quantization,
    }
    if model_config is not None:
        manifest["model_config"] = model_config
    if producer is not None:
        manifest["producer"] = producer
    return manifest


def _number(value):
    """A JSON number: an int when ``value`` is integral (sizes), else a float (aesthetic scores)."""
    value = float(value)
    return int(value) if value.is_integer() else value


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder and parsed manifest."""

    path: str
    manifest: dict

    @property
    def components(self):
        return tuple(self.manifest["components"])

    @property
    def family(self):
        """``"sdxl"`` for an SDXL bundle (format version 2), None for SD 1.x / 2.x (version 1)."""
        return self.manifest.get("family")

    def has(self, component):
        return component in self.manifest["components"]

    def component(self, name):
        """The manifest entry of component ``name`` (BundleError if the bundle has none)."""
        try:
            return self.manifest["components"][name]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {name!r} component "
                              f"(it has {', '.join(self.components)})") from None

    def component_path(self, name):
        """The component's file; for a component exported as parts, the bundle folder (see ``files``)."""
        entry = self.component(name)
        return self.path if "parts" in entry else os.path.join(self.path, entry["file"])

    def files(self, name):
        """Every file of component ``name``: one, or its parts in order."""
        entry = self.component(name)
        return [os.path.join(self.path, part["file"]) for part in entry.get("parts", [entry])]

    @property
    def tokenizer_path(self):
        return os.path.join(self.path, self.manifest["tokenizer"]["file"])


def _check_file_entry(folder, entry, what, verify_hashes):
    for key in ("file", "sha256"):
        if not isinstance(entry.get(key), str):
            raise BundleError(f"bundle {folder}: manifest entry of {what} has no {key!r}")
    name = entry["file"]
    if os.path.isabs(name) or os.path.normpath(name).startswith(".."):
        raise BundleError(f"bundle {folder}: {what} file {name!r} must be a plain name inside the bundle")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise BundleError(f"bundle {folder}: {what} file {name!r} is missing")
    if verify_hashes:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(f"bundle {folder}: {what} file {name!r} was modified (sha256 {actual[:12]}... "
                              f"!= manifest {entry['sha256'][:12]}...)")


def read_bundle(path, *, verify_hashes=True, versions=FORMAT_VERSIONS):
    """Parse and check ``path/manifest.json`` and the files it names.

    ``versions``: the format versions the caller can run (default both: ``(1,)`` is a reader that knows only SD
    1.x / 2.x bundles, which must refuse an SDXL bundle).

    Raises:
        BundleError: no manifest, not JSON, another format, an unknown ``format_version``, a missing field,
            a missing file or a file whose sha256 differs from the manifest's.
    """
    path = os.path.abspath(os.fspath(path))
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BundleError(f"{path} is not a bundle: no {MANIFEST}")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"bundle {path}: cannot read {MANIFEST} ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"bundle {path}: {MANIFEST} has format {found!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in versions:
        raise BundleError(f"bundle {path}: format_version {version!r} is not supported (this reader reads "
                          f"version {' and '.join(map(str, versions))}); re-export the bundle or upgrade sd_keras")
    sdxl = version == SDXL_FORMAT_VERSION
    if sdxl and manifest.get("family") != SDXL_FAMILY:
        raise BundleError(f"bundle {path}: format_version 2 needs family {SDXL_FAMILY!r}, got "
                          f"{manifest.get('family')!r}")
    if not sdxl and "family" in manifest:
        raise BundleError(f"bundle {path}: family {manifest['family']!r} needs format_version 2, got {version}")
    missing = [key for key in _REQUIRED_KEYS + (SDXL_REQUIRED_KEYS if sdxl else ()) if key not in manifest]
    if missing:
        raise BundleError(f"bundle {path}: {MANIFEST} lacks {', '.join(missing)}")
    components = manifest["components"]
    if not isinstance(components, dict):
        raise BundleError(f"bundle {path}: 'components' must be an object")
    for name in SDXL_REQUIRED_COMPONENTS if sdxl else REQUIRED_COMPONENTS:
        if name not in components:
            raise BundleError(f"bundle {path}: component {name!r} is missing from {MANIFEST}")
    unknown = sorted(set(components) - set(SDXL_COMPONENTS if sdxl else COMPONENTS))
    if unknown:
        raise BundleError(f"bundle {path}: unknown component(s) {', '.join(unknown)}")
    _check_file_entry(path, manifest["tokenizer"], "tokenizer", verify_hashes)
    if sdxl:
        second = manifest["tokenizer_2"]
        if not isinstance(second, dict) or (second.get("file"), second.get("sha256")) != (
                manifest["tokenizer"]["file"], manifest["tokenizer"]["sha256"]):
            raise BundleError(f"bundle {path}: tokenizer_2 must name the tokenizer's merges file and sha256")
    for name, entry in components.items():
        if "parts" in entry:
            if not isinstance(entry["parts"], list) or not entry["parts"]:
                raise BundleError(f"bundle {path}: {name}'s 'parts' must be a non-empty list")
            for index, part in enumerate(entry["parts"]):
                _check_file_entry(path, part, f"{name} part {index}", verify_hashes)
        else:
            _check_file_entry(path, entry, name, verify_hashes)
    return Bundle(path, manifest)


def replace_folder(staging, destination):
    """Move the finished ``staging`` folder to ``destination`` (same file system) in one rename.

    An existing ``destination`` must be a bundle or empty; it is moved aside first and deleted once the new
    folder is in place, so a reader sees either the old or the new bundle, never a mix.
    """
    destination = os.path.abspath(destination)
    if os.path.lexists(destination):
        if not os.path.isdir(destination):
            raise BundleError(f"{destination} exists and is not a folder")
        if os.listdir(destination) and not os.path.isfile(os.path.join(destination, MANIFEST)):
            raise BundleError(f"{destination} is a non-empty folder that is not a bundle; refusing to replace it")
    return files.replace_folder(staging, destination)


def check_destination(destination):
    """BundleError early (before any work) if ``destination`` could not be replaced by a bundle.

    Missing parent folders are fine: they are created when the bundle is written.
    """
    given, destination = destination, os.path.abspath(destination)
    if os.path.lexists(destination):
        if not os.path.isdir(destination):
            raise BundleError(f"output {destination} exists and is not a folder")
        if os.listdir(destination) and not os.path.isfile(os.path.join(destination, MANIFEST)):
            raise BundleError(f"output {destination} is a non-empty folder that is not a bundle; refusing to "
                              f"replace it")
    try:
        files.check_writable(given, folder=True)
    except ValueError as error:
        raise BundleError(f"output folder: {error}") from None
    return destination
