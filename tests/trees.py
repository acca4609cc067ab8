"""Generators of tiny dataset folder trees in the layouts of the supported datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 32, grey: bool = True) -> Path:
    """A random image (grayscale by default, like the medical sets)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size) if grey else (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def fill(folder: Path, count: int, suffix: str = ".png", start: int = 0) -> list[Path]:
    """``count`` images named 000.., seeded by their index."""
    return [
        write_image(folder / f"{i:03d}{suffix}", seed=hash((str(folder), i)) % 2**32)
        for i in range(start, start + count)
    ]


def kermany(root: Path, classes: tuple[str, ...], n: int = 6) -> Path:
    """ChestXRay2017 / OCT2017 layout: root/{train,test}/<CLASS>/*.jpeg."""
    for split in ("train", "test"):
        for label in classes:
            fill(root / split / label, n, ".jpeg")
    return root


def isic(root: Path, n_per_class: int = 3) -> Path:
    """ISIC2018 Task 3 layout with one-hot ground-truth CSVs."""
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    for name in ("Training", "Validation"):
        rows = []
        for c_idx, label in enumerate(classes):
            count = n_per_class * (3 if label == "NV" else 1)
            for i in range(count):
                image_id = f"ISIC_{name[0]}{c_idx}{i:03d}"
                write_image(root / f"ISIC2018_Task3_{name}_Input" / f"{image_id}.jpg", seed=c_idx * 100 + i, grey=False)
                rows.append(",".join([image_id, *("1.0" if c == label else "0.0" for c in classes)]))
        csv = root / f"ISIC2018_Task3_{name}_GroundTruth" / f"ISIC2018_Task3_{name}_GroundTruth.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("image," + ",".join(classes) + "\n" + "\n".join(rows) + "\n")
    return root


def br35h(root: Path, n: int = 10) -> Path:
    """Br35H layout: root/{no,yes}/*.jpg."""
    for label in ("no", "yes"):
        fill(root / label, n, ".jpg")
    return root


def elpv(root: Path, per_class: int = 8) -> Path:
    """ELPV layout: labels.csv + images/, all four probabilities, mono and poly."""
    lines = []
    index = 0
    for probability in (0.0, 1 / 3, 2 / 3, 1.0):
        for kind in ("mono", "poly"):
            for _ in range(per_class):
                index += 1
                write_image(root / "images" / f"cell{index:04d}.png", seed=index)
                lines.append(f"images/cell{index:04d}.png  {probability}  {kind}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def bmad(root: Path, category: str = "Brain", n: int = 6) -> Path:
    """BMAD layout (image-level category): train/good, {valid,test}/{good,Ungood}/img."""
    base = root / category
    fill(base / "train" / "good", n)
    for split in ("valid", "test"):
        fill(base / split / "good" / "img", n // 2)
        fill(base / split / "Ungood" / "img", n // 2, start=100)
    return root
