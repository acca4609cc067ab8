"""SuperSimpleNet that learns from coarse (image-level) anomaly labels as well as from its synthetic anomalies.

anomalib 2.7's ``Supersimplenet(supervised=True)`` refuses anomalous training images without masks ("Training with
anomalous samples without GT masks is currently not supported!"); weak supervision is supported neither there nor
upstream (anomalib #2560, requested in #2721 and #2868). Here an anomalous image without a mask trains the
classification head as anomalous and adds nothing to the segmentation loss; normal images train both, as before.
It is the strongest alternative to Ckaad for a user with a few labelled bad images, on the same
:class:`~ckaad_anomalib.data.CoarseAnomalyDataModule` batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule, Supersimplenet
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from .loss import WeakSSNLoss


# AnomalibModule listed again (already a base of Supersimplenet, so the MRO is unchanged): anomalib's get_model
# searches only the *direct* subclasses of AnomalibModule, so `get_model("SupersimplenetWeak")` needs it.
class SupersimplenetWeak(Supersimplenet, AnomalibModule):  # type: ignore[misc]  # to_onnx: as anomalib's models
    """SuperSimpleNet in its supervised mode, trained with image-level labels where masks are missing.

    Args:
        perlin_threshold: Threshold of the Perlin noise of the synthetic feature anomalies.
        backbone: timm backbone (anomalib's default downloads ``wide_resnet50_2.tv_in1k``; offline use
            ``tf_efficientnet_lite0`` after ``ckaad-weights``).
        layers: Backbone stages.
        adapt_cls_features: ICPR variant of SuperSimpleNet (noise on adapted features only).
        pre_processor: Pre-processor (``True``: SuperSimpleNet's default).
        post_processor: Post-processor.
        evaluator: Evaluator.
        visualizer: Visualizer.

    Example:
        >>> layers = ["blocks.2", "blocks.4"]
        >>> model = SupersimplenetWeak(backbone="tf_efficientnet_lite0", layers=layers)  # doctest: +SKIP
    """

    uses_coarse_anomalies = True  # benchmarks train it on coarse batches, unsupervised peers on normals only

    def __init__(
        self,
        perlin_threshold: float = 0.2,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer2", "layer3"),
        adapt_cls_features: bool = False,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            perlin_threshold=perlin_threshold,
            backbone=backbone,
            layers=list(layers),
            supervised=True,  # gradients through the adaptor and norm clip 1, as SuperSimpleNet's supervised mode
            adapt_cls_features=adapt_cls_features,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.loss = WeakSSNLoss()

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step on normal images, fully annotated anomalies and anomalies known only by their label.

        Args:
            batch: Training batch; ``gt_label == 1`` marks anomalies, an empty or missing ``gt_mask`` an unknown mask.
            args: Unused.
            kwargs: Unused.

        Returns:
            The loss.
        """
        del args, kwargs
        images = batch.image
        if images is None:
            msg = "SupersimplenetWeak training batches need images (batch.image is None)."
            raise ValueError(msg)
        labels = (
            batch.gt_label.to(images.device).float()
            if batch.gt_label is not None
            else torch.zeros(len(images), device=images.device)
        )
        masks = batch.gt_mask
        masks = (
            torch.zeros((len(images), *images.shape[-2:]), device=images.device)
            if masks is None
            else masks.to(images.device).float().reshape(len(images), *masks.shape[-2:])
        )
        # an anomaly whose mask is empty is known only by its label
        mask_known = ~((labels > 0) & (masks.flatten(1).amax(1) == 0))
        anomaly_map, anomaly_score, target_masks, target_labels = self.model(
            images=images,
            masks=masks,
            labels=labels,
        )
        # the model appends a synthetic-anomaly copy of the batch: the copies inherit the flags of their originals
        known = mask_known.repeat(len(target_labels) // len(images))
        loss = self.loss(
            pred_map=anomaly_map,
            pred_score=anomaly_score,
            target_mask=target_masks,
            target_label=target_labels,
            mask_known=known,
        )
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True, batch_size=len(images))
        return {"loss": loss}
