"""Image-level datamodules on generated trees: splits, labels, 3-channel images, layout errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from anomalib.data.utils import LabelName

from ckaad_anomalib.data import ELPV, ISIC2018, OCT2017, Br35H, ChestXRay2017, LabelledImageDataModule
from tests import trees


def _setup(dm: LabelledImageDataModule) -> LabelledImageDataModule:
    dm.setup("fit")
    return dm


def _paths(dataset: object) -> set[str]:
    return set(dataset.samples.image_path)  # type: ignore[attr-defined]


def _check_disjoint_and_typed(dm: LabelledImageDataModule) -> None:
    pool = dm.coarse_pool
    assert pool is not None
    parts = [_paths(dm.train_data), _paths(dm.val_data), _paths(dm.test_data), _paths(pool)]
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b
    assert (dm.train_data.samples.label_index == LabelName.NORMAL).all()
    assert (pool.samples.label_index == LabelName.ABNORMAL).all()
    assert dm.val_data.samples.label_index.nunique() == 2  # thresholds need both labels
    item = dm.test_data[0]
    assert item.image.shape[0] == 3  # grayscale read as RGB
    assert item.gt_mask is None


def test_chest_xray(tmp_path: Path) -> None:
    dm = _setup(ChestXRay2017(trees.kermany(tmp_path, ("NORMAL", "PNEUMONIA"), n=10), num_workers=0))
    _check_disjoint_and_typed(dm)
    assert len(dm.test_data) == 20  # the dataset's test folders, untouched
    assert set(dm.test_data.samples.label) == {"NORMAL", "PNEUMONIA"}
    assert len(dm.train_data) == 8  # 10 train normals minus 20 % validation
    assert dm.category == "ChestXRay2017"


def test_oct(tmp_path: Path) -> None:
    dm = _setup(OCT2017(trees.kermany(tmp_path, ("NORMAL", "CNV", "DME", "DRUSEN"), n=5), num_workers=0))
    _check_disjoint_and_typed(dm)
    assert set(dm.coarse_pool.samples.label) == {"CNV", "DME", "DRUSEN"}  # type: ignore[union-attr]
    assert (dm.test_data.samples.label_index == LabelName.ABNORMAL).sum() == 15


def test_isic_labels_from_csv_and_validation_split_as_test(tmp_path: Path) -> None:
    dm = _setup(ISIC2018(trees.isic(tmp_path), num_workers=0))
    _check_disjoint_and_typed(dm)
    test = dm.test_data.samples
    assert all("ISIC_V" in Path(p).name for p in test.image_path)  # Task-3 validation images
    assert set(test[test.label_index == LabelName.NORMAL].label) == {"NV"}
    assert set(test.label) == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}


def test_br35h_sorted_80_20(tmp_path: Path) -> None:
    dm = _setup(Br35H(trees.br35h(tmp_path, n=10), num_workers=0))
    _check_disjoint_and_typed(dm)
    test_names = sorted(Path(p).name for p in dm.test_data.samples.image_path)
    assert test_names == ["008.jpg", "008.jpg", "009.jpg", "009.jpg"]  # last 20 % of each class


def test_elpv_options(tmp_path: Path) -> None:
    root = trees.elpv(tmp_path, per_class=8)
    mono = _setup(ELPV(root=root, module_type="mono", num_workers=0))
    _check_disjoint_and_typed(mono)
    everything = pd.concat([d.samples for d in (mono.train_data, mono.val_data, mono.test_data, mono.coarse_pool)])  # type: ignore[union-attr]
    assert set(everything.label) == {"functional", "defective"}  # ⅓ and ⅔ excluded by default
    assert len(everything) == 16
    assert mono.category == "mono"
    both = _setup(ELPV(root=root, module_type="both", partial="anomalous", num_workers=0))
    labels = pd.concat([d.samples for d in (both.train_data, both.val_data, both.test_data, both.coarse_pool)])  # type: ignore[union-attr]
    assert len(labels) == 64
    assert set(labels[labels.label_index == LabelName.ABNORMAL].label) == {
        "defective",
        "likely_defective",
        "possibly_defective",
    }
    as_normal = _setup(ELPV(root=root, module_type="poly", partial="normal", num_workers=0))
    normal_count = sum(
        (d.samples.label == "functional").sum() for d in (as_normal.train_data, as_normal.val_data, as_normal.test_data)
    )
    assert normal_count == 24
    seeded = [sorted(_setup(ELPV(root=root, seed=s, num_workers=0)).test_data.samples.image_path) for s in (0, 0, 1)]
    assert seeded[0] == seeded[1]
    assert seeded[0] != seeded[2]
    with pytest.raises(ValueError, match="module_type"):
        ELPV(root=root, module_type="thin")  # type: ignore[arg-type]


def test_elpv_from_the_installed_package() -> None:
    dm = _setup(ELPV(module_type="mono", num_workers=0))
    sizes = {"train": len(dm.train_data), "val": len(dm.val_data), "test": len(dm.test_data)}
    total = sum(sizes.values()) + len(dm.coarse_pool)  # type: ignore[arg-type]
    assert total == 588 + 313  # mono cells of probability 0 and 1


@pytest.mark.parametrize(
    ("factory", "break_it", "match"),
    [
        (ChestXRay2017, lambda r: None, "the dataset folder does not exist"),
        (
            lambda r: ChestXRay2017(trees.kermany(r, ("NORMAL",))),
            lambda r: None,
            r"folder .*train/PNEUMONIA is missing",
        ),
        (lambda r: Br35H(trees.br35h(r)), lambda r: [p.unlink() for p in (r / "yes").iterdir()], "holds no images"),
        (
            lambda r: ISIC2018(trees.isic(r)),
            lambda r: (
                r / "ISIC2018_Task3_Validation_GroundTruth" / "ISIC2018_Task3_Validation_GroundTruth.csv"
            ).unlink(),
            "GroundTruth.csv is missing",
        ),
        (
            lambda r: ISIC2018(trees.isic(r)),
            lambda r: next((r / "ISIC2018_Task3_Training_Input").iterdir()).unlink(),
            r"1 image\(s\) listed in .* are missing",
        ),
        (
            lambda r: OCT2017(trees.kermany(r, ("NORMAL", "CNV", "DME", "DRUSEN"))),
            lambda r: [p.unlink() for p in (r / "test" / "NORMAL").iterdir()],
            "holds no images",
        ),
        (lambda r: ELPV(root=r), lambda r: None, "labels.csv is missing"),
    ],
)
def test_layout_errors_say_what_is_expected_and_where_to_get_it(
    tmp_path: Path, factory: object, break_it: object, match: str
) -> None:
    root = tmp_path / "data"
    if "does not exist" not in match:
        root.mkdir()
    dm = factory(root)  # type: ignore[operator]
    break_it(root)  # type: ignore[operator]
    with pytest.raises(FileNotFoundError, match=match) as info:
        dm.setup("fit")
    text = str(info.value)
    assert "Expected layout:" in text
    assert "cannot be downloaded automatically" in text
