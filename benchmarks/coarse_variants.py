r"""Do a handful of coarse labels help, and which mechanism makes them count? Ckaad variants vs the Recon twin.

For each dataset and seed, every variant sees exactly the same data: the same split, the same coarse anomalies
(real ones drawn from the dataset, k classes, r_l) and the same batches. Variants differ only in named ``Ckaad``
arguments (:data:`VARIANTS`). The epoch count is fixed in advance; thresholds come from the validation split.
Nothing looks at test before the final evaluation, except ``--diagnose``, which *records* (never uses) per-epoch
statistics on the test images to show what the mechanism does.

Datasets:
  * ``elpv-mono`` / ``elpv-poly``: ELPV solar cells, image labels only, one defect class (seen by construction);
  * ``texture``: a generated MVTec-layout texture set with pixel masks (``ckaad-synth``): three defect kinds, one
    of them (``--seen``) is the coarse class, the others are never labelled: per-kind image AUROC tells seen from
    unseen.

    python benchmarks/coarse_variants.py --data elpv-mono elpv-poly texture --seeds 0 1 2 --epochs 10 \\
        --variants recon paper push --out benchmarks/results/coarse

Prints one row per run and a mean ± std table; writes ``runs.csv`` and ``table.md`` (and with ``--diagnose``,
``diagnostics.jsonl`` plus one plot per dataset) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import AnomalibModule, Patchcore
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from sklearn.metrics import f1_score, roc_auc_score
from torch.utils.data import DataLoader

from ckaad_anomalib import Ckaad, SupersimplenetWeak, install_lite0_weights
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule, make_mvtec_like_dataset
from ckaad_anomalib.evaluation import aupro, defect_kind, per_kind_auroc
from ckaad_anomalib.models.ckaad.loss import adversarial_loss, reconstruction_loss
from ckaad_anomalib.models.ckaad.torch_model import ScoreComponent

# name: Ckaad arguments on top of the shared ones. "paper" is the published method.
VARIANTS: dict[str, dict[str, Any]] = {
    "recon": {"adv_weight": 0.0},
    "paper": {},
    "d_fast": {"d_lr": 1e-3},
    "mil": {"d_lr": 1e-3, "mil_fraction": 0.1},
    "push": {"push_weight": 0.1},
    "push_mil": {"push_weight": 0.1, "d_lr": 1e-3, "mil_fraction": 0.1},
    "recon_push": {"adv_weight": 0.0, "push_weight": 0.1},
    "focus": {"gamma": 0.0, "d_lr": 1e-3, "mil_fraction": 0.1},
    "focus_push": {"gamma": 0.0, "d_lr": 1e-3, "mil_fraction": 0.1, "push_weight": 0.1},
    "energy": {"energy_weight": 1.0},
    "focus_energy": {"gamma": 0.0, "d_lr": 1e-3, "mil_fraction": 0.1, "energy_weight": 1.0},
    "mil_energy": {"d_lr": 1e-3, "mil_fraction": 0.1, "energy_weight": 1.0},
    "focus_auto": {"gamma": 0.0, "d_lr": 1e-3, "mil_fraction": 0.1, "energy_weight": "auto"},
    # the nearest-normal-feature distance as a third component; recon_knn is focus_auto_knn's Recon twin
    "recon_knn": {"adv_weight": 0.0, "knn_weight": 1.0},
    "focus_auto_knn": {"gamma": 0.0, "d_lr": 1e-3, "mil_fraction": 0.1, "energy_weight": "auto", "knn_weight": 1.0},
    # nearest-normal score plus closeness to the coarse anomalies' most anomalous patches (w chosen on validation);
    # its twin without coarse knowledge is the same run's nearest-normal score alone (AUROCc_nearest)
    "coarse_knn": {"distance_weight": 0.0, "knn_weight": 1.0, "coarse_weight": "auto"},
    # the same score, and the map standardised and weighted like it (pixel level follows the image score)
    "coarse_knn_map": {"distance_weight": 0.0, "knn_weight": 1.0, "coarse_weight": "auto", "fused_map": True},
    # slimmer auto-encoders (issue 9's edge budget): paper defaults otherwise
    "slim_w50": {"ae_width": 0.5},
    "slim_w50_b1": {"ae_width": 0.5, "ae_blocks": 1},
    "slim_w25_b1": {"ae_width": 0.25, "ae_blocks": 1},
}
# Peers on the same backbone, pre-processing and files: anomalib's PatchCore (unsupervised, normal images only) and
# SupersimplenetWeak (this project's image-label SuperSimpleNet, on the same coarse batches as Ckaad).
PEERS: dict[str, type[AnomalibModule]] = {"patchcore": Patchcore, "supersimplenet_weak": SupersimplenetWeak}
TEXTURE_DEFECTS = ("scratch", "stain", "foreign")


def make_datamodule(args: argparse.Namespace, data: str, seed: int) -> CoarseAnomalyDataModule:
    """The wrapped datamodule of one dataset; the same arguments give the same files and batches."""
    common = {"train_batch_size": args.batch_size, "eval_batch_size": 64, "num_workers": args.workers, "seed": seed}
    if data.startswith("elpv-"):
        inner: Any = ELPV(module_type=data.removeprefix("elpv-"), root=args.elpv_root, **common)
        return CoarseAnomalyDataModule(inner, source="dataset", ratio=args.ratio, num_classes=args.k, seed=seed)
    root = args.texture_root
    if not (root / args.texture).is_dir():
        make_mvtec_like_dataset(
            root, args.texture, n_train=120, n_test_good=60, n_test_defect=30, defects=TEXTURE_DEFECTS,
            image_size=args.image_size, seed=0,
        )  # fmt: skip
    inner = MVTecAD(root=root, category=args.texture, **common)
    return CoarseAnomalyDataModule(inner, source="dataset", ratio=args.ratio, classes=[args.seen], seed=seed)


class StepTimer(Callback):
    """Wall seconds of every training step (D step, AE step and logging), for the cost ratio to Recon."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        """Stop the clock."""
        self.times.append(time.perf_counter() - self._start)


class Diagnostics(Callback):
    """Per epoch: scores and D energies on coarse / test-normal / test-anomalous images, losses, gradient norms.

    Records only; nothing here feeds back into training or model selection.
    """

    def __init__(self, datamodule: CoarseAnomalyDataModule, limit: int = 48) -> None:
        self.datamodule, self.limit = datamodule, limit
        self.sets: dict[str, torch.Tensor] = {}
        self.records: list[dict[str, Any]] = []

    def _images(self, dataset: Any, label: int | None) -> torch.Tensor:  # noqa: ANN401 - any map-style dataset
        picked: list[torch.Tensor] = []
        for index in range(len(dataset)):  # each item read once, and no more than `limit` kept
            item = dataset[index]
            if label is None or int(item.gt_label) == label:
                picked.append(item.image)
                if len(picked) == self.limit:
                    break
        return torch.stack(picked)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the image sets once, pre-processed as the model sees them."""
        dm = self.datamodule
        transform = pl_module.pre_processor.transform  # type: ignore[union-attr]
        torch.manual_seed(0)
        self.sets = {
            "coarse": transform(self._images(dm.coarse_data, None)),
            "test_normal": transform(self._images(dm.test_data, 0)),
            "test_anomalous": transform(self._images(dm.test_data, 1)),
            "train_normal": transform(self._images(dm.train_data, None)[:16]),
        }

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record this epoch's statistics."""
        model = pl_module.model  # type: ignore[attr-defined]
        loss = pl_module.loss  # type: ignore[attr-defined]
        record: dict[str, Any] = {"epoch": trainer.current_epoch}
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")})
        was_training = model.training
        model.eval()
        sets = {name: images.to(pl_module.device) for name, images in self.sets.items()}
        with torch.no_grad():
            for name, images in sets.items():
                features = model.extract(images)
                recons = model.autoencoder(features)
                record[f"score_{name}"] = float(model.score(features, recons, images.shape[-2:]).pred_score.mean())
                if model.discriminator_modules:
                    record[f"energy_{name}"] = float(sum(e.mean() for e in model.energies(features)))
                    record[f"energy_rec_{name}"] = float(sum(e.mean() for e in model.energies(recons)))
        # gradient norm at the auto-encoder of each term, on 16 normal training images + the coarse anomalies
        images = torch.cat([sets["train_normal"], sets["coarse"][:16]])
        normal = torch.arange(len(images), device=images.device) < len(sets["train_normal"])
        features = model.extract(images)
        recons = model.autoencoder(features)
        params = [p for p in model.autoencoder.parameters() if p.requires_grad]
        terms = {"rec": reconstruction_loss([f[normal] for f in features], [r[normal] for r in recons])}
        if model.discriminator_modules:
            terms["adv"] = loss.adv_weight * adversarial_loss(model.energies(recons))
        if loss.push_weight > 0:
            scores = model.score(features, recons, images.shape[-2:]).pred_score
            terms["push"] = loss.push(scores[~normal], scores[normal])
        for name, term in terms.items():
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            record[f"grad_{name}"] = float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))
        model.train(was_training)
        self.records.append(record)


