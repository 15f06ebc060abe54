"""The notebooks run end to end with small parameters, and are committed without outputs.

Each notebook has one code cell tagged ``parameters`` (papermill's convention). The test inserts a cell with
small values right after it and executes every cell with nbclient (the engine of ``pytest --nbmake``) in a fresh
kernel that inherits this process's ``KERAS_BACKEND``; an error in any cell fails the test. The kernel runs in
``notebooks/`` (as Jupyter would) and every file goes to ``workdir``, a pytest temporary folder. No cell is
skipped: a cell that needs real Stable Diffusion weights or a file of the reader's checks for them and, when they
are missing, says what to do and skips itself; here it runs with an empty weight cache and no network (a proxy
that refuses every connection), so "Run All" offline is what CI checks.
"""

import ast
import os
import pathlib

import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_image_to_image_and_inpainting.ipynb",
    "03_export_to_tflite.ipynb",
    "04_fine_tuning.ipynb",
    "05_xla_and_gpu.ipynb",
    "dataset_classifier.ipynb",
    "sdxl.ipynb",
)
SKIP_TAGS = {"skip-ci", "skip-execution"}  # ours (formerly) and nbmake's: no notebook may use them
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
REQUIRED_PARAMETERS = {"model", "steps", "size", "batch", "workdir"}
SMALL = {"steps": 2, "size": 64, "batch": 2}
# Per notebook: fewer variants than a reader would run (every sampler, strength or mode is another program to
# compile), still covering each code path once.
EXTRA = {
    "01_quickstart.ipynb": {"samplers": ["Euler a", "DPM++ 2M Karras"], "download_weights": True},  # tried
    "02_image_to_image_and_inpainting.ipynb": {"strengths": [0.0, 0.5, 1.0]},
    "03_export_to_tflite.ipynb": {"modes": ["fp32", "int8"], "calibration_steps": 2, "download_weights": False},
    "04_fine_tuning.ipynb": {"train_steps": 2, "method": "lora"},
    "05_xla_and_gpu.ipynb": {"cpu_devices": 2},
    "dataset_classifier.ipynb": {"images_per_prompt": 2, "epochs": 1, "quality_filter": False},
    "sdxl.ipynb": {"model": "tiny-xl", "refiner": "tiny-xl-refiner"},  # the small random SDXL models
}
# Cells that need weights or files a CI machine lacks: each must say "Skipped:" and let the notebook go on.
SKIPPED_CELLS = {"01_quickstart.ipynb": 2, "02_image_to_image_and_inpainting.ipynb": 1, "03_export_to_tflite.ipynb": 1}


def demo_model():
    """The notebooks' model: the shipped ``shapes`` model when its weights are packaged, else ``tiny``."""
    from sd_keras.weights.saved import is_saved_folder, packaged_folder

    return "shapes" if is_saved_folder(packaged_folder("shapes")) else "tiny"


def read(name):
    with open(NOTEBOOK_DIR / name, encoding="utf-8") as handle:
        return nbformat.read(handle, as_version=4)


def tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def parameter_cell_index(notebook):
    indices = [i for i, cell in enumerate(notebook.cells) if PARAMETERS_TAG in tags(cell)]
    assert len(indices) == 1, f"expected one cell tagged {PARAMETERS_TAG!r}, found {len(indices)}"
    assert notebook.cells[indices[0]].cell_type == "code"
    return indices[0]


def assigned_names(source):
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def prepare(notebook, parameters):
    """Insert ``parameters`` after the parameters cell."""
    index = parameter_cell_index(notebook)
    unknown = set(parameters) - assigned_names(notebook.cells[index].source)
    assert not unknown, f"injected parameters {sorted(unknown)} are not in the parameters cell"
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = [INJECTED_TAG]
    notebook.cells = notebook.cells[:index + 1] + [injected] + notebook.cells[index + 1:]
    return notebook


def test_every_notebook_is_tested():
    assert sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_with_parameters(name):
    notebook = read(name)
    nbformat.validate(notebook)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} cell {number} has outputs"
        # "Run All" (and pytest --nbmake) runs every cell: one that needs a download checks and skips itself
        assert not tags(cell) & SKIP_TAGS, f"{name} cell {number} is tagged {sorted(tags(cell) & SKIP_TAGS)}"
    index = parameter_cell_index(notebook)
    names = assigned_names(notebook.cells[index].source)
    assert REQUIRED_PARAMETERS <= names, f"{name}: parameters cell lacks {sorted(REQUIRED_PARAMETERS - names)}"
    assert set(EXTRA[name]) <= names


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    from nbclient import NotebookClient

    parameters = {"model": demo_model(), **SMALL, **EXTRA[name], "workdir": str(tmp_path / "work")}
    notebook = prepare(read(name), parameters)
    # the kernel inherits KERAS_BACKEND; the weight cache and compile caches stay in the temporary folder, and
    # every HTTP(S) connection goes to a closed port: no download can happen
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", SD_KERAS_CACHE=str(tmp_path / "cache"),
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute(env=env)  # raises CellExecutionError naming the cell and its traceback
    printed = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs if output.get("output_type") == "stream"]
    assert sum("Skipped:" in text for text in printed) == SKIPPED_CELLS.get(name, 0), printed


pytestmark = pytest.mark.once  # the notebooks call the same library code the backend suites test
