"""Everything CKAAD decides for deployment, in one place.

* Exports (torch, ONNX, OpenVINO) carry no training-only discriminator weights (``CkaadModel.inference_only``; the
  patch discriminator stays when ``energy_weight > 0`` because the score then uses it).
* INT8: calibrated on *normal training images*, and only the feature convolutions are quantised
  (:func:`int8_ignored_ops`, :func:`quantize_int8`).
* The OpenVINO precision hint of the torch-free runtime (``ckaad_anomalib.deploy``) defaults to f32.
"""

from __future__ import annotations

import logging
from typing import Any

from anomalib.data import AnomalibDataModule

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # NNCF's default subset size


def int8_ignored_ops(model: Any) -> list[str]:  # noqa: ANN401 - an openvino.Model
    """Names of the OpenVINO ops INT8 quantisation must leave alone: everything but the feature convolutions.

    The scoring tail (cosine distance with its divisions and clamps, upsampling, map sum, blur, anomalib's
    normalisation) works on values of tiny range. Quantised to 8 bits, the map collapses to a constant (measured on
    ELPV: AUROC 0.93 → 0.50). The blur's convolutions are the only single-channel ones.

    Args:
        model: The OpenVINO model to be quantised.

    Returns:
        Friendly names of the ops to ignore.
    """
    convolutions = {"Convolution", "GroupConvolution", "ConvolutionBackpropData"}
    ignored = []
    for op in model.get_ops():
        if op.get_type_name() in convolutions:
            weights = op.input(1).get_partial_shape()
            if not (weights.rank.is_static and weights[0] == 1 and weights[1] == 1):
                continue  # a feature convolution: quantise it
        ignored.append(op.get_friendly_name())
    return ignored


def quantize_int8(model: Any, datamodule: AnomalibDataModule | None = None) -> Any:  # noqa: ANN401 - openvino.Model
    """INT8 post-training quantisation (NNCF) calibrated on *normal training images* only.

    anomalib calibrates on the validation split, which holds anomalies; CKAAD's activations are calibrated on
    what the model was trained to reconstruct. Coarse anomalies of a
    :class:`~ckaad_anomalib.data.CoarseAnomalyDataModule` are not used either. Only the convolutions of
    extractor and auto-encoder are quantised (:func:`int8_ignored_ops`).

    Args:
        model: OpenVINO model (its graph includes pre-processing, so raw [0, 1] images go in).
        datamodule: Datamodule whose ``train_data`` holds the normal images.

    Returns:
        The quantised OpenVINO model.
    """
    import nncf
    from torch.utils.data import DataLoader

    if datamodule is None:
        msg = "INT8_PTQ export of Ckaad calibrates on normal training images: pass the datamodule (--data ...)."
        raise ValueError(msg)
    datamodule.setup("fit")
    normal = datamodule.train_data
    # batch 1: images of different sizes need no resize here (the graph resizes them)
    loader = DataLoader(normal, batch_size=1, shuffle=False, collate_fn=normal.collate_fn)
    logger.info("INT8 calibration on %d normal training images.", min(len(normal), CALIBRATION_IMAGES))
    return nncf.quantize(
        model,
        nncf.Dataset(loader, lambda batch: batch.image.numpy()),
        subset_size=min(len(normal), CALIBRATION_IMAGES),
        ignored_scope=nncf.IgnoredScope(names=int8_ignored_ops(model), validate=False),
    )
