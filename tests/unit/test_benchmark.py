"""ckaad-benchmark's pieces: per-kind metrics, how a grid entry becomes a model and data, the report."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2

from ckaad_anomalib.benchmark import build_datamodule, build_job, build_model, peak_rss_mb, reset_peak_rss
from ckaad_anomalib.benchmark_report import dataset_label, plot, summarise
from ckaad_anomalib.evaluation import aupro, defect_kind, per_kind_auroc


def test_per_kind_auroc_names_seen_and_unseen_kinds_and_scores_each_against_the_normals() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.15, 0.35])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    kinds = ["good", "good", "good", "stain", "stain", "scratch", "scratch"]
    out = per_kind_auroc(scores, labels, kinds, seen={"stain"})
    assert out == {"AUROC_seen_stain": 1.0, "AUROC_unseen_scratch": pytest.approx(4 / 6)}
    assert set(per_kind_auroc(scores, labels, kinds)) == {"AUROC_kind_scratch", "AUROC_kind_stain"}
    one_kind = ["good"] * 3 + ["stain"] * 4
    assert per_kind_auroc(scores, labels, one_kind, seen={"stain"}) == {}  # the image AUROC says it all


def test_defect_kind_is_the_folder_of_an_mvtec_test_image() -> None:
    assert defect_kind("/data/brick/test/scratch/003.png") == "scratch"


def test_aupro_is_one_for_a_perfect_map_and_lower_for_a_wrong_one() -> None:
    masks = torch.zeros(2, 16, 16)
    masks[0, 4:8, 4:8] = 1
    assert aupro(masks.clone(), masks) == pytest.approx(1.0, abs=1e-3)
    assert aupro(1 - masks, masks) < 0.5


def _resize_size(pre_processor: object) -> list[int]:
    transform = pre_processor.transform  # type: ignore[attr-defined]
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    resize = next(t for t in steps if hasattr(t, "size") and not isinstance(t, v2.Normalize))
    return list(resize.size)


def _normalize(pre_processor: object) -> v2.Normalize:
    transform = pre_processor.transform  # type: ignore[attr-defined]
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    return next(t for t in steps if isinstance(t, v2.Normalize))


def test_build_model_gives_every_kind_of_model_the_grid_image_size() -> None:
    ckaad = build_model({"class_path": "Ckaad", "init_args": {"backbone": "resnet18", "pre_trained": False}}, 96)
    assert _resize_size(ckaad.pre_processor) == [96, 96]
    # a backbone model: resized, and normalised as its backbone's weights expect (lite0: 0.5, not ImageNet's)
    padim = build_model(
        {"class_path": "Padim", "init_args": {"backbone": "tf_efficientnet_lite0", "pre_trained": False,
                                              "layers": ["blocks.2", "blocks.4"], "n_features": 50}},
        96,
    )  # fmt: skip
    assert _resize_size(padim.pre_processor) == [96, 96]
    assert list(_normalize(padim.pre_processor).mean) == pytest.approx([0.5, 0.5, 0.5])
    ganomaly = build_model({"class_path": "Ganomaly"}, 64)  # no backbone: its own pre-processing at the size
    assert _resize_size(ganomaly.pre_processor) == [64, 64]
    assert padim.visualizer is None  # no images written per test batch
    explicit = build_model({"class_path": "Ckaad", "init_args": {"backbone": "resnet18", "pre_trained": False,
                                                                 "image_size": [64, 64]}}, 96)  # fmt: skip
    assert _resize_size(explicit.pre_processor) == [64, 64]  # the entry's own setting wins


def test_build_model_names_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="'NoSuchModel' is not a model"):
        build_model({"class_path": "NoSuchModel"}, None)


def test_coarse_data_trains_coarse_models_on_its_batches_and_the_rest_on_normals(mvtec_root: Path) -> None:
    data = {
        "class_path": "CoarseAnomalyDataModule",
        "name": "label only",
        "init_args": {"datamodule": {"class_path": "MVTecAD", "init_args": {"root": str(mvtec_root)}}},
    }
    coarse = build_datamodule(data, SimpleNamespace(uses_coarse_anomalies=True), seed=3)
    peer = build_datamodule(data, SimpleNamespace(), seed=3)
    assert (coarse.normal_only, peer.normal_only) == (False, True)
    assert coarse.seed == peer.seed == 3  # the job's seed draws the split and the coarse anomalies
    assert coarse.datamodule.seed == 3  # and the wrapped datamodule's own split
    pinned = {**data, "init_args": {**data["init_args"], "seed": 7, "normal_only": False}}
    assert build_datamodule(pinned, SimpleNamespace(), seed=3).seed == 7
    assert build_datamodule(pinned, SimpleNamespace(), seed=3).normal_only is False
    assert "name" in data  # the grid entry itself is left as it was


def test_a_jobs_seed_sets_the_models_initial_weights(mvtec_root: Path) -> None:
    def first_weights(seed: int) -> torch.Tensor:
        settings = {
            "seed": seed,
            "model": {"class_path": "Ckaad", "init_args": {"backbone": "resnet18", "pre_trained": False}},
            "data": {"class_path": "MVTecAD", "init_args": {"root": str(mvtec_root)}},
        }
        job = build_job("cpu", settings)
        assert job.datamodule.seed == seed
        return next(job.model.model.autoencoder.parameters()).detach().clone()

    torch.manual_seed(123)  # whatever the global state, the job's seed decides
    zero = first_weights(0)
    assert torch.equal(zero, first_weights(0))
    assert not torch.equal(zero, first_weights(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS windows read /proc/self (Linux)")
def test_peak_rss_window_sees_an_allocation_inside_it() -> None:
    assert reset_peak_rss()
    before = peak_rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    after = peak_rss_mb()
    del block
    assert before is not None
    assert after is not None
    assert after - before > 50


def _rows() -> pd.DataFrame:
    base = {"status": "ok", "data.class_path": "CoarseAnomalyDataModule", "data.name": "texture", "error": ""}
    rows = [
        {**base, "model.name": "Ckaad", "seed": 0, "image_AUROC": 0.90, "train_s_per_step": 0.30, "fit_duration": 10},
        {**base, "model.name": "Recon", "seed": 0, "image_AUROC": 0.88, "train_s_per_step": 0.20, "fit_duration": 8},
        {**base, "model.name": "Ckaad", "seed": 1, "image_AUROC": 0.94, "train_s_per_step": 0.40, "fit_duration": 12},
        {**base, "model.name": "Recon", "seed": 1, "image_AUROC": 0.90, "train_s_per_step": 0.40, "fit_duration": 9},
        {**base, "status": "error", "model.name": "Padim", "seed": 0, "error": "ValueError: broken"},
    ]
    table = pd.DataFrame(rows)
    table["dataset"] = [dataset_label(r) for r in table.to_dict("records")]
    return table


def test_summary_gives_mean_and_std_per_model_the_twin_step_ratio_and_every_failure() -> None:
    text = summarise(_rows())
    assert "### texture\n\nSettings: seeds 0, 1.\n" in text
    assert "| Ckaad | 2 | 0.9200 ± 0.0283 |" in text
    assert "| Recon | 2 | 0.8900 ± 0.0141 |" in text
    assert "Ckaad s/step ÷ Recon s/step (same run, per seed): 1.50, 1.00" in text
    assert "**failed**: Padim seed 0: ValueError: broken" in text


def test_plot_draws_pixel_auroc_only_for_data_with_masks(tmp_path: Path) -> None:
    masked = _rows().assign(dataset="masked", pixel_AUROC=0.97)
    titles = plot(pd.concat([_rows(), masked], ignore_index=True), tmp_path / "plot.png")
    assert titles == [
        "texture: image AUROC, mean ± std over seeds",
        "texture: image AUROC vs fit time",
        "masked: image AUROC, mean ± std over seeds",
        "masked: pixel AUROC, mean ± std over seeds",
        "masked: image AUROC vs fit time",
    ]
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_plot_has_no_pixel_column_when_no_dataset_has_masks(tmp_path: Path) -> None:
    from PIL import Image

    titles = plot(_rows(), tmp_path / "plot.png")
    assert titles == ["texture: image AUROC, mean ± std over seeds", "texture: image AUROC vs fit time"]
    with Image.open(tmp_path / "plot.png") as image:
        assert image.size[0] == 2 * 6 * 100  # two panels of 6 inches at 100 dpi, no empty third


def test_dataset_label_falls_back_to_the_wrapped_datamodule_and_its_category() -> None:
    row = {
        "data.class_path": "CoarseAnomalyDataModule",
        "data.init_args.datamodule.class_path": "ELPV",
        "data.init_args.datamodule.init_args.module_type": "mono",
    }
    assert dataset_label(row) == "ELPV mono"
    assert dataset_label({"data.class_path": "MVTecAD", "data.init_args.category": "bottle"}) == "MVTecAD bottle"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the test patches the job into a forked child")
def test_a_job_whose_process_dies_becomes_an_error_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Out of memory or a native crash kills the job's process: the grid records it and goes on."""
    import os
    import signal

    from ckaad_anomalib import benchmark

    def die(accelerator: str, settings: dict) -> None:
        del accelerator
        if settings["seed"] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError("seed 1 is broken too, politely")

    monkeypatch.setattr(benchmark, "build_job", die)
    grid = {"seed": {"grid": [0, 1]}, "model": {"class_path": "Padim"}, "data": {"class_path": "MVTecAD"}}
    rows = benchmark.run_grid("cpu", grid, [tmp_path / "results.csv"])
    assert [row["status"] for row in rows] == ["error", "error"]
    assert rows[0]["error"] == (
        "the job's process died without a result (killed by signal 9, most often the out-of-memory killer)"
    )
    assert rows[1]["error"] == "ValueError: seed 1 is broken too, politely"
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2  # written as it went
