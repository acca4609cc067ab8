"""The installed `anomalib` executable finds Ckaad with nothing imported by hand (start-up hook)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from ckaad_anomalib.data import make_mvtec_like_dataset
from tests.conftest import printed_metric, run_cli

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).parents[2] / "configs" / "ckaad_synthetic_lite0.yaml"
MODEL = ["--model", "Ckaad", "--model.backbone", "tf_efficientnet_lite0"]
MODEL += ["--model.layers", "[blocks.1,blocks.2,blocks.4]"]


def test_fresh_interpreter_needs_no_import(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "assert 'torch' not in sys.modules and 'anomalib' not in sys.modules, 'start-up hook must stay cheap'\n"
        "from anomalib.models import get_model, list_models\n"
        "kw = dict(backbone='resnet18', layers=['layer2', 'layer3'], pre_trained=False)\n"
        "print(type(get_model('Ckaad', **kw)).__name__)\n"
        "print(type(get_model('ckaad', **kw)).__name__)\n"
        "print(type(get_model({'class_path': 'Ckaad', 'init_args': kw})).__name__)\n"
        "print(type(get_model({'class_path': 'ckaad_anomalib.Ckaad', 'init_args': kw})).__name__)\n"
        "print('ckaad' in list_models())\n"
    )
    proc = run_cli([Path(sys.executable).name, "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["Ckaad", "Ckaad", "Ckaad", "Ckaad", "True"]


class Trained(NamedTuple):
    """One ``anomalib train`` run of the quick-start config, shared by the tests that use its checkpoint."""

    workdir: Path
    output: subprocess.CompletedProcess[str]
    ckpt: Path


@pytest.fixture(scope="module")
def trained(mvtec_root: Path, lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    del lite0_weights
    workdir = tmp_path_factory.mktemp("cli")
    data = ["--data.root", str(mvtec_root)]
    train = run_cli(["anomalib", "train", "--config", str(CONFIG), *data, "--trainer.max_epochs", "1"], workdir)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = next(workdir.glob("results/Ckaad/MVTecAD/brick/v*/weights/lightning/model.ckpt"))
    return Trained(workdir, train, ckpt)


def test_train_reports_metrics_and_logs_once(trained: Trained) -> None:
    for metric in ("image_AUROC", "image_F1Score", "pixel_AUROC"):
        assert 0.0 <= printed_metric(trained.output.stdout, metric) <= 1.0
    output = trained.output.stdout + trained.output.stderr
    assert output.count("Initializing Ckaad model.") == 1  # logged once, not by a plain and a rich handler
    assert "batch size we found" not in output  # self.log is told the batch size


def test_test_from_checkpoint_reproduces_the_train_metrics(trained: Trained, mvtec_root: Path) -> None:
    datamodule = ["--data", "MVTecAD", "--data.root", str(mvtec_root), "--data.category", "brick"]
    datamodule += [
        "--data.val_split_mode",
        "from_test",
        "--data.val_split_ratio",
        "0.5",
        "--data.seed",
        "0",
    ]  # as CONFIG
    test = run_cli(
        ["anomalib", "test", *MODEL, *datamodule, "--data.num_workers", "0", "--ckpt_path", str(trained.ckpt)],
        trained.workdir,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    expected = printed_metric(trained.output.stdout, "image_AUROC")
    assert printed_metric(test.stdout, "image_AUROC") == pytest.approx(expected, abs=1e-6)


def test_predict_writes_an_image_per_input(trained: Trained, mvtec_root: Path) -> None:
    images = mvtec_root / "brick" / "test" / "scratch"
    predict = run_cli(["anomalib", "predict", *MODEL, "--data", str(images), "--ckpt_path", str(trained.ckpt)],
                      trained.workdir)  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    written = list(trained.workdir.glob("results/Ckaad/latest/images/**/*.png"))
    assert len(written) >= len(list(images.glob("*.png")))


def _export(trained: Trained, export_type: str, file: str) -> None:
    export = run_cli(
        ["anomalib", "export", *MODEL, "--ckpt_path", str(trained.ckpt), "--export_type", export_type], trained.workdir
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (trained.workdir / "results" / "weights" / export_type / file).is_file()


@pytest.mark.long  # ~1 minute each (anomalib's ONNX path); the in-process export tests cover the formats too
@pytest.mark.parametrize(
    ("export_type", "file"), [("openvino", "model.xml"), ("torch", "model.pt"), ("onnx", "model.onnx")]
)
def test_cli_export(trained: Trained, export_type: str, file: str) -> None:
    _export(trained, export_type, file)


@pytest.mark.long
def test_fit_from_yaml_with_class_path(mvtec_root: Path, lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    config = tmp_path / "ckaad.yaml"
    config.write_text(
        "trainer: {max_epochs: 1, accelerator: cpu, logger: false}\n"
        "model:\n  class_path: Ckaad\n  init_args: {backbone: tf_efficientnet_lite0, "
        "layers: [blocks.2, blocks.4], discriminator: image}\n"
        f"data:\n  class_path: anomalib.data.MVTecAD\n  init_args: {{root: {mvtec_root}, category: brick, "
        "num_workers: 0}\n"
    )
    fit = run_cli(["anomalib", "fit", "--config", str(config)], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert list(tmp_path.glob("results/Ckaad/**/model.ckpt"))


@pytest.mark.long  # ckaad-benchmark runs the same jobs (anomalib's generator and job) in the default suite
def test_benchmark_grid_with_recon_twin(mvtec_root: Path, lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    config = tmp_path / "benchmark.yaml"
    config.write_text(
        "accelerator: [cpu]\nbenchmark:\n  seed: 0\n  model:\n    class_path: Ckaad\n    init_args:\n"
        "      backbone: tf_efficientnet_lite0\n      layers: [blocks.1, blocks.2, blocks.4]\n      max_epochs: 1\n"
        "      adv_weight: {grid: [0.0, 0.02]}\n"
        f"  data:\n    class_path: MVTecAD\n    init_args: {{root: {mvtec_root}, category: brick, num_workers: 0}}\n"
    )
    bench = run_cli(["anomalib", "benchmark", "--config", str(config)], tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    csv = next(tmp_path.glob("runs/benchmark/*/results.csv")).read_text().splitlines()
    assert len(csv) == 3  # header + Ckaad + Recon
    assert "image_AUROC" in csv[0]
    assert all("Ckaad" in row for row in csv[1:])


def test_ckaad_benchmark_fails_loudly_and_keeps_every_job_in_the_table(
    mvtec_root: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    """anomalib's own benchmark logs a failed job and exits 0; ckaad-benchmark writes an error row and exits 1.

    The grid is Ckaad and its Recon twin on a good and a missing category: two trained rows, two error rows.
    """
    del lite0_weights
    config = tmp_path / "grid.yaml"
    config.write_text(
        "accelerator: [cpu]\nbenchmark:\n  seed: 0\n  model:\n    class_path: Ckaad\n    init_args:\n"
        "      backbone: tf_efficientnet_lite0\n      layers: [blocks.1, blocks.2, blocks.4]\n      max_epochs: 1\n"
        "      image_size: [64, 64]\n      adv_weight: {grid: [0.0, 0.02]}\n"
        f"  data:\n    class_path: MVTecAD\n    init_args:\n      root: {mvtec_root}\n      num_workers: 0\n"
        "      category: {grid: [brick, no_such_category]}\n"
    )
    bench = run_cli(["ckaad-benchmark", "--config", str(config)], tmp_path)
    assert bench.returncode == 1, bench.stderr[-3000:]
    assert "2 benchmark job(s) failed: model=Ckaad, data=MVTecAD, category=no_such_category, seed=0" in bench.stderr
    table = pd.read_csv(next(tmp_path.glob("runs/benchmark/*/results.csv")))
    ok, errors = table[table.status == "ok"], table[table.status == "error"]
    assert sorted(ok["model.init_args.adv_weight"]) == [0.0, 0.02]  # Ckaad and its Recon twin
    assert (ok.image_AUROC >= 0).all()
    assert (errors["data.init_args.category"] == "no_such_category").all()
    assert len(errors) == 2
    assert errors.error.str.len().gt(0).all()  # the exception, by type and message


def test_cli_without_weights_prints_the_offline_help_first(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_mvtec_like_dataset(root, "brick", n_train=4, n_test_good=2, n_test_defect=2, image_size=32)
    proc = run_cli(["anomalib", "train", "--model", "Ckaad", "--data", "MVTecAD", "--data.root", str(root)], tmp_path)
    assert proc.returncode != 0
    lines = (proc.stderr + proc.stdout).splitlines()
    message = "Pretrained weights for backbone 'wide_resnet50_2'"
    # logged (rich handler, stdout, wrapped at 80 columns) before the exception reaches the CLI's traceback
    assert "ERROR    Pretrained weights for backbone" in proc.stdout
    assert message in proc.stderr  # and the traceback ends with it
    retries = [line for line in lines if "Retrying" in line or "retry" in line.lower()]
    assert not retries
    assert len(lines) < 250, len(lines)  # was 308 with the retries; the rest is the CLI's own rich traceback
