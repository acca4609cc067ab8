"""Multi-process training: 2 CPU processes (gloo DDP, via torchrun) on tiny data, with coarse anomalies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckaad_anomalib.data import CoarseAnomalyDataModule
from tests.conftest import scaled_timeout

pytestmark = pytest.mark.slow


def test_two_ranks_see_disjoint_batches_and_end_with_identical_weights(mvtec_root: Path, tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_train.py")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(script), str(mvtec_root), str(tmp_path)],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled_timeout(90),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # weights: both optimisers' gradients were synchronised, so the ranks end identical after different batches
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["batches"][0] != ranks[1]["batches"][0]

    # batches: per epoch, the ranks' normal images are disjoint and cover the 12 training images
    steps = len(ranks[0]["batches"]) // 2  # 2 epochs
    assert len(ranks[1]["batches"]) == 2 * steps
    for epoch in range(2):
        seen = [
            [p for b in rank["batches"][epoch * steps : (epoch + 1) * steps] for p in b if p.startswith("normal:")]
            for rank in ranks
        ]
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == 12
        assert len(seen[0]) + len(seen[1]) == 12  # each image once
    # every batch of every rank holds coarse anomalies (so every rank takes the D step), each rank its own share
    anomalies = [{p for b in rank["batches"] for p in b if p.startswith("anomaly:")} for rank in ranks]
    assert all(any(p.startswith("anomaly:") for p in b) for rank in ranks for b in rank["batches"])
    assert anomalies[0]
    assert anomalies[1]
    assert not anomalies[0] & anomalies[1]

    for rank in ranks:  # metrics are produced (each rank evaluates the whole test split)
        assert 0.0 <= rank["metrics"]["image_AUROC"] <= 1.0
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_distributed_sampler_injection_is_refused_with_instructions() -> None:
    class Connector:
        use_distributed_sampler = True

    class FakeTrainer:
        world_size = 2
        _accelerator_connector = Connector()

    data = CoarseAnomalyDataModule.__new__(CoarseAnomalyDataModule)
    data.trainer = FakeTrainer()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match=r"use_distributed_sampler=False"):
        data._check_distributed()
    Connector.use_distributed_sampler = False
    data._check_distributed()
