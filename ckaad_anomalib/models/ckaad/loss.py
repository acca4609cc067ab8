"""Losses of CKAAD.

Notation (method page §4): ``x⁺`` normal training images, ``x⁻`` coarsely labelled anomalous images, ``F`` the
frozen extractor, ``AE`` the auto-encoder, ``E`` the discriminator's energy, ``m`` the margin, ``γ`` the weight of
reconstructions among D's "high energy" targets, ``λ_adv`` the adversarial weight. Every term is a mean over batch
and positions; per-stage terms are **summed**. Energies arrive as a list with one tensor per stage (patch D:
``(N, 1, H, W)``) and/or per image (image D: ``(N,)``) — each list entry is one summand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def reconstruction_loss(features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_ℓ mean_batch(1 − cos(vec(F_ℓ(x)), vec(AE_ℓ(x))))``, each C×H×W map flattened per sample.

    Args:
        features: Extractor features of *normal* images, one ``(N, C, H, W)`` tensor per stage.
        reconstructions: The auto-encoder's outputs for the same images, same shapes.

    Returns:
        Scalar loss.
    """
    terms = [
        (1 - F.cosine_similarity(f.flatten(1), r.flatten(1), dim=1)).mean()
        for f, r in zip(features, reconstructions, strict=True)
    ]
    return torch.stack(terms).sum()


def hinge(x: torch.Tensor) -> torch.Tensor:
    """``[x]₊ = max(0, x)``."""
    return F.relu(x)


def discriminator_loss(
    normal: Sequence[torch.Tensor],
    anomalous: Sequence[torch.Tensor],
    reconstructed: Sequence[torch.Tensor],
    margin: float = 5.0,
    gamma: float = 0.5,
) -> torch.Tensor:
    """``L_D = E(F(x⁺)) + (1−γ)·[m − E(F(x⁻))]₊ + γ·[m − E(AE(F(x⁺)) ∪ AE(F(x⁻)))]₊``, summed over stages.

    Args:
        normal: Energies of normal images' features.
        anomalous: Energies of labelled anomalous images' features.
        reconstructed: Energies of the reconstructions of all images (normal and anomalous), computed from
            detached reconstructions so that only D learns from this loss.
        margin: Energy margin ``m``.
        gamma: Weight ``γ`` of reconstructions versus real anomalies.

    Returns:
        Scalar loss.
    """
    terms = [
        e_pos.mean() + (1 - gamma) * hinge(margin - e_neg).mean() + gamma * hinge(margin - e_rec).mean()
        for e_pos, e_neg, e_rec in zip(normal, anomalous, reconstructed, strict=True)
    ]
    return torch.stack(terms).sum()


def adversarial_loss(reconstructed: Sequence[torch.Tensor]) -> torch.Tensor:
    """``E(AE(F(x⁺)) ∪ AE(F(x⁻)))``, summed over stages: the AE is pushed to make every output look normal.

    Args:
        reconstructed: Energies of the reconstructions of all images, with gradients to the auto-encoder.

    Returns:
        Scalar loss.
    """
    return torch.stack([e.mean() for e in reconstructed]).sum()


class CkaadLoss(nn.Module):
    """Holds the loss hyper-parameters and combines the terms for the two optimisation steps.

    Args:
        adv_weight: ``λ_adv``; 0 gives the unsupervised Recon ablation.
        gamma: ``γ`` of :func:`discriminator_loss`.
        margin: ``m`` of :func:`discriminator_loss`.
    """

    def __init__(self, adv_weight: float = 0.02, gamma: float = 0.5, margin: float = 5.0) -> None:
        super().__init__()
        if adv_weight < 0:
            msg = f"adv_weight must be >= 0, got {adv_weight}."
            raise ValueError(msg)
        if not 0 <= gamma <= 1:
            msg = f"gamma must lie in [0, 1], got {gamma}."
            raise ValueError(msg)
        if margin <= 0:
            msg = f"margin must be > 0, got {margin}."
            raise ValueError(msg)
        self.adv_weight = adv_weight
        self.gamma = gamma
        self.margin = margin

    def discriminator(
        self,
        normal: Sequence[torch.Tensor],
        anomalous: Sequence[torch.Tensor],
        reconstructed: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """D step loss; see :func:`discriminator_loss`."""
        return discriminator_loss(normal, anomalous, reconstructed, margin=self.margin, gamma=self.gamma)

    def autoencoder(self, rec_loss: torch.Tensor, reconstructed: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """AE step loss ``L_rec + λ_adv · E(AE(·))``; ``reconstructed=None`` (no anomalies in batch) gives ``L_rec``."""
        if reconstructed is None:
            return rec_loss
        return rec_loss + self.adv_weight * adversarial_loss(reconstructed)
