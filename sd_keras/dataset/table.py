"""Prompt tables: read CSV / JSONL / Parquet (pyarrow) or expand a template, check every row, number the images.

A table has a ``prompt`` column and optionally ``negative_prompt``, ``seed``, ``steps``, ``cfg_scale``,
``sampler``, ``width``, ``height`` and ``num_images``; every other column is carried through as a label. Empty
cells take the job's defaults.

Numbering: the rows are expanded into *images* in table order (a row with ``num_images: 3`` gives three). Image
``i`` of the job has the key ``f"{i:09d}"``; without a ``seed`` cell it uses ``base_seed + i``; with one, image
``k`` of that row uses ``seed + k`` (as a batch does in ``text_to_image``). A row that fails its checks is
rejected (its reason goes to the rejects file) and keeps one image number, so the rows after it are numbered as
if it were good.

Example:
    >>> rows = expand_template("a {color} {shape}", {"color": ["red", "blue"], "shape": ["circle"]})
    >>> [row["prompt"] for row in rows]
    ['a red circle', 'a blue circle']
    >>> rows[1]["color"]
    'blue'
"""

import dataclasses
import itertools
import json
import math
import os
import string
from typing import Dict, Optional, Tuple

from sd_keras.errors import InputError

PARAMETER_COLUMNS = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler", "width", "height",
                     "num_images")
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}
MAX_IMAGES_PER_ROW = 10_000
MAX_SEED = 2**64 - 1


def shapes_vocabulary():
    """Value lists of the shapes model's captions, by template variable name."""
    from sd_keras.data.shapes import BACKGROUND_COLORS, OBJECT_COLORS, POSITIONS, SHAPES, SIZES

    return {"color": list(OBJECT_COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS),
            "bg": list(BACKGROUND_COLORS), "background": list(BACKGROUND_COLORS)}


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What an empty cell means. ``width`` / ``height`` None: the model's native size."""

    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: Optional[int] = None
    height: Optional[int] = None
    num_images: int = 1
    base_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Item:
    """One image to generate: its number, table row, settings and labels (the table's other columns)."""

    index: int
    row: int
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg_scale: float
    sampler: str
    width: Optional[int]
    height: Optional[int]
    labels: Dict[str, object]

    @property
    def key(self):
        return f"{self.index:09d}"

    def group(self):
        """Items of one group share a compiled program: same size, steps, sampler and guidance scale."""
        return (self.height or 0, self.width or 0, self.steps, self.sampler, self.cfg_scale)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Reject:
    """A table row that was not generated: its first image number, table row, reason and cells."""

    index: int
    row: int
    reason: str
    values: Dict[str, object]

    def to_dict(self):
        return {"index": self.index, "row": self.row, "reason": self.reason, "values": self.values}


