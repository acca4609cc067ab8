"""Anomaly map and image score."""

from __future__ import annotations

import pytest
import torch

from ckaad_anomalib.models.ckaad.anomaly_map import AnomalyMapGenerator, image_score


def test_map_is_zero_for_perfect_reconstruction() -> None:
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    amap = AnomalyMapGenerator(sigma=4)(feats, feats, (32, 32))
    assert amap.shape == (2, 1, 32, 32)
    assert amap.abs().max().item() < 1e-5


def test_map_sums_stage_errors_and_blurs() -> None:
    f = torch.ones(1, 4, 40, 40)
    r = f.clone()
    r[..., 20, 20] = -1.0  # one opposite vector: 1 − cos = 2 at one position
    raw = AnomalyMapGenerator(sigma=1e-3)([f, f], [r, r], (40, 40))
    assert raw.max().item() == pytest.approx(4.0, rel=1e-3)  # two stages summed
    blurred = AnomalyMapGenerator(sigma=4)([f], [r], (40, 40))
    assert blurred.max().item() < 2.0  # the Gaussian spreads the peak
    assert blurred.argmax().item() == raw.argmax().item()
    assert tuple(AnomalyMapGenerator(sigma=4).blur.kernel_size) == (33, 33)  # 2·⌊4σ+0.5⌋+1


def test_separable_blur_equals_anomalib_dense_blur() -> None:
    from anomalib.models.components import GaussianBlur2d

    x = torch.rand(2, 1, 64, 64)
    dense = GaussianBlur2d(sigma=4.0, channels=1)
    torch.testing.assert_close(AnomalyMapGenerator(sigma=4).blur(x), dense(x), atol=1e-5, rtol=0)


def test_topk_and_mean_scores() -> None:
    amap = torch.zeros(2, 1, 10, 10)
    amap[0, 0, 0, :5] = 1.0
    assert image_score(amap, "topk", top_k=5).tolist() == pytest.approx([1.0, 0.0])
    assert image_score(amap, "topk", top_k=10).tolist() == pytest.approx([0.5, 0.0])
    assert image_score(amap, "mean").tolist() == pytest.approx([0.05, 0.0])
    # k larger than the map: all values
    assert image_score(amap, "topk", top_k=1000).tolist() == pytest.approx([0.05, 0.0])
    with pytest.raises(ValueError, match="median"):
        image_score(amap, "median")
