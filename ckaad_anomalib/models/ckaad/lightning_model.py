"""Lightning module of CKAAD for anomalib.

Boosting Fine-Grained Visual Anomaly Detection with Coarse-Knowledge-Aware Adversarial Learning
(Fang et al., AAAI 2025, arXiv 2412.12850).

A batch whose ``gt_label`` marks some images anomalous (coarse, image-level labels) trains the energy
discriminator and the adversarial term; a batch of normal images only trains reconstruction. So the model trains
on plain ``MVTecAD`` (reconstruction only — the Recon behaviour) and on any datamodule whose training batches carry
labelled anomalies (see :mod:`ckaad_anomalib.data`).

Example:
    >>> from anomalib.data import MVTecAD  # doctest: +SKIP
    >>> from anomalib.engine import Engine  # doctest: +SKIP
    >>> from ckaad_anomalib import Ckaad  # doctest: +SKIP
    >>> model = Ckaad(backbone="resnet18", layers=("layer2", "layer3"), lr=1e-3)  # doctest: +SKIP
    >>> Engine(max_epochs=200).fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch, InferenceBatch
from anomalib.deploy import CompressionType
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim
from torch.nn import functional as F  # noqa: N812
from torchmetrics.functional.classification import binary_auroc
from torchvision.transforms.v2 import Compose, Normalize, Resize

from .export import CkaadPreProcessor, export_int8_with_own_thresholds, keep_f32, quantize_int8
from .loss import CkaadLoss, reconstruction_loss, require
from .torch_model import AUTO_WEIGHTS, CkaadModel, TrainOutput

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "wide_resnet50_2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone's pretrained weights expect (timm's ``pretrained_cfg``; ImageNet's otherwise).

    Args:
        backbone: timm model name.

    Returns:
        ``(mean, std)`` per RGB channel.
    """
    import timm

    cfg = timm.get_pretrained_cfg(backbone, allow_unregistered=True)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


