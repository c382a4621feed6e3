"""notebooks/: both execute headless (nbclient, this interpreter's kernel) with a tiny run
injected after their "parameters" cell (papermill's convention), and show their plots."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TIMM_FIXTURE = REPO / "tests" / "fixtures" / "timm" / "convit_tiny.safetensors"

# The digits demo shrunk to seconds: one epoch of 11 steps, a 2-block ViT with one GPSA layer.
TINY_DIGITS = [
    "--config.optimizer.warmup_epochs=0.2",
    "--config.model.depth=2",
    "--config.model.num_gpsa_layers=1",
    "--config.model.hidden_size=16",
    "--config.batch_size=128",
    "--config.eval_batch_size=256",
]


def inject_parameters(notebook: nbformat.NotebookNode, **values) -> None:
    """Insert `name = value` assignments right after the cell tagged "parameters"."""
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, cell)


def execute(name: str, cwd: pathlib.Path, **parameters) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    inject_parameters(notebook, **parameters)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [
        output["data"][mime]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if mime in output.get("data", {})
    ]


def text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", ["quickstart.ipynb", "fourier_analysis.ipynb"])
def test_notebooks_are_stored_without_outputs_and_run_anywhere(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    # Colab: the install is guarded and clones REPO_URL; the accelerator stays with child processes.
    assert "REPO_URL" in code[0].source and "if REPO_DIR is None:" in source
    assert "google.colab" not in source and "jax.pmap" not in source


@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
def test_quickstart_then_fourier_analysis_run_headless_and_plot(tmp_path):
    """One test, so that pytest-xdist never runs the quickstart twice: the Fourier notebook
    compares the quickstart's run (two of its checkpoints) with converted timm weights."""
    workdir = tmp_path / "run"
    quickstart = execute(
        "quickstart.ipynb",
        tmp_path,
        CONFIG="configs/digits.py:epochs=1",
        CONFIG_FLAGS=TINY_DIGITS,
        WORKDIR=str(workdir),
        FOURIER_NUM_IMAGES=32,
    )
    # Metrics (one figure), then the spectra and the high-frequency-by-depth plot.
    assert len(outputs(quickstart, "image/png")) == 3
    assert "final eval accuracy" in text(quickstart)
    assert (workdir / "metrics.jsonl").exists()
    assert list(workdir.glob("fourier/step_*/fourier.npz"))

    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    analysis = execute(
        "fourier_analysis.ipynb",
        tmp_path,
        RUNS={"PRS": (str(workdir), None), "PRS early": (str(workdir), steps[0])},
        NUM_IMAGES=32,
        TIMM_WEIGHTS=str(TIMM_FIXTURE),
        TIMM_MODEL="convit_tiny",
        TIMM_IMAGE_SIZE=32,
        TIMM_IMAGES="digits",
    )
    # The comparison, then one spectra plot per model.
    assert len(outputs(analysis, "image/png")) == 1 + 3
    printed = text(analysis)
    assert "timm convit_tiny" in printed and "PRS early" in printed
    assert (workdir / "fourier" / f"step_{steps[0]}" / "fourier.npz").exists()
    assert (tmp_path / "convit_tiny_32_prs.safetensors").exists()
