"""Does a handful of coarse labels help? CKAAD vs its Recon twin on ELPV, several seeds.

For each seed, both twins see exactly the same data: the same split, the same coarse anomalies (drawn from the
dataset, k classes, r_l) and the same batches. The only difference is ``adv_weight`` (0.02 vs 0: Recon builds and
trains no discriminator). The epoch count is fixed in advance; thresholds come from the validation split. Nothing
looks at test before the final evaluation.

    python benchmarks/elpv_coarse.py --module-type mono --seeds 0 1 2 --epochs 10 --image-size 128

Prints one row per run and a mean ± std summary. ``--out`` writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule

METRICS = ("image_AUROC", "image_F1Score")


def run(args: argparse.Namespace, seed: int, adv_weight: float) -> dict[str, float | int | str]:
    """Train and test one twin; return its metrics and timings."""
    seed_everything(seed, workers=True)
    datamodule = CoarseAnomalyDataModule(
        ELPV(
            module_type=args.module_type,
            train_batch_size=args.batch_size,
            eval_batch_size=64,
            num_workers=args.workers,
            seed=seed,
        ),
        source="dataset",
        ratio=args.ratio,
        num_classes=args.k,
        seed=seed,
    )
    model = Ckaad(
        backbone=args.backbone,
        layers=tuple(args.layers),
        lr=args.lr,
        adv_weight=adv_weight,
        image_size=(args.image_size, args.image_size),
        visualizer=False,
    )
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(
            default_root_dir=root,
            max_epochs=args.epochs,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
        )
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    return {
        "model": "Ckaad" if adv_weight > 0 else "Recon",
        "seed": seed,
        "adv_weight": adv_weight,
        "n_coarse": len(datamodule.coarse_samples),
        "n_train_normal": len(datamodule.train_data),
        "n_test": len(datamodule.test_data),
        "fit_s": round(fit_s, 1),
        **{m: float(results[m]) for m in METRICS},
    }


def main() -> None:
    """Parse arguments, run both twins per seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module-type", default="mono", choices=["mono", "poly", "both"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.2", "blocks.4"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adv-weight", type=float, default=0.02)
    parser.add_argument("--ratio", type=float, default=0.05, help="r_l")
    parser.add_argument("--k", type=int, default=1, help="anomaly classes")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="CSV of all runs")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.backbone == "tf_efficientnet_lite0":
        install_lite0_weights()

    rows = []
    for seed in args.seeds:
        for adv_weight in (args.adv_weight, 0.0):
            row = run(args, seed, adv_weight)
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    print(f"\nELPV {args.module_type}, {args.backbone} {args.layers}, {args.image_size}px, {args.epochs} epochs, "
          f"r_l={args.ratio}, k={args.k}, seeds {args.seeds}")  # fmt: skip
    print(f"{'model':8s}" + "".join(f"{m:>22s}" for m in METRICS))
    for name in ("Ckaad", "Recon"):
        cells = []
        for metric in METRICS:
            values = [float(r[metric]) for r in rows if r["model"] == name]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        print(f"{name:8s}" + "".join(f"{c:>22s}" for c in cells))
    if args.out:
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
