"""Backbone-agnostic feature auto-encoder of CKAAD (RD4AD-style one-class bottleneck + reverse decoder).

The layout is derived from the frozen extractor's ``feature_info`` (channels and strides per stage), never from
hard-coded widths:

* every stage ``i`` gets a *canonical width* ``w_i = w_deep * r_i / r_deep`` (``w_deep`` = deepest stage's
  channels, ``r`` = stride). For ResNets these are the stage widths themselves; for backbones whose widths do not
  double per stage (EfficientNet, MobileNet, ...) a 1×1 convolution projects the stage to its canonical width on the
  way in and back to the real width on the way out — one code path for all backbones;
* encoder: each shallower stage is brought to the deepest resolution by stride-2 3×3 convolutions that double the
  width, the maps are concatenated, and residual blocks (the first with stride 2) produce a latent one stage deeper;
* decoder: one residual stage per extracted stage, deepest first, each first upsampling with a transposed
  convolution (2×2 for consecutive stages), output in the extractor's shapes.

Residual blocks are ResNet basic blocks for narrow backbones and bottlenecks for wide ones (deepest width ≥ 1024),
with the paper's block counts (2 per stage for basic; 3/4/6 for bottleneck). ``width`` scales every canonical width
and ``blocks`` sets one block count for every stage: a slimmer decoder for edge latency (paper: 1 and per-stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

WIDE_THRESHOLD = 1024  # deepest-stage width from which bottleneck blocks are used (WRN-50 layer3)
BASIC_BLOCKS = 2
BOTTLENECK_BLOCKS = (3, 4, 6, 3)


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _resample(in_ch: int, out_ch: int, kernel: int, factor: int, up: bool) -> nn.Module:
    """Convolution that changes resolution by ``factor`` (down: strided conv; up: transposed conv)."""
    if up:
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=factor, stride=factor, bias=False)
    if factor == 1:
        return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=kernel // 2, bias=False)
    return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=factor, padding=kernel // 2, bias=False)


class ResidualBlock(nn.Module):
    """ResNet basic or bottleneck block with InstanceNorm, optionally changing resolution.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        bottleneck: Use a 1×1 → 3×3 → 1×1 bottleneck (inner width ``out_channels // 2``, as in wide ResNets)
            instead of two 3×3 convolutions.
        factor: Resolution change factor (1: none).
        up: Upsample by ``factor`` with a transposed convolution instead of downsampling with a strided one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck: bool,
        factor: int = 1,
        up: bool = False,
    ) -> None:
        super().__init__()
        if bottleneck:
            mid = out_channels // 2
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), _norm(mid), nn.ReLU(inplace=True),
                _resample(mid, mid, 3, factor, up), _norm(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, out_channels, kernel_size=1, bias=False), _norm(out_channels),
            ]  # fmt: skip
        else:
            layers = [
                _resample(in_channels, out_channels, 3, factor, up), _norm(out_channels), nn.ReLU(inplace=True),
                _conv3x3(out_channels, out_channels), _norm(out_channels),
            ]  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or factor != 1:
            self.shortcut = nn.Sequential(_resample(in_channels, out_channels, 1, factor, up), _norm(out_channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return self.act(self.body(x) + self.shortcut(x))


def _stage(in_ch: int, out_ch: int, blocks: int, bottleneck: bool, factor: int, up: bool) -> nn.Sequential:
    first = ResidualBlock(in_ch, out_ch, bottleneck, factor=factor, up=up)
    return nn.Sequential(first, *(ResidualBlock(out_ch, out_ch, bottleneck) for _ in range(blocks - 1)))


def _log2_ratio(high: int, low: int) -> int:
    ratio = high // low
    if high % low or ratio & (ratio - 1):
        msg = f"feature strides must differ by powers of two between stages, got {low} and {high}."
        raise ValueError(msg)
    return int(math.log2(ratio))


def _projection(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)


class FeatureAutoEncoder(nn.Module):
    """Reconstructs multi-stage CNN features through a one-stage-deeper latent.

    Args:
        channels: Channels of each extracted stage, shallow to deep (``feature_info.channels()``).
        strides: Stride of each stage w.r.t. the input, shallow to deep (``feature_info.reduction()``).
        width: Multiplier of the canonical widths (1: the paper's; 0.5 halves every convolution's width).
        blocks: Residual blocks per stage for all stages (``None``: the paper's counts).

    Example:
        >>> ae = FeatureAutoEncoder(channels=[128, 256], strides=[8, 16])
        >>> feats = [torch.randn(2, 128, 32, 32), torch.randn(2, 256, 16, 16)]
        >>> [tuple(r.shape) for r in ae(feats)]
        [(2, 128, 32, 32), (2, 256, 16, 16)]
    """

    def __init__(
        self, channels: Sequence[int], strides: Sequence[int], width: float = 1.0, blocks: int | None = None
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            msg = f"need one stride per stage, got channels={list(channels)} strides={list(strides)}."
            raise ValueError(msg)
        if not 0 < width <= 4 or (blocks is not None and blocks < 1):
            msg = f"auto-encoder width must be in (0, 4] and blocks >= 1 (or None), got {width} and {blocks}."
            raise ValueError(msg)
        deep_ch, deep_stride = channels[-1], strides[-1]
        widths = [max(2, round(width * deep_ch * s / deep_stride)) for s in strides]
        self.bottleneck = deep_ch >= WIDE_THRESHOLD
        # blocks per decoder stage, deepest first (the latent uses the first count too)
        counts = [
            blocks or (BOTTLENECK_BLOCKS[j % len(BOTTLENECK_BLOCKS)] if self.bottleneck else BASIC_BLOCKS)
            for j in range(len(channels))
        ]

        self.project_in = nn.ModuleList(_projection(c, w) for c, w in zip(channels, widths, strict=True))
        self.to_deepest = nn.ModuleList()
        for stage_width, stride in zip(widths, strides, strict=True):
            layers: list[nn.Module] = []
            for step in range(_log2_ratio(deep_stride, stride)):
                w = stage_width * 2**step
                layers += [_conv3x3(w, 2 * w, stride=2), _norm(2 * w), nn.ReLU(inplace=True)]
            self.to_deepest.append(nn.Sequential(*layers))
        latent = 2 * widths[-1]
        self.latent = _stage(len(channels) * widths[-1], latent, counts[0], self.bottleneck, factor=2, up=False)

        # decoder stages deepest first; stage j rebuilds extracted stage i = L-1-j
        self.decoder = nn.ModuleList()
        in_width, in_stride = latent, 2 * deep_stride
        for j, i in enumerate(reversed(range(len(channels)))):
            factor = 2 ** _log2_ratio(in_stride, strides[i])
            self.decoder.append(_stage(in_width, widths[i], counts[j], self.bottleneck, factor=factor, up=True))
            in_width, in_stride = widths[i], strides[i]
        self.project_out = nn.ModuleList(_projection(w, c) for c, w in zip(channels, widths, strict=True))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit/zero InstanceNorm affine parameters."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.InstanceNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse all stages into the latent (one stage deeper than the deepest extracted stage)."""
        fused = [down(proj(f)) for f, proj, down in zip(features, self.project_in, self.to_deepest, strict=True)]
        return self.latent(torch.cat(fused, dim=1))

    def decode(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Reconstruct every stage from the latent, returned shallow to deep like the extractor's output."""
        outputs = []
        x = latent
        for stage in self.decoder:
            x = stage(x)
            outputs.append(x)
        outputs.reverse()
        return [proj(o) for o, proj in zip(outputs, self.project_out, strict=True)]

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstruct ``features`` (list shallow to deep) in the same shapes."""
        return self.decode(self.encode(features))
