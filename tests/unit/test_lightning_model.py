"""Ckaad Lightning module: optimisation steps on hand-made batches, hyper-parameters, pre-processing."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from anomalib import LearningType
from anomalib.data import ImageBatch
from lightning.pytorch import Trainer

from ckaad_anomalib import Ckaad
from tests.conftest import LITE0, small_ckaad


def _resnet(**kwargs: object) -> Ckaad:
    """A small Ckaad on random ResNet-18 features (stages 2 and 3)."""
    return small_ckaad(backbone="resnet18", layers=("layer2", "layer3"), pre_trained=False, **kwargs)


def _batch(labels: list[int]) -> ImageBatch:
    return ImageBatch(image=torch.randn(len(labels), 3, 64, 64), gt_label=torch.tensor(labels))


def _attached(model: Ckaad) -> Ckaad:
    """Attach a trainer so that manual optimisation (self.optimizers(), manual_backward) works outside fit."""
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.strategy._lightning_optimizers = []
    model.trainer = trainer
    trainer.strategy.optimizers = model.configure_optimizers()
    model.log = lambda *_, **__: None  # type: ignore[method-assign]  # no loop to log into
    return model


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


@pytest.fixture
def model(seeded: None) -> Ckaad:
    return _attached(_resnet())


def test_batch_with_anomalies_steps_discriminator_then_autoencoder(model: Ckaad) -> None:
    d_before = _params(model.model.patch_discriminator)
    ae_before = _params(model.model.autoencoder)
    ex_before = _params(model.model.extractor)
    out: Any = model.training_step(_batch([0, 0, 0, 1]), 0)
    assert torch.isfinite(out["loss"])
    assert _changed(d_before, model.model.patch_discriminator)
    assert _changed(ae_before, model.model.autoencoder)
    assert not _changed(ex_before, model.model.extractor)


def test_batch_without_anomalies_trains_reconstruction_only(model: Ckaad) -> None:
    d_before = _params(model.model.patch_discriminator)
    ae_before = _params(model.model.autoencoder)
    model.training_step(_batch([0, 0, 0]), 0)
    assert not _changed(d_before, model.model.patch_discriminator)
    assert _changed(ae_before, model.model.autoencoder)


def test_batch_without_normals_is_reported_not_trained(model: Ckaad, caplog: pytest.LogCaptureFixture) -> None:
    ae_before = _params(model.model.autoencoder)
    with caplog.at_level(logging.WARNING):
        assert model.training_step(_batch([1, 1]), 0) is None
    assert "no normal images (1 so far)" in caplog.text
    assert not _changed(ae_before, model.model.autoencoder)


def test_adversarial_gradient_reaches_autoencoder_not_extractor(model: Ckaad) -> None:
    inner = model.model
    inner.train()
    images = torch.randn(2, 3, 64, 64, requires_grad=False)
    features, recons = inner(images)
    adv = torch.stack([e.mean() for e in inner.energies(recons)]).sum()
    adv.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inner.autoencoder.parameters())
    assert all(p.grad is None for p in inner.extractor.parameters())
    assert not features[0].requires_grad


def test_recon_twin_has_no_discriminator_and_one_optimizer() -> None:
    recon = _resnet(adv_weight=0.0)
    assert recon.model.discriminator_modules == []
    assert len(recon.configure_optimizers()) == 1
    both = _resnet(discriminator="both")
    optimizers = both.configure_optimizers()
    assert len(optimizers) == 2
    assert optimizers[1].defaults["lr"] == 1e-4
    assert optimizers[0].defaults["betas"] == (0.5, 0.999)


def test_paper_defaults_and_no_silent_trainer_overrides() -> None:
    model = _resnet()
    hp = model.hparams
    assert (hp.d_lr, hp.adv_weight, hp.gamma, hp.margin, hp.top_k, hp.d_grad_clip) == (1e-4, 0.02, 0.5, 5.0, 100, 1.0)
    assert hp.discriminator == "patch"
    assert model.learning_type == LearningType.ONE_CLASS
    assert model.trainer_arguments == {}
    assert not model.automatic_optimization
    capped = _resnet(max_epochs=3)
    assert capped.trainer_arguments == {"max_epochs": 3}
    with pytest.raises(ValueError, match="max_epochs"):
        _resnet(max_epochs=0)


def test_a_setting_without_trained_output_fills_its_banks_in_one_epoch_and_trains_nothing(seeded: None) -> None:
    model = _attached(
        _resnet(
            distance_weight=0,
            knn_weight=1,
            coarse_weight=1,
            fused_map=True,
            max_epochs=3,
        )
    )
    assert model.trainer_arguments == {"max_epochs": 1, "num_sanity_val_steps": 0}
    d_before, ae_before = _params(model.model.patch_discriminator), _params(model.model.autoencoder)
    assert model.training_step(_batch([0, 0, 0, 1]), 0) is None
    assert not _changed(d_before, model.model.patch_discriminator)
    assert not _changed(ae_before, model.model.autoencoder)
    assert [len(p[0][0]) for p in (model._bank_parts, model._coarse_parts)] == [3, 1]  # 3 normal images, 1 anomaly


def test_pre_processor_uses_backbone_normalisation() -> None:
    lite = Ckaad.configure_pre_processor(backbone=LITE0)
    resnet = Ckaad.configure_pre_processor(image_size=(128, 128), backbone="resnet18")
    lite_norm, resnet_norm = lite.transform.transforms[-1], resnet.transform.transforms[-1]
    assert list(lite_norm.mean) == [0.5, 0.5, 0.5]
    assert list(resnet_norm.mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(resnet.transform.transforms[0].size) == [128, 128]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"^lr must be > 0, got -1.0"),
        ({"d_lr": -1e-4}, r"^d_lr must be > 0"),
        ({"betas": (1.5, 0.999)}, r"^betas must be two values in \[0, 1\)"),
        ({"betas": (0.5,)}, r"^betas must be two values"),
        ({"d_grad_clip": 0.0}, r"^d_grad_clip must be > 0"),
        ({"sigma": -1.0}, r"^sigma must be > 0"),
        ({"ae_width": 0.0}, r"^ae_width must be in \(0, 4\]"),
        ({"ae_blocks": 0}, r"^ae_blocks must be >= 1 or None"),
        ({"top_k": 0}, r"^top_k must be >= 1"),
        ({"image_size": (0, 64)}, r"^image_size must be"),
        ({"push_weight": -1.0}, r"^push_weight must be >= 0"),
    ],
)
def test_every_argument_is_checked_at_construction_by_name(kwargs: dict[str, Any], match: str) -> None:
    """Before: lr=-1 failed at fit start (torch's "Invalid learning rate"), sigma<0 at the sanity check."""
    with pytest.raises(ValueError, match=match):
        _resnet(**kwargs)


def test_push_term_trains_the_autoencoder_on_coarse_anomalies(seeded: None) -> None:
    def step(push_weight: float) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = _attached(
            _resnet(
                adv_weight=0,
                push_weight=push_weight,
            )
        )
        torch.manual_seed(1)
        out: Any = model.training_step(_batch([0, 0, 0, 1]), 0)
        return float(out["loss"]), _params(model.model.autoencoder)

    plain_loss, plain_ae = step(0.0)
    push_loss, push_ae = step(1.0)
    assert push_loss > plain_loss  # a fresh AE reconstructs the anomaly about as well as normals: push is active
    assert any(not torch.equal(a, b) for a, b in zip(plain_ae, push_ae, strict=True))


def test_needs_an_input_size() -> None:
    with pytest.raises(ValueError, match="fixed input size"):
        Ckaad(backbone="resnet18", layers=("layer2", "layer3"), pre_trained=False, pre_processor=False)
