"""Accuracy cost of INT8 on ELPV: torch eager vs OpenVINO FP32 vs OpenVINO INT8 of one trained Ckaad.

It trains the CPU ELPV setup of ``configs/ckaad_elpv_lite0.yaml`` (or loads ``--ckpt``). It exports through
anomalib's Engine, FP32 and INT8 (NNCF PTQ calibrated on the normal training images, Ckaad's INT8 export), then
scores the held-out ELPV test split with the torch-free edge runtime. The test split was never used for
training, calibration or thresholds.

    python benchmarks/int8_elpv.py --epochs 20 --seed 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from sklearn.metrics import f1_score, roc_auc_score

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule
from ckaad_anomalib.deploy import EdgeDetector
from ckaad_anomalib.deploy.openvino_infer import load_image


def main() -> None:
    """Train (or load), export, score, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--ckpt", type=Path, default=None, help="use this trained checkpoint instead of training")
    args = parser.parse_args()
    install_lite0_weights()
    seed_everything(args.seed, workers=True)
    datamodule = CoarseAnomalyDataModule(
        ELPV(module_type="mono", train_batch_size=16, eval_batch_size=64, num_workers=0, seed=args.seed),
        ratio=0.05,
        num_classes=1,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(default_root_dir=root, max_epochs=args.epochs, accelerator="cpu", logger=False)
        if args.ckpt is None:
            model = Ckaad(
                backbone="tf_efficientnet_lite0",
                layers=("blocks.1", "blocks.2", "blocks.4"),
                lr=1e-3,
                image_size=(args.image_size, args.image_size),
                visualizer=False,
            )
            start = time.perf_counter()
            engine.fit(model, datamodule=datamodule)
            print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        else:
            model = Ckaad.load_from_checkpoint(args.ckpt)
            datamodule.setup("fit")
        fp32 = engine.export(model, ExportType.OPENVINO, export_root=Path(root) / "fp32")
        int8 = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=Path(root) / "int8",
            compression_type=CompressionType.INT8_PTQ,
            datamodule=datamodule,
        )
        datamodule.setup("test")
        samples = datamodule.test_data.samples
        truth = samples.label_index.to_numpy().astype(bool)
        images = np.stack([load_image(p) for p in samples.image_path])  # ELPV cells are all 300×300

        model.eval()
        with torch.no_grad():
            eager = model(torch.from_numpy(images))
        scores = {"torch eager": (eager.pred_score.numpy(), eager.pred_label.numpy().astype(bool))}
        for name, path in (("OpenVINO FP32", fp32), ("OpenVINO INT8", int8)):
            detector = EdgeDetector(path, batch_size=32)
            outs = [detector.infer(images[i : i + 32]) for i in range(0, len(images), 32)]
            score = np.concatenate([o["pred_score"] for o in outs])
            label = np.concatenate([o["pred_label"] for o in outs]).astype(bool)
            scores[name] = (score, label)

    print(f"\nELPV mono test split: {len(truth)} images ({truth.sum()} defective), seed {args.seed}")
    print(f"{'runtime':15s} {'image AUROC':>12s} {'image F1':>10s}")
    reference = roc_auc_score(truth, scores["torch eager"][0])
    for name, (score, label) in scores.items():
        auroc = roc_auc_score(truth, score)
        delta = 100 * (auroc - reference)
        print(f"{name:15s} {auroc:12.4f} {f1_score(truth, label):10.4f}   Δ AUROC vs eager {delta:+.2f} pt")


if __name__ == "__main__":
    main()
