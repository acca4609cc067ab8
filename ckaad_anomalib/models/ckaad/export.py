"""Everything CKAAD decides for deployment, in one place.

* Exports (torch, ONNX, OpenVINO) carry no training-only discriminator weights (``CkaadModel.inference_only``; the
  patch discriminator stays when ``energy_weight > 0`` because the score then uses it).
* INT8: calibrated on *normal training images*, and only the feature convolutions are quantised
  (:func:`int8_ignored_ops`, :func:`quantize_int8`); its threshold and normalisation are fitted on its *own*
  validation scores (:func:`export_int8_with_own_thresholds`).
* OpenVINO exports keep f32 on bf16 CPUs with nothing for the user to pass (:func:`keep_f32`): every op is marked
  precise, and the pre-processing and map tail use ops that honour the mark (:mod:`.exact_ops`,
  :class:`CkaadPreProcessor`). ``ckaad-infer --precision bf16`` opts into bf16 for the feature convolutions only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch
from anomalib.data import AnomalibDataModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torchvision.transforms.v2 import Compose, Normalize, Resize, Transform

from ckaad_anomalib.deploy.openvino_infer import PRECISE_MARK, network_convolutions

from .exact_ops import ExactNormalize, ExactResize

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # NNCF's default subset size


def int8_ignored_ops(model: Any) -> list[str]:  # noqa: ANN401 - an openvino.Model
    """Names of the OpenVINO ops INT8 quantisation must leave alone: all but :func:`network_convolutions`.

    Quantised to 8 bits, the scoring tail (distances, upsampling, blur, anomalib's normalisation) collapses the
    map to a constant (measured on ELPV: AUROC 0.93 → 0.50).

    Args:
        model: The OpenVINO model to be quantised.

    Returns:
        Friendly names of the ops to ignore.
    """
    quantised = {op.get_friendly_name() for op in network_convolutions(model)}
    return [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name() not in quantised]


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


def matched_threshold(reference: torch.Tensor, reference_threshold: float, scores: torch.Tensor) -> float:
    """Threshold on ``scores`` that flags exactly as many values as ``reference_threshold`` flags on ``reference``.

    ``reference`` and ``scores`` are the same images (or pixels) scored by two precisions of one model. The returned
    threshold sits halfway between the two ``scores`` values around that count, so ``scores >= threshold`` flags
    the same number of them as ``reference >= reference_threshold``.

    Args:
        reference: FP32 values, any shape.
        reference_threshold: FP32 threshold.
        scores: The same values from the other precision, same number of elements.

    Returns:
        The matched threshold.

    Example:
        >>> matched_threshold(torch.tensor([0.1, 0.2, 0.9]), 0.5, torch.tensor([1.0, 3.0, 2.0]))
        2.5
    """
    if reference.numel() != scores.numel():
        msg = (
            f"reference and scores must be the same values in two precisions: {reference.numel()} vs {scores.numel()}."
        )
        raise ValueError(msg)
    ordered = scores.flatten().sort().values  # in its own dtype: the threshold is compared in it
    below = int((reference.flatten() < reference_threshold).sum())  # what the reference leaves unflagged
    if below == 0:
        return float(ordered[0])
    if below == ordered.numel():
        return float(torch.nextafter(ordered[-1], torch.tensor(float("inf"), dtype=ordered.dtype)))  # flags none
    return float((ordered[below - 1] + ordered[below]) / 2)


def export_int8_with_own_thresholds(
    module: torch.nn.Module,
    post_processor: PostProcessor,
    export: Callable[..., Path],
    export_root: Path | str,
    datamodule: AnomalibDataModule | None,
    **kwargs: Any,  # noqa: ANN401 - anomalib's to_openvino arguments
) -> Path:
    """INT8 export whose threshold and normalisation come from the INT8 model's own validation scores.

    anomalib bakes the FP32 model's threshold and min/max into the INT8 graph. Quantised features shift the scores,
    so that threshold no longer sits where it did (measured on ELPV: F1 −3.4 points). Here the model is first
    quantised without normalisation and thresholding and scored on the validation split, beside the FP32 module.
    Normalisation: min/max of the INT8 scores and maps (anomalib's metric). Threshold: the INT8 value that flags as
    many validation images (pixels) as FP32's threshold does, so INT8 keeps FP32's operating point. Refitting
    anomalib's F1-adaptive threshold on the INT8 scores instead lost 2.5–5.6 points of test F1 on ELPV although
    the validation F1 was the same: that F1 is flat over a range of thresholds on ~135 images, and where the
    maximum falls in it is noise (model README). Then the model is exported and quantised again with those
    statistics baked in; the quantisation is deterministic (same calibration images and ignored ops; checked: the
    two passes' scores are identical), so the second INT8 network is the first one. The torch model keeps its FP32
    statistics afterwards.

    Args:
        module: The FP32 module; with the post-processor's steps switched off it gives raw scores and maps.
        post_processor: The module's post-processor (its statistics are restored on return).
        export: anomalib's ``to_openvino`` of the module.
        export_root: Output folder.
        datamodule: Datamodule with the validation split (and the calibration images).
        kwargs: The rest of ``to_openvino``'s arguments (compression type included).

    Returns:
        Path of the exported model.
    """
    from ckaad_anomalib.deploy import EdgeDetector

    if datamodule is None:
        msg = "INT8 export of Ckaad calibrates on normal training images and thresholds on validation: pass --data."
        raise ValueError(msg)
    fp32_statistics = {name: value.clone() for name, value in post_processor.state_dict().items()}
    flags = post_processor.enable_normalization, post_processor.enable_thresholding
    training = module.training
    datamodule.setup("fit")
    loader = datamodule.val_dataloader()
    # FP32's values are kept only where there is a threshold to match: without masks anomalib leaves the pixel one
    # NaN (and falls back to the image threshold), so FP32's maps would be held for nothing
    levels = {"pred_score": "image", "anomaly_map": "pixel"}
    fp32: dict[str, list[torch.Tensor]] = {
        key: [] for key, level in levels.items() if not torch.isnan(fp32_statistics[f"_{level}_threshold"])
    }
    int8: dict[str, list[torch.Tensor]] = {"pred_score": [], "anomaly_map": []}
    try:
        with TemporaryDirectory() as raw_root:
            post_processor.enable_normalization = post_processor.enable_thresholding = False
            raw_path = export(raw_root, datamodule=datamodule, **kwargs)
            detector = EdgeDetector(raw_path)
            module.eval()
            for batch in loader:
                with torch.no_grad():
                    eager = module(batch.image)
                out = detector.infer(batch.image.numpy())
                for key, values in int8.items():
                    values.append(torch.from_numpy(out[key]).flatten())
                for key, values in fp32.items():
                    values.append(getattr(eager, key).flatten())
        post_processor.enable_normalization, post_processor.enable_thresholding = flags
        for key, level in levels.items():  # anomalib's MinMax, on INT8's values
            own = torch.cat(int8[key])
            getattr(post_processor, f"{level}_min").fill_(own.min())
            getattr(post_processor, f"{level}_max").fill_(own.max())
            if key in fp32:
                reference_threshold = float(fp32_statistics[f"_{level}_threshold"])
                threshold = matched_threshold(torch.cat(fp32[key]), reference_threshold, own)
                getattr(post_processor, f"_{level}_threshold").fill_(threshold)
        logger.info(
            "INT8 threshold from its own scores on %d validation images: %.4f (FP32: %.4f), flagging as many of them.",
            len(loader.dataset),
            float(post_processor._image_threshold),
            float(fp32_statistics["_image_threshold"]),
        )
        return export(export_root, datamodule=datamodule, **kwargs)
    finally:
        module.train(training)
        post_processor.enable_normalization, post_processor.enable_thresholding = flags
        post_processor.load_state_dict(fp32_statistics)


def exact_export_transform(transform: Transform | None) -> Transform | None:
    """The exportable pre-processing of anomalib, with ``Resize`` and ``Normalize`` as :mod:`.exact_ops` modules.

    anomalib exports ``Resize`` as ``Interpolate`` (which OpenVINO runs in bf16 on bf16 CPUs whatever the graph
    says) and ``Normalize`` as a division (which it splits into ops that lose the f32 mark), so on such CPUs the
    image entered the network rounded to bf16. These two give the same values (antialiasing off, as anomalib's).

    Args:
        transform: The pre-processor's transform.

    Returns:
        The transform the exported graph applies.
    """
    exportable = get_exportable_transform(transform)

    def exact(step: Transform) -> Transform:
        if isinstance(step, Resize) and isinstance(step.size, Sequence) and len(step.size) == 2:
            return ExactResize(step.size)  # type: ignore[return-value]
        if isinstance(step, Normalize):
            return ExactNormalize(step.mean, step.std)  # type: ignore[return-value]
        return step

    if isinstance(exportable, Compose):
        return Compose([exact(step) for step in exportable.transforms])
    return exact(exportable) if exportable is not None else None


class CkaadPreProcessor(PreProcessor):
    """anomalib's ``PreProcessor`` whose export graph uses :func:`exact_export_transform`."""

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.export_transform = exact_export_transform(self.transform)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the transform from a checkpoint, and its exact export version."""
        super().load_checkpoint_config(config)
        self.export_transform = exact_export_transform(self.transform)


def keep_f32(model_xml: Path | str) -> None:
    """Mark every op of an exported OpenVINO model as precise, in place, so CPUs with bf16 run it in f32.

    OpenVINO's CPU plugin runs in bf16 by default where the CPU has it, and ``anomalib.deploy.OpenVINOInferencer``
    passes no precision hint. A precision hint cannot be stored in the IR (the CPU plugin ignores
    ``runtime_options/INFERENCE_PRECISION_HINT`` in the model's rt_info; checked with OpenVINO 2026.4), but a
    per-op mark can: OpenVINO's "precise" runtime attribute (saved as ``DisablePrecisionConversion``) keeps an op in
    its original precision (OpenVINO PR #21440, for bf16 and f16). The graph's resize, pad and division are written
    with ops that keep the mark (:mod:`.exact_ops`).

    Args:
        model_xml: The exported ``model.xml`` (its ``model.bin`` beside it is rewritten too).
    """
    import openvino as ov

    xml = Path(model_xml)
    model = ov.Core().read_model(str(xml))
    for op in model.get_ops():
        op.get_rt_info()[PRECISE_MARK] = ""
    with TemporaryDirectory(dir=xml.parent) as tmp:
        ov.save_model(model, Path(tmp) / xml.name, compress_to_fp16=False)
        del model  # release the memory-mapped weights before replacing them
        for suffix in (".xml", ".bin"):
            os.replace(Path(tmp) / xml.with_suffix(suffix).name, xml.with_suffix(suffix))
