"""Energy discriminators: shapes, non-negativity, invariance to feature scale, no biases."""

from __future__ import annotations

import torch
from torch import nn

from ckaad_anomalib.models.ckaad.discriminator import (
    ImageEnergyDiscriminator,
    PatchEnergyDiscriminator,
    PatchEnergyHead,
)


def test_patch_energy_per_position_nonnegative(seeded: None) -> None:
    d = PatchEnergyDiscriminator([8, 16])
    energies = d([torch.randn(3, 8, 8, 8), torch.randn(3, 16, 4, 4)])
    assert [tuple(e.shape) for e in energies] == [(3, 1, 8, 8), (3, 1, 4, 4)]
    assert all((e >= 0).all() for e in energies)


def test_patch_head_layout_matches_method() -> None:
    head = PatchEnergyHead(12)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (12, 12, (1, 1)),
        (12, 12, (1, 1)),
        (12, 1, (1, 1)),
    ]
    assert all(c.bias is None for c in convs)
    slopes = [m.negative_slope for m in head.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1, 0.1]


def test_energy_depends_on_feature_direction_only(seeded: None) -> None:
    head = PatchEnergyHead(8)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(head(x), head(7.5 * x))


def test_image_energy_one_per_image(seeded: None) -> None:
    d = ImageEnergyDiscriminator([8, 16, 32], [4, 8, 16], (64, 64), hidden=16)
    feats = [torch.randn(5, 8, 16, 16), torch.randn(5, 16, 8, 8), torch.randn(5, 32, 4, 4)]
    e = d(feats)
    assert e.shape == (5,)
    assert (e >= 0).all()


def test_image_energy_smallest_allowed_input(seeded: None) -> None:
    # CkaadModel admits inputs down to 4× the deepest stride: a 4×4 deepest map, reduced to 2×2 then pooled
    d = ImageEnergyDiscriminator([8, 16], [8, 16], (64, 64), hidden=8)
    assert d([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]).shape == (2,)