def available_components(model: Ckaad) -> list[ScoreComponent]:
    """The score components this trained model can compute, whether or not its score uses them."""
    net = model.model
    return [
        ScoreComponent.DISTANCE,
        *([ScoreComponent.ENERGY] if net.patch_discriminator is not None else []),
        *([ScoreComponent.NEAREST] if net.nearest is not None else []),
        *([ScoreComponent.COARSE] if net.coarse is not None else []),
    ]


def component_scores(model: Ckaad, dataloader: Any, names: list[ScoreComponent]) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN401
    """``(N, C)`` image scores of each named component alone, and the labels."""
    net = model.model.eval()
    scores, labels = [], []
    for batch in dataloader:
        scores.append(net.component_scores(model.pre_processor.transform(batch.image), names))  # type: ignore[union-attr]
        labels.append(batch.gt_label.flatten())
    return torch.cat(scores).numpy(), torch.cat(labels).int().numpy()


def components(model: Ckaad, datamodule: CoarseAnomalyDataModule, save: Path | None = None) -> dict[str, float]:
    """Test AUROC of each score component alone and of their sum after standardising each on *validation normals*.

    Recorded to show which component carries information the others lack; nothing here selects anything. With
    ``save``, the per-image scores and labels of both splits go to that ``.npz`` for offline analysis.
    """
    names = available_components(model)
    val, val_y = component_scores(model, datamodule.val_dataloader(), names)
    test, test_y = component_scores(model, datamodule.test_dataloader(), names)
    if save is not None:
        np.savez(save, names=np.array(names), val=val, val_y=val_y, test=test, test_y=test_y)
    normal = val[val_y == 0]
    z = (test - normal.mean(0)) / normal.std(0)
    out = {f"AUROCc_{name}": roc_auc_score(test_y, test[:, i]) for i, name in enumerate(names)}
    return out | {"AUROCc_zsum": roc_auc_score(test_y, z.sum(1)), "AUROCc_zmax": roc_auc_score(test_y, z.max(1))}


