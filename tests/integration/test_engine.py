"""Real training through anomalib's Engine on a generated MVTec-layout dataset; checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from ckaad_anomalib import Ckaad
from tests.conftest import small_ckaad

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(mvtec_root: Path, lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Ckaad]:
    del lite0_weights
    torch.manual_seed(0)
    model = small_ckaad()
    engine = Engine(default_root_dir=tmp_path_factory.mktemp("engine"), max_epochs=2, accelerator="cpu", logger=False)
    engine.fit(model, datamodule=_datamodule(mvtec_root))
    return engine, model


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=8, num_workers=0, seed=0)


def test_fit_then_test_reports_image_and_pixel_metrics(trained: tuple[Engine, Ckaad], mvtec_root: Path) -> None:
    engine, model = trained
    assert engine.trainer.current_epoch == 2
    results = engine.test(model, datamodule=_datamodule(mvtec_root))[0]
    for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"):
        assert 0.0 <= results[key] <= 1.0, key


def test_checkpoint_round_trip_gives_identical_predictions(trained: tuple[Engine, Ckaad]) -> None:
    engine, model = trained
    ckpt = engine.trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    assert Path(ckpt).is_file()
    reloaded = Ckaad.load_from_checkpoint(ckpt)  # weights_only=True, anomalib's default
    assert reloaded.hparams.backbone == "tf_efficientnet_lite0"
    x = torch.randn(3, 3, 64, 64)
    model.eval()
    reloaded.eval()
    expected, got = model.model(x), reloaded.model(x)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_score, expected.pred_score, rtol=0, atol=0)
    assert reloaded.pre_processor.transform.transforms[0].size == [64, 64]


def test_resume_continues_training(trained: tuple[Engine, Ckaad], mvtec_root: Path, tmp_path: Path) -> None:
    engine, _ = trained
    ckpt = engine.trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    resumed_engine = Engine(default_root_dir=tmp_path, max_epochs=3, accelerator="cpu", logger=False)
    resumed = small_ckaad()
    resumed_engine.fit(resumed, datamodule=_datamodule(mvtec_root), ckpt_path=ckpt)
    assert resumed_engine.trainer.current_epoch == 3
    # the AE optimiser state came back with the checkpoint (Adam's step count keeps growing)
    state = resumed_engine.trainer.optimizers[0].state
    steps = {int(s["step"]) for s in state.values()}
    assert steps == {9}  # 3 epochs × 3 batches of 4 normal images
