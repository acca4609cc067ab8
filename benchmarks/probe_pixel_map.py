r"""Which nearest-normal anomaly map localises best? A probe for issue 8's pixel-level gap (no training needed).

On the generated texture sets with masks, the frozen ``tf_efficientnet_lite0`` features of the normal training
images fill a memory bank and each test position gets its distance to the nearest bank embedding (PatchCore's patch
score, :class:`~ckaad_anomalib.models.ckaad.anomaly_map.NearestPatchMap`). The probe varies what the map is made of:
which stages the embedding concatenates (the two deepest, as PatchCore and ``knn_weight`` use, or finer ones), how
the per-stage maps combine (one concatenated embedding, or a map per stage, summed or multiplied as STFPM does), the
Gaussian blur σ (anomalib's 4, or less) and how the bank is kept (``--bank-size``, ``--sampling``). Images go through
Ckaad's own reader and pre-processing (``--normalisation imagenet``: anomalib's default mean/std, the peers', instead
of the backbone's own). It prints pixel AUROC and AUPRO per map, σ and texture, and with ``--elpv`` the image AUROC
of each map's image score on ELPV (real data, no masks). ``--scale stage`` first gives each stage the same mean
feature norm on the training images, ``--scale position`` makes every feature vector a unit vector (:func:`rescale`).
Pick a setting on one texture and check it on the others (never tune on the data you report).

    HF_HUB_OFFLINE=1 python benchmarks/probe_pixel_map.py --root datasets/coarse_texture \
        --categories brick grass gravel --out benchmarks/results/<date>/probe.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from anomalib.models import AnomalibModule
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision.transforms.v2 import Transform

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.data import ELPV
from ckaad_anomalib.evaluation import aupro
from ckaad_anomalib.image_io import read_image
from ckaad_anomalib.models.ckaad.anomaly_map import AnomalyMapGenerator, NearestPatchMap, image_score
from ckaad_anomalib.models.ckaad.exact_ops import resize_bilinear
from ckaad_anomalib.models.ckaad.torch_model import build_extractor

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]  # stride 4, 8, 16: the stages Ckaad's configs reconstruct
BACKBONE = "tf_efficientnet_lite0"
# map name: (stage indices, combination); "concat": one embedding of the stages (NearestPatchMap's), "sum"/"prod":
# a nearest map per stage, upsampled to the input size, then added / multiplied (STFPM multiplies its layer maps)
MAPS: dict[str, tuple[tuple[int, ...], str]] = {
    "concat 2+4 (knn)": ((1, 2), "concat"),
    "concat 1+2": ((0, 1), "concat"),
    "concat 1+2+4": ((0, 1, 2), "concat"),
    "sum 2,4": ((1, 2), "sum"),
    "prod 2,4": ((1, 2), "prod"),
    "sum 1,2,4": ((0, 1, 2), "sum"),
    "prod 1,2,4": ((0, 1, 2), "prod"),
}


def pre_processing(size: int, normalisation: str) -> Transform:
    """Ckaad's pre-processing (``"backbone"``: the weights' own mean/std) or anomalib's default (``"imagenet"``)."""
    if normalisation == "backbone":
        return Ckaad.configure_pre_processor((size, size), BACKBONE).transform
    return AnomalibModule.configure_pre_processor((size, size)).transform


def load(folder: Path, transform: Transform) -> torch.Tensor:
    """Images of ``folder`` (sorted) through Ckaad's own reader and ``transform``: ``(N, 3, size, size)``."""
    return torch.stack([transform(read_image(p, as_tensor=True)) for p in sorted(folder.glob("*.png"))])