def evaluate(
    engine: Engine, model: AnomalibModule, datamodule: CoarseAnomalyDataModule, seen: str | None
) -> dict[str, float]:
    """Image AUROC / F1 (threshold from validation), per-kind image AUROC, pixel AUROC and AUPRO (if masks)."""
    batches = engine.predict(model, dataloaders=datamodule.test_dataloader(), return_predictions=True) or []
    scores = torch.cat([b.pred_score.flatten() for b in batches]).cpu().numpy()
    labels = torch.cat([b.gt_label.flatten() for b in batches]).cpu().numpy().astype(int)
    predicted = torch.cat([b.pred_label.flatten() for b in batches]).cpu().numpy().astype(int)
    kinds = [defect_kind(p) for b in batches for p in b.image_path]
    out = {"image_AUROC": roc_auc_score(labels, scores), "image_F1": f1_score(labels, predicted)}
    if seen is not None:
        out |= per_kind_auroc(scores, labels, kinds, {seen})
    masks = [b.gt_mask for b in batches if b.gt_mask is not None]
    if seen is not None and masks:
        maps = torch.cat([b.anomaly_map.reshape(len(b.anomaly_map), *b.anomaly_map.shape[-2:]) for b in batches]).cpu()
        gt = torch.cat([m.reshape(len(m), *m.shape[-2:]) for m in masks]).int().cpu()
        out["pixel_AUROC"] = roc_auc_score(gt.flatten().numpy(), maps.flatten().numpy())
        out["AUPRO"] = aupro(maps, gt)
    return out


