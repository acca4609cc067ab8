r"""Probe, on frozen features only: can a bank of the coarse anomalies' patches improve a nearest-normal score?

No training: lite0 features of ELPV (the benchmark's split, coarse anomalies and pre-processing), a normal bank of a
random 16384 normal training embeddings (as ``Ckaad(knn_weight=...)``), and a coarse bank of each coarse anomaly's
``fraction`` of positions farthest from it. Prints validation and test image AUROC of the nearest-normal score, of
per-patch contrasts with the coarse bank, and of standardised image-level sums. This is the measurement behind
``coarse_weight`` (model README); it prints every combination, it chooses nothing.

    python benchmarks/probe_coarse_bank.py --data mono --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule
from ckaad_anomalib.models.ckaad.anomaly_map import NearestPatchMap, image_score


def main() -> None:
    """Embed, build both banks, print the AUROCs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mono", choices=["mono", "poly"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    args = parser.parse_args()
    install_lite0_weights()
    model = Ckaad(
        backbone="tf_efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        image_size=(128, 128),
        adv_weight=0.0,
        knn_weight=1.0,
        visualizer=False,
    )
    net = model.model.eval()
    transform = model.pre_processor.transform  # type: ignore[union-attr]
    inner = ELPV(module_type=args.data, train_batch_size=16, eval_batch_size=64, num_workers=0, seed=args.seed)
    dm = CoarseAnomalyDataModule(inner, source="dataset", ratio=0.05, num_classes=1, seed=args.seed)
    dm.setup()
    normal_bank = NearestPatchMap()

    @torch.no_grad()
    def patches(dataset: object) -> tuple[torch.Tensor, np.ndarray]:
        out, labels = [], []
        for batch in DataLoader(dataset, batch_size=64, collate_fn=dataset.collate_fn):  # type: ignore[attr-defined]
            out.append(normal_bank.patches(net.extract(transform(batch.image))))
            labels.append(batch.gt_label)
        return torch.cat(out), torch.cat(labels).numpy().astype(int)

    train, _ = patches(dm.train_data)
    val, val_y = patches(dm.val_data)
    test, test_y = patches(dm.test_data)
    coarse, _ = patches(dm.coarse_data)
    normal_bank.set_memory_bank(train)
    side = int(train.shape[1] ** 0.5)

    def distance_map(rows: torch.Tensor, bank: NearestPatchMap) -> torch.Tensor:
        return bank.distances(rows.flatten(0, 1)).reshape(len(rows), 1, side, side)

    def score(maps: torch.Tensor) -> np.ndarray:
        return image_score(net.anomaly_map_generator.combine([maps], (128, 128)), "topk", 100).numpy()

    def report(name: str, val_score: np.ndarray, test_score: np.ndarray) -> None:
        print(f"{name:34s} val {roc_auc_score(val_y, val_score):.4f} test {roc_auc_score(test_y, test_score):.4f}")

    d_val, d_test = distance_map(val, normal_bank), distance_map(test, normal_bank)
    n_val, n_test = score(d_val), score(d_test)
    report("nearest-normal alone", n_val, n_test)
    with torch.no_grad():
        farthest = normal_bank.distances(coarse.flatten(0, 1)).reshape(coarse.shape[:2])
        for fraction in args.fractions:
            keep = farthest.topk(max(1, int(fraction * coarse.shape[1])), dim=1).indices
            coarse_bank = NearestPatchMap()
            coarse_bank.set_memory_bank(torch.cat([coarse[i, keep[i]] for i in range(len(coarse))]))
            a_val, a_test = distance_map(val, coarse_bank), distance_map(test, coarse_bank)
            contrasts: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
                "d_normal - d_defect": lambda dn, da: dn - da,
                "d_normal / (d_normal + d_defect)": lambda dn, da: dn / (dn + da + 1e-6),
                "closeness alone (-d_defect)": lambda dn, da: -da,
            }
            for name, contrast in contrasts.items():
                report(f"{fraction:.2f} {name}", score(contrast(d_val, a_val)), score(contrast(d_test, a_test)))
            c_val, c_test = score(-a_val), score(-a_test)
            normal = val_y == 0
            z = [
                ((v - v[normal].mean()) / v[normal].std(), (t - v[normal].mean()) / v[normal].std())
                for v, t in ((n_val, n_test), (c_val, c_test))
            ]
            for weight in (0.25, 0.5, 1.0):
                report(f"{fraction:.2f} z_n + {weight} z_c", z[0][0] + weight * z[1][0], z[0][1] + weight * z[1][1])


if __name__ == "__main__":
    main()
