"""``sd_keras.dataset`` and ``sd-keras dataset``: tables, templates, numbering and seeds, shards in three formats,
the manifest's proof of completeness, rejects, resume (in-process interruption and a real SIGKILL), quality
filters. Generation uses the ``tiny`` preset at 64x64 with 2 steps."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from sd_keras import dataset
from sd_keras.dataset import manifest as manifest_lib
from sd_keras.dataset import table as table_lib
from sd_keras.errors import InputError

FAST = dict(model="tiny", steps=2, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    return tiny_sd  # the session's tiny model (conftest.py)


def _rows(count=5):
    colors = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
    return [{"prompt": f"a {colors[i % 8]} circle", "color": colors[i % 8], "n": i} for i in range(count)]


def _shard_hashes(folder):
    return {shard["name"]: shard["sha256"] for shard in manifest_lib.load(folder)["shards"]}


def _tar_members(path):
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers()}


# -- tables and templates ---------------------------------------------------------------------------------------
def test_csv_jsonl_and_parquet_tables_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as parquet

    (tmp_path / "t.csv").write_text('prompt,seed,label\n"a red circle, small",007,x\na blue square,,y\n',
                                    encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"prompt": "a red circle, small", "seed": 7, "label": "x"}\n\n'
                                      '{"prompt": "a blue square", "label": "y"}\n', encoding="utf-8")
    parquet.write_table(pa.table({"prompt": ["a red circle, small", "a blue square"], "seed": [7, None],
                                  "label": ["x", "y"]}), tmp_path / "t.parquet")
    planned = []
    for name in ("t.csv", "t.jsonl", "t.parquet"):
        rows = dataset.read_table(str(tmp_path / name))
        items, rejects, total = table_lib.plan_items(rows, table_lib.Defaults(base_seed=100))
        assert not rejects and total == 2
        planned.append([(item.prompt, item.seed, item.labels) for item in items])
    assert planned[0] == planned[1] == planned[2] == [("a red circle, small", 7, {"label": "x"}),
                                                      ("a blue square", 101, {"label": "y"})]


@pytest.mark.parametrize("content, name, message", [
    ("text,seed\na,1\n", "t.csv", "no 'prompt' column"),
    ("", "t.csv", "empty file"),
    ('{"prompt": "a"}\n[1]\n', "t.jsonl", "line 2 is not a JSON object"),
    ('{"prompt": "a"\n', "t.jsonl", "line 1 is not JSON"),
    ("prompt\n", "t.txt", "unknown table format"),
])
def test_unreadable_tables_name_the_file_and_the_cause(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        dataset.read_table(str(path))
    assert name in str(error.value)


def test_template_expansion_is_the_product_in_order_with_labels():
    rows = dataset.expand_template("a {size} {color} {shape}", {"size": ["small", "large"], "color": ["red"],
                                                                "shape": "@shapes"}, extra={"steps": 3})
    assert [row["prompt"] for row in rows] == [f"a {size} red {shape}" for size in ("small", "large")
                                               for shape in ("circle", "square", "triangle")]
    assert rows[4] == {"prompt": "a large red square", "steps": 3, "size": "large", "color": "red",
                       "shape": "square"}
    assert len(dataset.expand_template("{color} {bg}", {"color": "@shapes", "bg": "@shapes"})) == 8 * 9


@pytest.mark.parametrize("template, values, message", [
    ("a {color} circle", {}, "variable color: give a non-empty list"),
    ("a {color} circle", {"color": ["red"], "shape": ["x"]}, "no variable shape"),
    ("a red circle", {}, "has no {variable}"),
    ("a {0} circle", {}, "not a variable name"),
    ("a {colour} circle", {"colour": "@shapes"}, "@shapes has no list for 'colour'"),
])
def test_bad_templates_are_input_errors(template, values, message):
    with pytest.raises(InputError, match=message):
        dataset.expand_template(template, values)


def test_numbering_seeds_num_images_and_rejects_keep_one_number():
    rows = [{"prompt": "a"}, {"prompt": "b", "num_images": "3", "seed": "50"}, {"prompt": "c", "steps": "x"},
            {"prompt": "d", "num_images": 2}, {"prompt": ""}, {"prompt": "e", "width": 128, "height": 64}]
    items, rejects, total = table_lib.plan_items(rows, table_lib.Defaults(base_seed=10))
    assert total == 9
    assert [(item.index, item.row, item.prompt, item.seed) for item in items] == [
        (0, 0, "a", 10), (1, 1, "b", 50), (2, 1, "b", 51), (3, 1, "b", 52), (5, 3, "d", 15), (6, 3, "d", 16),
        (8, 5, "e", 18)]
    assert [(reject.index, reject.row) for reject in rejects] == [(4, 2), (7, 4)]
    assert rejects[0].reason == "steps: 'x' is not an integer" and rejects[1].reason == "prompt: empty"
    assert items[-1].group() == (64, 128, 20, "Euler a", 7.0)


@pytest.mark.parametrize("cells, reason", [
    ({"seed": -1}, "seed: -1 is out of range"),
    ({"steps": 0}, "steps: 0 is out of range"),
    ({"cfg_scale": "nan"}, "cfg_scale: must be finite"),
    ({"sampler": "Euler b"}, "sampler: "),
    ({"width": 64}, "give both or neither"),
    ({"width": 100, "height": 64}, "width=100 is not a multiple of 64"),
    ({"num_images": 1.5}, "num_images: 1.5 is not an integer"),
    ({"negative_prompt": 3}, "negative_prompt: expected text"),
])
def test_each_bad_cell_gets_its_own_reason(cells, reason):
    _, rejects, _ = table_lib.plan_items([{"prompt": "a", **cells}])
    assert len(rejects) == 1 and reason in rejects[0].reason, rejects[0].reason


def test_batches_group_by_program_in_image_order():
    items, _, _ = table_lib.plan_items([{"prompt": "a"}, {"prompt": "b", "steps": 3}, {"prompt": "c"},
                                        {"prompt": "d"}, {"prompt": "e", "steps": 3}])
    assert [(group[2], [item.prompt for item in batch]) for group, batch in table_lib.batches(items, 2)] == [
        (20, ["a", "c"]), (20, ["d"]), (3, ["b", "e"])]


# -- generation -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shards_carry_metadata_and_regenerate_bit_identically(tmp_path, tiny):
    from sd_keras import metadata

    rows = _rows(5) + [{"prompt": "a red square", "seed": 3, "cfg_scale": 4}]
    manifest = dataset.generate(rows, tmp_path / "a", output_format="webdataset", shard_size=4, base_seed=20,
                                **{**FAST, "model": tiny})
    assert manifest["complete"] and manifest["counts"] == {"images": 6, "written": 6, "rejected": 0, "filtered": 0}
    members = _tar_members(tmp_path / "a" / "shard-00001.tar")
    assert sorted(members) == ["000000004.json", "000000004.png", "000000005.json", "000000005.png"]
    info = json.loads(members["000000005.json"])
    assert (info["prompt"], info["seed"], info["cfg_scale"], info["width"], info["labels"]) == (
        "a red square", 3, 4.0, 64, {})
    assert info["model"]["sha256"] == manifest["model"]["sha256"] and len(info["model"]["sha256"]) == 64
    parsed = metadata.parse_parameters(info["parameters"])
    assert (parsed["Seed"], parsed["Steps"], parsed["Sampler"], parsed["Size"]) == ("3", "2", "Euler a", "64x64")
    assert metadata.read_parameters(io.BytesIO(members["000000005.png"])) == info["parameters"]
    assert json.loads(_tar_members(tmp_path / "a" / "shard-00000.tar")["000000001.json"])["labels"] == {
        "color": "blue", "n": 1}
    # the same job again, in a new folder and another batch order: the same bytes
    again = dataset.generate(rows, tmp_path / "b", output_format="webdataset", shard_size=4, base_seed=20,
                             **{**FAST, "model": tiny})
    assert _shard_hashes(tmp_path / "a") == _shard_hashes(tmp_path / "b")
    assert again["model"] == manifest["model"]
    assert dataset.verify(tmp_path / "b")["complete"]


@pytest.mark.slow  # compiles the batch-of-one programs too
def test_an_image_in_a_padded_batch_is_the_single_generation_of_its_seed(tmp_path, tiny):
    from PIL import Image

    rows = [{"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 7}, {"prompt": "a green circle"}]
    dataset.generate(rows, tmp_path / "a", shard_size=3, base_seed=20, **{**FAST, "model": tiny})
    members = _tar_members(tmp_path / "a" / "shard-00000.tar")
    for key, prompt, seed in (("000000001", "a blue square", 7), ("000000002", "a green circle", 22)):
        image = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))  # batch [1, 2]; [2, padding]
        single = tiny.text_to_image(prompt, num_steps=2, seed=seed, sampler="Euler a",
                                    unconditional_guidance_scale=7.0, height=64, width=64)[0]
        assert np.abs(image.astype(int) - single.astype(int)).max() <= 1


def test_parquet_and_imagefolder_shards(tmp_path, tiny):
    import pyarrow.parquet as parquet
    from PIL import Image

    dataset.generate(_rows(3), tmp_path / "p", output_format="parquet", shard_size=2, **{**FAST, "model": tiny})
    table = parquet.read_table(tmp_path / "p" / "shard-00000.parquet").to_pylist()
    assert [row["key"] for row in table] == ["000000000", "000000001"]
    assert Image.open(io.BytesIO(table[1]["png"])).size == (64, 64)
    assert json.loads(table[1]["json"])["labels"]["color"] == "blue" and table[1]["seed"] == 1
    dataset.generate(_rows(3), tmp_path / "h", output_format="imagefolder", shard_size=2, **{**FAST, "model": tiny})
    folder = tmp_path / "h" / "shard-00001"
    assert sorted(os.listdir(folder)) == ["000000002.png", "metadata.jsonl"]
    line = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
    assert (line["file_name"], line["color"], line["prompt"], line["seed"]) == ("000000002.png", "green",
                                                                               "a green circle", 2)
    assert dataset.verify(tmp_path / "h")["counts"]["written"] == 3


def test_bad_rows_go_to_the_rejects_file_and_the_job_completes(tmp_path, tiny):
    table = tmp_path / "prompts.jsonl"
    table.write_text("\n".join(json.dumps(row) for row in [
        {"prompt": "a red circle"}, {"prompt": "a blue circle", "width": 65, "height": 64},
        {"negative_prompt": "x"}, {"prompt": "a green circle", "sampler": "nope"}, {"prompt": "a cat"}]) + "\n",
        encoding="utf-8")
    manifest = dataset.generate(str(table), tmp_path / "out", shard_size=2, **{**FAST, "model": tiny})
    assert manifest["complete"] and manifest["counts"] == {"images": 5, "written": 2, "rejected": 3, "filtered": 0}
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(reject["row"], reject["reason"].split(":")[0]) for reject in rejects] == [
        (1, "width/height"), (2, "prompt"), (3, "sampler")]
    assert rejects[0]["values"] == {"prompt": "a blue circle", "width": 65, "height": 64}
    assert [entry["index"] for entry in manifest["shards"][1]["rejected"]] == [2, 3]
    assert dataset.verify(tmp_path / "out")["counts"]["rejected"] == 3


def test_verify_finds_damaged_and_missing_shards(tmp_path, tiny):
    out = tmp_path / "out"
    dataset.generate(_rows(3), out, shard_size=2, **{**FAST, "model": tiny})
    shard = out / "shard-00000.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 differs"):
        dataset.verify(out)
    manifest = manifest_lib.load(out)
    manifest["shards"] = manifest["shards"][1:]
    manifest_lib.save(str(out), manifest)
    with pytest.raises(InputError, match="shard.s. 0 not finished"):
        dataset.verify(out)


class _Stop(Exception):
    pass


_STOP_AT = []


def interruptible(image, item):
    """A user filter that keeps everything and, while ``_STOP_AT`` names an image, stops the job there."""
    if item.index in _STOP_AT:
        raise _Stop()
    return True


def test_resume_after_an_interruption_gives_the_uninterrupted_dataset(tmp_path, tiny):
    rows = _rows(7)
    options = dict(shard_size=2, quality_filter=interruptible, **{**FAST, "model": tiny})
    reference = dataset.generate(rows, tmp_path / "ref", **options)
    _STOP_AT[:] = [5]
    try:
        with pytest.raises(_Stop):
            dataset.generate(rows, tmp_path / "out", **options)
    finally:
        _STOP_AT.clear()
    partial = manifest_lib.load(tmp_path / "out")
    assert [shard["index"] for shard in partial["shards"]] == [0, 1] and not partial["complete"]
    with pytest.raises(InputError, match="already holds a dataset"):
        dataset.generate(rows, tmp_path / "out", **options)
    with pytest.raises(InputError, match=r"other settings .*shard_size"):
        dataset.generate(rows, tmp_path / "out", resume=True, **{**options, "shard_size": 3})
    (tmp_path / "out" / "shard-00001.tar").write_bytes(b"damaged")  # a damaged shard is made again
    (tmp_path / "out" / ".shard-00002.tar.0123456789ab.tmp").write_bytes(b"half")  # a write killed mid-way
    resumed = dataset.generate(rows, tmp_path / "out", resume=True, **options)
    assert resumed["timing"]["images_this_run"] == 5  # shards 1, 2 and 3
    assert not (tmp_path / "out" / ".shard-00002.tar.0123456789ab.tmp").exists()
    assert resumed["complete"] and dataset.verify(tmp_path / "out")
    assert _shard_hashes(tmp_path / "out") == _shard_hashes(tmp_path / "ref")
    names = sorted(name for name in os.listdir(tmp_path / "out") if name.startswith("shard-"))
    assert names == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar", "shard-00003.tar"]
    assert reference["counts"]["written"] == resumed["counts"]["written"] == 7


def test_user_filter_and_shapes_filter_record_verdicts(tmp_path, tiny):
    def even_seeds(image, item):
        return item.seed % 2 == 0, {"seed": item.seed}

    manifest = dataset.generate(_rows(4), tmp_path / "u", shard_size=4, quality_filter=even_seeds,
                                **{**FAST, "model": tiny})
    assert manifest["counts"]["filtered"] == 2
    assert manifest["shards"][0]["filtered"][0] == {"index": 1, "row": 1,
                                                    "verdict": {"judge": "even_seeds", "verdict": {"seed": 1}}}
    kept = json.loads(_tar_members(tmp_path / "u" / "shard-00000.tar")["000000002.json"])
    assert kept["quality"] == {"judge": "even_seeds", "verdict": {"seed": 2}}
    rows = [{"prompt": "a red circle on a white background"}, {"prompt": "a cat"}]
    manifest = dataset.generate(rows, tmp_path / "s", shard_size=2, quality_filter="shapes",
                                **{**FAST, "model": tiny})
    assert manifest["shards"][0]["rejected"][0]["reason"].startswith("quality filter shapes: caption 'a cat'")
    verdicts = [entry["verdict"] for entry in manifest["shards"][0]["filtered"]]
    if manifest["counts"]["written"]:
        verdicts.append(json.loads(_tar_members(tmp_path / "s" / "shard-00000.tar")["000000000.json"])["quality"])
    assert len(verdicts) == 1 and verdicts[0]["judge"] == "shapes" and "objects" in verdicts[0]["scores"]


def test_api_argument_errors(tmp_path):
    with pytest.raises(InputError, match="output_format"):
        dataset.generate(_rows(1), tmp_path / "o", output_format="zip", **FAST)
    with pytest.raises(InputError, match="shard_size"):
        dataset.generate(_rows(1), tmp_path / "o", shard_size=0, **FAST)
    with pytest.raises(InputError, match="default sampler"):
        dataset.generate(_rows(1), tmp_path / "o", **{**FAST, "sampler": "nope"})
    with pytest.raises(InputError, match="quality filter"):
        dataset.generate(_rows(1), tmp_path / "o", quality_filter="blurry", **FAST)
    with pytest.raises(InputError, match="ray: pass the model as a preset name"):
        dataset.generate(_rows(1), tmp_path / "o", ray="auto", **{**FAST, "model": object()})
    with pytest.raises(InputError, match="devices applies to a local run"):
        dataset.generate(_rows(1), tmp_path / "o", ray="auto", devices="all", **FAST)
    with pytest.raises(InputError, match="table must be"):
        dataset.generate([], tmp_path / "o", **FAST)
    assert not (tmp_path / "o").exists()


def test_cli_dataset_in_process(tmp_path, capsys, monkeypatch, tiny):
    from sd_keras import loading
    from sd_keras.cli import main

    monkeypatch.setattr(loading, "load", lambda spec, **options: tiny)  # the compiled fixture, not a new model

    out = tmp_path / "out"
    assert main(["dataset", "--template", "a {color} square", "--var", "color=red,blue,green", "-o", str(out),
                 "-m", "tiny", "--steps", "2", "-b", "2", "--shard-size", "2", "-s", "5", "--hf",
                 "--no-progress"]) == 0
    assert "3 images in 2 shards, 0 rejected" in capsys.readouterr().out
    assert json.loads((out / "shard-00000" / "metadata.jsonl").read_text().splitlines()[1])["seed"] == 6
    assert main(["dataset", "-o", str(tmp_path / "x"), "-m", "tiny"]) == 2
    assert "give a table file or --template" in capsys.readouterr().err
    assert main(["dataset", "--template", "a {color} square", "--var", "color", "-o", str(tmp_path / "x")]) == 2
    assert "--var 'color': expected NAME=VALUE" in capsys.readouterr().err


# -- a real kill -9 -------------------------------------------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from sd_keras import dataset
def slow(image, item):  # the same filter in every run (a job's settings must match to resume), slow when killed
    time.sleep(float(sys.argv[2]))
    return True
rows = [{"prompt": f"a red circle number {i}"} for i in range(24)]
dataset.generate(rows, sys.argv[1], model="tiny", steps=2, batch_size=2, shard_size=2, progress=False,
                 quality_filter=slow, resume=sys.argv[3] == "resume")
"""


