"""Energy-based discriminators of CKAAD (training only; never part of the inference graph).

Both give *low* energy to normal features and are trained to give energy ≥ margin to features of coarsely
labelled anomalies and to the auto-encoder's reconstructions. Inputs are L2-normalised along channels first, so
the energy depends on feature direction only — the same quantity the cosine reconstruction loss compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .exact_ops import l2_normalize

NEGATIVE_SLOPE = 0.1


class PatchEnergyHead(nn.Module):
    """Per-position energy of one feature stage: three bias-free 1×1 convs, ``E = |output|``.

    Args:
        channels: Channels ``C`` of the stage.

    Example:
        >>> head = PatchEnergyHead(8)
        >>> head(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1, bias=False),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(channels, channels, kernel_size=1, bias=False),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(channels, 1, kernel_size=1, bias=False),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return energies of shape ``(N, 1, H, W)``."""
        return self.net(l2_normalize(features)).abs()


class PatchEnergyDiscriminator(nn.Module):
    """One :class:`PatchEnergyHead` per stage (the paper's default, patch-level D).

    Args:
        channels: Channels of each stage.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(PatchEnergyHead(c) for c in channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return one ``(N, 1, H, W)`` energy map per stage."""
        return [head(f) for head, f in zip(self.heads, features, strict=True)]


def _down(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    ]


class ImageEnergyDiscriminator(nn.Module):
    """One energy per image from all stages (the paper's first, image-level variant).

    Each stage is brought to the deepest resolution by stride-2 3×3 convolutions (+InstanceNorm+LeakyReLU), the
    maps are concatenated and reduced by further stride-2 convolutions to at most 2×2 (InstanceNorm needs more
    than one position), average-pooled, and a small MLP gives the energy.

    Args:
        channels: Channels of each stage, shallow to deep.
        strides: Stride of each stage w.r.t. the input.
        input_size: Training input size ``(H, W)``; fixes how many reductions reach ≤ 2×2.
        hidden: Width of the convolutions and the MLP.

    Example:
        >>> d = ImageEnergyDiscriminator([8, 16], [8, 16], (64, 64))
        >>> d([torch.randn(3, 8, 8, 8), torch.randn(3, 16, 4, 4)]).shape
        torch.Size([3])
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        input_size: tuple[int, int],
        hidden: int = 128,
    ) -> None:
        super().__init__()
        deep_stride = strides[-1]
        self.to_deepest = nn.ModuleList()
        for ch, stride in zip(channels, strides, strict=True):
            steps = round(math.log2(deep_stride // stride))
            layers: list[nn.Module] = []
            for step in range(steps):
                layers += _down(ch if step == 0 else hidden, hidden)
            self.to_deepest.append(nn.Sequential(*layers) if layers else nn.Conv2d(ch, hidden, 1, bias=False))
        deepest = min(input_size) // deep_stride
        reductions = max(0, math.floor(math.log2(max(deepest, 1))) - 1)
        layers = []
        for step in range(reductions):
            layers += _down(len(channels) * hidden if step == 0 else hidden, hidden)
        if not layers:
            layers = [nn.Conv2d(len(channels) * hidden, hidden, kernel_size=1, bias=False)]
        self.reduce = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden, bias=False),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Linear(hidden, 1, bias=False),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return energies of shape ``(N,)``."""
        fused = torch.cat(
            [down(l2_normalize(f)) for down, f in zip(self.to_deepest, features, strict=True)],
            dim=1,
        )
        return self.mlp(self.reduce(fused)).abs().squeeze(1)
