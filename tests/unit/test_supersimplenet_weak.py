"""SupersimplenetWeak: image-labelled anomalies train the classification head only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.models import Supersimplenet

from ckaad_anomalib.models.supersimplenet_weak import SupersimplenetWeak, WeakSSNLoss

# SuperSimpleNet always loads pretrained weights: lite0's are installed offline by the fixture
TINY = {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2", "blocks.4"], "visualizer": False}


# 256 px: anomalib's Perlin generator fails on the feature maps of much smaller inputs
def _batch(n_normal: int = 3, n_anomalous: int = 2, size: int = 256) -> ImageBatch:
    labels = torch.tensor([0] * n_normal + [1] * n_anomalous)
    return ImageBatch(image=torch.rand(len(labels), 3, size, size), gt_label=labels)


def test_unmasked_anomalies_add_nothing_to_the_segmentation_loss() -> None:
    loss = WeakSSNLoss()
    pred_map = torch.randn(4, 1, 8, 8, requires_grad=True)
    pred_score = torch.randn(4, requires_grad=True)
    masks = torch.zeros(4, 1, 8, 8)
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    known = torch.tensor([True, True, False, True])
    loss(pred_map, pred_score, masks, labels, known).backward()
    assert pred_map.grad is not None
    assert pred_score.grad is not None
    assert torch.count_nonzero(pred_map.grad[2]) == 0  # no mask: no segmentation target
    assert torch.count_nonzero(pred_map.grad[[0, 1, 3]]) > 0
    assert torch.count_nonzero(pred_score.grad) == 4  # every image trains the classification head
    # without the switch it is anomalib's SSNLoss
    everything = WeakSSNLoss()(pred_map, pred_score, masks, labels)
    from anomalib.models.image.supersimplenet.loss import SSNLoss

    torch.testing.assert_close(everything, SSNLoss()(pred_map, pred_score, masks, labels))


def test_anomalib_refuses_the_batch_that_the_weak_model_trains_on(lite0_weights: Path) -> None:
    del lite0_weights
    torch.manual_seed(0)
    batch = _batch()
    with pytest.raises(RuntimeError, match="without GT masks is currently not supported"):
        Supersimplenet(supervised=True, **TINY).training_step(batch)  # type: ignore[arg-type]
    model = SupersimplenetWeak(**TINY)  # type: ignore[arg-type]
    assert model.supervised
    assert model.norm_clip_val == 1
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no trainer attached
    head = [p for p in model.model.segdec.parameters() if p.requires_grad]
    out = model.training_step(batch)
    loss = out["loss"]  # type: ignore[index]
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head)


def test_registered_with_anomalib(lite0_weights: Path) -> None:
    from anomalib.models import get_model

    del lite0_weights
    assert isinstance(get_model("SupersimplenetWeak", **TINY), SupersimplenetWeak)
    # (class_path: SupersimplenetWeak through the CLI is covered by the config test)