@pytest.mark.slow
def test_kill_9_loses_only_the_shards_in_flight(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), "0.3", "new"])
    try:
        deadline = time.time() + 600  # a busy machine compiles slowly
        while time.time() < deadline:
            if (out / "manifest.json").exists() and len(manifest_lib.load(out)["shards"]) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no shard finished in time")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed = manifest_lib.load(out)
    assert not killed["complete"]
    for shard in killed["shards"]:  # every listed shard is whole
        assert manifest_lib.shard_io.shard_sha256(str(out / shard["name"])) == shard["sha256"]
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), "0", "resume"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    reference = tmp_path / "reference"
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(reference), "0", "new"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert dataset.verify(out)["counts"]["written"] == 24
    assert _shard_hashes(out) == _shard_hashes(reference)
    # the temporaries of the writes the kill interrupted are gone after the resume
    assert sorted(os.listdir(out)) == ["manifest.json", "rejects.jsonl"] + [f"shard-{i:05d}.tar" for i in range(12)]


def test_progress_announces_compiling_and_leaves_it_out_of_the_rate():
    from sd_keras.dataset.job import COMPILING_TEXT, Progress

    stream = io.StringIO()
    progress = Progress(100, 10, stream=stream)  # not a terminal: lines, no bar
    assert progress.status() == "rate after the first compiled batch"
    progress.compiling((64, 64, 20, "Euler a", 7.0))
    progress.advance(10, 30.0, True)  # the batch that compiled: 30 s, not a sample of the speed
    progress.advance(20, 10.0, False)
    progress.advance(20, 10.0, False)
    assert progress.done == 60 and progress.rate == 2.0 and progress.eta_seconds() == 20.0
    progress.shard_done(3)
    lines = stream.getvalue().splitlines()
    assert lines == [f"{COMPILING_TEXT}: 64x64, 20 steps, Euler a, CFG 7",
                     "shard 3 done: 60/100 images, 2.00 rows/s, ETA 0m20s"]
    silent = io.StringIO()
    quiet = Progress(10, stream=silent, enabled=False)
    quiet.compiling((64, 64, 2, "DDIM", 7.0))
    quiet.shard_done(0)
    assert silent.getvalue() == ""


