"""Shapes and layout of the backbone-agnostic feature auto-encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckaad_anomalib.models.ckaad.autoencoder import FeatureAutoEncoder, ResidualBlock


def _features(channels: list[int], strides: list[int], size: int = 64, batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(channels, strides, strict=True)]


@pytest.mark.parametrize(
    ("channels", "strides", "bottleneck"),
    [
        pytest.param([128, 256], [8, 16], False, id="resnet18-layer2-3"),
        pytest.param([256, 512, 1024], [4, 8, 16], True, id="wide_resnet50-layer1-3"),
        pytest.param([24, 40, 112], [4, 8, 16], False, id="efficientnet-lite0-blocks1-2-4"),
        pytest.param([40, 320], [8, 32], False, id="non-consecutive-stages"),
        pytest.param([64], [4], False, id="single-stage"),
    ],
)
def test_reconstructs_extractor_shapes(channels: list[int], strides: list[int], bottleneck: bool) -> None:
    ae = FeatureAutoEncoder(channels, strides)
    feats = _features(channels, strides, size=4 * 2 * strides[-1])  # latent of 4×4
    recon = ae(feats)
    assert [r.shape for r in recon] == [f.shape for f in feats]
    assert ae.bottleneck is bottleneck
    latent = ae.encode(feats)
    assert latent.shape[-1] == feats[-1].shape[-1] // 2  # one stage deeper than the deepest stage
    assert latent.shape[1] == 2 * channels[-1] * strides[-1] // strides[-1]


def test_widths_that_double_need_no_projection() -> None:
    ae = FeatureAutoEncoder([128, 256], [8, 16])
    assert all(isinstance(p, nn.Identity) for p in [*ae.project_in, *ae.project_out])
    lite = FeatureAutoEncoder([24, 40, 112], [4, 8, 16])
    assert [type(p) for p in lite.project_in] == [nn.Conv2d, nn.Conv2d, nn.Identity]


def test_paper_block_counts() -> None:
    resnet18 = FeatureAutoEncoder([128, 256], [8, 16])
    assert [len(stage) for stage in resnet18.decoder] == [2, 2]
    wide = FeatureAutoEncoder([256, 512, 1024], [4, 8, 16])
    assert [len(stage) for stage in wide.decoder] == [3, 4, 6]


def test_norms_are_instance_norms_and_convs_have_no_bias() -> None:
    ae = FeatureAutoEncoder([24, 40, 112], [4, 8, 16])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ae.modules())
    norms = [m for m in ae.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms
    assert all(m.affine for m in norms)
    convs = [m for m in ae.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert all(m.bias is None for m in convs)


@pytest.mark.parametrize("bottleneck", [False, True])
def test_residual_block_resampling(bottleneck: bool) -> None:
    x = torch.randn(1, 16, 8, 8)
    assert ResidualBlock(16, 32, bottleneck, factor=2)(x).shape == (1, 32, 4, 4)
    assert ResidualBlock(16, 8, bottleneck, factor=2, up=True)(x).shape == (1, 8, 16, 16)
    assert ResidualBlock(16, 16, bottleneck)(x).shape == (1, 16, 8, 8)


def test_rejects_strides_that_are_not_power_of_two_apart() -> None:
    with pytest.raises(ValueError, match="powers of two"):
        FeatureAutoEncoder([32, 64], [8, 24])
    with pytest.raises(ValueError, match="one stride per stage"):
        FeatureAutoEncoder([32, 64], [8])


def test_slim_width_and_blocks() -> None:
    channels, strides = [24, 40, 112], [4, 8, 16]
    features = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip(channels, strides, strict=True)]
    paper = FeatureAutoEncoder(channels, strides)
    slim = FeatureAutoEncoder(channels, strides, width=0.5, blocks=1)
    assert [tuple(r.shape) for r in slim(features)] == [tuple(f.shape) for f in features]
    assert [m.out_channels for m in slim.project_in] == [14, 28, 56]  # half the canonical 28 / 56 / 112
    assert all(len(stage) == 1 for stage in (*slim.decoder, slim.latent))
    assert sum(p.numel() for p in slim.parameters()) < 0.2 * sum(p.numel() for p in paper.parameters())
    with pytest.raises(ValueError, match="width must be in"):
        FeatureAutoEncoder(channels, strides, width=0)
    with pytest.raises(ValueError, match="blocks >= 1"):
        FeatureAutoEncoder(channels, strides, blocks=0)
