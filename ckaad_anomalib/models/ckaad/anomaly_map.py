"""Anomaly map and image score of CKAAD (the discriminator is not used at inference).

``map = blur_σ(Σ_ℓ upsample_bilinear(1 − cos_channel(F_ℓ, AE_ℓ)))`` at input resolution; image score = mean of the
``k`` largest map values (``score_mode="topk"``, the paper's default, k = 100) or of the whole map
(``score_mode="mean"``, used for ISIC2018). All shapes are static, so the graph exports with ``torch.export``.

The blur is kornia's *separable* Gaussian (two 1-D passes, 2·33 instead of 33² multiply-adds per pixel at σ = 4)
with anomalib's kernel size and reflect border: the same map as anomalib's dense ``GaussianBlur2d`` (to ~1e-6), but
the dense 33×33 convolution was 47 % of the deployed lite0 pipeline's latency (``benchmarks/profile_inference.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from anomalib.models.components.filters.blur import compute_kernel_size
from kornia.filters import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812


class ScoreMode(StrEnum):
    """How the image score is pooled from the anomaly map."""

    TOPK = "topk"
    MEAN = "mean"


class AnomalyMapGenerator(nn.Module):
    """Turns features and reconstructions into a blurred per-pixel map.

    Args:
        sigma: Standard deviation of the Gaussian blur (kernel size ``2·⌊4σ+0.5⌋+1``).

    Example:
        >>> gen = AnomalyMapGenerator(sigma=4)
        >>> f = [torch.randn(2, 8, 8, 8)]
        >>> gen(f, f, (32, 32)).abs().max() < 1e-5
        tensor(True)
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        size = compute_kernel_size(sigma)  # anomalib's rule: 2·⌊4σ+0.5⌋+1
        self.blur = GaussianBlur2d((size, size), (sigma, sigma), border_type="reflect", separable=True)

    def combine(self, maps: Sequence[torch.Tensor], image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Upsample per-stage ``(N, 1, h, w)`` maps to ``image_size``, sum them and blur: ``(N, 1, H, W)``."""
        upsampled = [F.interpolate(m, size=image_size, mode="bilinear", align_corners=False) for m in maps]
        return self.blur(torch.stack(upsampled).sum(0))

    def forward(
        self,
        features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Return the anomaly map of shape ``(N, 1, H, W)`` with ``(H, W) = image_size``."""
        return self.combine(distance_maps(features, reconstructions), image_size)


def distance_maps(features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-stage ``1 − cos`` along channels, ``(N, 1, h, w)`` each."""
    return [(1 - F.cosine_similarity(f, r, dim=1)).unsqueeze(1) for f, r in zip(features, reconstructions, strict=True)]


def image_score(anomaly_map: torch.Tensor, mode: ScoreMode | str = ScoreMode.TOPK, top_k: int = 100) -> torch.Tensor:
    """Pool an ``(N, 1, H, W)`` map into ``(N,)`` scores.

    Args:
        anomaly_map: Anomaly maps.
        mode: ``"topk"``: mean of the ``top_k`` largest values (all values if the map is smaller);
            ``"mean"``: mean of the whole map.
        top_k: ``k`` for ``"topk"``.

    Returns:
        Image scores.
    """
    flat = anomaly_map.flatten(1)
    if ScoreMode(mode) == ScoreMode.MEAN:
        return flat.mean(1)
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(1)
