"""Coarse-anomaly arithmetic, batch composition and synthetic corruptions."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ckaad_anomalib.data.coarse import CutPaste, NormalAnomalyBatchSampler, n_coarse


@pytest.mark.parametrize(
    ("n_normal", "ratio", "expected"), [(95, 0.05, 5), (353, 0.05, 19), (100, 0.0, 0), (16, 0.2, 4)]
)
def test_number_of_coarse_anomalies(n_normal: int, ratio: float, expected: int) -> None:
    assert n_coarse(n_normal, ratio) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_ratio_must_be_a_fraction(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        n_coarse(10, ratio)


def test_each_batch_holds_normals_and_cycled_anomalies() -> None:
    sampler = NormalAnomalyBatchSampler(n_normal=10, n_anomalous=3, batch_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    normals = [i for b in batches for i in b if i < 10]
    assert sorted(normals) == list(range(10))  # every normal image once per epoch
    anomalies = [[i for i in b if i >= 10] for b in batches]
    assert [len(a) for a in anomalies] == [3, 3, 3]  # min(batch, n_anomalous)
    flat = [i for a in anomalies for i in a]
    assert all(sorted(flat[k : k + 3]) == [10, 11, 12] for k in range(0, 9, 3))  # all anomalies before a repeat


def test_anomaly_batch_size_and_cycling_across_epochs() -> None:
    sampler = NormalAnomalyBatchSampler(n_normal=8, n_anomalous=5, batch_size=4, anomaly_batch_size=2, seed=1)
    seen = Counter(i for _ in range(5) for b in sampler for i in b if i >= 8)
    assert set(seen) == {8, 9, 10, 11, 12}
    assert max(seen.values()) - min(seen.values()) <= 1  # cycled evenly: 5 epochs × 2 batches × 2 = 20 = 4 × 5


def test_same_seed_same_batches_and_no_anomalies_gives_plain_batches() -> None:
    first = [list(NormalAnomalyBatchSampler(12, 4, 5, seed=3)) for _ in range(2)]
    assert first[0] == first[1]
    assert list(NormalAnomalyBatchSampler(12, 4, 5, seed=3)) != list(NormalAnomalyBatchSampler(12, 4, 5, seed=4))
    plain = list(NormalAnomalyBatchSampler(n_normal=5, n_anomalous=0, batch_size=2))
    assert sorted(i for b in plain for i in b) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_normal"):
        NormalAnomalyBatchSampler(n_normal=0, n_anomalous=3, batch_size=2)


def test_cutpaste_changes_one_rectangle(seeded: None) -> None:
    image = torch.rand(3, 32, 32)
    out = CutPaste()(image)
    assert out.shape == image.shape
    changed = (out != image).any(0)
    assert changed.any()
    rows, cols = changed.nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() <= box  # confined to one rectangle
    assert box <= 0.15 * 32 * 32 * 1.5


@pytest.mark.parametrize(("n_normal", "n_anomalous"), [(12, 5), (11, 1), (16, 0)])
def test_ranks_get_disjoint_normals_covering_the_epoch_and_anomalies_in_every_batch(
    n_normal: int, n_anomalous: int
) -> None:
    ranks = [NormalAnomalyBatchSampler(n_normal, n_anomalous, 4, seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    for _ in range(3):  # epochs: the ranks stay in step
        batches = [list(s) for s in ranks]
        assert len(batches[0]) == len(batches[1]) == len(ranks[0])  # same step count: no rank waits on another
        normals = [[i for b in rank for i in b if i < n_normal] for rank in batches]
        assert len(normals[0]) == len(normals[1]) == -(-n_normal // 2)
        union = normals[0] + normals[1]
        assert set(union) == set(range(n_normal))  # together they cover the epoch
        assert len(union) - len(set(union)) == n_normal % 2  # disjoint, but for DistributedSampler-style padding
        for rank in batches:
            assert all(any(i >= n_normal for i in b) == (n_anomalous > 0) for b in rank)
    pools = [set(s.anomaly_pool) for s in ranks]
    assert pools[0] | pools[1] == set(range(n_anomalous))
    assert (pools[0] & pools[1]) == (pools[0] if 0 < n_anomalous < 2 else set())  # one anomaly: both ranks use it
    with pytest.raises(ValueError, match="rank must lie"):
        NormalAnomalyBatchSampler(4, 0, 2, num_replicas=2, rank=2)
