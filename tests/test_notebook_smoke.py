"""End to end: a papermill Run All of assignment5.ipynb with PROFILE=smoke, offline, finishes cleanly."""
from __future__ import annotations

import nbformat
import papermill
import pytest
from conftest import NOTEBOOK, REPO, SHARED_COMPLAINTS

FIXTURE_COMPLAINTS = REPO / "tests" / "fixtures" / "complaints_synthetic.csv"


@pytest.mark.slow
def test_smoke_run_all(tmp_path, monkeypatch):
    complaints = SHARED_COMPLAINTS if SHARED_COMPLAINTS.exists() else FIXTURE_COMPLAINTS
    monkeypatch.setenv("A5_ALLOW_DOWNLOADS", "0")  # CI has no Hub: the offline stand-ins must carry the run
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / "smoke.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"PROFILE": "smoke", "SHOW_PROGRESS": False, "COMPLAINTS_CSV": str(complaints)},
    )
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert "Profile: smoke" in text
    assert "OFFLINE STAND-IN" in text  # the translation data says what it is
    assert "epoch  2/2" in text  # one line per epoch
    assert "Provenance fingerprint: sha256:" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 6
    assert list((tmp_path / "weights").rglob("tmodel_01.pt"))  # a checkpoint per epoch