DEVICES_SCRIPT = """
import sys
from sd_keras import dataset
rows = [{"prompt": f"a blue square number {i}"} for i in range(6)]
dataset.generate(rows, sys.argv[1], model="tiny", steps=2, batch_size=2, shard_size=3, progress=False,
                 devices=sys.argv[2])
"""


@pytest.mark.slow
def test_devices_all_writes_the_single_device_shards(tmp_path):
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
        pytest.skip("data-parallel generation runs on JAX (Keras' distribution API)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for devices in ("1", "all"):
        result = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, str(tmp_path / devices), devices], env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
    one, two = (manifest_lib.load(tmp_path / name) for name in ("1", "all"))
    assert one["counts"] == two["counts"] == {"images": 6, "written": 6, "rejected": 0, "filtered": 0}
    for first, second in zip(one["shards"], two["shards"]):  # same keys and metadata; pixels within 1 level
        a, b = _tar_members(tmp_path / "1" / first["name"]), _tar_members(tmp_path / "all" / second["name"])
        assert sorted(a) == sorted(b)
        for name in a:
            if name.endswith(".json"):
                assert json.loads(a[name]) == json.loads(b[name])
            else:
                from PIL import Image

                pixels = [np.asarray(Image.open(io.BytesIO(data)), int) for data in (a[name], b[name])]
                assert np.abs(pixels[0] - pixels[1]).max() <= 1


@pytest.mark.slow  # imports the datasets library (a few seconds)
def test_hf_layout_loads_with_datasets_imagefolder(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets

    dataset.generate(_rows(5), tmp_path / "hf", output_format="imagefolder", shard_size=2,
                     **{**FAST, "model": tiny})
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"), split="train")
    assert loaded.num_rows == 5
    rows = sorted(loaded, key=lambda row: row["index"])
    assert [(row["prompt"], row["color"], row["n"], row["seed"]) for row in rows] == [
        (f"a {color} circle", color, i, i) for i, color in enumerate(["red", "blue", "green", "yellow", "purple"])]
    assert rows[0]["image"].size == (64, 64)
