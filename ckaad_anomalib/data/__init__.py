"""Data for CKAAD: coarse anomalies on any anomalib datamodule, image-level datasets, synthetic MVTec-layout data.

Importing this package attaches the datamodules to ``anomalib.data`` (``--data ELPV``, ``class_path: ELPV``).
"""

from ckaad_anomalib._hook import attach
from ckaad_anomalib.image_io import install as install_image_reader

from .coarse import CoarseAnomalyDataModule, NormalAnomalyBatchSampler, SyntheticAnomalyDataset, n_coarse
from .labelled import ELPV, ISIC2018, OCT2017, Br35H, ChestXRay2017, LabelledImageDataModule
from .synthetic import make_mvtec_like_dataset

__all__ = [
    "ELPV",
    "ISIC2018",
    "OCT2017",
    "Br35H",
    "ChestXRay2017",
    "CoarseAnomalyDataModule",
    "LabelledImageDataModule",
    "NormalAnomalyBatchSampler",
    "SyntheticAnomalyDataset",
    "make_mvtec_like_dataset",
    "n_coarse",
]

install_image_reader()  # no-op when the start-up hook has done it
attach([CoarseAnomalyDataModule, ELPV, ISIC2018, OCT2017, Br35H, ChestXRay2017], "anomalib.data")