def table_format(path):
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in FORMATS:
        raise InputError(f"table {path}: unknown table format {extension or '(no extension)'!r}; use "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[extension]


def read_table(path):
    """The rows of a CSV, TSV, JSONL or Parquet file as a list of dicts (pyarrow reads all three).

    CSV cells keep their text except that pyarrow types whole columns (a ``seed`` column of numbers is read as
    integers); JSONL lines may be ragged (a missing key is an empty cell). InputError naming the file when it
    cannot be read, has no ``prompt`` column or no rows.
    """
    kind = table_format(path)
    if not os.path.isfile(path):
        raise InputError(f"table {path}: no such file")
    try:
        if kind == "csv":
            from pyarrow import csv

            delimiter = "\t" if str(path).lower().endswith(".tsv") else ","
            # every column as text: a value like "007" or "1e3" stays what the user wrote; checks convert it
            names = _csv_header(path, delimiter)
            table = csv.read_csv(path, parse_options=csv.ParseOptions(delimiter=delimiter),
                                 convert_options=csv.ConvertOptions(column_types={name: "string" for name in names},
                                                                    strings_can_be_null=True))
            rows = table.to_pylist()
        elif kind == "jsonl":
            rows = _read_jsonl(path)
        else:
            import pyarrow.parquet as parquet

            rows = parquet.read_table(path).to_pylist()
    except InputError:
        raise
    except Exception as error:  # pyarrow's errors name the line; keep its text
        raise InputError(f"table {path}: cannot read it as {kind} ({str(error).splitlines()[0]})") from None
    if not rows:
        raise InputError(f"table {path}: no rows")
    if not any("prompt" in row for row in rows):
        raise InputError(f"table {path}: no 'prompt' column (columns: {', '.join(rows[0]) or 'none'})")
    return rows


def _csv_header(path, delimiter):
    import csv as python_csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(python_csv.reader(handle, delimiter=delimiter), None)
    if not header:
        raise InputError(f"table {path}: empty file (no header line)")
    return header


def _read_jsonl(path):
    """JSON Lines: one object per line (blank lines skipped); InputError naming the line otherwise."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"table {path}: line {number} is not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"table {path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def template_variables(template):
    """The ``{name}`` fields of a template, in order of first appearance (InputError for a bad template)."""
    try:
        fields = [name for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise InputError(f"template {template!r}: {error}") from None
    names = []
    for name in fields:
        if not name.isidentifier():
            raise InputError(f"template {template!r}: {{{name}}} is not a variable name (use {{color}}, "
                             "{shape}, ...; write {{ and }} for literal braces)")
        if name not in names:
            names.append(name)
    return names


def expand_template(template, values, *, extra=None):
    """Rows for every combination of the template's variables (the first variable changes slowest).

    Args:
        template: e.g. ``"a {color} {shape} on a {bg} background"``.
        values: ``{variable: [value, ...]}``; every variable of the template needs a non-empty list. The value
            ``"@shapes"`` (instead of a list) takes the shapes model's vocabulary for that variable.
        extra: cells added to every row (e.g. ``{"steps": 25}``).

    Returns:
        A list of row dicts: ``prompt`` plus one label column per variable.
    """
    if not isinstance(template, str) or not template.strip():
        raise InputError("template must be a non-empty string")
    names = template_variables(template)
    if not names:
        raise InputError(f"template {template!r} has no {{variable}}: use a table for a fixed prompt")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"template {template!r} has no variable {', '.join(unknown)}")
    lists = []
    for name in names:
        options = values.get(name)
        if options == "@shapes":
            vocabulary = shapes_vocabulary()
            if name not in vocabulary:
                raise InputError(f"template variable {name}: @shapes has no list for {name!r} (it has "
                                 f"{', '.join(vocabulary)})")
            options = vocabulary[name]
        if isinstance(options, str) or not options:
            raise InputError(f"template variable {name}: give a non-empty list of values")
        lists.append([str(option) for option in options])
    rows = []
    for combination in itertools.product(*lists):
        cells = dict(zip(names, combination))
        rows.append({"prompt": template.format(**cells), **(extra or {}), **cells})
    return rows


def _empty(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and
                                                                                  not value.strip())


def _integer(name, value, low, high):
    if isinstance(value, bool):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise InputError(f"{name}: {value!r} is not an integer") from None
            if not number.is_integer():
                raise InputError(f"{name}: {value!r} is not an integer") from None
            value = int(number)
    elif isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{name}: {value!r} is not an integer")
        value = int(value)
    elif not isinstance(value, int):
        raise InputError(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InputError(f"{name}: {value} is out of range [{low}, {high}]")
    return value


def _number(name, value):
    if isinstance(value, bool):
        raise InputError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{name}: must be finite and >= 0, got {value!r}")
    return number


def _label(value):
    """A cell as JSON can carry it (pyarrow gives dates, decimals and bytes for some Parquet types)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (list, tuple)):
        return [_label(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _label(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _check_row(row, defaults):
    """(settings, count) of one row; InputError naming the column and the cause otherwise."""
    from sd_keras.pipeline import check_size
    from sd_keras.schedulers import get_sampler

    prompt = row.get("prompt")
    if _empty(prompt) or not isinstance(prompt, str):
        raise InputError("prompt: empty" if _empty(prompt) else f"prompt: expected text, got {prompt!r}")
    cell = {name: (None if _empty(row.get(name)) else row.get(name)) for name in PARAMETER_COLUMNS}
    negative = cell["negative_prompt"]
    if negative is not None and not isinstance(negative, str):
        raise InputError(f"negative_prompt: expected text, got {negative!r}")
    steps = defaults.steps if cell["steps"] is None else _integer("steps", cell["steps"], 1, 1000)
    cfg_scale = defaults.cfg_scale if cell["cfg_scale"] is None else _number("cfg_scale", cell["cfg_scale"])
    sampler = defaults.sampler if cell["sampler"] is None else str(cell["sampler"]).strip()
    try:
        get_sampler(sampler, steps)
    except ValueError as error:
        raise InputError(f"sampler: {error}") from None
    width = defaults.width if cell["width"] is None else _integer("width", cell["width"], 1, 4096)
    height = defaults.height if cell["height"] is None else _integer("height", cell["height"], 1, 4096)
    if width is not None or height is not None:
        if width is None or height is None:
            raise InputError("width and height: give both or neither (neither: the model's native size)")
        try:
            check_size(height, width)
        except ValueError as error:
            raise InputError(f"width/height: {error}") from None
    count = defaults.num_images if cell["num_images"] is None else _integer("num_images", cell["num_images"], 1,
                                                                             MAX_IMAGES_PER_ROW)
    seed = None if cell["seed"] is None else _integer("seed", cell["seed"], 0, MAX_SEED)
    if seed is not None and seed + count - 1 > MAX_SEED:
        raise InputError(f"seed: {seed} + num_images exceeds {MAX_SEED}")
    settings = dict(prompt=prompt, negative_prompt=defaults.negative_prompt if negative is None else negative,
                    steps=steps, cfg_scale=cfg_scale, sampler=sampler, width=width, height=height)
    return settings, seed, count


def plan_items(rows, defaults=Defaults(), *, check=None):
    """Number the images of ``rows`` (see the module docstring): ``(items, rejects)``.

    ``check(item)``: an extra per-image check (e.g. the quality filter's grammar) raising InputError; it rejects
    the whole row.
    """
    items, rejects, index = [], [], 0
    for row_number, row in enumerate(rows):
        labels = {str(key): _label(value) for key, value in row.items() if key not in PARAMETER_COLUMNS}
        try:
            settings, seed, count = _check_row(row, defaults)
            new = [Item(index=index + k, row=row_number, seed=(defaults.base_seed + index + k if seed is None
                                                                 else seed + k), labels=labels, **settings)
                   for k in range(count)]
            if check is not None:
                for item in new[:1]:
                    check(item)
        except InputError as error:
            rejects.append(Reject(index, row_number, str(error), {str(k): _label(v) for k, v in row.items()}))
            index += 1
            continue
        if defaults.base_seed + index + count - 1 > MAX_SEED:
            raise InputError(f"base_seed {defaults.base_seed}: seeds of the last images exceed {MAX_SEED}")
        items.extend(new)
        index += count
    return items, rejects, index


def shard_ranges(total, shard_size):
    """``[(first, end), ...]``: the image numbers of each shard (``end`` excluded)."""
    return [(first, min(first + shard_size, total)) for first in range(0, total, shard_size)]


def batches(items, batch_size):
    """The items of one shard grouped by program (size, steps, sampler, guidance) into batches of at most
    ``batch_size`` in image order within each group; groups in order of their first image. ``(group, items)``."""
    groups: Dict[Tuple, list] = {}
    for item in items:
        groups.setdefault(item.group(), []).append(item)
    for group, members in groups.items():
        for start in range(0, len(members), batch_size):
            yield group, members[start:start + batch_size]
