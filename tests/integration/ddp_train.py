"""Train Ckaad with 2 CPU processes (gloo DDP) on tiny coarse-anomaly data; run by ``torchrun`` from test_ddp.py.

Writes, per rank, ``rank<N>.json``: the image paths of every training batch it saw, a digest of its weights after
training, and (rank 0) the test metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from ckaad_anomalib import Ckaad
from ckaad_anomalib.data import CoarseAnomalyDataModule


class SeenBatches(Callback):
    """Records the image paths of every training batch of this rank."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        labels = batch.gt_label.tolist()  # type: ignore[attr-defined]
        paths = list(batch.image_path)  # type: ignore[attr-defined]
        self.batches.append(
            [f"{'anomaly' if label else 'normal'}:{path}" for label, path in zip(labels, paths, strict=True)]
        )


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    """``ddp_train.py DATA_ROOT OUT_DIR``."""
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    seed_everything(0)
    torch.set_num_threads(1)
    inner = MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=8, num_workers=0, seed=0)
    data = CoarseAnomalyDataModule(inner, source="dataset", ratio=0.2, seed=0)
    model = Ckaad(
        backbone="resnet18", layers=("layer2", "layer3"), pre_trained=False, lr=1e-3, d_lr=1e-3, image_size=(64, 64)
    )
    seen = SeenBatches()
    engine = Engine(
        default_root_dir=out / "run",
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        callbacks=[seen],
    )
    engine.fit(model, datamodule=data)
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "batches": seen.batches, "weights": digest(model.model)}
    results = engine.test(model, datamodule=data, verbose=False)
    record["metrics"] = {k: float(v) for k, v in results[0].items()} if results else {}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