def load_test(category: Path, transform: Transform, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images and their masks (zeros for good images): ``(N, 3, s, s)``, ``(N, s, s)``."""
    images, masks = [], []
    for kind in sorted(p.name for p in (category / "test").iterdir()):
        batch = load(category / "test" / kind, transform)
        images.append(batch)
        if kind == "good":
            masks.append(torch.zeros(len(batch), size, size))
        else:
            files = sorted((category / "ground_truth" / kind).glob("*.png"))
            binary = [np.asarray(Image.open(f).convert("L").resize((size, size))) > 127 for f in files]
            masks.append(torch.from_numpy(np.stack(binary)).float())
    return torch.cat(images), torch.cat(masks)


def load_elpv(module_type: str, transform: Transform) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """ELPV's normal training images, test images and test labels (the seed-0 split of the benchmark grids)."""
    datamodule = ELPV(module_type=module_type, num_workers=0, seed=0)  # type: ignore[arg-type]
    datamodule.setup()
    normal = [item.image for item in datamodule.train_data if int(item.gt_label) == 0]
    test = list(datamodule.test_data)
    labels = np.array([int(item.gt_label) for item in test])
    return transform(torch.stack(normal)), transform(torch.stack([item.image for item in test])), labels


@torch.no_grad()
def features(extractor: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> list[torch.Tensor]:
    """Per-stage features of ``images``, batched."""
    parts = [list(extractor(images[i : i + batch]).values()) for i in range(0, len(images), batch)]
    return [torch.cat(stage) for stage in zip(*parts, strict=True)]


def rescale(
    train: list[torch.Tensor], test: list[torch.Tensor], how: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scale the features before the embedding (``--scale``): only ``"stage"`` changes them here.

    ``"stage"`` divides each stage by its mean per-position L2 norm over the training features: in a concatenated
    embedding the stage with the larger activations dominates the Euclidean distance, this gives every stage the
    same typical norm. No labels are used. ``"position"`` (unit vectors, so the distance compares directions, as
    STFPM's cosine does) is what ``Ckaad(nearest_normalize=True)`` ships, so :func:`probe_map` leaves it to
    ``NearestPatchMap(normalize=True)`` and the probe measures the shipped code.
    """
    if how != "stage":
        return train, test
    scales = [f.norm(dim=1).mean() for f in train]
    return [f / s for f, s in zip(train, scales, strict=True)], [f / s for f, s in zip(test, scales, strict=True)]


@torch.no_grad()
def probe_map(
    train: list[torch.Tensor],
    test: list[torch.Tensor],
    stages: tuple[int, ...],
    how: str,
    bank_size: int,
    size: int,
    sampling: str = "random",
    normalize: bool = False,
) -> torch.Tensor:
    """``(N, 1, size, size)`` unblurred map of one :data:`MAPS` entry (Ckaad's own nearest-normal search)."""
    groups = [stages] if how == "concat" else [(s,) for s in stages]
    maps = []
    for group in groups:
        # what Ckaad(nearest_layers=..., memory_bank_sampling=..., nearest_normalize=...) builds
        nearest = NearestPatchMap(bank_size, stages=group, sampling=sampling, normalize=normalize)
        nearest.set_memory_bank(nearest.patches(train))
        maps.append(resize_bilinear(nearest(test), (size, size)))
    out = maps[0]
    for m in maps[1:]:
        out = out * m if how == "prod" else out + m
    return out


def blurred_maps(
    train: list[torch.Tensor], test: list[torch.Tensor], args: argparse.Namespace
) -> Iterator[tuple[str, float, torch.Tensor, float]]:
    """``(map name, σ, blurred map, seconds of bank + search)`` for each of ``args.maps`` and ``args.sigmas``."""
    for name in args.maps:
        start = time.perf_counter()
        raw = probe_map(
            train, test, *MAPS[name], args.bank_size, args.size, args.sampling, normalize=args.scale == "position"
        )
        seconds = time.perf_counter() - start
        for sigma in args.sigmas:
            yield name, sigma, AnomalyMapGenerator(sigma).blur(raw) if sigma > 0 else raw, seconds


def main() -> None:
    """Print pixel AUROC / AUPRO of each map, σ and category."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("datasets/coarse_texture"))
    parser.add_argument("--categories", nargs="*", default=["brick", "grass", "gravel"])
    parser.add_argument(
        "--elpv",
        nargs="*",
        choices=["mono", "poly"],
        default=[],
        help="also ELPV (no masks): image AUROC of the map's image score (Ckaad's top-100 mean of the blurred map)",
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bank-size", type=int, default=16384)
    parser.add_argument("--sampling", choices=["random", "coreset"], default="random", help="how the bank is kept")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 2.0, 1.0])
    parser.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    parser.add_argument(
        "--normalisation",
        choices=["backbone", "imagenet"],
        default="backbone",
        help="mean/std: the backbone weights' own (Ckaad's) or ImageNet's (anomalib's default, the peers')",
    )
    parser.add_argument(
        "--scale", choices=["none", "stage", "position"], default="none", help="feature scaling first (rescale())"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    install_lite0_weights()
    extractor = build_extractor(BACKBONE, LAYERS, pre_trained=True).eval()
    lines = [
        f"{BACKBONE} {LAYERS}, {args.size} px, {args.normalisation} mean/std, bank {args.bank_size} ({args.sampling}), "
        f"feature scaling {args.scale}, "
        "pixel AUROC / AUPRO over all test images",
        "",
        "| category | map | σ | pixel AUROC | AUPRO | s (bank + search) |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for category in args.categories:
        transform = pre_processing(args.size, args.normalisation)
        train = features(extractor, load(args.root / category / "train" / "good", transform))
        images, masks = load_test(args.root / category, transform, args.size)
        train, test = rescale(train, features(extractor, images), args.scale)
        for name, sigma, smooth, seconds in blurred_maps(train, test, args):
            auroc = roc_auc_score(masks.flatten().numpy(), smooth.flatten().numpy())
            pro = aupro(smooth[:, 0], masks)
            lines.append(f"| {category} | {name} | {sigma:g} | {auroc:.4f} | {pro:.4f} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    if args.elpv:
        lines += ["", "| ELPV | map | σ | image AUROC | s (bank + search) |", "|---|---|---|---|---|"]
        print("\n".join(lines[-3:]), flush=True)
    for module_type in args.elpv:
        normal, images, labels = load_elpv(module_type, pre_processing(args.size, args.normalisation))
        train, test = rescale(features(extractor, normal), features(extractor, images), args.scale)
        for name, sigma, smooth, seconds in blurred_maps(train, test, args):
            auroc = roc_auc_score(labels, image_score(smooth).numpy())
            lines.append(f"| {module_type} | {name} | {sigma:g} | {auroc:.4f} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
