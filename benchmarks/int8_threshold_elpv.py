"""Where INT8's F1 goes on ELPV: which threshold rule keeps FP32's test F1 (issue 9, item 2).

Trains one Ckaad (precision_elpv.py's CPU ELPV setup, lite0 128 px), exports it raw (no normalisation or
threshold) in FP32 and quantises it twice the way Ckaad's INT8 export does (checks the two passes are identical),
scores the normal training images and the validation and test splits, and prints the test F1 of the threshold rules:

* ``fp32 own``: anomalib's F1-adaptive threshold on FP32's validation scores (what the FP32 export carries);
* ``int8 own (F1-adaptive)``: the same rule refitted on INT8's validation scores (Ckaad's INT8 export until
  2026-12-05);
* ``int8 @ fp32 thr``: FP32's threshold reused (anomalib's INT8 export);
* ``int8 matched``: INT8's threshold flags as many validation images as FP32's (:func:`matched_threshold`, shipped);
* ``int8 paired shift``: FP32's threshold moved by the median INT8 − FP32 difference of the same images, over the
  normal training images and the validation split (no labels needed, so every image counts, not only the ones
  around the threshold's rank);
* ``int8 most agreement``: the INT8 threshold whose decisions on those same training and validation images
  disagree least often with FP32's.

Thresholds come from training and validation images only; the test split is scored once. Beside test F1 the
script prints how many test images each rule flags and on how many it agrees with FP32's decision: an INT8
threshold that keeps FP32's operating point agrees on all but the images whose ranking INT8 changed. ``--save``
writes every score to an ``.npz`` and ``--load`` re-reads it instead of training.

    python benchmarks/int8_threshold_elpv.py --epochs 5 --seed 0 --save scores_seed0.npz
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
from precision_elpv import best_f1, elpv_datamodule, elpv_model  # the same trained setup as precision_elpv.py
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


def most_agreement(reference: np.ndarray, reference_threshold: float, scores: np.ndarray) -> float:
    """Threshold on ``scores`` whose decisions disagree with ``reference >= reference_threshold`` least often.

    The same images scored by two precisions; among the thresholds of fewest disagreements it takes the middle
    one, halfway between the two ``scores`` around it.
    """
    order = np.argsort(scores)
    ordered, target = scores[order], (reference >= reference_threshold)[order]
    # cutting before position i flags ordered[i:]: misses the targets below, flags the non-targets above
    errors = np.concatenate([[0], np.cumsum(target)]) + np.concatenate([np.cumsum(~target[::-1])[::-1], [0]])
    best = np.flatnonzero(errors == errors.min())
    i = int(best[len(best) // 2])
    if i == 0:
        return float(ordered[0])
    if i == len(ordered):
        return float(np.nextafter(ordered[-1], np.inf))
    return float((ordered[i - 1] + ordered[i]) / 2)


def train_and_score(epochs: int, seed: int) -> dict[str, np.ndarray]:
    """Train one Ckaad, export FP32 raw, quantise twice and score train (normal), validation and test."""
    install_lite0_weights()
    seed_everything(seed, workers=True)
    datamodule = elpv_datamodule(seed)
    root = Path(tempfile.mkdtemp())
    engine = Engine(default_root_dir=root, max_epochs=epochs, accelerator="cpu", logger=False)
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
    train = datamodule.train_data  # normal images only, in a fixed order so that the precisions pair up
    loaders = {
        "train": DataLoader(train, batch_size=64, shuffle=False, collate_fn=train.collate_fn),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
    }
    out: dict[str, np.ndarray] = {}
    for split, loader in loaders.items():
        for name, path in paths.items():
            out[f"{split}_{name}"], out[f"{split}_truth"] = scores(path, loader)
    same = max(np.abs(out[f"{split}_int8_1"] - out[f"{split}_int8_2"]).max() for split in loaders)
    print(f"INT8 passes 1 and 2: max |Δscore| {same:.1e}")
    return out


def main() -> None:
    """Train (or load the scores), print the rules."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write every score to this .npz")
    parser.add_argument("--load", type=Path, help="read the scores of an earlier --save instead of training")
    args = parser.parse_args()
    out = dict(np.load(args.load)) if args.load else train_and_score(args.epochs, args.seed)
    if args.save:
        np.savez(args.save, **out)
    val_fp32, val_int8, val_truth = out["val_fp32"], out["val_int8_1"], out["val_truth"].astype(bool)
    test_fp32, test_int8, truth = out["test_fp32"], out["test_int8_1"], out["test_truth"].astype(bool)
    fp32_threshold = f1_adaptive(val_truth, val_fp32)
    shift = np.median(np.concatenate([out["train_int8_1"] - out["train_fp32"], val_int8 - val_fp32]))
    rules = {
        "fp32 own": (test_fp32, val_fp32, fp32_threshold),
        "int8 own (F1-adaptive)": (test_int8, val_int8, f1_adaptive(val_truth, val_int8)),
        "int8 @ fp32 thr": (test_int8, val_int8, fp32_threshold),
        "int8 matched": (
            test_int8,
            val_int8,
            matched_threshold(torch.from_numpy(val_fp32), fp32_threshold, torch.from_numpy(val_int8)),
        ),
        "int8 paired shift": (test_int8, val_int8, fp32_threshold + float(shift)),
        "int8 most agreement": (
            test_int8,
            val_int8,
            most_agreement(
                np.concatenate([out["train_fp32"], val_fp32]),
                fp32_threshold,
                np.concatenate([out["train_int8_1"], val_int8]),
            ),
        ),
    }
    fp32_flags = test_fp32 >= fp32_threshold
    print(
        f"\nseed {args.seed}: train {len(out['train_fp32'])} normal images, validation {len(val_truth)}"
        f" ({val_truth.sum()} defective), test {len(truth)} ({truth.sum()})"
    )
    print(f"test AUROC fp32 {roc_auc_score(truth, test_fp32):.4f}, int8 {roc_auc_score(truth, test_int8):.4f}")
    print(f"test best F1 (diagnostic) fp32 {best_f1(truth, test_fp32):.4f}, int8 {best_f1(truth, test_int8):.4f}")
    print(
        f"median INT8 - FP32 score: train {np.median(out['train_int8_1'] - out['train_fp32']):.5f},"
        f" val {np.median(val_int8 - val_fp32):.5f}, test {np.median(test_int8 - test_fp32):.5f}"
    )
    print(
        f"{'threshold rule':24s} {'threshold':>10s} {'val flagged':>12s} {'test flagged':>13s}"
        f" {'agrees w/ fp32':>15s} {'test F1':>8s}"
    )
    for name, (test_score, val_score, threshold) in rules.items():
        flags = test_score >= threshold
        print(
            f"{name:24s} {threshold:10.5f} {(val_score >= threshold).mean():12.3f} {flags.sum():13d}"
            f" {(flags == fp32_flags).sum():15d} {f1_score(truth, flags):8.4f}"
        )


if __name__ == "__main__":
    main()
