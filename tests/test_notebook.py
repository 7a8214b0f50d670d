"""notebooks/quickstart.ipynb: kept in step with its generator, and it runs top to bottom.

The run is slow (SmolLM2-135M on CPU: sampling, reflection, one real update, a checkpoint); the
generator check is fast.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil

import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "quickstart.ipynb"
CELL_TIMEOUT_S = 900


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_quickstart", NOTEBOOKS / "make_quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stream_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def test_committed_notebook_is_its_generators_output_without_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    generated = _generator().build_notebook()
    assert [c.source for c in committed.cells] == [c.source for c in generated.cells], (
        "notebooks/quickstart.ipynb is stale: run `python notebooks/make_quickstart.py`"
    )
    code_cells = [c for c in committed.cells if c.cell_type == "code"]
    assert code_cells and all(not c.outputs and c.execution_count is None for c in code_cells)


@pytest.mark.slow
def test_quickstart_notebook_runs_and_restores_what_it_saved(
    smollm2_gguf_path, tmp_path, monkeypatch
):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: datasets and caches in tmp, CPU, no hub.
    monkeypatch.setenv("PMD_TFDS_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("PMD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell or assert
    finally:
        nbformat.write(notebook, tmp_path / "quickstart_executed.ipynb")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    text = _stream_text(notebook)
    assert "restored == saved: True" in text
    assert "PMD loss" in text and "parameter change norm after the step" in text
    assert (tmp_path / "quickstart_run" / "checkpoints" / "1").is_dir()
    shutil.rmtree(tmp_path / "quickstart_run")  # ~2 GB of params, teacher and Adam moments
