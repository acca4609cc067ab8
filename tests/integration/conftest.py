"""Fixtures shared by the integration tests: one small trained and exported Ckaad for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from ckaad_anomalib import Ckaad
from tests.conftest import small_ckaad


def export_datamodule(root: Path) -> MVTecAD:
    """Threshold chosen on a validation split disjoint from the test images that parity is measured on."""
    return MVTecAD(
        root=root,
        category="brick",
        train_batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="from_test",
        seed=0,
    )


@pytest.fixture(scope="session")
def exported(
    mvtec_root: Path, lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Ckaad, dict[str, Path]]:
    """A Ckaad trained 2 epochs on the tiny MVTec-layout data, exported to torch, ONNX and OpenVINO."""
    del lite0_weights
    torch.manual_seed(0)
    model = small_ckaad()
    root = tmp_path_factory.mktemp("export")
    engine = Engine(default_root_dir=root, max_epochs=2, accelerator="cpu", logger=False)
    engine.fit(model, datamodule=export_datamodule(mvtec_root))
    paths = {
        kind.value: engine.export(model, kind, export_root=root / kind.value)
        for kind in (ExportType.TORCH, ExportType.ONNX, ExportType.OPENVINO)
    }
    model.eval()
    assert model.model.patch_discriminator is not None  # restored after export
    return model, {k: Path(v) for k, v in paths.items() if v is not None}
