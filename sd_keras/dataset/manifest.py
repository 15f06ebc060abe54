"""The dataset manifest (``manifest.json``): the job, the model, and per shard its image range, sha256 and the
images that are not in it (rejected or filtered out), so that ``verify`` can prove every image number of the job
is in exactly one place.

It is rewritten atomically after every finished shard; a shard file that exists but is not listed (a job killed
between the two writes) is simply generated again by ``--resume``.
"""

import json
import os

from sd_keras import files
from sd_keras.dataset import shards as shard_io
from sd_keras.errors import InputError

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
FORMAT_VERSION = 1


def path_of(folder):
    return os.path.join(folder, MANIFEST)


def load(folder):
    """The manifest of a dataset folder; InputError naming the file when it is missing or unreadable."""
    path = path_of(folder)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest (not a dataset folder, or no shard finished yet)") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: not a manifest of format version {FORMAT_VERSION}")
    return manifest


def new(job, num_shards):
    return {"format_version": FORMAT_VERSION, "job": job, "model": None, "complete": False,
            "num_shards": num_shards, "shards": [], "counts": {}}


def add_shard(manifest, entry):
    """Record a finished shard (replacing an earlier record of the same index) and recount."""
    shards = [shard for shard in manifest["shards"] if shard["index"] != entry["index"]] + [entry]
    manifest["shards"] = sorted(shards, key=lambda shard: shard["index"])
    counts = {"images": manifest["job"]["images"], "written": 0, "rejected": 0, "filtered": 0}
    for shard in manifest["shards"]:
        counts["written"] += shard["written"]
        counts["rejected"] += len(shard["rejected"])
        counts["filtered"] += len(shard["filtered"])
    manifest["counts"] = counts
    manifest["complete"] = len(manifest["shards"]) == manifest["num_shards"]


def save(folder, manifest, validation_rejects=()):
    """Write ``manifest.json`` and ``rejects.jsonl`` (every rejected row, with its reason), atomically."""
    by_index = {reject["index"]: reject for reject in validation_rejects}
    for shard in manifest["shards"]:  # a row's cells are in the validation record; runtime rejects add theirs
        for reject in shard["rejected"]:
            by_index.setdefault(reject["index"], reject)
    lines = [by_index[index] for index in sorted(by_index)]
    files.write_text(os.path.join(folder, REJECTS),
                     "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines))
    files.write_json(path_of(folder), manifest, sort_keys=True)


def verify(folder, *, check_sha256=True):
    """Prove a finished dataset complete: every image number of the job is in exactly one shard, or listed
    as rejected or filtered out, and (``check_sha256``) every shard file has its recorded sha256.

    Returns the manifest; InputError naming the first problem otherwise.
    """
    manifest = load(folder)
    output_format = manifest["job"]["output_format"]
    listed = {shard["index"] for shard in manifest["shards"]}
    missing = sorted(set(range(manifest["num_shards"])) - listed)
    if missing:
        raise InputError(f"{folder}: incomplete: shard(s) {', '.join(map(str, missing[:10]))} not finished "
                         "(run again with --resume)")
    seen = set()
    for shard in manifest["shards"]:
        path = os.path.join(folder, shard["name"])
        if not os.path.exists(path):
            raise InputError(f"{path}: listed in the manifest but missing")
        if check_sha256 and shard_io.shard_sha256(path) != shard["sha256"]:
            raise InputError(f"{path}: sha256 differs from the manifest's (changed or damaged)")
        keys = shard_io.read_keys(path, output_format)
        if len(keys) != shard["written"]:
            raise InputError(f"{path}: holds {len(keys)} images, the manifest says {shard['written']}")
        numbers = [int(key) for key in keys] + [entry["index"] for entry in shard["rejected"]] + [
            entry["index"] for entry in shard["filtered"]]
        expected = set(range(shard["first"], shard["end"]))
        if len(numbers) != len(set(numbers)) or set(numbers) != expected:
            raise InputError(f"{path}: its images, rejected and filtered numbers do not cover "
                             f"[{shard['first']}, {shard['end']}) exactly once")
        seen |= expected
    if seen != set(range(manifest["job"]["images"])):
        raise InputError(f"{folder}: the shards do not cover the job's {manifest['job']['images']} image numbers")
    return manifest
