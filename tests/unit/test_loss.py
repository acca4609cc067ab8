"""Losses of the method page, term by term."""

from __future__ import annotations

import pytest
import torch

from ckaad_anomalib.models.ckaad.loss import (
    CkaadLoss,
    adversarial_loss,
    discriminator_loss,
    hinge,
    push_loss,
    reconstruction_loss,
)


def test_reconstruction_zero_for_identical_maps() -> None:
    feats = [torch.randn(4, 8, 6, 6), torch.randn(4, 16, 3, 3)]
    assert reconstruction_loss(feats, [f.clone() for f in feats]).item() == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_flattens_whole_map_and_sums_stages() -> None:
    f = torch.tensor([[[[1.0, 0.0]]]])  # 1×1×1×2
    r = torch.tensor([[[[0.0, 1.0]]]])  # orthogonal as a whole vector: 1 − cos = 1
    assert reconstruction_loss([f, f], [r, r]).item() == pytest.approx(2.0)
    # per-position cosine would be undefined/different; whole-map cosine is scale invariant
    assert reconstruction_loss([f], [3 * f]).item() == pytest.approx(0.0, abs=1e-6)


def test_hinge_is_zero_beyond_margin() -> None:
    assert hinge(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [0.0, 0.0, 2.0]
    far = [torch.full((2, 1, 3, 3), 7.0)]
    zero = [torch.zeros(2, 1, 3, 3)]
    # normals at 0 energy, anomalies and reconstructions beyond m = 5: nothing left to learn
    assert discriminator_loss(zero, far, far, margin=5.0).item() == 0.0


def test_discriminator_loss_by_hand() -> None:
    pos = [torch.tensor([1.0, 3.0])]  # mean 2
    neg = [torch.tensor([4.0, 6.0])]  # [5−4]₊=1, [5−6]₊=0 → mean 0.5
    rec = [torch.tensor([0.0, 2.0, 5.0])]  # 5, 3, 0 → mean 8/3
    expected = 2 + 0.75 * 0.5 + 0.25 * 8 / 3
    assert discriminator_loss(pos, neg, rec, margin=5.0, gamma=0.25).item() == pytest.approx(expected)
    # per-stage losses are summed
    assert discriminator_loss(pos * 2, neg * 2, rec * 2, margin=5.0, gamma=0.25).item() == pytest.approx(2 * expected)


def test_autoencoder_loss_weights_adversarial_term() -> None:
    loss = CkaadLoss(adv_weight=0.02)
    rec = torch.tensor(0.3)
    energies = [torch.full((2, 1, 2, 2), 4.0), torch.tensor([1.0, 3.0])]
    assert adversarial_loss(energies).item() == pytest.approx(6.0)
    assert loss.autoencoder(rec, energies).item() == pytest.approx(0.3 + 0.02 * 6.0)
    assert loss.autoencoder(rec, None).item() == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"adv_weight": -1.0}, "^adv_weight must be >= 0"),
        ({"gamma": 1.5}, "^gamma must be in"),
        ({"margin": 0.0}, "^margin must be > 0, got 0.0"),
        ({"mil_fraction": 0.0}, "^mil_fraction must be in"),
        ({"push_weight": -0.1}, "^push_weight must be >= 0"),
        ({"push_margin": 0.0}, "^push_margin must be > 0"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CkaadLoss(**kwargs)


def test_mil_targets_keep_only_the_highest_patches_of_each_anomaly() -> None:
    e_neg = torch.zeros(2, 1, 2, 2)
    e_neg[0, 0, 0, 0] = 6.0  # one patch beyond the margin, three normal-looking patches
    e_neg[1, 0, 1, 1] = 4.0
    zeros = [torch.zeros(2, 1, 2, 2)]
    paper = discriminator_loss(zeros, [e_neg], [torch.full((2, 1, 2, 2), 9.0)], margin=5.0, gamma=0.5)
    # all 8 patches are targets: hinge = (0 + 5+5+5 + 1 + 5+5+5) / 8 = 31/8, weighted by 1 − γ
    assert paper.item() == pytest.approx(0.5 * 31 / 8)
    mil = discriminator_loss(zeros, [e_neg], [torch.full((2, 1, 2, 2), 9.0)], margin=5.0, gamma=0.5, mil_fraction=0.25)
    assert mil.item() == pytest.approx(0.5 * (0 + 1) / 2)  # only the top patch of each image: hinge 0 and 1
    image_energy = torch.tensor([1.0, 7.0])  # image-level D: unaffected
    assert discriminator_loss([torch.zeros(2)], [image_energy], [torch.full((2,), 9.0)], mil_fraction=0.25).item() == (
        pytest.approx(0.5 * 4 / 2)
    )


def test_push_asks_anomalies_to_score_a_margin_above_the_normal_mean() -> None:
    normal = torch.tensor([1.0, 3.0])  # mean 2
    anomalous = torch.tensor([2.0, 5.0], requires_grad=True)
    loss = push_loss(anomalous, normal, margin=1.0)  # targets: 2 · 2 = 4 → hinge(2 − 1), hinge(2 − 2.5)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert anomalous.grad is not None
    assert anomalous.grad.tolist() == pytest.approx([-0.25, 0.0])  # only the anomaly below target is pushed
    assert push_loss(torch.tensor([9.0]), normal).item() == 0.0
    combined = CkaadLoss(push_weight=0.5).autoencoder(torch.tensor(1.0), None, torch.tensor(0.2))
    assert combined.item() == pytest.approx(1.2)
