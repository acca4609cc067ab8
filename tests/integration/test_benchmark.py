"""The shipped tiny grid runs end to end through ckaad-benchmark: table, plot, costs, seen vs unseen kinds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ckaad_anomalib.data import make_mvtec_like_dataset
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_tiny_grid_writes_the_side_by_side_table_with_costs(lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    # the data its header asks for (ckaad-synth with these arguments), under the run's working directory
    make_mvtec_like_dataset(
        tmp_path / "datasets" / "tiny_texture", "brick", n_train=16, n_test_good=6, n_test_defect=6,
        defects=("scratch", "stain", "foreign"), image_size=96, seed=0,
    )  # fmt: skip
    grid = tmp_path / "tiny.yaml"
    shutil.copy(REPO / "configs" / "benchmark" / "tiny.yaml", grid)
    bench = run_cli(["ckaad-benchmark", "--config", str(grid), "--out", "report"], tmp_path, idle_seconds=150)
    assert bench.returncode == 0, bench.stderr[-3000:]

    table = pd.read_csv(tmp_path / "report" / "tiny.csv")
    assert (table.status == "ok").all()
    assert sorted(table["model.name"].unique()) == ["Ckaad", "Padim", "Recon", "Stfpm", "SupersimplenetWeak"]
    assert sorted(table.seed.unique()) == [0, 1]
    for column in ("fit_duration", "train_s_per_step", "test_images_per_s", "fit_peak_rss_mb", "test_peak_rss_mb"):
        assert (table[column] > 0).all(), column
    assert (table.n_coarse > 0).all()  # every model ran on the coarse datamodule's split
    assert table.filter(like="AUROC_unseen_").notna().all().all()  # scratch and foreign were never labelled
    assert "AUPRO" in table
    assert "pixel_AUROC" in table
    # the same files for every model of a seed: one coarse draw, so one n_coarse per seed
    assert table.groupby("seed").n_coarse.nunique().eq(1).all()

    report = (tmp_path / "report" / "table.md").read_text()
    assert "### tiny texture (brick; coarse = stain)" in report
    assert "Ckaad s/step ÷ Recon s/step (same run, per seed):" in report
    assert (tmp_path / "report" / "plot.png").stat().st_size > 10_000
    # --report rebuilds the table from the CSVs alone
    (tmp_path / "report" / "table.md").unlink()
    rebuilt = run_cli(["ckaad-benchmark", "--report", "--out", "report"], tmp_path, idle_seconds=20)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (tmp_path / "report" / "table.md").read_text() == report


GRIDS = sorted((REPO / "configs" / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS, ids=[g.name for g in GRIDS])
def test_shipped_grid_expands_and_every_model_builds(grid: Path, lite0_weights: Path) -> None:
    """A typo in a shipped grid (an argument a model does not take, a stage lite0 lacks) fails here, not an hour into
    a benchmark run."""
    import yaml
    from anomalib.pipelines.components.utils.grid_search import get_iterator_from_grid_dict

    from ckaad_anomalib.benchmark import build_model

    del lite0_weights
    settings = yaml.safe_load(grid.read_text())["benchmark"]
    jobs = list(get_iterator_from_grid_dict(settings))
    assert jobs, f"{grid.name}: the grid expands to no job"
    seen: set[str] = set()
    for job in jobs:
        key = repr(job["model"])
        if key in seen:  # other seeds and datasets of an entry already built
            continue
        seen.add(key)
        model = build_model(job["model"], job.get("image_size"))
        assert model.pre_processor is not None, job["model"]
