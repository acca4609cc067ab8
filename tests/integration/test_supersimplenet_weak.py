"""The weakly supervised peer trains through Engine on the same coarse batches as Ckaad."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback

from ckaad_anomalib import SupersimplenetWeak
from ckaad_anomalib.data import CoarseAnomalyDataModule

pytestmark = pytest.mark.long  # a peer, not the product: its Engine run stays out of the 5-minute default suite


class LabelCounter(Callback):
    """Counts the labelled anomalies the training batches carried."""

    def __init__(self) -> None:
        self.anomalous = 0

    def on_train_batch_start(self, trainer: object, pl_module: object, batch: object, *args: object) -> None:
        """Count."""
        self.anomalous += int(batch.gt_label.sum())  # type: ignore[attr-defined]


def test_engine_trains_on_image_labelled_anomalies(mvtec_root: Path, lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    torch.manual_seed(0)
    inner = MVTecAD(root=mvtec_root, category="brick", train_batch_size=4, eval_batch_size=8, num_workers=0)
    data = CoarseAnomalyDataModule(inner, ratio=0.2, seed=0)
    model = SupersimplenetWeak(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"], visualizer=False)
    counter = LabelCounter()
    engine = Engine(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False, callbacks=[counter])
    engine.fit(model, datamodule=data)
    assert counter.anomalous > 0  # the batches held masks-less anomalies, which anomalib's own model refuses
    results = engine.test(model, datamodule=data)[0]
    assert 0 <= results["image_AUROC"] <= 1
