"""Data for CKAAD: synthetic MVTec-layout datasets (and, later, coarse-anomaly datamodules)."""

from .synthetic import make_mvtec_like_dataset

__all__ = ["make_mvtec_like_dataset"]