class Ckaad(AnomalibModule):
    """CKAAD: reconstruction-based detection sharpened by a few image-level-labelled anomalies.

    Args:
        backbone: timm CNN with ``features_only`` (paper: ``"resnet18"`` medical, ``"wide_resnet50_2"``
            industrial; ``"tf_efficientnet_lite0"`` runs offline after ``ckaad-weights``).
        layers: Backbone stages to reconstruct (module names or indices).
        pre_trained: Load ImageNet weights for the frozen extractor.
        discriminator: ``"patch"`` (per-position energy, default), ``"image"`` (one energy per image) or
            ``"both"``.
        lr: Auto-encoder learning rate (paper: 1e-3 ResNet-18 / medical, 5e-3 WRN-50 / industrial).
        d_lr: Discriminator learning rate.
        betas: Adam betas of both optimisers.
        d_grad_clip: Gradient-norm clip of the discriminator step.
        adv_weight: ``λ_adv``. ``0`` is the Recon ablation: no discriminator is built or trained.
        gamma: ``γ``, weight of reconstructions versus real anomalies in the discriminator loss.
        margin: Energy margin ``m``.
        mil_fraction: Multiple-instance targets for D: only this part of each coarse anomaly's patches (those of
            highest energy) must get high energy. ``None`` (paper): all of them.
        push_weight: Weight of the push term (``0``, paper: off). It asks the image score of every coarse anomaly
            to reach ``1 + push_margin`` times the batch's normal mean, so the auto-encoder learns directly not to
            reconstruct the most deviating region of a labelled anomaly (see ``loss.push_loss``).
        push_margin: Relative margin of the push term.
        energy_weight: ``0`` (paper): score by reconstruction distance only. ``w > 0``: the image score adds the
            patch discriminator's energy score of the input features, ``w`` times, to the distance score, each
            standardised by its mean and std on the validation split's normal images (fitted before every
            validation epoch; on normal training images if validation has none). ``"auto"``: ``w`` is also chosen
            there, from ``(0, 0.5, 1, 2)``, by validation image AUROC. The anomaly map stays the distance map; the
            exported graph then holds the patch discriminator.
        knn_weight: ``0`` (paper): off. ``w > 0``: the image score also adds ``w`` times the standardised
            nearest-normal-feature distance (PatchCore's patch score on the same frozen features; memory bank from
            the normal training images of the first epoch), so the coarse labels steer a stronger base score than
            reconstruction alone. Standardised like ``energy_weight``; the export then holds the memory bank.
        coarse_weight: ``0`` (paper): off. ``w > 0`` or ``"auto"`` (chosen from ``(0, 0.25, 0.5, 1)`` on
            validation): the image score also adds ``w`` times the standardised closeness of the image's patches to
            the coarse anomalies' most anomalous patches (those farthest from the normal bank, ``coarse_fraction``
            of each). A second, non-parametric use of the labelled defects beside D; it needs coarse anomalies in
            the training batches, and the export then holds that bank too.
        coarse_fraction: Part of each coarse anomaly's positions kept in the coarse bank.
        distance_weight: Weight of the reconstruction-distance score (``1``, paper; ``0``: the distance stays the
            anomaly map but leaves the image score to the other components).
        memory_bank_size: Most embeddings in each memory bank (16384 × D floats).
        memory_bank_sampling: How a bank keeps ``memory_bank_size`` of more embeddings: ``"random"`` (a random
            subset) or ``"coreset"`` (PatchCore's greedy k-center coreset: covers the embeddings as well with a
            smaller bank, so the test-time search is faster; selecting costs a few seconds per 100k embeddings).
        ae_width: Width multiplier of the auto-encoder (``1``, paper). A slimmer decoder for edge latency: see the
            model README's Pareto table (latency at batch 1 vs image AUROC on ELPV).
        ae_blocks: Residual blocks per auto-encoder stage (``None``: the paper's, 2 per stage for narrow backbones).
        fused_map: ``False`` (paper): the anomaly map is the reconstruction distance. ``True``: it is the fused
            score's map, each component's map standardised and weighted like the image score (needs a fused score).
            With ``distance_weight=0`` and no energy, nothing trained then reaches the output: inference skips the
            auto-encoder (the export does not hold it), and fit fills the banks in one epoch and trains nothing.
        nearest_layers: Stages of ``layers`` whose embedding the nearest-normal and coarse banks hold (``None``:
            the two deepest, PatchCore's). With ``fused_map``, finer stages give a finer map (the model README's
            pixel-level section); the banks' search then covers more positions per image.
        nearest_normalize: ``False`` (PatchCore's): the banks compare the features as extracted. ``True``: each
            stage's feature vectors are L2-normalised first, so the distances compare directions (as STFPM's
            cosine does); measured to localise better on the texture sets (model README, pixel-level section), and
            to rank ELPV's cells worse. ``"auto"``: both kinds of banks are filled, and the validation split keeps
            the one whose anomaly map has the higher pixel AUROC where it has masks, else whose image score has the
            higher image AUROC (raw on ties); checkpoints and exports hold the chosen banks only.
        top_k: ``k`` of the top-k image score.
        score_mode: ``"topk"`` (mean of the ``top_k`` largest map values) or ``"mean"`` (whole map).
        sigma: Gaussian blur σ of the anomaly map.
        max_epochs: Opt-in epoch count handed to the trainer (``None``: the trainer's own setting stands). For
            runners that take no trainer arguments, such as an ``anomalib benchmark`` grid, whose Engine would
            otherwise train for Lightning's default of 1000 epochs. Set it, and the Engine logs that it overrides
            ``trainer.max_epochs``.
        image_size: Input size ``(H, W)`` of the default pre-processor (paper: 256×256). Ignored when a
            pre-processor instance is given.
        pre_processor: Pre-processor, or ``True`` for Resize(``image_size``) + the backbone's own normalisation.
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag.
        visualizer: Visualizer or flag.
    """

    uses_coarse_anomalies = True  # benchmarks train it on coarse batches, unsupervised peers on normals only

    model: CkaadModel
    loss: CkaadLoss

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        discriminator: Literal["patch", "image", "both"] = "patch",
        lr: float = 5e-3,
        d_lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        d_grad_clip: float = 1.0,
        adv_weight: float = 0.02,
        gamma: float = 0.5,
        margin: float = 5.0,
        mil_fraction: float | None = None,
        push_weight: float = 0.0,
        push_margin: float = 1.0,
        energy_weight: float | Literal["auto"] = 0.0,
        knn_weight: float = 0.0,
        coarse_weight: float | Literal["auto"] = 0.0,
        coarse_fraction: float = 0.1,
        distance_weight: float = 1.0,
        memory_bank_size: int = 16384,
        memory_bank_sampling: Literal["random", "coreset"] = "random",
        ae_width: float = 1.0,
        ae_blocks: int | None = None,
        fused_map: bool = False,
        nearest_layers: Sequence[str | int] | None = None,
        nearest_normalize: bool | Literal["auto"] = False,
        top_k: int = 100,
        score_mode: Literal["topk", "mean"] = "topk",
        sigma: float = 4.0,
        max_epochs: int | None = None,
        image_size: tuple[int, int] = (256, 256),
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        self._validate(lr, d_lr, betas, d_grad_clip, top_k, sigma, max_epochs, image_size)
        require("ae_width", ae_width, 0 < ae_width <= 4, "in (0, 4]")
        require("ae_blocks", ae_blocks, ae_blocks is None or ae_blocks >= 1, ">= 1 or None")
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(
                image_size=(int(image_size[0]), int(image_size[1])), backbone=backbone
            )
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if self.input_size is None:
            msg = "Ckaad needs a fixed input size: give the pre-processor a Resize transform (e.g. 256×256)."
            raise ValueError(msg)
        self.automatic_optimization = False  # one D step then one AE step per batch
        self.lr, self.d_lr, self.d_grad_clip = lr, d_lr, d_grad_clip
        self.betas: tuple[float, float] = (float(betas[0]), float(betas[1]))
        height, width = self.input_size
        self.loss = CkaadLoss(
            adv_weight=adv_weight,
            gamma=gamma,
            margin=margin,
            mil_fraction=mil_fraction,
            push_weight=push_weight,
            push_margin=push_margin,
        )
        self.model = CkaadModel(
            backbone=backbone,
            layers=layers,
            input_size=(int(height), int(width)),
            pre_trained=pre_trained,
            discriminator=discriminator if adv_weight > 0 else None,
            sigma=sigma,
            top_k=top_k,
            score_mode=score_mode,
            energy_weight=energy_weight,
            knn_weight=knn_weight,
            memory_bank_size=memory_bank_size,
            memory_bank_sampling=memory_bank_sampling,
            distance_weight=distance_weight,
            coarse_weight=coarse_weight,
            coarse_fraction=coarse_fraction,
            ae_width=ae_width,
            ae_blocks=ae_blocks,
            fused_map=fused_map,
            nearest_layers=nearest_layers,
            nearest_normalize=nearest_normalize,
        )
        self.max_epochs = max_epochs
        if not self.model.learns:
            logger.info(
                "Ckaad(distance_weight=0, fused_map=True, no energy): no trained part reaches the output, so fit fills "
                "the memory banks in one epoch and trains neither the auto-encoder nor the discriminator."
            )
        self._batches_without_normals = 0
        self._fused_score_epoch = -1  # the epoch whose validation fitted the fused score
        # embeddings seen in training while the banks are empty: normal ones, and per coarse anomaly
        # (one list per bank pair: two while nearest_normalize="auto" has to choose)
        self._bank_parts: dict[int, list[torch.Tensor]] = {}
        self._coarse_parts: dict[int, list[torch.Tensor]] = {}

    @staticmethod
    def _validate(
        lr: float,
        d_lr: float,
        betas: Sequence[float],
        d_grad_clip: float,
        top_k: int,
        sigma: float,
        max_epochs: int | None,
        image_size: Sequence[int],
    ) -> None:
        """Check the optimisation and scoring arguments now, naming the one that is wrong (not at fit or val)."""
        require("lr", lr, lr > 0, "> 0")
        require("d_lr", d_lr, d_lr > 0, "> 0")
        require("betas", betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two values in [0, 1)")
        require("d_grad_clip", d_grad_clip, d_grad_clip > 0, "> 0")
        require("top_k", top_k, top_k >= 1, ">= 1")
        require("sigma", sigma, sigma > 0, "> 0")
        require("max_epochs", max_epochs, max_epochs is None or max_epochs >= 1, ">= 1 or None")
        require("image_size", image_size, len(image_size) == 2 and all(int(s) > 0 for s in image_size), "(H, W) > 0")

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = DEFAULT_BACKBONE,
    ) -> PreProcessor:
        """Resize to ``image_size`` (default 256×256) and normalise as the backbone's weights expect.

        Args:
            image_size: Target ``(H, W)``.
            backbone: timm name whose ``pretrained_cfg`` gives mean and std.

        Returns:
            The pre-processor.
        """
        mean, std = backbone_normalization(backbone)
        return CkaadPreProcessor(
            transform=Compose([Resize(image_size or (256, 256), antialias=True), Normalize(mean=mean, std=std)]),
        )

    def configure_optimizers(self) -> list[optim.Optimizer]:
        """Adam for the auto-encoder, then (unless Recon) Adam for the discriminator(s)."""
        optimizers: list[optim.Optimizer] = [
            optim.Adam(self.model.autoencoder.parameters(), lr=self.lr, betas=self.betas),
        ]
        d_params = [p for d in self.model.discriminator_modules for p in d.parameters()]
        if d_params:
            optimizers.append(optim.Adam(d_params, lr=self.d_lr, betas=self.betas))
        return optimizers

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One discriminator step (if the batch has labelled anomalies), then one auto-encoder step.

        Args:
            batch: Training batch; ``gt_label == 1`` marks coarse anomalies (x⁻), the rest are normal (x⁺).
            args: Unused.
            kwargs: Unused.

        Returns:
            The auto-encoder loss (detached; optimisation is manual), or ``None`` for a batch without normal images.
        """
        del args, kwargs
        images = batch.image
        if images is None:
            msg = "Ckaad training batches need images (batch.image is None)."
            raise ValueError(msg)
        labels = batch.gt_label
        anomalous = (labels.bool() if labels is not None else torch.zeros(len(images), dtype=torch.bool)).to(
            images.device,
        )
        normal = ~anomalous
        if not normal.any():
            # reconstruction and the D loss both need x⁺; count and report rather than train on nothing
            self._batches_without_normals += 1
            logger.warning(
                "Ckaad skipped a training batch with no normal images (%d so far): mix normal images into every "
                "batch, e.g. with ckaad_anomalib.data.CoarseAnomalyDataModule.",
                self._batches_without_normals,
            )
            return None

        if self.model.learns:
            out = self.model(images)
            assert isinstance(out, TrainOutput)  # noqa: S101 - train mode contract
            features, recons = out
        else:
            features, recons = self.model.extract(images), None
        self._collect_bank_parts(features, normal)
        if recons is None:  # no trained part reaches the output (CkaadModel.learns): the banks are all there is
            return None
        normal_features = [f[normal] for f in features]
        rec_loss = reconstruction_loss(normal_features, [r[normal] for r in recons])

        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        adv_energies = None
        if len(optimizers) > 1 and anomalous.any():
            opt_d = optimizers[1]
            d_loss = self.loss.discriminator(
                self.model.energies(normal_features),
                self.model.energies([f[anomalous] for f in features]),
                self.model.energies([r.detach() for r in recons]),
            )
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            self.clip_gradients(
                cast("optim.Optimizer", opt_d), gradient_clip_val=self.d_grad_clip, gradient_clip_algorithm="norm"
            )
            opt_d.step()
            self._log_epoch("train_d_loss", d_loss, len(images))
            adv_energies = self.model.energies(recons)  # scored by the just-updated D

        push = None
        if self.loss.push_weight > 0 and anomalous.any():
            scores = self.model.score(features, recons, images.shape[-2:]).pred_score
            assert scores is not None  # noqa: S101 - score() always fills it
            push = self.loss.push(scores[anomalous], scores[normal])
            self._log_epoch("train_push_loss", push, len(images))
        loss = self.loss.autoencoder(rec_loss, adv_energies, push)
        opt_ae = optimizers[0]
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        self._log_epoch("train_loss", loss, len(images), prog_bar=True)
        self._log_epoch("train_rec_loss", rec_loss, len(images))
        return {"loss": loss.detach()}

    @torch.no_grad()
    def _collect_bank_parts(self, features: Sequence[torch.Tensor], normal: torch.Tensor) -> None:
        """Keep the embeddings of the batch's normal images and coarse anomalies for banks still to be filled."""
        for index, (nearest, coarse) in enumerate(self.model.bank_pairs()):
            if nearest.empty:
                self._bank_parts.setdefault(index, []).append(nearest.patches([f[normal] for f in features]))
            if coarse is not None and coarse.empty and not normal.all():
                self._coarse_parts.setdefault(index, []).append(coarse.patches([f[~normal] for f in features]))

    def on_validation_epoch_start(self) -> None:
        """With the fused score, fit it on the validation split before that split is scored.

        The normal images give the standardisation; with ``energy_weight="auto"`` the labelled ones also choose
        ``w``. anomalib fits its threshold and normalisation on the same split right after; test is never used.
        """
        self._build_memory_banks()
        if self.model.fused and self._fit_fused_score(
            self.trainer.val_dataloaders, choose=bool(self.model.auto_components or self.model.bank_candidates)
        ):
            self._fused_score_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        """Fallback for a run without normal validation images: standardise on the normal *training* images.

        D has been trained on those, so their energies are lower and tighter than held-out ones; say so.
        """
        self._build_memory_banks()
        if not self.model.fused or self._fused_score_epoch == self.current_epoch:
            return
        if self._fit_fused_score(self.trainer.train_dataloader, choose=False):
            logger.warning(
                "Ckaad(energy_weight=%s, knn_weight=%s): no normal validation images, so the fused score is "
                "standardised on the normal training images, which D and the memory bank have seen (weights %s). "
                "Give the datamodule a validation split with normal and anomalous images.",
                self.hparams.get("energy_weight"),
                self.hparams.get("knn_weight"),
                self.model.score_weights.tolist(),
            )

    @torch.no_grad()
    def _build_memory_banks(self) -> None:
        """Fill the memory banks from the embeddings collected in training (once; every DDP rank the same).

        The normal bank: a subset of the normal embeddings (``memory_bank_sampling``). The coarse bank: of each
        coarse anomaly, the ``coarse_fraction`` of its positions farthest from the normal bank (its most anomalous
        region). With ``nearest_normalize="auto"``, both candidate pairs.
        """
        for index, (nearest, coarse) in enumerate(self.model.bank_pairs()):
            parts = self._bank_parts.pop(index, None)
            if parts:
                nearest.set_memory_bank(self._gather_rows(torch.cat(parts)))
            # before any training step (e.g. a sanity check) there is nothing to select the coarse bank with
            if coarse is None or not coarse.empty or nearest.empty:
                continue
            if index not in self._coarse_parts:
                msg = (
                    "Ckaad(coarse_weight=...) saw no labelled anomaly in its first training epoch: train on a "
                    "datamodule whose batches carry coarse anomalies (ckaad_anomalib.data.CoarseAnomalyDataModule), "
                    "or set coarse_weight=0."
                )
                raise ValueError(msg)
            # (N, h·w, D); batches cycle the coarse anomalies, so drop the repeats of an image first
            anomalies = torch.unique(self._gather_rows(torch.cat(self._coarse_parts.pop(index))), dim=0)
            n, positions, dims = anomalies.shape
            # a few images at a time: the search holds (rows × chunk_size) distances
            farthest = torch.cat([nearest.distances(a.reshape(-1, dims)) for a in anomalies.split(8)])
            farthest = farthest.reshape(n, positions)
            keep = farthest.topk(max(1, round(self.model.coarse_fraction * positions)), dim=1).indices
            coarse.set_memory_bank(
                torch.unique(torch.gather(anomalies, 1, keep[..., None].expand(-1, -1, dims)).reshape(-1, dims), dim=0)
            )

    def _gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows (along dim 0), in rank order; on one process, ``local`` itself."""
        if self.trainer.world_size == 1:
            return local
        counts = cast("torch.Tensor", self.all_gather(torch.tensor(len(local), device=self.device)))
        padded = local.new_zeros(int(counts.max()), *local.shape[1:])
        padded[: len(local)] = local
        gathered = cast("torch.Tensor", self.all_gather(padded))
        return torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])

    @torch.no_grad()
    def _fit_fused_score(self, loaders: Any, choose: bool) -> bool:  # noqa: ANN401 - DataLoader(s) or None
        """Fit the fused score on ``loaders``' images; with ``nearest_normalize="auto"`` first choose the banks.

        Each candidate pair of banks gets its statistics and ``"auto"`` weights fitted, then the validation images
        rank them (:meth:`_validation_quality`: pixel AUROC of the anomaly map where there are masks, then image
        AUROC; the first, i.e. raw features, on ties); under DDP rank 0's choice is broadcast. The other pair is
        dropped, so exports and checkpoints hold the chosen banks only. Without labelled images (``choose`` false)
        the raw banks stay, with a warning.

        Returns:
            Whether there were at least two normal images (otherwise nothing is changed).
        """
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders] if loaders is not None else []
        candidates = self.model.bank_candidates
        if not candidates:
            return self._fit_score_statistics(loaders, choose)
        if not choose:
            logger.warning(
                "Ckaad(nearest_normalize='auto') has no labelled validation images to choose with: it keeps the "
                "features as extracted (nearest_normalize=False)."
            )
            self.model.use_banks(candidates[0])
            self.model.bank_candidates = []
            return self._fit_score_statistics(loaders, choose)
        qualities = []
        for pair in candidates:
            self.model.use_banks(pair)
            if not self._fit_score_statistics(loaders, choose):
                return False
            qualities.append(self._validation_quality(loaders))
        best = self.trainer.strategy.broadcast(max(range(len(qualities)), key=lambda i: (qualities[i], -i)))
        self.model.use_banks(candidates[best])
        self.model.bank_candidates = []
        logger.info(
            "Ckaad chose nearest_normalize=%s on validation (pixel AUROC, image AUROC: %s).",
            candidates[best].nearest.normalize,
            ", ".join(f"{'normalised' if c.nearest.normalize else 'raw'} {q[0]:.4f} / {q[1]:.4f}"
                      for c, q in zip(candidates, qualities, strict=True)),
        )  # fmt: skip
        return best == len(candidates) - 1 or self._fit_score_statistics(loaders, choose)  # the chosen pair's fit

    def _labelled_images(self, loaders: list[Any]) -> Iterator[tuple[torch.Tensor, Batch]]:
        """Each labelled batch of ``loaders``, pre-processed, with the model in eval mode meanwhile."""
        transform = getattr(self.pre_processor, "transform", None)
        was_training = self.model.training
        self.model.eval()
        try:
            for loader in loaders:
                for batch in loader:
                    if batch.gt_label is None or batch.image is None:
                        continue
                    images = batch.image.to(self.device)
                    yield (transform(images) if transform else images), batch
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _validation_quality(self, loaders: list[Any]) -> tuple[float, float]:
        """Pixel AUROC of the anomaly maps (0 without masks) and image AUROC (0 without both classes).

        Masks are resized to the map's size (nearest), as the pre-processor resizes them for the metrics.
        """
        scores, labels, maps, masks = [], [], [], []
        for images, batch in self._labelled_images(loaders):
            out = self.model(images)
            assert isinstance(out, InferenceBatch)  # noqa: S101 - eval mode contract
            # CkaadModel.score fills both
            score, anomaly_map = cast("torch.Tensor", out.pred_score), cast("torch.Tensor", out.anomaly_map)
            scores.append(score)
            labels.append(cast("torch.Tensor", batch.gt_label).to(self.device).int())
            if batch.gt_mask is not None:
                mask = batch.gt_mask.to(self.device).reshape(len(images), 1, *batch.gt_mask.shape[-2:]).float()
                masks.append(F.interpolate(mask, size=anomaly_map.shape[-2:], mode="nearest").int().flatten())
                maps.append(anomaly_map.flatten())

        def auroc(values: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
            target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int)
            return float(binary_auroc(torch.cat(values), target)) if 0 < int(target.sum()) < len(target) else 0.0

        return auroc(maps, masks), auroc(scores, labels)

    @torch.no_grad()
    def _fit_score_statistics(self, loaders: list[Any], choose: bool) -> bool:
        """Fit the fused score's normal statistics (and, if ``choose``, the ``"auto"`` weights) on ``loaders``' images.

        Mean and std come from every rank's normal images. The ``"auto"`` weights are the combination of their
        :data:`AUTO_WEIGHTS` candidates with the best image AUROC (the first, i.e. smallest, on ties), the other
        weights fixed; under DDP rank 0 picks it from its shard and broadcasts it.

        Returns:
            Whether there were at least two normal images (otherwise nothing is changed).
        """
        scores, labels = [], []
        for images, batch in self._labelled_images(loaders):
            scores.append(self.model.component_scores(images).double())
            labels.append(cast("torch.Tensor", batch.gt_label).to(self.device).bool())
        n_components = len(self.model.components)
        all_scores = torch.cat(scores) if scores else torch.zeros(0, n_components, device=self.device).double()
        anomalous = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.bool, device=self.device)
        normal = all_scores[~anomalous]
        moments = torch.stack(
            [torch.full((n_components,), float(len(normal)), device=self.device), normal.sum(0), (normal**2).sum(0)]
        )
        moments = self.trainer.strategy.reduce(moments.double(), reduce_op="sum")  # every rank: the same statistics
        n = moments[0, 0]
        if n < 2:
            return False
        mean = moments[1] / n
        std = ((moments[2] - n * mean**2) / (n - 1)).clamp_min(0).sqrt()
        self.model.set_score_statistics(mean.float(), std.float())
        if choose and self.model.auto_components:  # fuse() below standardises with the statistics just set
            weights = self.model.score_weights.clone()
            if anomalous.any() and (~anomalous).any():
                auto = self.model.auto_components
                grid = torch.cartesian_prod(*[torch.tensor(AUTO_WEIGHTS[c]) for c in auto]).reshape(-1, len(auto))
                candidates = weights.repeat(len(grid), 1)
                candidates[:, [self.model.components.index(c) for c in auto]] = grid.to(weights)
                target = anomalous.int()
                aurocs = torch.stack([binary_auroc(self.model.fuse(all_scores.float(), w), target) for w in candidates])
                weights = candidates[int(aurocs.argmax())]  # argmax: the first (smallest) best
                chosen = ", ".join(f"{c}_weight={float(weights[self.model.components.index(c)]):g}" for c in auto)
                logger.info("Ckaad chose %s on validation (image AUROC %.4f).", chosen, float(aurocs.max()))
            self.model.score_weights.copy_(self.trainer.strategy.broadcast(weights))
        return True

    def _log_epoch(self, name: str, value: torch.Tensor, batch_size: int, prog_bar: bool = False) -> None:
        """Log an epoch mean, weighted by the true batch size and averaged over ranks under DDP."""
        self.log(
            name, value.detach(), on_epoch=True, on_step=False, prog_bar=prog_bar, batch_size=batch_size, sync_dist=True
        )

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for validation metrics and thresholds."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def to_torch(self, *args, **kwargs) -> Path:
        """Export for torch (anomalib's format), without the training-only discriminator weights."""
        with self.model.inference_only():
            return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args, **kwargs) -> Path:  # type: ignore[override]  # as anomalib's export mixin
        """Export to ONNX (anomalib's; also the first step of OpenVINO export), without discriminator weights."""
        with self.model.inference_only():
            return super().to_onnx(*args, **kwargs)

    def to_openvino(self, export_root: Path | str, *args, **kwargs) -> Path:  # type: ignore[override]
        """Export to OpenVINO (anomalib's), f32 on bf16 CPUs too (:func:`.keep_f32`).

        INT8 gets its own threshold (:func:`.export_int8_with_own_thresholds`).
        """
        arguments = inspect.signature(AnomalibModule.to_openvino).bind(self, export_root, *args, **kwargs).arguments
        arguments.pop("self")
        quantised = arguments.get("compression_type") in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ}
        if not quantised or not isinstance(self.post_processor, PostProcessor):  # a custom one: nothing to refit
            path = super().to_openvino(**arguments)
        else:
            root, datamodule = arguments.pop("export_root"), arguments.pop("datamodule", None)
            path = export_int8_with_own_thresholds(
                self, self.post_processor, super().to_openvino, root, datamodule, **arguments
            )
        keep_f32(path)
        return path

    @staticmethod
    def _post_training_quantization_ov(model: Any, datamodule: AnomalibDataModule | None = None) -> Any:  # noqa: ANN401
        """INT8 post-training quantisation calibrated on normal training images (see :func:`.export.quantize_int8`)."""
        return quantize_int8(model, datamodule)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """What the model needs from the trainer (clipping is done per optimiser).

        ``max_epochs`` if set, and with ``knn_weight`` no sanity validation: the memory bank is filled in the first
        training epoch. Where no trained part reaches the output (:attr:`CkaadModel.learns`), one epoch.
        """
        arguments: dict[str, Any] = {} if self.max_epochs is None else {"max_epochs": self.max_epochs}
        if self.model.nearest is not None:  # the coarse bank needs it too
            arguments["num_sanity_val_steps"] = 0
        if not self.model.learns:  # one epoch fills the banks; later ones would train nothing (as PatchCore)
            arguments["max_epochs"] = 1
        return arguments

    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS: anomalib's only training type; coarse anomalies ride along in the training batches."""
        return LearningType.ONE_CLASS
