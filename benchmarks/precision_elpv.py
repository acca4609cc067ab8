"""Accuracy and speed of each deployed precision on ELPV: torch eager vs OpenVINO f32 / bf16 / INT8 of one Ckaad.

It trains the CPU ELPV setup of ``configs/ckaad_elpv_lite0.yaml`` (or loads ``--ckpt``). It exports through
anomalib's Engine, FP32 and INT8 (NNCF PTQ calibrated on the normal training images, Ckaad's INT8 export), then
scores the held-out ELPV test split:

* ``OpenVINOInferencer (defaults)``: anomalib's own deployment path, no precision passed (the export's f32 marks
  decide, also on CPUs whose default is bf16);
* ``OpenVINO FP32`` / ``OpenVINO bf16`` / ``OpenVINO INT8``: the torch-free edge runtime (``ckaad-infer``) with
  ``precision="f32"`` and the opt-in ``precision="bf16"`` (marks removed; on a CPU without bf16 it runs f32).

The test split was never used for training, calibration or thresholds; ``best F1 (test)``, the F1 at the threshold
that is best on test, only tells what the exported threshold costs from what the scores' ranking costs. Latency:
batch 1, median of the test images after a warm-up, on this machine's CPU (whose OpenVINO capabilities are printed).

    python benchmarks/precision_elpv.py --epochs 5 --seed 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule
from ckaad_anomalib.deploy import EdgeDetector
from ckaad_anomalib.deploy.openvino_infer import load_image


def score_openvino(
    fp32: Path, int8: Path, images: np.ndarray, scores: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """Add each OpenVINO runtime's (score, label) to ``scores``; return its batch-1 median latency in ms."""
    latency: dict[str, float] = {}
    inferencer = OpenVINOInferencer(path=fp32)
    predictions = [inferencer.predict(image[None]) for image in images]
    scores["OpenVINOInferencer (defaults)"] = (
        np.array([np.asarray(p.pred_score).item() for p in predictions]),
        np.array([bool(np.asarray(p.pred_label).item()) for p in predictions]),
    )
    for name, path, precision in (
        ("OpenVINO FP32", fp32, "f32"),
        ("OpenVINO bf16 (opt-in)", fp32, "bf16"),
        ("OpenVINO INT8", int8, "f32"),
    ):
        detector = EdgeDetector(path, precision=precision, batch_size=32)
        outs = [detector.infer(images[i : i + 32]) for i in range(0, len(images), 32)]
        score = np.concatenate([o["pred_score"] for o in outs])
        label = np.concatenate([o["pred_label"] for o in outs]).astype(bool)
        scores[name] = (score, label)
        single = EdgeDetector(path, precision=precision)
        for image in images[:10]:  # warm-up
            single.infer(image[None])
        times = []
        for image in images:
            start = time.perf_counter()
            single.infer(image[None])
            times.append(time.perf_counter() - start)
        latency[name] = 1e3 * statistics.median(times)
    return latency


def elpv_datamodule(seed: int) -> CoarseAnomalyDataModule:
    """ELPV mono with real coarse anomalies (k = 1, r_l = 0.05): the CPU setup of ``configs/ckaad_elpv_lite0.yaml``."""
    elpv = ELPV(module_type="mono", train_batch_size=16, eval_batch_size=64, num_workers=0, seed=seed)
    return CoarseAnomalyDataModule(elpv, ratio=0.05, num_classes=1, seed=seed)


def elpv_model(image_size: int = 128) -> Ckaad:
    """Ckaad of that setup (lite0 blocks.1/2/4, lr 1e-3), without the visualiser."""
    return Ckaad(
        backbone="tf_efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        lr=1e-3,
        image_size=(image_size, image_size),
        visualizer=False,
    )


def best_f1(truth: np.ndarray, score: np.ndarray) -> float:
    """F1 at the threshold that maximises it on these scores: a test-set diagnostic, never a deployed setting.

    The gap between it and the F1 at the exported threshold is what the threshold costs; a gap between two
    runtimes' best F1 is what their scores' ranking costs.
    """
    precision, recall, _ = precision_recall_curve(truth, score)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(f1.max())


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
    datamodule = elpv_datamodule(args.seed)
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(default_root_dir=root, max_epochs=args.epochs, accelerator="cpu", logger=False)
        if args.ckpt is None:
            model = elpv_model(args.image_size)
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
        os.chdir(root)  # OpenVINOInferencer writes ./openvino_cache
        latency = score_openvino(fp32, int8, images, scores)

    capabilities = " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    print(f"\nELPV mono test split: {len(truth)} images ({truth.sum()} defective), seed {args.seed}")
    print(f"CPU: {ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}; OpenVINO {ov.__version__}: {capabilities}")
    print(
        f"{'runtime':30s} {'image AUROC':>12s} {'image F1':>10s} {'best F1 (test)':>15s} {'max |Δscore|':>13s}"
        f" {'p50 ms (batch 1)':>17s}"
    )
    reference_score = scores["torch eager"][0]
    reference = roc_auc_score(truth, reference_score)
    for name, (score, label) in scores.items():
        auroc = roc_auc_score(truth, score)
        delta = 100 * (auroc - reference)
        ms = f"{latency[name]:17.2f}" if name in latency else f"{'':17s}"
        print(
            f"{name:30s} {auroc:12.4f} {f1_score(truth, label):10.4f} {best_f1(truth, score):15.4f}"
            f" {np.abs(score - reference_score).max():13.2e}"
            f"{ms}   Δ AUROC vs eager {delta:+.2f} pt"
        )


if __name__ == "__main__":
    main()
