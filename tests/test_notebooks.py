"""The notebooks run end to end with small parameters, and are committed without outputs.

Each notebook has one code cell tagged ``parameters`` (papermill's convention). The test inserts a cell with
small values right after it, drops the cells tagged ``skip-ci`` (they download real weights), and executes the
notebook with nbclient in a fresh kernel that inherits this process's ``KERAS_BACKEND``; an error in any cell
fails the test. The kernel runs in ``notebooks/`` (as Jupyter would) and every file goes to ``workdir``, a
pytest temporary folder.
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
)
SKIP_TAG = "skip-ci"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
REQUIRED_PARAMETERS = {"model", "steps", "size", "batch", "workdir"}
SMALL = {"steps": 2, "size": 64, "batch": 2}
# Per notebook: fewer variants than a reader would run (every sampler, strength or mode is another program to
# compile), still covering each code path once.
EXTRA = {
    "01_quickstart.ipynb": {"samplers": ["Euler a", "DPM++ 2M Karras"]},
    "02_image_to_image_and_inpainting.ipynb": {"strengths": [0.0, 0.5, 1.0]},
    "03_export_to_tflite.ipynb": {"modes": ["fp32", "int8"], "calibration_steps": 2},
    "04_fine_tuning.ipynb": {"train_steps": 2, "method": "lora"},
    "05_xla_and_gpu.ipynb": {"cpu_devices": 2},
}


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
    """Insert ``parameters`` after the parameters cell and drop the ``skip-ci`` cells."""
    index = parameter_cell_index(notebook)
    unknown = set(parameters) - assigned_names(notebook.cells[index].source)
    assert not unknown, f"injected parameters {sorted(unknown)} are not in the parameters cell"
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = [INJECTED_TAG]
    cells = notebook.cells[:index + 1] + [injected] + notebook.cells[index + 1:]
    notebook.cells = [cell for cell in cells if SKIP_TAG not in tags(cell)]
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
    index = parameter_cell_index(notebook)
    names = assigned_names(notebook.cells[index].source)
    assert REQUIRED_PARAMETERS <= names, f"{name}: parameters cell lacks {sorted(REQUIRED_PARAMETERS - names)}"
    assert set(EXTRA[name]) <= names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    from nbclient import NotebookClient

    parameters = {"model": demo_model(), **SMALL, **EXTRA[name], "workdir": str(tmp_path / "work")}
    notebook = prepare(read(name), parameters)
    # the kernel inherits KERAS_BACKEND; downloads and compile caches stay in the temporary folder
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", SD_KERAS_CACHE=str(tmp_path / "cache"))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute(env=env)  # raises CellExecutionError naming the cell and its traceback


pytestmark = pytest.mark.once  # the notebooks call the same library code the backend suites test
