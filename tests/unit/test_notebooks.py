"""The demo notebooks are valid notebooks whose code cells compile and use only public names of the package."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import ckaad_anomalib
import ckaad_anomalib.data
import ckaad_anomalib.deploy

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
PUBLIC = {
    "ckaad_anomalib": set(ckaad_anomalib.__all__),
    "ckaad_anomalib.data": set(ckaad_anomalib.data.__all__),
    "ckaad_anomalib.deploy": set(ckaad_anomalib.deploy.__all__),
}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_code_compiles_and_imports_public_names(notebook: Path) -> None:
    content = json.loads(notebook.read_text())
    assert content["nbformat"] == 4
    code = "\n".join("".join(c["source"]) for c in content["cells"] if c["cell_type"] == "code")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PUBLIC:
            for alias in node.names:
                assert alias.name in PUBLIC[node.module], f"{notebook.name}: {node.module}.{alias.name} is not public"


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS
