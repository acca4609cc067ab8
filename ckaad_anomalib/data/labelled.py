"""Datamodules for image-level-labelled datasets: the paper's medical sets and ELPV solar cells.

Each dataset only says how to list its images (:meth:`LabelledImageDataModule.make_samples`): path, class name,
normal/anomalous, and train/test split as the dataset (or the paper) defines it. One base class does the rest:

* test = the dataset's test split, untouched (as in the paper);
* validation = a label-aware part (``val_split_ratio``) of the training split, normal and anomalous images, for
  thresholds and model selection, so the test set is never looked at;
* training = the remaining normal training images;
* ``coarse_pool`` = the remaining anomalous training images: where
  :class:`~ckaad_anomalib.data.CoarseAnomalyDataModule` draws its coarse anomalies (``source="dataset"``). It
  never overlaps validation or test.

Grayscale images are read as 3-channel RGB (anomalib's ``read_image``). None of the medical sets can be downloaded
automatically (they need logins): a missing or malformed root raises an error that says which layout is expected and
where the data comes from.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, ValSplitMode
from anomalib.data.utils.split import random_split
from torchvision.transforms.v2 import Transform

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class PresplitDataModule(AnomalibDataModule):
    """An ``AnomalibDataModule`` whose :meth:`_setup` makes every split itself.

    anomalib's ``setup()`` re-splits after ``_setup()``; with split mode ``NONE`` that would drop the normal images
    from the test set. These no-ops keep the splits made in ``_setup()``.
    """

    def _create_test_split(self) -> None:
        """No-op: ``_setup`` made the test split."""

    def _create_val_split(self) -> None:
        """No-op: ``_setup`` made the validation split."""


class LabelledImageDataset(AnomalibDataset):
    """An image-level dataset over a samples table (columns ``image_path``, ``label``, ``label_index``, ``split``).

    Args:
        samples: The images of this subset.
        category: Category name shown in results paths.
        augmentations: Transforms applied to each image.
    """

    def __init__(self, samples: pd.DataFrame, category: str, augmentations: Transform | None = None) -> None:
        super().__init__(augmentations=augmentations)
        samples = samples.copy()
        samples["mask_path"] = ""
        samples.attrs["task"] = "classification"
        self.samples = samples.reset_index(drop=True)
        self.category = category


def dataset_error(dataset: str, root: Path, problem: str, layout: str, source: str) -> FileNotFoundError:
    """The error for a missing or malformed dataset root: what is wrong, the expected layout, where to get it."""
    return FileNotFoundError(
        f"{dataset}: {problem} (root: {root}).\nExpected layout:\n{layout}\nGet the data from {source} "
        "(it cannot be downloaded automatically) and pass its folder as `root`."
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class LabelledImageDataModule(PresplitDataModule):
    """Base of the image-level datamodules; subclasses implement :meth:`make_samples` and set ``LAYOUT``/``SOURCE``.

    Args:
        root: Dataset folder.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Data-loading workers.
        train_augmentations: Training transforms.
        val_augmentations: Validation transforms.
        test_augmentations: Test transforms.
        val_split_ratio: Part of the training split (per label) held out for validation.
        seed: Seed of the validation split.
    """

    LAYOUT: ClassVar[str] = ""
    SOURCE: ClassVar[str] = ""
    NORMAL: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | Path,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        val_split_ratio: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            val_split_mode=ValSplitMode.FROM_TRAIN,  # what _setup does; tells wrappers validation is not test
            seed=seed,
        )
        if not 0 < val_split_ratio < 1:
            msg = f"val_split_ratio must lie in (0, 1), got {val_split_ratio}."
            raise ValueError(msg)
        self.root = Path(root)
        self.val_split_ratio = val_split_ratio
        self.coarse_pool: AnomalibDataset | None = None
        self._category = self.__class__.__name__

    def error(self, problem: str) -> FileNotFoundError:
        """A :func:`dataset_error` for this dataset."""
        return dataset_error(self.__class__.__name__, self.root, problem, self.LAYOUT, self.SOURCE)

    def require_dir(self, path: Path) -> Path:
        """``path`` if it is a folder with images, else the layout error."""
        if not path.is_dir():
            raise self.error(f"folder {path} is missing")
        if not list_images(path):
            raise self.error(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return path

    def folder_samples(self, folders: dict[tuple[str, str], Path]) -> pd.DataFrame:
        """Samples of ``{(split, class): folder}``; a class is normal if it is in ``NORMAL``."""
        frames = [
            pd.DataFrame(
                {"image_path": [str(p) for p in list_images(self.require_dir(folder))], "split": split}
            ).assign(label=label)
            for (split, label), folder in folders.items()
        ]
        return pd.concat(frames, ignore_index=True)

    @abstractmethod
    def make_samples(self) -> pd.DataFrame:
        """List the dataset: columns ``image_path``, ``label`` (class name) and ``split`` (``train``/``test``)."""

    def prepare_data(self) -> None:
        """Check that the root exists (nothing can be downloaded)."""
        if not self.root.is_dir():
            raise self.error("the dataset folder does not exist")

    def _setup(self, _stage: str | None = None) -> None:
        self.prepare_data()
        samples = self.make_samples()
        samples["label_index"] = np.where(samples.label.isin(self.NORMAL), LabelName.NORMAL, LabelName.ABNORMAL)
        samples["mask_path"] = ""
        for split in ("train", "test"):
            part = samples[samples.split == split]
            if not (part.label_index == LabelName.NORMAL).any() or not (part.label_index == LabelName.ABNORMAL).any():
                raise self.error(
                    f"the {split} split needs normal and anomalous images, found {sorted(part.label.unique())}"
                )
        category = self.category
        train = LabelledImageDataset(samples[samples.split == "train"], category)
        self.test_data = LabelledImageDataset(samples[samples.split == "test"], category)
        rest, self.val_data = random_split(train, self.val_split_ratio, label_aware=True, seed=self.seed)
        normal = rest.samples.label_index == LabelName.NORMAL
        self.train_data = LabelledImageDataset(rest.samples[normal], category)
        self.coarse_pool = LabelledImageDataset(rest.samples[~normal], category)
        logger.info(
            "%s: %d normal training images, %d anomalies in the coarse pool, val %d, test %d.",
            self.name,
            len(self.train_data),
            len(self.coarse_pool),
            len(self.val_data),
            len(self.test_data),
        )


def _kermany_layout(classes: str) -> str:
    return f"  root/train/{{{classes}}}/*.jpeg\n  root/test/{{{classes}}}/*.jpeg"


_KERMANY_SOURCE = (
    "Kermany et al. 2018, 'Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification', "
    "Mendeley Data, doi:10.17632/rscbjbr9sj"
)


class ChestXRay2017(LabelledImageDataModule):
    """Kermany chest X-rays: NORMAL (normal) vs PNEUMONIA (anomalous), the dataset's train/test folders."""

    LAYOUT = _kermany_layout("NORMAL,PNEUMONIA")
    SOURCE = _KERMANY_SOURCE
    NORMAL = ("NORMAL",)
    ANOMALOUS = ("PNEUMONIA",)

    def make_samples(self) -> pd.DataFrame:
        """Images of ``root/{train,test}/{NORMAL,PNEUMONIA}``."""
        return self.folder_samples(
            {
                (split, label): self.root / split / label
                for split in ("train", "test")
                for label in ("NORMAL", "PNEUMONIA")
            }
        )


class OCT2017(LabelledImageDataModule):
    """Kermany retinal OCT: NORMAL (normal) vs CNV, DME, DRUSEN (anomalous), train/test folders."""

    LAYOUT = _kermany_layout("NORMAL,CNV,DME,DRUSEN")
    SOURCE = _KERMANY_SOURCE
    NORMAL = ("NORMAL",)
    CLASSES = ("NORMAL", "CNV", "DME", "DRUSEN")

    def make_samples(self) -> pd.DataFrame:
        """Images of ``root/{train,test}/{NORMAL,CNV,DME,DRUSEN}``."""
        return self.folder_samples(
            {(split, label): self.root / split / label for split in ("train", "test") for label in self.CLASSES}
        )


class ISIC2018(LabelledImageDataModule):
    """ISIC 2018 Task 3 skin lesions: NV normal; AKIEC, BCC, BKL, DF, MEL, VASC anomalous.

    Labels come from the ground-truth CSVs (one-hot columns). As the authors did, the Task-3 *validation* split is
    the test set.
    """

    LAYOUT = (
        "  root/ISIC2018_Task3_Training_Input/*.jpg\n"
        "  root/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv\n"
        "  root/ISIC2018_Task3_Validation_Input/*.jpg\n"
        "  root/ISIC2018_Task3_Validation_GroundTruth/ISIC2018_Task3_Validation_GroundTruth.csv\n"
        "  (CSV columns: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC, one-hot)"
    )
    SOURCE = "the ISIC 2018 challenge, Task 3 (https://challenge.isic-archive.com/data/#2018)"
    NORMAL = ("NV",)
    CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

    def _split(self, split: str, name: str) -> pd.DataFrame:
        images = self.require_dir(self.root / f"ISIC2018_Task3_{name}_Input")
        csv = self.root / f"ISIC2018_Task3_{name}_GroundTruth" / f"ISIC2018_Task3_{name}_GroundTruth.csv"
        if not csv.is_file():
            raise self.error(f"ground-truth file {csv} is missing")
        table = pd.read_csv(csv)
        missing = [c for c in ("image", *self.CLASSES) if c not in table.columns]
        if missing:
            raise self.error(f"{csv.name} lacks columns {missing}")
        paths = [images / f"{name_}.jpg" for name_ in table.image]
        absent = [p.name for p in paths if not p.is_file()]
        if absent:
            raise self.error(f"{len(absent)} image(s) listed in {csv.name} are missing, e.g. {absent[:3]}")
        labels = table[list(self.CLASSES)].idxmax(axis=1)
        return pd.DataFrame({"image_path": [str(p) for p in paths], "label": labels, "split": split})

    def make_samples(self) -> pd.DataFrame:
        """Training split → train; Task-3 validation split → test."""
        return pd.concat([self._split("train", "Training"), self._split("test", "Validation")], ignore_index=True)


class Br35H(LabelledImageDataModule):
    """Br35H brain MRI: ``no`` (normal) vs ``yes`` (tumour); file names sorted, first 80 % of each class train."""

    LAYOUT = "  root/no/*.jpg\n  root/yes/*.jpg"
    SOURCE = "Kaggle, 'Br35H :: Brain Tumor Detection 2020' (Hamada)"
    NORMAL = ("no",)
    TRAIN_FRACTION = 0.8

    def make_samples(self) -> pd.DataFrame:
        """First 80 % (sorted names) of ``no`` and ``yes`` train, last 20 % test."""
        frames = []
        for label in ("no", "yes"):
            paths = list_images(self.require_dir(self.root / label))
            cut = int(len(paths) * self.TRAIN_FRACTION)
            split = ["train"] * cut + ["test"] * (len(paths) - cut)
            frames.append(pd.DataFrame({"image_path": [str(p) for p in paths], "label": label, "split": split}))
        return pd.concat(frames, ignore_index=True)


ELPV_CLASSES = {1.0: "defective", 2 / 3: "likely_defective", 1 / 3: "possibly_defective", 0.0: "functional"}


class ELPV(LabelledImageDataModule):
    """ELPV solar-cell electroluminescence images (PyPI ``elpv-dataset``, CC BY-NC-SA 4.0), image-level labels only.

    Normal: defect probability 0; anomalous: probability 1. The ⅓ and ⅔ cells are excluded by default.
    Train/test is a seeded per-class split.

    Args:
        module_type: ``"mono"``, ``"poly"`` or ``"both"`` (crystalline type of the module).
        partial: What to do with cells of defect probability ⅓ and ⅔: ``"exclude"``, or count them as
            ``"anomalous"`` (classes ``possibly_defective`` / ``likely_defective``) or ``"normal"``.
        test_ratio: Part of each class held out as the test set.
        root: Folder with ``labels.csv`` and ``images/``. Default: the installed ``elpv-dataset`` package.
        kwargs: See :class:`LabelledImageDataModule`.
    """

    LAYOUT = "  root/labels.csv   (lines: images/cellNNNN.png <probability> <mono|poly>)\n  root/images/*.png"
    SOURCE = "PyPI: pip install 'ckaad-anomalib[elpv]' (package elpv-dataset)"
    NORMAL = ("functional",)

    def __init__(
        self,
        module_type: Literal["mono", "poly", "both"] = "mono",
        partial: Literal["exclude", "anomalous", "normal"] = "exclude",
        test_ratio: float = 0.25,
        root: str | Path | None = None,
        **kwargs,
    ) -> None:
        if root is None:
            try:
                import elpv_dataset
            except ModuleNotFoundError as exc:
                msg = "ELPV needs the dataset package: pip install 'ckaad-anomalib[elpv]' (elpv-dataset)."
                raise ModuleNotFoundError(msg) from exc
            root = Path(elpv_dataset.__file__).parent / "data"
        super().__init__(root=root, **kwargs)
        if module_type not in {"mono", "poly", "both"}:
            msg = f"module_type must be 'mono', 'poly' or 'both', got {module_type!r}."
            raise ValueError(msg)
        if partial not in {"exclude", "anomalous", "normal"}:
            msg = f"partial must be 'exclude', 'anomalous' or 'normal', got {partial!r}."
            raise ValueError(msg)
        if not 0 < test_ratio < 1:
            msg = f"test_ratio must lie in (0, 1), got {test_ratio}."
            raise ValueError(msg)
        self.module_type, self.partial, self.test_ratio = module_type, partial, test_ratio
        self._category = module_type

    def make_samples(self) -> pd.DataFrame:
        """Read ``labels.csv``; split each class into train/test with ``seed``."""
        csv = self.root / "labels.csv"
        if not csv.is_file():
            raise self.error(f"{csv} is missing")
        table = pd.read_csv(csv, sep=r"\s+", header=None, names=["path", "probability", "type"])
        if self.module_type != "both":
            table = table[table.type == self.module_type]
        table = table.assign(
            label=table.probability.map(lambda p: ELPV_CLASSES[min(ELPV_CLASSES, key=lambda c: abs(c - p))])
        )
        if self.partial == "exclude":
            table = table[table.label.isin(["functional", "defective"])]
        elif self.partial == "normal":
            table = table.assign(label=table.label.where(table.label == "defective", "functional"))
        paths = table.path.map(lambda p: str(self.root / p))
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise self.error(f"{len(absent)} image(s) listed in labels.csv are missing, e.g. {absent[:3]}")
        table = table.assign(image_path=paths.to_numpy(), split="train").reset_index(drop=True)
        rng = np.random.default_rng(self.seed)
        for _, rows in table.groupby("label"):
            test = rng.choice(rows.index.to_numpy(), size=round(len(rows) * self.test_ratio), replace=False)
            table.loc[test, "split"] = "test"
        return table[["image_path", "label", "split"]]
