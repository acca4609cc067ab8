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


def require(name: str, value: object, ok: bool, expected: str) -> None:
    """Raise a ``ValueError`` that names the argument, what it must be and what it got, unless ``ok``."""
    if not ok:
        msg = f"{name} must be {expected}, got {value!r}."
        raise ValueError(msg)


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


def top_patches(energy: torch.Tensor, fraction: float | None) -> torch.Tensor:
    """Multiple-instance targets: the ``fraction`` highest values of each image's energy map (all if ``None``).

    Args:
        energy: Patch energies ``(N, 1, H, W)``, or image energies ``(N,)`` (returned as they are).
        fraction: Part of each image's positions kept, in ``(0, 1]``; at least one position is kept.

    Returns:
        ``(N, k)`` kept energies, or ``energy`` itself.
    """
    if fraction is None or energy.dim() < 2:
        return energy
    flat = energy.flatten(1)
    return flat.topk(max(1, round(fraction * flat.shape[1])), dim=1).values


def discriminator_loss(
    normal: Sequence[torch.Tensor],
    anomalous: Sequence[torch.Tensor],
    reconstructed: Sequence[torch.Tensor],
    margin: float = 5.0,
    gamma: float = 0.5,
    mil_fraction: float | None = None,
) -> torch.Tensor:
    """``L_D = E(F(x⁺)) + (1−γ)·[m − E(F(x⁻))]₊ + γ·[m − E(AE(F(x⁺)) ∪ AE(F(x⁻)))]₊``, summed over stages.

    Args:
        normal: Energies of normal images' features.
        anomalous: Energies of labelled anomalous images' features.
        reconstructed: Energies of the reconstructions of all images (normal and anomalous), computed from
            detached reconstructions so that only D learns from this loss.
        margin: Energy margin ``m``.
        gamma: Weight ``γ`` of reconstructions versus real anomalies.
        mil_fraction: ``None`` (paper): every patch of an anomalous image is a high-energy target. A fraction:
            only that part of each anomalous image's patches, those D already gives the highest energy, is
            (:func:`top_patches`); the rest of a defective image is mostly normal surface.

    Returns:
        Scalar loss.
    """
    terms = [
        e_pos.mean()
        + (1 - gamma) * hinge(margin - top_patches(e_neg, mil_fraction)).mean()
        + gamma * hinge(margin - e_rec).mean()
        for e_pos, e_neg, e_rec in zip(normal, anomalous, reconstructed, strict=True)
    ]
    return torch.stack(terms).sum()


def push_loss(anomalous_scores: torch.Tensor, normal_scores: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """``mean [ (1 + m) − s(x⁻) / mean s(x⁺) ]₊``: coarse anomalies must score ``1 + m`` times the normal mean.

    The scores are the model's own image scores (top-k of the anomaly map), so the auto-encoder learns directly
    not to reconstruct the most deviating region of each labelled anomaly. A ratio makes the margin independent of
    the backbone's distance scale; the normal mean is detached (reconstruction loss already pulls it down).

    Args:
        anomalous_scores: Image scores of the coarse anomalies ``(N⁻,)``, with gradients to the auto-encoder.
        normal_scores: Image scores of the normal images of the batch ``(N⁺,)``.
        margin: Relative margin ``m`` (1: twice the normal mean).

    Returns:
        Scalar loss.
    """
    reference = normal_scores.detach().mean().clamp_min(1e-6)
    return hinge(1 + margin - anomalous_scores / reference).mean()


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
        mil_fraction: Multiple-instance targets of :func:`discriminator_loss` (``None``: paper).
        push_weight: Weight of :func:`push_loss` in the auto-encoder loss (0: paper).
        push_margin: ``m`` of :func:`push_loss`.
    """

    def __init__(
        self,
        adv_weight: float = 0.02,
        gamma: float = 0.5,
        margin: float = 5.0,
        mil_fraction: float | None = None,
        push_weight: float = 0.0,
        push_margin: float = 1.0,
    ) -> None:
        super().__init__()
        require("adv_weight", adv_weight, adv_weight >= 0, ">= 0 (0 is the Recon ablation)")
        require("gamma", gamma, 0 <= gamma <= 1, "in [0, 1]")
        require("margin", margin, margin > 0, "> 0")
        require("mil_fraction", mil_fraction, mil_fraction is None or 0 < mil_fraction <= 1, "in (0, 1] or None")
        require("push_weight", push_weight, push_weight >= 0, ">= 0 (0 turns the push off)")
        require("push_margin", push_margin, push_margin > 0, "> 0")
        self.adv_weight = adv_weight
        self.gamma = gamma
        self.margin = margin
        self.mil_fraction = mil_fraction
        self.push_weight = push_weight
        self.push_margin = push_margin

    def discriminator(
        self,
        normal: Sequence[torch.Tensor],
        anomalous: Sequence[torch.Tensor],
        reconstructed: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """D step loss; see :func:`discriminator_loss`."""
        return discriminator_loss(
            normal, anomalous, reconstructed, margin=self.margin, gamma=self.gamma, mil_fraction=self.mil_fraction
        )

    def push(self, anomalous_scores: torch.Tensor, normal_scores: torch.Tensor) -> torch.Tensor:
        """Weighted :func:`push_loss`."""
        return self.push_weight * push_loss(anomalous_scores, normal_scores, self.push_margin)

    def autoencoder(
        self,
        rec_loss: torch.Tensor,
        reconstructed: Sequence[torch.Tensor] | None,
        push: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """AE step loss ``L_rec + λ_adv · E(AE(·)) [+ λ_push · L_push]``; ``None`` terms (no anomalies) are left out."""
        loss = rec_loss
        if reconstructed is not None:
            loss = loss + self.adv_weight * adversarial_loss(reconstructed)
        if push is not None:
            loss = loss + push
        return loss
