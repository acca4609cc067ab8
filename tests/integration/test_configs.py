"""Every shipped config parses with anomalib's CLI; the CPU configs train end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from anomalib.cli import AnomalibCLI

from ckaad_anomalib import Ckaad, SupersimplenetWeak
from ckaad_anomalib.data import CoarseAnomalyDataModule
from tests.conftest import printed_metric, run_cli

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
PAPER = {  # config: (backbone, lr, train batch, epochs)
    "ckaad_chestxray2017.yaml": ("resnet18", 1e-3, 32, 200),
    "ckaad_oct2017.yaml": ("resnet18", 1e-3, 32, 10),
    "ckaad_isic2018.yaml": ("resnet18", 1e-3, 64, 200),
    "ckaad_br35h.yaml": ("resnet18", 1e-3, 64, 200),
    "ckaad_mvtecad.yaml": ("wide_resnet50_2", 5e-3, 16, 200),
    "ckaad_visa.yaml": ("wide_resnet50_2", 5e-3, 16, 400),
}


def _datamodule_class(config: Path) -> tuple[str, bool]:
    """The dataset class a config reads (the wrapped one for ``CoarseAnomalyDataModule``), and whether it is wrapped."""
    data = yaml.safe_load(config.read_text())["data"]
    inner = (data.get("init_args") or {}).get("datamodule")
    if isinstance(inner, dict):
        return inner["class_path"].rsplit(".", 1)[-1], True
    return data["class_path"].rsplit(".", 1)[-1], False


def _tree(name: str, root: Path) -> Path:
    """A tiny dataset in the layout the config's datamodule reads; returns its root."""
    from ckaad_anomalib.data import make_mvtec_like_dataset
    from tests import trees

    if name in {"MVTecAD", "Visa"}:
        base = root / "visa_pytorch" if name == "Visa" else root
        make_mvtec_like_dataset(base, "gravel", n_train=12, n_test_good=6, n_test_defect=4, image_size=32, seed=0)
        return root
    makers = {
        "ChestXRay2017": lambda: trees.kermany(root, ("NORMAL", "PNEUMONIA"), n=12),
        "OCT2017": lambda: trees.kermany(root, ("NORMAL", "CNV", "DME", "DRUSEN"), n=12),
        "ISIC2018": lambda: trees.isic(root, n_per_class=6),
        "Br35H": lambda: trees.br35h(root, n=30),
        "ELPV": lambda: trees.elpv(root, per_class=30),
    }
    return makers[name]()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_instantiates_and_validation_never_sees_test_images(
    config: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    """Each config builds with anomalib's CLI (paper values where it is a paper setting). Thresholds and
    normalisation are fitted on validation: it must be disjoint from test and hold both labels, for every config."""
    del lite0_weights
    name, wrapped = _datamodule_class(config)
    root = _tree(name, tmp_path / "data")
    prefix = "--data.init_args.datamodule.init_args" if wrapped else "--data.init_args"
    args = [f"{prefix}.root", str(root)]
    if name in {"MVTecAD", "Visa"}:
        args += [f"{prefix}.category", "gravel"]
    offline = ["--model.pre_trained", "false"] if "ckaad" in config.name else []  # SuperSimpleNet: lite0, cached
    cli = AnomalibCLI(["train", "--config", str(config), *offline, *args], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, Ckaad | SupersimplenetWeak)
    assert isinstance(data, CoarseAnomalyDataModule) == wrapped
    assert type(data.datamodule if wrapped else data).__name__ == name
    assert cli.config["train"]["trainer"]["max_epochs"] >= 1
    if config.name in PAPER:
        backbone, lr, batch, epochs = PAPER[config.name]
        assert (model.hparams.backbone, model.hparams.lr) == (backbone, lr)
        assert data.train_batch_size == batch
        assert cli.config["train"]["trainer"]["max_epochs"] == epochs
        assert data.source == ("synthetic" if backbone == "wide_resnet50_2" else "dataset")
        if data.source == "dataset":
            assert (data.ratio, data.num_classes) == (0.05, 1)

    data.setup()
    val = set(data.val_data.samples.image_path)
    test = set(data.test_data.samples.image_path)
    assert val, f"{config.name}: no validation images"
    assert test, f"{config.name}: no test images"
    assert not val & test, f"{config.name}: validation shares {len(val & test)} image(s) with test"
    assert set(data.val_data.samples.label_index) == {0, 1}, f"{config.name}: validation needs both labels"


@pytest.mark.long
def test_elpv_config_trains_on_real_coarse_anomalies(lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    config = Path(__file__).parents[2] / "configs" / "ckaad_elpv_lite0.yaml"
    proc = run_cli(["anomalib", "train", "--config", str(config), "--trainer.max_epochs", "1"], tmp_path, 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.5 < printed_metric(proc.stdout, "image_AUROC") <= 1.0  # pretrained features already separate cracked cells
    assert 0.0 < printed_metric(proc.stdout, "image_F1Score") <= 1.0
    listed = (tmp_path / "results" / "Ckaad" / "ELPV" / "mono" / "v0" / "coarse_anomalies.csv").read_text().splitlines()
    assert len(listed) == 1 + 19  # header + round(353 / 0.95 − 353)


@pytest.mark.long
def test_synthetic_source_config_on_mvtec_layout(mvtec_root: Path, lite0_weights: Path, tmp_path: Path) -> None:
    del lite0_weights
    config = Path(__file__).parents[2] / "configs" / "ckaad_synthetic_coarse_lite0.yaml"
    args = ["--trainer.max_epochs", "1", "--data.init_args.datamodule.init_args.root", str(mvtec_root)]
    proc = run_cli(["anomalib", "train", "--config", str(config), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 <= printed_metric(proc.stdout, "image_AUROC") <= 1.0
    assert 0.0 <= printed_metric(proc.stdout, "pixel_AUROC") <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "ckaad_texture_lite0_coarse_knn_fine.yaml",
        # the same path with coreset banks; under `long` to keep the default suite's time (.ci/run runs it)
        pytest.param("ckaad_texture_lite0_coarse_knn_fine_coreset.yaml", marks=pytest.mark.long),
        pytest.param("ckaad_texture_lite0_coarse_knn_fine_coreset_normalized.yaml", marks=pytest.mark.long),
        pytest.param("ckaad_texture_lite0_coarse_knn_fine_coreset_auto.yaml", marks=pytest.mark.long),
    ],
)
def test_fine_map_config_localises_through_the_cli(
    name: str, mvtec_root: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    """The localisation configs train from the CLI with their stride-4 + stride-8 banks and score a fused map that
    finds the generated defects (lite0's ImageNet features; one epoch fills the banks)."""
    del lite0_weights
    config = Path(__file__).parents[2] / "configs" / name
    args = ["--trainer.max_epochs", "1", "--data.init_args.datamodule.init_args.root", str(mvtec_root)]
    proc = run_cli(["anomalib", "train", "--config", str(config), *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed_metric(proc.stdout, "pixel_AUROC") > 0.9
    assert printed_metric(proc.stdout, "image_AUROC") > 0.8
