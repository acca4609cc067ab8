"""Where INT8's F1 goes on ELPV: which threshold rule keeps FP32's test F1 (issue 9, item 2).

Trains one Ckaad (precision_elpv.py's CPU ELPV setup, lite0 128 px), exports it raw (no normalisation or
threshold) in FP32 and quantises it twice the way Ckaad's INT8 export does (checks the two passes are identical),
scores the validation and test splits, and prints the test F1 of the threshold rules:

* ``fp32 own``: anomalib's F1-adaptive threshold on FP32's validation scores (what the FP32 export carries);
* ``int8 own (F1-adaptive)``: the same rule refitted on INT8's validation scores (Ckaad's INT8 export until
  2026-12-05);
* ``int8 @ fp32 thr``: FP32's threshold reused (anomalib's INT8 export);
* ``int8 matched``: INT8's threshold flags as many validation images as FP32's (:func:`matched_threshold`, shipped).

Thresholds come from validation only; the test split is scored once.

    python benchmarks/int8_threshold_elpv.py --epochs 5 --seed 0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from precision_elpv import elpv_datamodule, elpv_model  # the same trained setup as precision_elpv.py
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score
from torch.utils.data import DataLoader

from ckaad_anomalib import install_lite0_weights
from ckaad_anomalib.deploy import EdgeDetector
from ckaad_anomalib.models.ckaad.export import matched_threshold, quantize_int8


def scores(path: Path, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores of an exported model and the labels of ``loader``'s images."""
    detector = EdgeDetector(path)
    score, label = [], []
    for batch in loader:
        score.append(detector.infer(batch.image.numpy())["pred_score"].ravel())
        label.append(batch.gt_label.numpy())
    return np.concatenate(score), np.concatenate(label).astype(bool)


def f1_adaptive(truth: np.ndarray, score: np.ndarray) -> float:
    """The threshold of best F1 on these scores (anomalib's ``F1AdaptiveThreshold`` rule)."""
    precision, recall, thresholds = precision_recall_curve(truth, score)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[np.argmax(f1[:-1])])


def main() -> None:
    """Train, export, quantise twice, score, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    install_lite0_weights()
    seed_everything(args.seed, workers=True)
    datamodule = elpv_datamodule(args.seed)
    root = Path(tempfile.mkdtemp())
    engine = Engine(default_root_dir=root, max_epochs=args.epochs, accelerator="cpu", logger=False)
    model = elpv_model()
    engine.fit(model, datamodule=datamodule)
    post_processor = model.post_processor
    post_processor.enable_normalization = post_processor.enable_thresholding = False
    paths = {"fp32": engine.export(model, ExportType.OPENVINO, export_root=root / "raw")}
    for i in (1, 2):
        path = root / f"int8_{i}" / "model.xml"
        path.parent.mkdir()
        ov.save_model(quantize_int8(ov.Core().read_model(paths["fp32"]), datamodule), path)
        paths[f"int8_{i}"] = path
    datamodule.setup("fit")
    datamodule.setup("test")
    val = {name: scores(path, datamodule.val_dataloader()) for name, path in paths.items()}
    test = {name: scores(path, datamodule.test_dataloader()) for name, path in paths.items()}
    same = max(np.abs(val["int8_1"][0] - val["int8_2"][0]).max(), np.abs(test["int8_1"][0] - test["int8_2"][0]).max())
    (val_fp32, val_truth), (val_int8, _) = val["fp32"], val["int8_1"]
    (test_fp32, truth), (test_int8, _) = test["fp32"], test["int8_1"]
    fp32_threshold = f1_adaptive(val_truth, val_fp32)
    rules = {
        "fp32 own": (test_fp32, val_fp32, fp32_threshold),
        "int8 own (F1-adaptive)": (test_int8, val_int8, f1_adaptive(val_truth, val_int8)),
        "int8 @ fp32 thr": (test_int8, val_int8, fp32_threshold),
        "int8 matched": (
            test_int8,
            val_int8,
            matched_threshold(torch.from_numpy(val_fp32), fp32_threshold, torch.from_numpy(val_int8)),
        ),
    }
    print(f"\nseed {args.seed}: validation {len(val_truth)} images ({val_truth.sum()} defective), test {len(truth)}")
    print(f"INT8 passes 1 and 2: max |Δscore| {same:.1e}")
    print(f"test AUROC fp32 {roc_auc_score(truth, test_fp32):.4f}, int8 {roc_auc_score(truth, test_int8):.4f}")
    print(f"{'threshold rule':24s} {'threshold':>10s} {'val flagged':>12s} {'test F1':>8s}")
    for name, (test_score, val_score, threshold) in rules.items():
        flagged = (val_score >= threshold).mean()
        print(f"{name:24s} {threshold:10.5f} {flagged:12.3f} {f1_score(truth, test_score >= threshold):8.4f}")


if __name__ == "__main__":
    main()
