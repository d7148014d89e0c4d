"""The notebooks are stored without outputs and run top to bottom (small settings, offline)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_two_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "ade_walkthrough.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata.kernelspec.name == "python3"


# the fast mode of each notebook, and the quickstart as shipped (what `jupyter nbconvert --execute` runs)
RUNS = [(p, "1") for p in NOTEBOOKS] + [(p, "0") for p in NOTEBOOKS if p.stem == "quickstart"]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "fast"), RUNS, ids=lambda v: v.stem if isinstance(v, Path) else f"fast{v}")
def test_notebook_runs(path, fast, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("LITDISTILL_NOTEBOOK_FAST", fast)
    monkeypatch.setenv("LITDISTILL_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("LITDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # run where a user would (the notebooks folder), writing only under tmp_path
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    images = sum(
        "image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert images >= 2, "expected the report figures and a plot"
    runs = list((tmp_path / "outputs" / "notebooks").glob("*/*run/report.json"))
    assert len(runs) == 1, runs
    assert not list(path.parent.glob("lightning_logs")) and not list(path.parent.glob("outputs"))
    if path.stem == "quickstart":
        assert "student-teacher agreement" in text
    else:
        assert "no sentence in two splits" in text and "misclassified" in text
        assert "Using the ADE corpus at" in text or "synthetic sample" in text