def run(args: argparse.Namespace, data: str, seed: int, variant: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train and evaluate one variant on one dataset and seed; return its row and its per-epoch diagnostics."""
    seed_everything(seed, workers=True)
    datamodule = make_datamodule(args, data, seed)
    size = (args.image_size, args.image_size)
    model: AnomalibModule
    if variant in PEERS:  # same pre-processing, backbone and files; the two deepest stages given (mid-level)
        pre_processor = Ckaad.configure_pre_processor(size, args.backbone)
        model = PEERS[variant](
            backbone=args.backbone, layers=args.layers[-2:], pre_processor=pre_processor, visualizer=False
        )
    else:
        model = Ckaad(
            backbone=args.backbone,
            layers=tuple(args.layers),
            lr=args.lr,
            image_size=size,
            visualizer=False,
            **VARIANTS[variant],
        )
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    diagnostics = Diagnostics(datamodule) if args.diagnose and seed == args.seeds[0] else None
    if diagnostics is not None:
        callbacks.append(diagnostics)
    with tempfile.TemporaryDirectory() as root:
        engine = Engine(
            default_root_dir=root,
            max_epochs=args.epochs,
            accelerator=args.accelerator,
            logger=False,
            enable_progress_bar=False,
            callbacks=callbacks,
        )
        start = time.perf_counter()
        if not isinstance(model, Patchcore):  # Ckaad and the weak peer: the same coarse batches
            engine.fit(model, datamodule=datamodule)
        else:  # the same normal training images, without the coarse anomalies (it would memorise them as normal)
            datamodule.setup("fit")
            normals = DataLoader(
                datamodule.train_data, batch_size=args.batch_size, collate_fn=datamodule.train_data.collate_fn
            )
            engine.fit(model, train_dataloaders=normals, val_dataloaders=datamodule.val_dataloader())
        fit_s = time.perf_counter() - start
        metrics = evaluate(engine, model, datamodule, args.seen if data == "texture" else None)
        if isinstance(model, Ckaad) and len(available_components(model)) > 1:
            save = args.out / f"scores_{data}_{variant}_{seed}.npz" if args.save_scores else None
            metrics |= components(model, datamodule, save)
        if isinstance(model, Ckaad):  # the weights "auto" chose on validation
            net = model.model
            metrics |= {f"{c}_w": float(net.score_weights[net.components.index(c)]) for c in net.auto_components}
    row = {
        "data": data,
        "variant": variant,
        "seed": seed,
        "n_coarse": len(datamodule.coarse_samples),
        "fit_s": round(fit_s, 1),
        "s_per_step": round(statistics.median(timer.times), 4) if timer.times else "",
        **{k: round(float(v), 4) for k, v in metrics.items()},
    }
    records = [
        {"data": data, "variant": variant, "seed": seed, **r} for r in (diagnostics.records if diagnostics else [])
    ]
    return row, records


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean ± std over seeds per dataset and variant, with the step-time ratio to Recon."""
    bookkeeping = {"data", "variant", "seed", "n_coarse", "fit_s", "s_per_step"}
    metrics = sorted({k for r in rows for k in r} - bookkeeping)  # every metric any run recorded
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["data"], row["variant"])].append(row)
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        present = [m for m in metrics if any(m in r for r in rows if r["data"] == data)]
        lines += [
            f"\n**{data}**\n",
            "| variant | " + " | ".join(present) + " | step ×Recon |",
            "|---" * (len(present) + 2) + "|",
        ]
        recon_step = [r["s_per_step"] for r in groups.get((data, "recon"), [])]
        for (d, variant), runs in groups.items():
            if d != data:
                continue
            cells = []
            for metric in present:
                values = [float(r[metric]) for r in runs if metric in r]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}" if values else "–")
            ratio = (
                statistics.mean(r["s_per_step"] for r in runs) / statistics.mean(recon_step)
                if recon_step
                else float("nan")
            )
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


