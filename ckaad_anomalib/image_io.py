"""One image reader for training, evaluation and edge inference: real bit depth, named errors.

anomalib reads images with ``Image.open(path).convert("RGB")``. For 16-bit images (Pillow mode ``I;16``) that clips
every value above 255, so a 16-bit texture is read as an all-white image, without a warning. A truncated file fails
with ``OSError: image file is truncated``, which does not name the file.

:func:`read_image` has anomalib's signature and results for 8-bit images, scales 16-bit and float images to [0, 1]
(:func:`ckaad_anomalib.deploy.openvino_infer.image_to_rgb`, the same code ``ckaad-infer`` uses) and names the file
it cannot read. anomalib offers no hook for its reader, so :func:`install` replaces ``read_image`` in the module that
defines it: the start-up hook (:mod:`ckaad_anomalib._hook`) does this the moment that module is imported, before any
other anomalib module copies the name. Every anomalib dataset (MVTecAD, Folder, Visa, BMAD, ...), the predict
dataset and the inferencers then read through it, in every process, DataLoader workers included.

Find every unreadable image of a folder::

    python -m ckaad_anomalib.image_io FOLDER
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.tv_tensors import Image as TvImage

from ckaad_anomalib.deploy.openvino_infer import load_image

READER_MODULE = "anomalib.data.utils.image"


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (truncated, corrupt, unknown format, unscalable values)."""


def read_image(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """Drop-in for ``anomalib.data.utils.read_image``: RGB in [0, 1], scaled by the image's real bit depth.

    Args:
        path: Image file.
        as_tensor: Return a float32 ``(3, H, W)`` tensor (as anomalib) instead of an ``(H, W, 3)`` array.

    Returns:
        The image.

    Raises:
        UnreadableImageError: If the file cannot be read; the message names it and says how to find others.
    """
    try:
        rgb = load_image(path)
    except ValueError as exc:
        msg = f"{exc} To list every unreadable image of a folder: python -m ckaad_anomalib.image_io FOLDER"
        raise UnreadableImageError(msg) from exc.__cause__
    if as_tensor:
        return TvImage(torch.from_numpy(rgb))
    return rgb.transpose(1, 2, 0)


def install() -> None:
    """Make anomalib read images with :func:`read_image` (idempotent).

    Replaces the name in anomalib's defining module and in every already-imported module that copied it.
    """
    original = getattr(sys.modules.get(READER_MODULE), "read_image", None)
    if original is None or original is read_image:
        return
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("anomalib") and getattr(module, "read_image", None) is original:
            module.read_image = read_image  # type: ignore[attr-defined]


def unreadable_images(folder: str | Path, suffixes: Sequence[str] | None = None) -> list[tuple[Path, str]]:
    """Every image file below ``folder`` that :func:`read_image` cannot read, with the reason.

    Args:
        folder: Folder searched recursively.
        suffixes: Image suffixes to check (default: torchvision's, which anomalib uses).

    Returns:
        ``(path, reason)`` pairs, sorted by path.
    """
    if suffixes is None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        suffixes = IMG_EXTENSIONS
    bad = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            try:
                load_image(path)
            except ValueError as exc:
                bad.append((path, str(exc)))
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckaad_anomalib.image_io FOLDER...``: print unreadable images; exit 1 if there are any."""
    folders = list(sys.argv[1:] if argv is None else argv)
    if not folders:
        print("usage: python -m ckaad_anomalib.image_io FOLDER [FOLDER ...]", file=sys.stderr)  # noqa: T201
        return 2
    bad = [item for folder in folders for item in unreadable_images(folder)]
    for _, reason in bad:
        print(reason)  # noqa: T201
    print(f"{len(bad)} unreadable image(s)", file=sys.stderr)  # noqa: T201
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
