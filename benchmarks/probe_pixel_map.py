r"""Which nearest-normal anomaly map localises best? A probe for issue 8's pixel-level gap (no training needed).

On the generated texture sets with masks, the frozen ``tf_efficientnet_lite0`` features of the normal training
images fill a memory bank and each test position gets its distance to the nearest bank embedding (PatchCore's patch
score, :class:`~ckaad_anomalib.models.ckaad.anomaly_map.NearestPatchMap`). The probe varies what the map is made of:
which stages the embedding concatenates (the two deepest, as PatchCore and ``knn_weight`` use, or finer ones), how
the per-stage maps combine (one concatenated embedding, or a map per stage, summed or multiplied as STFPM does) and
the Gaussian blur σ (anomalib's 4, or less). Images go through Ckaad's own reader and pre-processing. It prints
pixel AUROC and AUPRO per map, σ and texture. Pick a setting on one texture and check it on the others (never
tune on the data you report).

    HF_HUB_OFFLINE=1 python benchmarks/probe_pixel_map.py --root datasets/coarse_texture \
        --categories brick grass gravel --out benchmarks/results/<date>/probe.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ckaad_anomalib import Ckaad, install_lite0_weights
from ckaad_anomalib.evaluation import aupro
from ckaad_anomalib.image_io import read_image
from ckaad_anomalib.models.ckaad.anomaly_map import AnomalyMapGenerator, NearestPatchMap
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


def load(folder: Path, size: int) -> torch.Tensor:
    """Images of ``folder`` (sorted) through Ckaad's own reader and pre-processing: ``(N, 3, size, size)``."""
    transform = Ckaad.configure_pre_processor((size, size), BACKBONE).transform
    return torch.stack([transform(read_image(p, as_tensor=True)) for p in sorted(folder.glob("*.png"))])


def load_test(category: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images and their masks (zeros for good images): ``(N, 3, s, s)``, ``(N, s, s)``."""
    images, masks = [], []
    for kind in sorted(p.name for p in (category / "test").iterdir()):
        batch = load(category / "test" / kind, size)
        images.append(batch)
        if kind == "good":
            masks.append(torch.zeros(len(batch), size, size))
        else:
            files = sorted((category / "ground_truth" / kind).glob("*.png"))
            binary = [np.asarray(Image.open(f).convert("L").resize((size, size))) > 127 for f in files]
            masks.append(torch.from_numpy(np.stack(binary)).float())
    return torch.cat(images), torch.cat(masks)


@torch.no_grad()
def features(extractor: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> list[torch.Tensor]:
    """Per-stage features of ``images``, batched."""
    parts = [list(extractor(images[i : i + batch]).values()) for i in range(0, len(images), batch)]
    return [torch.cat(stage) for stage in zip(*parts, strict=True)]


@torch.no_grad()
def probe_map(
    train: list[torch.Tensor], test: list[torch.Tensor], stages: tuple[int, ...], how: str, bank_size: int, size: int
) -> torch.Tensor:
    """``(N, 1, size, size)`` unblurred map of one :data:`MAPS` entry (Ckaad's own nearest-normal search)."""
    groups = [stages] if how == "concat" else [(s,) for s in stages]
    maps = []
    for group in groups:
        nearest = NearestPatchMap(bank_size, stages=group)  # what Ckaad(nearest_layers=...) builds
        nearest.set_memory_bank(nearest.patches(train))
        maps.append(resize_bilinear(nearest(test), (size, size)))
    out = maps[0]
    for m in maps[1:]:
        out = out * m if how == "prod" else out + m
    return out


def main() -> None:
    """Print pixel AUROC / AUPRO of each map, σ and category."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("datasets/coarse_texture"))
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bank-size", type=int, default=16384)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 2.0, 1.0])
    parser.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    install_lite0_weights()
    extractor = build_extractor(BACKBONE, LAYERS, pre_trained=True).eval()
    lines = [
        f"{BACKBONE} {LAYERS}, {args.size} px, bank {args.bank_size} (random subset), "
        "pixel AUROC / AUPRO over all test images",
        "",
        "| category | map | σ | pixel AUROC | AUPRO | s |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for category in args.categories:
        train = features(extractor, load(args.root / category / "train" / "good", args.size))
        images, masks = load_test(args.root / category, args.size)
        test = features(extractor, images)
        for name in args.maps:
            start = time.perf_counter()
            raw = probe_map(train, test, *MAPS[name], args.bank_size, args.size)
            seconds = time.perf_counter() - start
            for sigma in args.sigmas:
                smooth = AnomalyMapGenerator(sigma).blur(raw) if sigma > 0 else raw
                auroc = roc_auc_score(masks.flatten().numpy(), smooth.flatten().numpy())
                pro = aupro(smooth[:, 0], masks)
                line = f"| {category} | {name} | {sigma:g} | {auroc:.4f} | {pro:.4f} | {seconds:.0f} |"
                lines.append(line)
                print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
