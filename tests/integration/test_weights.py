"""The offline lite0 weights are genuine ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata

from ckaad_anomalib.weights import install_lite0_weights, lite0_cache_path, main

DOMESTIC_CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger, Persian, Siamese, Egyptian cat


def _top1(model: torch.nn.Module) -> int:
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**config)(Image.fromarray(skdata.chelsea())).unsqueeze(0)
    with torch.no_grad():
        return int(model(x).argmax())


def test_pretrained_lite0_classifies_the_cat(lite0_weights: Path) -> None:
    assert lite0_weights.is_file()
    assert _top1(timm.create_model("tf_efficientnet_lite0", pretrained=True)) in DOMESTIC_CATS
    torch.manual_seed(0)
    assert _top1(timm.create_model("tf_efficientnet_lite0", pretrained=False)) not in DOMESTIC_CATS


def test_install_into_a_given_cache_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = install_lite0_weights(tmp_path)
    assert first.parent.parent.parent / "refs" / "main" == lite0_cache_path(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert install_lite0_weights(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    main(["--cache-dir", str(tmp_path), "--force"])
    assert capsys.readouterr().out.strip() == str(first)