DIAGNOSTIC_COLUMNS = {
    "D loss": lambda r: r.get("train_d_loss"),
    "E normal (test)": lambda r: r.get("energy_test_normal"),
    "E anomalous (test)": lambda r: r.get("energy_test_anomalous"),
    "E coarse": lambda r: r.get("energy_coarse"),
    "E recon of normal": lambda r: r.get("energy_rec_test_normal"),
    "E recon of anomalous": lambda r: r.get("energy_rec_test_anomalous"),
    "grad adv / grad rec": lambda r: r["grad_adv"] / r["grad_rec"] if "grad_adv" in r else None,
    "score ratio anomalous / normal (test)": lambda r: r["score_test_anomalous"] / r["score_test_normal"],
    "score ratio coarse / normal": lambda r: r["score_coarse"] / r["score_test_normal"],
}


def summarise_diagnostics(records: list[dict[str, Any]]) -> str:
    """Markdown table of the last epoch's diagnostics per dataset and variant (first seed)."""
    lines = [
        "",
        "| data | variant | epoch | " + " | ".join(DIAGNOSTIC_COLUMNS) + " |",
        "|---" * (len(DIAGNOSTIC_COLUMNS) + 3) + "|",
    ]
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        last[(record["data"], record["variant"])] = record
    for (data, variant), record in last.items():
        values = [column(record) for column in DIAGNOSTIC_COLUMNS.values()]
        cells = ["–" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {data} | {variant} | {record['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], out: Path) -> None:
    """One figure per dataset: score ratio anomalous/normal, D energies, losses and gradient norms per epoch."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    for data in dict.fromkeys(r["data"] for r in records):
        fig, axes = plt.subplots(1, 4, figsize=(20, 4))
        for variant in dict.fromkeys(r["variant"] for r in records if r["data"] == data):
            runs = [
                r for r in records if r["data"] == data and r["variant"] == variant and r["seed"] == records[0]["seed"]
            ]
            epochs = [r["epoch"] for r in runs]
            axes[0].plot(
                epochs,
                [r["score_test_anomalous"] / r["score_test_normal"] for r in runs],
                label=f"{variant} test anom.",
            )
            axes[0].plot(
                epochs, [r["score_coarse"] / r["score_test_normal"] for r in runs], "--", label=f"{variant} coarse"
            )
            if "energy_test_normal" in runs[0]:
                for key, style in (
                    ("energy_test_normal", "-"),
                    ("energy_test_anomalous", "--"),
                    ("energy_rec_test_anomalous", ":"),
                ):
                    axes[1].plot(
                        epochs, [r[key] for r in runs], style, label=f"{variant} {key.removeprefix('energy_')}"
                    )
            for key, style in (("train_rec_loss", "-"), ("train_d_loss", "--"), ("train_push_loss", ":")):
                if key in runs[0]:
                    axes[2].plot(epochs, [r[key] for r in runs], style, label=f"{variant} {key}")
            for key, style in (("grad_rec", "-"), ("grad_adv", "--"), ("grad_push", ":")):
                if key in runs[0]:
                    axes[3].plot(epochs, [r[key] for r in runs], style, label=f"{variant} {key}")
        titles = (
            "score ratio to test normals",
            "D energy (input features / recon)",
            "losses",
            "gradient norm at the AE",
        )
        for ax, title in zip(axes, titles, strict=True):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=6)
        axes[3].set_yscale("log")
        fig.tight_layout()
        fig.savefig(out / f"diagnostics_{data}.png", dpi=90)
        plt.close(fig)


def main() -> None:
    """Parse arguments, run every dataset × seed × variant, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["elpv-mono"], choices=["elpv-mono", "elpv-poly", "texture"])
    parser.add_argument(
        "--variants", nargs="+", default=["recon", "paper", "push"], choices=[*sorted(VARIANTS), *PEERS],
        help="Ckaad variants (VARIANTS) and peers (PEERS)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.2", "blocks.4"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ratio", type=float, default=0.05, help="r_l")
    parser.add_argument("--k", type=int, default=1, help="anomaly classes (ELPV has one)")
    parser.add_argument("--elpv-root", type=Path, default=None, help="ELPV copy (default: the installed package)")
    parser.add_argument("--texture", default="brick", help="texture category of the generated set")
    parser.add_argument("--seen", default="stain", choices=TEXTURE_DEFECTS, help="the labelled defect kind")
    parser.add_argument("--texture-root", type=Path, default=Path("datasets/coarse_texture"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--save-scores", action="store_true", help="per-image component scores to --out/*.npz")
    parser.add_argument("--diagnose", action="store_true", help="per-epoch diagnostics of the first seed, plotted")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coarse"))
    parser.add_argument("--report", action="store_true", help="only rewrite table.md and plots from --out's files")
    args = parser.parse_args()
    if args.report:
        report(args.out)
        return
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.backbone == "tf_efficientnet_lite0":
        install_lite0_weights()
    args.out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    header = (
        f"{args.backbone} {args.layers}, {args.image_size}px, {args.epochs} epochs, batch {args.batch_size}, "
        f"lr {args.lr}, r_l {args.ratio}, seeds {args.seeds}"
    )
    for data in args.data:
        for seed in args.seeds:
            for variant in args.variants:
                row, diag = run(args, data, seed, variant)
                rows.append(row)
                records += diag
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                write_outputs(args.out, header, rows, records)  # after every run: a stopped grid keeps its results
    print(f"\n{header}\n{summarise(rows)}")


def report(out: Path) -> None:
    """Rewrite ``table.md`` and the plots of a finished (or stopped) grid from its ``runs.csv`` and diagnostics."""
    with (out / "runs.csv").open() as handle:
        rows: list[dict[str, Any]] = [
            {k: (v if k in {"data", "variant"} else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]
    diagnostics = out / "diagnostics.jsonl"
    records = [json.loads(line) for line in diagnostics.read_text().splitlines()] if diagnostics.is_file() else []
    header = (out / "table.md").read_text().splitlines()[0] if (out / "table.md").is_file() else str(out)
    write_outputs(out, header, rows, records)
    print((out / "table.md").read_text())


def write_outputs(out: Path, header: str, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """``runs.csv``, ``table.md`` and, with diagnostics, ``diagnostics.jsonl`` and the plots."""
    with (out / "runs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    diagnostics = f"\nDiagnostics, last epoch, first seed:\n{summarise_diagnostics(records)}" if records else ""
    (out / "table.md").write_text(f"{header}\n{summarise(rows)}{diagnostics}")
    if records:
        with (out / "diagnostics.jsonl").open("w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
        plot(records, out)


if __name__ == "__main__":
    main()
