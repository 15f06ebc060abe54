"""Shard writers: WebDataset tar, Parquet, or an image folder with ``metadata.jsonl`` (Hugging Face imagefolder).

Every shard is written atomically (``sd_keras.files``): a reader, or a job killed at any moment, sees a whole
shard or none. The bytes depend only on the records, so a shard generated again on the same backend and device
is bit-identical (tar members carry a fixed time and owner; JSON keys are sorted).

- ``webdataset``: ``shard-00000.tar`` with ``KEY.png`` and ``KEY.json`` per image (``webdataset.TarWriter``).
- ``parquet``: ``shard-00000.parquet`` with columns ``key``, ``png`` (PNG bytes), ``prompt``, ``seed`` and
  ``json`` (the same metadata as the tar's ``KEY.json``).
- ``imagefolder``: ``shard-00000/KEY.png`` plus ``shard-00000/metadata.jsonl`` (``file_name`` and the metadata
  fields; labels as columns), which ``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads.
"""

import hashlib
import io
import json
import os

from sd_keras import files

FORMATS = ("webdataset", "parquet", "imagefolder")
_EXTENSIONS = {"webdataset": ".tar", "parquet": ".parquet", "imagefolder": ""}


def shard_name(index, output_format):
    return f"shard-{index:05d}{_EXTENSIONS[output_format]}"


def encode_png(image, parameters):
    """PNG bytes of a uint8 (H, W, 3) image carrying A1111's ``parameters`` text chunk."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def metadata_json(metadata):
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")


def write_shard(folder, index, output_format, records):
    """Write ``records`` (``(key, png_bytes, metadata_dict)``, in key order) as shard ``index``; returns
    ``{"name", "sha256", "bytes"}``. An empty shard (every image rejected or filtered) is still written."""
    if output_format not in FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; one of {', '.join(FORMATS)}")
    path = os.path.join(folder, shard_name(index, output_format))
    if output_format == "webdataset":
        _write_tar(path, records)
    elif output_format == "parquet":
        _write_parquet(path, records)
    else:
        _write_folder(path, records)
    return {"name": os.path.basename(path), "sha256": shard_sha256(path), "bytes": shard_bytes(path)}


def _write_tar(path, records):
    from webdataset import TarWriter

    with files.atomic_write(path) as handle:
        writer = TarWriter(handle, user="sd-keras", group="sd-keras", mode=0o444, mtime=0.0, encoder=False)
        for key, png, metadata in records:
            writer.write({"__key__": key, "png": png, "json": metadata_json(metadata)})
        writer.close()


def _write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as parquet

    table = pa.table({"key": pa.array([key for key, _, _ in records], pa.string()),
                      "png": pa.array([png for _, png, _ in records], pa.binary()),
                      "prompt": pa.array([metadata["prompt"] for _, _, metadata in records], pa.string()),
                      "seed": pa.array([metadata["seed"] for _, _, metadata in records], pa.uint64()),
                      "json": pa.array([metadata_json(metadata).decode("utf-8") for _, _, metadata in records],
                                       pa.string())})
    with files.atomic_path(path) as temporary:
        parquet.write_table(table, temporary, compression="zstd")


def _write_folder(path, records):
    with files.atomic_folder(path) as staging:
        lines = []
        for key, png, metadata in records:
            name = f"{key}.png"
            with open(os.path.join(staging, name), "wb") as handle:
                handle.write(png)
            labels = metadata.get("labels", {})
            row = {"file_name": name, **{k: v for k, v in metadata.items() if k != "labels"},
                   **{f"label_{k}" if k in metadata or k == "file_name" else k: v for k, v in labels.items()}}
            lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False))
        with open(os.path.join(staging, "metadata.jsonl"), "w", encoding="utf-8", newline="\n") as handle:
            handle.write("".join(line + "\n" for line in lines))


def shard_sha256(path):
    """sha256 of a shard file; of a shard folder: of its sorted ``name\\0sha256\\n`` lines."""
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            digest.update(f"{name}\0{_file_sha256(os.path.join(path, name))}\n".encode("utf-8"))
        return digest.hexdigest()
    return _file_sha256(path)


def shard_bytes(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))
    return os.path.getsize(path)


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_keys(path, output_format):
    """The image keys a finished shard holds (used to prove completeness)."""
    if output_format == "webdataset":
        import tarfile

        with tarfile.open(path) as archive:
            return sorted({name.split(".", 1)[0] for name in archive.getnames()})
    if output_format == "parquet":
        import pyarrow.parquet as parquet

        return sorted(parquet.read_table(path, columns=["key"]).column("key").to_pylist())
    return sorted(name[:-4] for name in os.listdir(path) if name.endswith(".png"))
