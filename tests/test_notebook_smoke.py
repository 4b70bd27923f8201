"""End to end: a papermill Run All of assignment5.ipynb with PROFILE=smoke, offline, finishes cleanly."""
from __future__ import annotations

import nbformat
import papermill
import pytest
from conftest import EMBEDDED_COMPLAINTS, NOTEBOOK


def output_texts(nb) -> str:
    """Printed text and displayed Markdown of every code cell."""
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/markdown", ""))
    return "\n".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_smoke_run_all(tmp_path, monkeypatch, precision):
    """fp16 and bf16 run the GPU's path on the CPU: autocast in that dtype, and for fp16 the live GradScaler."""
    # A fresh clone run offline: the embedded complaints file is the only complaints data there is.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / EMBEDDED_COMPLAINTS.name).symlink_to(EMBEDDED_COMPLAINTS)
    monkeypatch.setenv("A5_ALLOW_DOWNLOADS", "0")  # CI has no Hub: the offline stand-ins must carry the run
    monkeypatch.delenv("A5_COMPLAINTS_CSV", raising=False)
    monkeypatch.setenv("A5_PRECISION", precision)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / "smoke.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"PROFILE": "smoke", "SHOW_PROGRESS": False},
    )
    nb = nbformat.read(out, as_version=4)
    text = output_texts(nb)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert "Profile: smoke" in text
    assert "Translation data: OFFLINE STAND-IN: KJV (en) -> Diodati (it) Bibles" in text  # says what it is
    assert "OFFLINE STAND-IN: real CFPB narratives, not the course sample: data/cfpb_complaints_narratives.csv.gz" in text
    assert "epoch  2/2" in text  # one line per epoch
    assert "Conclusions" in "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert text.count("**Results.**") == 2  # the generated conclusions of both sections
    assert f"precision {precision}" in text  # the forced precision reached both sections
    assert "merged vs adapter model in fp32" in text
    assert "Traceback" not in text and "you may need to restart the kernel" not in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 6
    assert [p.name for p in (tmp_path / "weights").rglob("tmodel_*.pt")] == ["tmodel_01.pt"]  # the latest only
