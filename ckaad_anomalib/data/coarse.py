"""Coarse (image-level) anomalies in the training batches of any anomalib image datamodule.

anomalib feeds models normal images only. CKAAD also needs a few anomalous images labelled at image level.
:class:`CoarseAnomalyDataModule` wraps any ``AnomalibDataModule`` (``MVTecAD``, ``Visa``, ``BMAD``, ``Folder``, the
datamodules of :mod:`ckaad_anomalib.data.labelled`, ...) and adds them. It is the one mechanism for all sources:

* ``source="dataset"``: the fraction ``ratio`` (r_l) of anomalies, ``n = round(n_norm / (1 − r_l) − n_norm)``,
  drawn from ``num_classes`` defect classes (named in ``classes`` or picked by ``seed``). They come from the
  datamodule's ``coarse_pool`` if it has one (training-split anomalies of the medical / ELPV datamodules), else
  from its test/validation anomalies. They are removed from validation and test, and their masks are dropped;
* ``source="folder"``: every image in a user folder, labelled anomalous (any extension anomalib reads). Copies of
  them found in validation/test are removed from there;
* ``source="synthetic"``: one corrupted copy of every normal training image, the authors' industrial route
  (``"elastic"`` warp, alpha 200). ``"perlin"`` (anomalib's Perlin generator) and ``"cutpaste"`` can be combined
  with it; each copy then takes one of the chosen kinds at random.

Validation never is the test split: if the wrapped datamodule would validate on a copy of the test set
(``SAME_AS_TEST``, MVTecAD's default) or on nothing, a label-aware part (``val_split_ratio``) of the test set becomes
the validation set. Training batches hold ``train_batch_size`` normal images plus ``min(batch, n_anomalies)`` coarse
anomalies, cycled (:class:`NormalAnomalyBatchSampler`). ``gt_label`` marks the anomalies, so Ckaad never counts them
in its reconstruction loss.

The chosen coarse anomalies are logged and written to ``coarse_anomalies.csv`` in the trainer's ``default_root_dir``
(the run's results folder under ``anomalib train``). The same seed picks the same files.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import pandas as pd
import torch
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, ValSplitMode
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.data.utils.split import random_split
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS  # the image types torchvision (and anomalib) read
from torchvision.transforms import v2

from .labelled import PresplitDataModule

logger = logging.getLogger(__name__)

SyntheticKind = Literal["elastic", "perlin", "cutpaste"]
COARSE_LIST = "coarse_anomalies.csv"


def n_coarse(n_normal: int, ratio: float) -> int:
    """Number of coarse anomalies for ``n_normal`` training images at anomaly fraction ``ratio``.

    Args:
        n_normal: Normal training images.
        ratio: r_l, the fraction of anomalies among all training images, in ``[0, 1)``.

    Returns:
        ``round(n_normal / (1 − ratio) − n_normal)``.
    """
    if not 0 <= ratio < 1:
        msg = f"ratio (r_l) must lie in [0, 1), got {ratio}."
        raise ValueError(msg)
    return round(n_normal / (1 - ratio) - n_normal)


def _image_level(dataset: AnomalibDataset, samples: pd.DataFrame) -> AnomalibDataset:
    """A copy of ``dataset`` holding ``samples`` as classification data (no masks are read)."""
    out = copy.deepcopy(dataset)
    samples = samples.copy()
    samples["mask_path"] = ""
    samples.attrs["task"] = "classification"
    out.samples = samples.reset_index(drop=True)
    return out


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


class CutPaste(v2.Transform):
    """CutPaste (Li et al., 2021): a random rectangle of the image, colour-jittered, pasted elsewhere.

    Args:
        area: Range of the patch area as a fraction of the image.
        aspect: Range of the patch aspect ratio.
    """

    def __init__(self, area: tuple[float, float] = (0.02, 0.15), aspect: tuple[float, float] = (0.3, 3.3)) -> None:
        super().__init__()
        self.area, self.aspect = area, aspect
        self.jitter = v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Return a copy of ``image`` ``(C, H, W)`` with one pasted patch."""
        _, height, width = image.shape
        area = height * width * float(torch.empty(1).uniform_(*self.area))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(self.aspect[0]), math.log(self.aspect[1]))))
        ph = max(1, min(height - 1, round(math.sqrt(area * aspect))))
        pw = max(1, min(width - 1, round(math.sqrt(area / aspect))))
        y0, x0 = int(torch.randint(0, height - ph + 1, ())), int(torch.randint(0, width - pw + 1, ()))
        y1, x1 = int(torch.randint(0, height - ph + 1, ())), int(torch.randint(0, width - pw + 1, ()))
        out = image.clone()
        out[:, y1 : y1 + ph, x1 : x1 + pw] = self.jitter(image[:, y0 : y0 + ph, x0 : x0 + pw])
        return out


class SyntheticAnomalyDataset(Dataset):
    """One synthetic anomaly per normal image, made on the fly (a new corruption every epoch).

    Args:
        normal: Normal training dataset whose items are corrupted.
        kinds: Corruptions to choose from per item: ``"elastic"`` (ElasticTransform, alpha 200), ``"perlin"``
            (anomalib's ``PerlinAnomalyGenerator``) and ``"cutpaste"``.
    """

    def __init__(self, normal: AnomalibDataset, kinds: Sequence[SyntheticKind] = ("elastic",)) -> None:
        if not kinds:
            msg = "synthetic needs at least one kind: 'elastic', 'perlin' or 'cutpaste'."
            raise ValueError(msg)
        unknown = sorted(set(kinds) - {"elastic", "perlin", "cutpaste"})
        if unknown:
            msg = f"unknown synthetic kinds {unknown}; choose from 'elastic', 'perlin', 'cutpaste'."
            raise ValueError(msg)
        self.normal = normal
        self.kinds = list(kinds)
        self.elastic = v2.ElasticTransform(alpha=200.0)
        self.perlin = PerlinAnomalyGenerator(probability=1.0)
        self.cutpaste = CutPaste()

    def __len__(self) -> int:
        return len(self.normal)

    def corrupt(self, image: torch.Tensor, kind: str) -> torch.Tensor:
        """Apply one corruption to a float image ``(C, H, W)`` in [0, 1]."""
        if kind == "elastic":
            return self.elastic(image)
        if kind == "perlin":
            return self.perlin(image)[0].clamp(0, 1)
        return self.cutpaste(image)

    def __getitem__(self, index: int) -> ImageItem:
        item = cast("ImageItem", self.normal[index])
        if item.image is None:
            msg = f"normal training item {index} has no image."
            raise ValueError(msg)
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))]
        return ImageItem(
            image=self.corrupt(item.image, kind),
            gt_label=torch.tensor(LabelName.ABNORMAL),
            image_path=item.image_path,
        )


def _distributed() -> tuple[int, int]:
    """``(num_replicas, rank)`` of the default process group, ``(1, 0)`` outside distributed training."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class NormalAnomalyBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` normal indices plus ``anomaly_batch_size`` anomaly indices, anomalies cycled.

    Indices ``[0, n_normal)`` address normal images and ``[n_normal, n_normal + n_anomalous)`` anomalies (the
    layout of ``ConcatDataset([normal, anomalous])``). An epoch is one pass over the normal images. The anomalies
    are reshuffled whenever they run out.

    Distributed training (one sampler per rank): every rank draws the same permutation of the normal images and
    takes every ``num_replicas``-th of it, so the ranks' batches are disjoint and together cover the epoch (padded
    with the first images of the permutation when the count does not divide, as ``DistributedSampler`` does). Each
    rank cycles its own share of the anomalies (all of them if there are fewer anomalies than ranks), so every batch
    of every rank holds anomalies whenever there are any, and all ranks take the same discriminator step.

    Args:
        n_normal: Number of normal images.
        n_anomalous: Number of anomalies (0: plain normal batches).
        batch_size: Normal images per batch (per rank).
        anomaly_batch_size: Anomalies per batch (default ``min(batch_size, anomalies of this rank)``).
        seed: Seed of the shuffles; the same seed gives the same batches, epoch after epoch.
        num_replicas: Number of ranks (default: the process group's world size, or 1).
        rank: This rank (default: the process group's rank, or 0).
    """

    def __init__(
        self,
        n_normal: int,
        n_anomalous: int,
        batch_size: int,
        anomaly_batch_size: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        if n_normal < 1 or batch_size < 1:
            msg = f"need normal images and a positive batch size, got n_normal={n_normal}, batch_size={batch_size}."
            raise ValueError(msg)
        world, own_rank = _distributed()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = own_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            msg = f"rank must lie in [0, num_replicas={self.num_replicas}), got {self.rank}."
            raise ValueError(msg)
        self.n_normal, self.n_anomalous, self.batch_size = n_normal, n_anomalous, batch_size
        spread = n_anomalous >= self.num_replicas
        self.anomaly_pool = list(range(self.rank, n_anomalous, self.num_replicas) if spread else range(n_anomalous))
        size = min(batch_size, len(self.anomaly_pool)) if anomaly_batch_size is None else anomaly_batch_size
        self.anomaly_batch_size = min(size, len(self.anomaly_pool))
        # normals: one generator, identical on every rank (same permutation); anomalies: a generator of their own
        self.generator = torch.Generator().manual_seed(seed)
        self.anomaly_generator = torch.Generator().manual_seed(seed + 1_000_003 * (self.rank + 1))
        self._anomaly_order: list[int] = []

    @property
    def per_rank(self) -> int:
        """Normal images each rank sees per epoch."""
        return math.ceil(self.n_normal / self.num_replicas)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _next_anomalies(self) -> list[int]:
        picked: list[int] = []
        while len(picked) < self.anomaly_batch_size:
            if not self._anomaly_order:
                order = torch.randperm(len(self.anomaly_pool), generator=self.anomaly_generator).tolist()
                self._anomaly_order = [self.anomaly_pool[i] for i in order]
            picked.append(self.n_normal + self._anomaly_order.pop())
        return picked

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n_normal, generator=self.generator).tolist()
        total = self.per_rank * self.num_replicas
        order = (order * math.ceil(total / self.n_normal))[:total][self.rank :: self.num_replicas]
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size] + self._next_anomalies()


class CoarseAnomalyDataModule(PresplitDataModule):
    """Wraps an anomalib image datamodule and adds coarsely labelled anomalies to its training batches.

    Args:
        datamodule: The wrapped datamodule (its batch sizes, workers and augmentations are used), or its
            ``{class_path, init_args}`` config, as an anomalib benchmark grid passes it.
        source: ``"dataset"``, ``"folder"`` or ``"synthetic"`` (see the module docstring).
        ratio: r_l for ``source="dataset"``: fraction of anomalies among the training images.
        num_classes: k for ``source="dataset"``: how many defect classes the anomalies come from.
        classes: Defect classes to draw from (by name); default: ``num_classes`` classes picked by ``seed``.
        folder: Folder of anomalous images for ``source="folder"`` (searched recursively).
        synthetic: Corruptions for ``source="synthetic"``.
        anomaly_batch_size: Anomalies per training batch (default ``min(train_batch_size, n_anomalies)``).
        val_split_ratio: Part of the test set used for validation when the wrapped datamodule has no validation
            split of its own.
        seed: Seed of every random choice here.
        normal_only: Train on the normal images only, on the same split (the coarse anomalies are still drawn and
            kept out of validation and test). For unsupervised peers in a side-by-side benchmark: every model then
            sees the same validation and test files.

    Example:
        >>> from anomalib.data import MVTecAD  # doctest: +SKIP
        >>> data = CoarseAnomalyDataModule(MVTecAD(category="bottle"), ratio=0.05, num_classes=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        datamodule: AnomalibDataModule | Mapping[str, Any],
        source: Literal["dataset", "folder", "synthetic"] = "dataset",
        ratio: float = 0.05,
        num_classes: int = 1,
        classes: list[str] | None = None,
        folder: str | Path | None = None,
        synthetic: list[SyntheticKind] | None = None,
        anomaly_batch_size: int | None = None,
        val_split_ratio: float = 0.5,
        seed: int = 0,
        normal_only: bool = False,
    ) -> None:
        if isinstance(datamodule, Mapping):  # anomalib's get_datamodule passes nested configs as (Dict)Configs
            from anomalib.data import get_datamodule

            if "class_path" not in datamodule:
                msg = f"datamodule {datamodule!r}: give a datamodule or a dict with class_path (and init_args)."
                raise ValueError(msg)
            datamodule = get_datamodule(dict(datamodule))
        super().__init__(
            train_batch_size=datamodule.train_batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            train_augmentations=datamodule.train_augmentations,
            val_augmentations=datamodule.val_augmentations,
            test_augmentations=datamodule.test_augmentations,
            seed=seed,
        )
        if source not in {"dataset", "folder", "synthetic"}:
            msg = f"source must be 'dataset', 'folder' or 'synthetic', got {source!r}."
            raise ValueError(msg)
        if source == "folder" and folder is None:
            msg = "source='folder' needs `folder`, the directory of your anomalous images."
            raise ValueError(msg)
        if num_classes < 1:
            msg = f"num_classes (k) must be >= 1, got {num_classes}."
            raise ValueError(msg)
        n_coarse(1, ratio)  # validates ratio
        self.datamodule = datamodule
        self.source = source
        self.ratio, self.num_classes, self.classes = ratio, num_classes, list(classes) if classes else None
        self.folder = Path(folder) if folder is not None else None
        self.synthetic: list[SyntheticKind] = list(synthetic) if synthetic else ["elastic"]
        self.anomaly_batch_size = anomaly_batch_size
        self.val_split_ratio = val_split_ratio
        self.normal_only = normal_only
        self.coarse_data: AnomalibDataset | SyntheticAnomalyDataset | None = None
        self.coarse_samples = pd.DataFrame(columns=["image_path", "label"])

    @property
    def name(self) -> str:  # type: ignore[override]  # LightningDataModule declares a plain attribute
        """The wrapped datamodule's name (so results land where they would without the wrapper)."""
        return self.datamodule.name

    @property
    def category(self) -> str:
        """The wrapped datamodule's category."""
        return self.datamodule.category

    @category.setter
    def category(self, category: str) -> None:
        self.datamodule.category = category

    def prepare_data(self) -> None:
        """Let the wrapped datamodule check (or download) its data."""
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule, draw the coarse anomalies, give them the training transforms."""
        super().setup(stage)
        if isinstance(self.coarse_data, AnomalibDataset):
            # same transforms as the normal training images (incl. the model's Resize), so batches collate
            self.coarse_data.augmentations = self.train_data.augmentations

    def _setup(self, _stage: str | None = None) -> None:
        inner = self.datamodule
        inner.setup(_stage)
        # training is image-level: normal masks are all-zero and coarse anomalies have none
        self.train_data = _image_level(inner.train_data, inner.train_data.samples)
        self.test_data = inner.test_data
        has_own_val = hasattr(inner, "val_data") and inner.val_split_mode not in {
            ValSplitMode.SAME_AS_TEST,
            ValSplitMode.NONE,
        }
        self.val_data = inner.val_data if has_own_val else None  # type: ignore[assignment]

        if self.source == "synthetic":
            self.coarse_data = SyntheticAnomalyDataset(self.train_data, self.synthetic)
            self.coarse_samples = pd.DataFrame(
                {
                    "image_path": list(self.train_data.samples.image_path),
                    "label": "synthetic:" + "+".join(self.synthetic),
                }
            )
        else:
            chosen = self._choose_from_dataset() if self.source == "dataset" else self._read_folder()
            self._remove_from_evaluation(set(chosen.image_path.map(_key)))
            self.coarse_data = _image_level(self.train_data, chosen)
            self.coarse_samples = chosen[["image_path", "label"]].reset_index(drop=True)

        if self.val_data is None:
            self.test_data, self.val_data = random_split(
                self.test_data, self.val_split_ratio, label_aware=True, seed=self.seed
            )
        self._check_no_leak()
        self._report()

    def _pool(self) -> AnomalibDataset:
        """Where dataset-sourced anomalies come from: a dedicated pool, else the evaluation anomalies."""
        pool = getattr(self.datamodule, "coarse_pool", None)
        if pool is not None:
            return pool
        frames = [self.test_data.samples]
        if self.val_data is not None:
            frames.append(self.val_data.samples)
        samples = pd.concat(frames).drop_duplicates("image_path")
        return _image_level(self.test_data, samples)

    def _choose_from_dataset(self) -> pd.DataFrame:
        samples = self._pool().samples
        anomalies = samples[samples.label_index == LabelName.ABNORMAL]
        available = sorted(anomalies.label.unique())
        if not available:
            msg = (
                f"{self.datamodule.name} has no anomalous images to draw coarse anomalies from: use "
                "source='folder' with your labelled images, or source='synthetic'."
            )
            raise ValueError(msg)
        generator = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        if self.classes is not None:
            unknown = sorted(set(self.classes) - set(available))
            if unknown:
                msg = f"classes {unknown} not found in {self.datamodule.name}; its defect classes are {available}."
                raise ValueError(msg)
            classes = self.classes
        else:
            if self.num_classes > len(available):
                msg = f"num_classes={self.num_classes} but {self.datamodule.name} has only {available}."
                raise ValueError(msg)
            picks = torch.randperm(len(available), generator=generator)[: self.num_classes].tolist()
            classes = [available[i] for i in sorted(picks)]
        candidates = anomalies[anomalies.label.isin(classes)].sort_values("image_path")
        wanted = n_coarse(len(self.train_data), self.ratio)
        if wanted > len(candidates):
            msg = (
                f"ratio={self.ratio} asks for {wanted} coarse anomalies but classes {classes} hold only "
                f"{len(candidates)} images: lower `ratio`, or raise `num_classes` / name more `classes`."
            )
            raise ValueError(msg)
        order = torch.randperm(len(candidates), generator=generator)[:wanted].tolist()
        return candidates.iloc[sorted(order)]

    def _read_folder(self) -> pd.DataFrame:
        assert self.folder is not None  # noqa: S101 - checked in __init__
        if not self.folder.is_dir():
            msg = f"folder={self.folder} (coarse anomalies) is not a directory."
            raise FileNotFoundError(msg)
        files = sorted(p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]
        skipped = [p for p in files if p.suffix.lower() not in IMG_EXTENSIONS]
        if skipped:
            logger.warning(
                "Coarse anomalies: skipped %d non-image file(s) in %s: %s",
                len(skipped),
                self.folder,
                ", ".join(p.name for p in skipped[:10]),
            )
        if not images:
            msg = f"folder={self.folder} holds no images ({', '.join(IMG_EXTENSIONS)}): add your anomalous images."
            raise ValueError(msg)
        for path in images:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as exc:
                msg = f"coarse anomaly {path} is not a readable image ({exc}); fix or remove it."
                raise ValueError(msg) from exc
        return pd.DataFrame(
            {
                "image_path": [str(p) for p in images],
                "label": [p.parent.name for p in images],
                "label_index": LabelName.ABNORMAL,
                "mask_path": "",
                "split": "train",
            }
        )

    def _remove_from_evaluation(self, keys: set[str]) -> None:
        for attr in ("test_data", "val_data"):
            dataset = getattr(self, attr)
            if dataset is None:
                continue
            keep = ~dataset.samples.image_path.map(_key).isin(keys)
            if not keep.all():
                logger.info("Coarse anomalies: removed %d image(s) from %s.", int((~keep).sum()), attr)
                samples = dataset.samples[keep].reset_index(drop=True)
                samples.attrs = dataset.samples.attrs
                dataset.samples = samples

    def _check_no_leak(self) -> None:
        if self.source == "synthetic":
            return
        train = set(self.coarse_samples.image_path.map(_key))
        for name, dataset in (("validation", self.val_data), ("test", self.test_data)):
            leaked = train & set(dataset.samples.image_path.map(_key))
            if leaked:
                msg = f"coarse anomalies leaked into the {name} split: {sorted(leaked)[:5]}"
                raise RuntimeError(msg)

    def _report(self) -> None:
        classes = sorted(self.coarse_samples.label.unique()) if len(self.coarse_samples) else []
        logger.info(
            "Coarse anomalies (%s): %d image(s) of classes %s; %d normal training images; val %d, test %d images.",
            self.source,
            len(self.coarse_data) if self.coarse_data is not None else 0,
            classes,
            len(self.train_data),
            len(self.val_data),
            len(self.test_data),
        )
        trainer = self.trainer
        if trainer is not None:
            out = Path(trainer.default_root_dir) / COARSE_LIST
            out.parent.mkdir(parents=True, exist_ok=True)
            self.coarse_samples.to_csv(out, index=False)
            logger.info("Coarse anomaly list written to %s", out)

    def _check_distributed(self) -> None:
        """Under DDP, Lightning must not wrap the sampler: :class:`NormalAnomalyBatchSampler` shards per rank itself."""
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer is not None and trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            msg = (
                "CoarseAnomalyDataModule shards its training batches across ranks itself (normal images disjoint per "
                "rank, each rank its share of the coarse anomalies): train with use_distributed_sampler=False, e.g. "
                "Engine(accelerator='gpu', devices=2, strategy='ddp_find_unused_parameters_true', "
                "use_distributed_sampler=False)."
            )
            raise RuntimeError(msg)

    def train_dataloader(self) -> DataLoader:
        """Normal images plus cycled coarse anomalies in every batch (sharded per rank under DDP)."""
        self._check_distributed()
        coarse = None if self.normal_only else self.coarse_data
        n_anom = len(coarse) if coarse is not None else 0
        datasets = [self.train_data, coarse] if coarse is not None and n_anom else [self.train_data]
        sampler = NormalAnomalyBatchSampler(
            n_normal=len(self.train_data),
            n_anomalous=n_anom,
            batch_size=self.train_batch_size,
            anomaly_batch_size=self.anomaly_batch_size,
            seed=self.seed if self.seed is not None else 0,
        )
        return DataLoader(
            ConcatDataset(datasets),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )
