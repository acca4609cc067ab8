"""Metrics the side-by-side benchmarks add to anomalib's: image AUROC per defect kind (seen vs unseen) and AUPRO.

Both are rank-based, so they are computed on the models' raw scores and maps (anomalib's post-processor clamps the
normalised ones to [0, 1], which ties the extremes).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def defect_kind(image_path: str | Path) -> str:
    """The defect kind of a test image: its folder name (MVTec layout ``test/<kind>/<file>``)."""
    return Path(image_path).parent.name


def per_kind_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str],
    seen: Collection[str] | None = None,
) -> dict[str, float]:
    """Image AUROC of the normal test images against each anomalous kind alone.

    Args:
        scores: Image scores, higher is more anomalous.
        labels: 1 for anomalous, 0 for normal.
        kinds: Defect kind of each image (see :func:`defect_kind`).
        seen: Kinds the coarse anomalies came from; ``None`` when no anomalies were labelled.

    Returns:
        ``AUROC_seen_<kind>`` / ``AUROC_unseen_<kind>`` (``AUROC_kind_<kind>`` without ``seen``), one per kind;
        empty when the anomalies are of one kind only (the image AUROC says it all) or when there are no normals.
    """
    labels = np.asarray(labels).astype(int)
    kind_array = np.asarray(list(kinds))
    anomalous = sorted(set(kind_array[labels == 1]))
    if len(anomalous) < 2 or not (labels == 0).any():
        return {}
    out = {}
    for kind in anomalous:
        keep = (labels == 0) | (kind_array == kind)
        prefix = "kind" if seen is None else ("seen" if kind in seen else "unseen")
        out[f"AUROC_{prefix}_{kind}"] = float(roc_auc_score(labels[keep], np.asarray(scores)[keep]))
    return out


def aupro(anomaly_maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit`` (anomalib's AUPRO, normalised to [0, 1]).

    Args:
        anomaly_maps: ``(N, H, W)`` maps.
        masks: ``(N, H, W)`` ground-truth masks, same size.
        fpr_limit: False-positive-rate limit of the integral.
    """
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=fpr_limit)
    metric.update(anomaly_maps.float(), masks.int())
    return float(metric.compute())
