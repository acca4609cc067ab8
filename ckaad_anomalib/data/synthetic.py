"""Tiny MVTec-AD-layout datasets made from real textures with synthetic, pixel-masked defects.

Used by the tests, the README's first command and anyone who wants to try CKAAD without downloading MVTec AD.
Normal images are random crops (with flips and 90° turns) of a real ``skimage.data`` texture; each defect class
draws a different kind of flaw and writes its ground-truth mask, in the exact layout of anomalib's ``MVTecAD``::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png

Command line::

    ckaad-synth ./datasets/synthetic --category brick
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw
from skimage.transform import resize

TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
}
DEFECTS = ("scratch", "stain", "foreign")


def _crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random half-size crop of ``texture``, flipped/turned, resized to ``size`` (float in [0, 1])."""
    crop = texture.shape[0] // 2
    y, x = rng.integers(0, texture.shape[0] - crop + 1), rng.integers(0, texture.shape[1] - crop + 1)
    patch = texture[y : y + crop, x : x + crop].astype(np.float32) / 255.0
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return resize(patch, (size, size), anti_aliasing=True).astype(np.float32)


def _defect_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one defect of ``kind`` (its area is 0.5–6 % of the image)."""
    mask = np.zeros((size, size), dtype=bool)
    if kind == "scratch":
        length, width = rng.uniform(0.35, 0.6) * size, max(2.0, size / 40)
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        angle = rng.uniform(0, np.pi)
        dy, dx = np.sin(angle), np.cos(angle)
        corners_r = [cy - dy * length / 2 - dx * width, cy - dy * length / 2 + dx * width,
                     cy + dy * length / 2 + dx * width, cy + dy * length / 2 - dx * width]  # fmt: skip
        corners_c = [cx - dx * length / 2 + dy * width, cx - dx * length / 2 - dy * width,
                     cx + dx * length / 2 - dy * width, cx + dx * length / 2 + dy * width]  # fmt: skip
        rr, cc = draw.polygon(corners_r, corners_c, shape=mask.shape)
    else:  # stain / foreign: an ellipse or a rectangle somewhere inside the image
        ry, rx = rng.uniform(0.06, 0.14, size=2) * size
        cy, cx = rng.uniform(0.25, 0.75, size=2) * size
        if kind == "stain":
            rr, cc = draw.ellipse(cy, cx, ry, rx, shape=mask.shape, rotation=rng.uniform(0, np.pi))
        else:
            rr, cc = draw.rectangle((cy - ry, cx - rx), end=(cy + ry, cx + rx), shape=mask.shape)
            rr, cc = rr.astype(int), cc.astype(int)
    mask[rr, cc] = True
    return mask


def add_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    foreign: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` into a float ``image`` in [0, 1].

    Args:
        image: Grey image ``(H, W)``.
        kind: ``"scratch"`` (bright or dark thin line), ``"stain"`` (darkened/brightened blob) or ``"foreign"``
            (a patch of another texture).
        rng: Random generator.
        foreign: Image of a different texture, same shape (needed for ``"foreign"``).

    Returns:
        The defective image and its boolean mask.
    """
    if kind not in DEFECTS:
        msg = f"unknown defect kind {kind!r}; choose from {DEFECTS}."
        raise ValueError(msg)
    mask = _defect_mask(kind, image.shape[0], rng)
    out = image.copy()
    if kind == "scratch":
        out[mask] = 0.95 if image[mask].mean() < 0.5 else 0.05
    elif kind == "stain":
        out[mask] = np.clip(image[mask] * 0.45 + (0.5 if image.mean() < 0.5 else 0.0), 0, 1)
    else:
        if foreign is None:
            msg = "a 'foreign' defect needs the `foreign` texture image."
            raise ValueError(msg)
        out[mask] = foreign[mask]
    return out, mask


def _save(array: np.ndarray, path: Path, rgb: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([pixels] * 3, axis=-1) if rgb else pixels).save(path)


def make_mvtec_like_dataset(
    root: str | Path,
    category: str = "brick",
    n_train: int = 32,
    n_test_good: int = 8,
    n_test_defect: int = 6,
    defects: Sequence[str] = ("scratch", "stain"),
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write an MVTec-AD-layout dataset of one texture category.

    Args:
        root: Dataset root (``MVTecAD(root=...)``).
        category: Texture, one of :data:`TEXTURES`.
        n_train: Normal training images.
        n_test_good: Normal test images.
        n_test_defect: Test images per defect class.
        defects: Defect classes to create (subset of :data:`DEFECTS`).
        image_size: Side of the square images.
        seed: Seed; the same arguments give the same files.

    Returns:
        The category folder ``root/category``.
    """
    if category not in TEXTURES:
        msg = f"unknown category {category!r}; choose from {sorted(TEXTURES)}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    texture = TEXTURES[category]()
    other = TEXTURES[next(name for name in TEXTURES if name != category)]()
    base = Path(root) / category
    for i in range(n_train):
        _save(_crop(texture, image_size, rng), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(_crop(texture, image_size, rng), base / "test" / "good" / f"{i:03d}.png")
    for kind in defects:
        for i in range(n_test_defect):
            image, mask = add_defect(_crop(texture, image_size, rng), kind, rng, foreign=_crop(other, image_size, rng))
            _save(image, base / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float32), base / "ground_truth" / kind / f"{i:03d}_mask.png", rgb=False)
    return base


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``ckaad-synth``."""
    parser = argparse.ArgumentParser(description="Write a tiny MVTec-AD-layout dataset with synthetic defects.")
    parser.add_argument("root", type=Path, help="dataset root (pass it as --data.root)")
    parser.add_argument("--category", default="brick", choices=sorted(TEXTURES))
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-test-good", type=int, default=8)
    parser.add_argument("--n-test-defect", type=int, default=6)
    parser.add_argument("--defects", nargs="+", default=["scratch", "stain"], choices=DEFECTS)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_mvtec_like_dataset(
        args.root,
        category=args.category,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        defects=args.defects,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(root)  # noqa: T201
