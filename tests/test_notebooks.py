"""The notebooks in notebooks/ run top to bottom against the store `farmwatch demo` writes, so
they never rot: a failing cell is a failing test (its error is in the message)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # the first one waits for the demo run


@pytest.fixture(scope="module")
def demo_store(demo_run) -> Path:
    out, done = demo_run
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out / "farmwatch.db"


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"farm_overview.ipynb", "incident_investigation.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_the_demo_store(path, demo_store, monkeypatch):
    monkeypatch.setenv("FARMWATCH_STORE", str(demo_store))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook should show its plots"
