"""SuperSimpleNet's loss with a per-image switch for images whose mask is unknown.

Adapted from anomalib's ``SSNLoss`` (Apache-2.0, ``anomalib/models/image/supersimplenet/loss.py``), whose
focal and truncated-L1 terms it reuses unchanged.
"""

from __future__ import annotations

import torch
from anomalib.models.image.supersimplenet.loss import SSNLoss


class WeakSSNLoss(SSNLoss):
    """``L = [L_focal(map) + L_trunc-l1(map)]`` over images with a known mask ``+ L_focal(score)`` over all images.

    An image labelled anomalous without a mask tells where nothing is, so it trains only the classification head;
    the segmentation terms see normal images (and their synthetic anomalies) and fully annotated anomalies.
    """

    def forward(  # type: ignore[override]  # one more argument than SSNLoss
        self,
        pred_map: torch.Tensor,
        pred_score: torch.Tensor,
        target_mask: torch.Tensor,
        target_label: torch.Tensor,
        mask_known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one training batch.

        Args:
            pred_map: Predicted map logits ``(N, 1, h, w)``.
            pred_score: Predicted score logits ``(N,)``.
            target_mask: Target masks ``(N, 1, h, w)`` (zeros where unknown).
            target_label: Target labels ``(N,)``.
            mask_known: ``(N,)`` bool, whether ``target_mask`` is an annotation; ``None``: all are.

        Returns:
            Scalar loss.
        """
        score_focal = self.focal_loss(pred_score, target_label)
        if mask_known is not None:
            if not mask_known.any():
                return score_focal
            pred_map, target_mask = pred_map[mask_known], target_mask[mask_known]
        return self.focal_loss(pred_map, target_mask) + self.trunc_l1_loss(pred_map, target_mask) + score_focal
