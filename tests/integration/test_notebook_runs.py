"""The demo notebook runs top to bottom (1 epoch) on the real ELPV data: it cannot rot unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import scaled_timeout

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "ckaad_elpv_demo.ipynb"


@pytest.mark.long
def test_demo_notebook_executes(lite0_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    del lite0_weights
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CKAAD_NOTEBOOK_EPOCHS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=int(scaled_timeout(180)), kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError on any failing cell; the kernel inherits the environment
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "1 epochs, seed 0" in text
    assert "image_AUROC" in text  # the Ckaad vs Recon metrics
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the heat maps
