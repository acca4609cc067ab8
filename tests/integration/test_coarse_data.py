"""CoarseAnomalyDataModule on generated trees: every source, no leakage, seeds, the written file list."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import BMAD, Folder, MVTecAD, Visa
from anomalib.engine import Engine
from torch.utils.data import DataLoader

from ckaad_anomalib import Ckaad
from ckaad_anomalib.data import ELPV, CoarseAnomalyDataModule, make_mvtec_like_dataset
from ckaad_anomalib.data.coarse import COARSE_LIST
from tests import trees
from tests.conftest import small_ckaad


def _mvtec(root: Path, **kwargs: object) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=8, num_workers=0, **kwargs)


def _keys(dataset: object) -> set[str]:
    return {str(Path(p).resolve()) for p in dataset.samples.image_path}  # type: ignore[attr-defined]


def _setup(dm: CoarseAnomalyDataModule) -> CoarseAnomalyDataModule:
    dm.setup("fit")
    return dm


def test_dataset_source_draws_k_classes_and_never_leaks(mvtec_root: Path) -> None:
    dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="dataset", ratio=0.2, num_classes=1, seed=0))
    coarse = set(dm.coarse_samples.image_path.map(lambda p: str(Path(p).resolve())))
    assert len(coarse) == 3  # round(12 / 0.8 − 12)
    assert dm.coarse_samples.label.nunique() == 1
    assert not coarse & _keys(dm.val_data)
    assert not coarse & _keys(dm.test_data)
    assert not _keys(dm.val_data) & _keys(dm.test_data)  # validation is not the test split
    # all images of the dataset are still accounted for
    total = len(dm.val_data) + len(dm.test_data) + len(coarse)
    assert total == 4 + 2 * 3


def test_same_seed_same_files_other_seed_other_split(mvtec_root: Path) -> None:
    def pick(seed: int) -> list[str]:
        dm = CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=seed)
        return sorted(_setup(dm).coarse_samples.image_path)

    assert pick(0) == pick(0)
    assert len({tuple(pick(s)) for s in range(6)}) > 1


def test_classes_by_name_and_clear_errors(mvtec_root: Path) -> None:
    dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, classes=["stain"]))
    assert set(dm.coarse_samples.label) == {"stain"}
    with pytest.raises(ValueError, match=r"classes \['dent'\] not found.*\['scratch', 'stain'\]"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), classes=["dent"]))
    with pytest.raises(ValueError, match=r"asks for 12 coarse anomalies.*hold only 3"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.5))
    with pytest.raises(ValueError, match="num_classes=3"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), num_classes=3))
    with pytest.raises(ValueError, match="source='folder' needs `folder`"):
        CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder")


def test_training_batches_carry_labelled_anomalies_without_masks(mvtec_root: Path) -> None:
    dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0))
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 12 normals / 4
    for batch in batches:
        assert batch.gt_label.tolist() == [0, 0, 0, 0, 1, 1, 1]
        assert batch.gt_mask is None
    val = next(iter(dm.val_dataloader()))
    assert val.gt_mask is not None  # evaluation keeps its masks


def test_normal_only_keeps_the_split_and_drops_the_anomalies_from_training(mvtec_root: Path) -> None:
    """The unsupervised peers' view of a benchmark: the same files, normal training batches; from a grid's dict."""
    coarse = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0))
    config = {"class_path": "MVTecAD", "init_args": {"root": str(mvtec_root), "category": "brick", "num_workers": 0}}
    plain = _setup(CoarseAnomalyDataModule(config, ratio=0.2, seed=0, normal_only=True))
    for split in ("train_data", "val_data", "test_data"):
        assert getattr(plain, split).samples.image_path.tolist() == getattr(coarse, split).samples.image_path.tolist()
    batches = list(plain.train_dataloader())
    assert sum(len(b.gt_label) for b in batches) == len(plain.train_data)  # every normal image once
    assert not any(b.gt_label.any() for b in batches)
    with pytest.raises(ValueError, match="a dict with class_path"):
        CoarseAnomalyDataModule({"root": "x"})


def test_folder_source_with_copies_in_test_and_stray_files(
    mvtec_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "my_defects"
    folder.mkdir()
    for path in sorted((mvtec_root / "brick" / "test" / "scratch").glob("*.png"))[:2]:
        shutil.copy(path, folder / path.name)
    trees.write_image(folder / "extra.jpg", seed=1, grey=False)
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO):
        dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder", folder=folder))
    assert len(dm.coarse_samples) == 3
    assert "skipped 1 non-image file(s)" in caplog.text
    assert "notes.txt" in caplog.text
    # the copies are different files, so only files *at* the same path are removed; nothing leaks by path
    assert not set(dm.coarse_samples.image_path.map(lambda p: str(Path(p).resolve()))) & _keys(dm.test_data)


def test_folder_pointing_into_the_test_set_removes_those_images(mvtec_root: Path) -> None:
    folder = mvtec_root / "brick" / "test" / "stain"
    dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder", folder=folder))
    assert len(dm.coarse_samples) == 3
    assert not any("stain" in p for p in dm.test_data.samples.image_path)
    assert not any("stain" in p for p in dm.val_data.samples.image_path)


def test_folder_errors(mvtec_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder", folder=empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png is not a readable image"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder", folder=broken))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="folder", folder=tmp_path / "nope"))


@pytest.mark.parametrize("kinds", [["elastic"], ["perlin"], ["cutpaste"], ["elastic", "perlin", "cutpaste"]])
def test_synthetic_source(mvtec_root: Path, kinds: list[str]) -> None:
    dm = _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="synthetic", synthetic=kinds))
    assert len(dm.coarse_data) == len(dm.train_data) == 12  # type: ignore[arg-type]
    batch = next(iter(dm.train_dataloader()))
    assert batch.gt_label.tolist() == [0] * 4 + [1] * 4
    assert torch.isfinite(batch.image).all()
    assert batch.image.min() >= 0
    assert batch.image.max() <= 1
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        _setup(CoarseAnomalyDataModule(_mvtec(mvtec_root), source="synthetic", synthetic=["blur"]))  # type: ignore[list-item]


def test_anomalib_folder_datamodule(mvtec_root: Path) -> None:
    folder = Folder(
        name="bricks",
        root=mvtec_root / "brick",
        normal_dir="train/good",
        abnormal_dir=["test/scratch", "test/stain"],
        normal_test_dir="test/good",
        train_batch_size=4,
        num_workers=0,
        seed=0,
    )
    dm = _setup(CoarseAnomalyDataModule(folder, ratio=0.2, seed=0))
    assert len(dm.coarse_samples) == 3
    assert not set(dm.coarse_samples.image_path) & set(dm.test_data.samples.image_path)
    assert not set(dm.coarse_samples.image_path) & set(dm.val_data.samples.image_path)


def test_anomalib_bmad_datamodule(tmp_path: Path) -> None:
    root = trees.bmad(tmp_path / "BMAD", n=8)
    bmad = BMAD(root=root, category="Brain", train_batch_size=4, num_workers=0)
    dm = _setup(CoarseAnomalyDataModule(bmad, ratio=0.2, seed=0))
    assert len(dm.coarse_samples) == 2  # round(8 / 0.8 − 8)
    assert set(dm.coarse_samples.label) == {"Ungood"}
    coarse = set(dm.coarse_samples.image_path)
    assert not coarse & set(dm.val_data.samples.image_path)  # BMAD's own valid split, minus the coarse images
    assert not coarse & set(dm.test_data.samples.image_path)
    assert len(dm.val_data) + len(dm.test_data) == 16 - 2


def test_anomalib_visa_datamodule(tmp_path: Path) -> None:
    # Visa's processed layout (visa_pytorch/<category>) is MVTec-like
    make_mvtec_like_dataset(
        tmp_path / "visa_pytorch", "gravel", n_train=12, n_test_good=4, n_test_defect=3, image_size=32
    )
    visa = Visa(root=tmp_path, category="gravel", train_batch_size=4, num_workers=0)
    dm = _setup(CoarseAnomalyDataModule(visa, ratio=0.2, seed=0))
    assert len(dm.coarse_samples) == 3
    coarse = set(dm.coarse_samples.image_path)
    assert not coarse & (set(dm.val_data.samples.image_path) | set(dm.test_data.samples.image_path))
    assert not set(dm.val_data.samples.image_path) & set(dm.test_data.samples.image_path)


def test_elpv_draws_from_its_training_pool(tmp_path: Path) -> None:
    elpv = ELPV(root=trees.elpv(tmp_path / "elpv", per_class=20), module_type="mono", num_workers=0)
    dm = _setup(CoarseAnomalyDataModule(elpv, ratio=0.2, seed=0))
    assert len(dm.coarse_samples) == round(len(dm.train_data) / 0.8 - len(dm.train_data))
    coarse = set(dm.coarse_samples.image_path)
    assert coarse <= set(elpv.coarse_pool.samples.image_path)  # type: ignore[union-attr]
    assert not coarse & (set(dm.val_data.samples.image_path) | set(dm.test_data.samples.image_path))
    assert len(dm.test_data) == len(elpv.test_data)  # the test set is untouched


@pytest.mark.slow
def test_engine_trains_ckaad_on_coarse_batches_and_writes_the_list(
    mvtec_root: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    del lite0_weights
    torch.manual_seed(0)
    model = small_ckaad()
    assert model.model.patch_discriminator is not None
    d_before = [p.detach().clone() for p in model.model.patch_discriminator.parameters()]
    dm = CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0)
    engine = Engine(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False)
    engine.fit(model, datamodule=dm)
    d_after = list(model.model.patch_discriminator.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(d_before, d_after, strict=True))  # D stepped on x⁻
    written = pd.read_csv(Path(engine.trainer.default_root_dir) / COARSE_LIST)  # the run's results folder
    assert Path(engine.trainer.default_root_dir).is_relative_to(tmp_path)
    assert sorted(written.image_path) == sorted(dm.coarse_samples.image_path)
    results = engine.test(model, datamodule=dm)[0]
    assert 0 <= results["image_AUROC"] <= 1


def _component_scores(model: Ckaad, loader: object) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = [], []
    for batch in loader:  # type: ignore[attr-defined]
        scores.append(model.model.component_scores(model.pre_processor.transform(batch.image)))  # type: ignore[union-attr]
        labels.append(batch.gt_label.bool())
    return torch.cat(scores), torch.cat(labels)


def test_fused_score_is_fitted_on_validation(
    mvtec_root: Path, lite0_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torchmetrics.functional.classification import binary_auroc

    from ckaad_anomalib.models.ckaad.torch_model import AUTO_WEIGHTS, ScoreComponent

    del lite0_weights
    torch.manual_seed(0)
    model = small_ckaad(gamma=0.0, d_lr=1e-3, mil_fraction=0.1, energy_weight="auto")
    dm = CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0)
    engine = Engine(default_root_dir=tmp_path / "a", max_epochs=1, accelerator="cpu", logger=False)
    with caplog.at_level(logging.WARNING):
        engine.fit(model, datamodule=dm)
    assert "no normal validation images" not in caplog.text  # validation fitted it; no fallback pass
    caplog.clear()
    model.model.eval()
    scores, anomalous = _component_scores(model, dm.val_dataloader())
    assert anomalous.any()
    assert (~anomalous).sum() >= 2
    torch.testing.assert_close(model.model.score_mean, scores[~anomalous].mean(0))
    torch.testing.assert_close(model.model.score_std, scores[~anomalous].std(0))
    energy_weights = AUTO_WEIGHTS[ScoreComponent.ENERGY]
    candidates = [torch.tensor([1.0, w]) for w in energy_weights]
    aurocs = torch.stack([binary_auroc(model.model.fuse(scores, w), anomalous.int()) for w in candidates])
    best = energy_weights[int(aurocs.argmax())]  # best on validation, smallest on ties
    assert model.model.score_weights.tolist() == [1.0, best]
    assert engine.test(model, datamodule=dm)[0]["image_AUROC"] >= 0

    # no validation loop: the normal training images stand in, w stays, and the log says so
    torch.manual_seed(0)
    model = small_ckaad(gamma=0.0, d_lr=1e-3, mil_fraction=0.1, energy_weight="auto")
    engine = Engine(default_root_dir=tmp_path / "b", max_epochs=1, accelerator="cpu", logger=False)
    with caplog.at_level(logging.WARNING):
        engine.fit(model, train_dataloaders=dm.train_dataloader())
    assert "no normal validation images" in caplog.text
    model.model.eval()
    scores, anomalous = _component_scores(model, dm.train_dataloader())
    torch.testing.assert_close(model.model.score_mean, scores[~anomalous].mean(0))
    assert model.model.score_weights.tolist() == [1.0, 1.0]


def test_memory_banks_hold_the_normal_images_and_the_coarse_anomalies_farthest_patches(
    mvtec_root: Path, lite0_weights: Path, tmp_path: Path
) -> None:
    """Normal bank: every normal training image, never a coarse anomaly. Coarse bank: each coarse anomaly's
    ``coarse_fraction`` of positions farthest from the normal bank. Both survive the checkpoint."""
    del lite0_weights
    torch.manual_seed(0)
    model = small_ckaad(adv_weight=0.0, knn_weight=1.0, coarse_weight="auto", coarse_fraction=0.25)
    assert model.trainer_arguments["num_sanity_val_steps"] == 0  # the banks are empty before the first epoch
    dm = CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0)
    engine = Engine(default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", logger=False)
    engine.fit(model, datamodule=dm)
    nearest, coarse_bank = model.model.nearest, model.model.coarse
    assert nearest is not None
    assert coarse_bank is not None
    transform = model.pre_processor.transform  # type: ignore[union-attr]

    def patches(loader: DataLoader) -> torch.Tensor:
        return torch.cat([nearest.patches(model.model.extract(transform(b.image))) for b in loader])

    normals = patches(DataLoader(dm.train_data, batch_size=8, collate_fn=dm.train_data.collate_fn)).flatten(0, 1)
    # the normal bank is exactly the normal training images' embeddings (fewer than bank_size), each once
    assert sorted(map(tuple, nearest.memory_bank.tolist())) == sorted(map(tuple, normals.tolist()))
    anomalies = patches(DataLoader(dm.coarse_data, batch_size=8, collate_fn=dm.coarse_data.collate_fn))
    assert torch.cdist(anomalies.flatten(0, 1), nearest.memory_bank).min() > 0  # no coarse anomaly patch in it
    n, positions = anomalies.shape[:2]
    farthest = nearest.distances(anomalies.flatten(0, 1)).reshape(n, positions).topk(positions // 4, dim=1).indices
    expected = torch.cat([anomalies[i, farthest[i]] for i in range(n)])
    torch.testing.assert_close(
        torch.unique(coarse_bank.memory_bank, dim=0), torch.unique(expected, dim=0), atol=1e-5, rtol=1e-5
    )
    assert model.model.components == ["distance", "nearest", "coarse"]
    assert model.model.score_std.shape == (3,)  # fitted on validation normals
    assert float(model.model.score_weights[2]) in {0.0, 0.25, 0.5, 1.0}  # chosen on validation
    loaded = Ckaad.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    batch = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(
        loaded.model.eval()(transform(batch.image)).pred_score, model.model.eval()(transform(batch.image)).pred_score
    )

    plain = small_ckaad(adv_weight=0.0, knn_weight=1.0, coarse_weight=0.5)  # no coarse anomalies: a clear error
    with pytest.raises(ValueError, match=r"saw no labelled anomaly.*CoarseAnomalyDataModule"):
        Engine(default_root_dir=tmp_path / "plain", max_epochs=1, accelerator="cpu", logger=False).fit(
            plain, datamodule=_mvtec(mvtec_root)
        )


@pytest.mark.slow
def test_nearest_normalize_auto_keeps_the_banks_whose_map_ranks_validation_pixels_best(
    mvtec_root: Path, lite0_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.nn import functional as F  # noqa: N812
    from torchmetrics.functional.classification import binary_auroc

    del lite0_weights
    dm = CoarseAnomalyDataModule(_mvtec(mvtec_root), ratio=0.2, seed=0)
    # the recommended setting's kind: nothing trained reaches the output, so each fit is one epoch of banks
    setting = {"distance_weight": 0.0, "knn_weight": 1.0, "coarse_weight": 1.0, "fused_map": True}
    models = {}
    for normalize in (False, True, "auto"):
        torch.manual_seed(0)
        models[normalize] = small_ckaad(**setting, nearest_normalize=normalize)
        with caplog.at_level(logging.INFO):
            engine = Engine(default_root_dir=tmp_path / str(normalize), accelerator="cpu", logger=False)
            engine.fit(models[normalize], datamodule=dm)
    assert "Ckaad chose nearest_normalize" in caplog.text
    transform = models[False].pre_processor.transform  # type: ignore[union-attr]

    def pixel_auroc(model: Ckaad) -> float:
        maps, masks = [], []
        for batch in dm.val_dataloader():
            anomaly_map = model.model.eval()(transform(batch.image)).anomaly_map
            masks.append(F.interpolate(batch.gt_mask[:, None].float(), size=anomaly_map.shape[-2:]).int().flatten())
            maps.append(anomaly_map.flatten())
        return float(binary_auroc(torch.cat(maps), torch.cat(masks)))

    quality = {normalize: pixel_auroc(models[normalize]) for normalize in (False, True)}
    assert quality[False] != quality[True]  # a real choice on this data
    chosen = quality[True] > quality[False]
    auto = models["auto"].model.eval()
    assert auto.bank_candidates == []
    assert auto.nearest is not None
    assert auto.nearest.normalize == chosen
    twin = models[chosen].model
    torch.testing.assert_close(auto.nearest.memory_bank, twin.nearest.memory_bank)  # type: ignore[union-attr]
    torch.testing.assert_close(auto.coarse.memory_bank, twin.coarse.memory_bank)  # type: ignore[union-attr]
    torch.testing.assert_close(auto.score_mean, twin.score_mean)  # fitted for the chosen banks
    batch = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(auto(transform(batch.image)).pred_score, twin(transform(batch.image)).pred_score)
