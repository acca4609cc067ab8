"""Anomaly map and image score of CKAAD (the discriminator is not used at inference).

``map = blur_σ(Σ_ℓ upsample_bilinear(1 − cos_channel(F_ℓ, AE_ℓ)))`` at input resolution; image score = mean of the
``k`` largest map values (``score_mode="topk"``, the paper's default, k = 100) or of the whole map
(``score_mode="mean"``, used for ISIC2018). All shapes are static, so the graph exports with ``torch.export``.

The blur is a *separable* Gaussian (two 1-D passes, 2·33 instead of 33² multiply-adds per pixel at σ = 4) with
anomalib's kernel size and reflect border: the same map as anomalib's dense ``GaussianBlur2d`` (to ~1e-6), but
the dense 33×33 convolution was 47 % of the deployed lite0 pipeline's latency (``benchmarks/profile_inference.py``).
Resizing, padding and the cosine come from :mod:`.exact_ops`, so that the exported map stays f32 on bf16 CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import torch
from anomalib.models.components.filters.blur import compute_kernel_size
from torch import nn

from .exact_ops import SeparableGaussianBlur, cosine_distance, l2_normalize, nearest_distance, resize_bilinear


class ScoreMode(StrEnum):
    """How the image score is pooled from the anomaly map."""

    TOPK = "topk"
    MEAN = "mean"


class AnomalyMapGenerator(nn.Module):
    """Turns features and reconstructions into a blurred per-pixel map.

    Args:
        sigma: Standard deviation of the Gaussian blur (kernel size ``2·⌊4σ+0.5⌋+1``).

    Example:
        >>> gen = AnomalyMapGenerator(sigma=4)
        >>> f = [torch.randn(2, 8, 8, 8)]
        >>> gen(f, f, (32, 32)).abs().max() < 1e-5
        tensor(True)
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        size = compute_kernel_size(sigma)  # anomalib's rule: 2·⌊4σ+0.5⌋+1
        self.blur = SeparableGaussianBlur(size, sigma)

    def combine(self, maps: Sequence[torch.Tensor], image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Upsample per-stage ``(N, 1, h, w)`` maps to ``image_size``, sum them and blur: ``(N, 1, H, W)``."""
        upsampled = [resize_bilinear(m, image_size) for m in maps]
        total = upsampled[0]
        for m in upsampled[1:]:  # adds, not stack + sum: OpenVINO turns stack's Unsqueeze into an unmarked Reshape
            total = total + m
        return self.blur(total)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Return the anomaly map of shape ``(N, 1, H, W)`` with ``(H, W) = image_size``."""
        return self.combine(distance_maps(features, reconstructions), image_size)


def distance_maps(features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-stage ``1 − cos`` along channels, ``(N, 1, h, w)`` each."""
    return [cosine_distance(f, r) for f, r in zip(features, reconstructions, strict=True)]


def image_score(anomaly_map: torch.Tensor, mode: ScoreMode | str = ScoreMode.TOPK, top_k: int = 100) -> torch.Tensor:
    """Pool an ``(N, 1, H, W)`` map into ``(N,)`` scores.

    Args:
        anomaly_map: Anomaly maps.
        mode: ``"topk"``: mean of the ``top_k`` largest values (all values if the map is smaller);
            ``"mean"``: mean of the whole map.
        top_k: ``k`` for ``"topk"``.

    Returns:
        Image scores.
    """
    flat = anomaly_map.flatten(1)
    if ScoreMode(mode) == ScoreMode.MEAN:
        return flat.mean(1)
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(1)


class BankSampling(StrEnum):
    """How a memory bank keeps ``bank_size`` of more embeddings."""

    RANDOM = "random"
    CORESET = "coreset"


def greedy_coreset(embeddings: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``size`` rows of ``(M, D)`` ``embeddings`` chosen by greedy k-center (PatchCore's coreset).

    Each step adds the row farthest from those already chosen (Sener & Savarese, 2018), so the kept rows cover the
    embedding space rather than its dense regions. Squared distances come from ``‖x‖² − 2x·c + ‖c‖²``: one
    matrix-vector product and ``M``-long vectors per step, on the embeddings themselves. (anomalib's
    ``KCenterGreedy`` first projects them to the Johnson-Lindenstrauss dimension, ~290 for 123k rows, more than
    the 64 of a stride-4 + stride-8 lite0 embedding, and allocates an ``M × D`` difference per step: 216 s for
    4096 of 123k rows on 2 CPU cores, and without the projection it swapped until killed at 24 GiB.)

    Args:
        embeddings: ``(M, D)`` rows.
        size: Rows to choose (``1 <= size <= M``).
        seed: Seed of the first, random, row.

    Returns:
        ``(size,)`` int64 indices, in the order chosen.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [10.0]])
        >>> sorted(greedy_coreset(x, 3, seed=0).tolist())  # the far points before the near duplicate
        [0, 2, 3]
    """
    rows = embeddings.float()
    squared = (rows * rows).sum(dim=1)
    chosen = torch.empty(size, dtype=torch.long, device=rows.device)
    chosen[0] = int(torch.randint(len(rows), (1,), generator=torch.Generator().manual_seed(seed)))
    nearest = torch.full_like(squared, float("inf"))
    for step in range(1, size):
        last = chosen[step - 1]
        torch.minimum(nearest, squared - 2 * (rows @ rows[last]) + squared[last], out=nearest)
        chosen[step] = torch.argmax(nearest)
    return chosen


class NearestPatchMap(nn.Module):
    """Each position's distance to its nearest embedding in a memory bank, on CKAAD's frozen features.

    With a bank of normal training embeddings this is PatchCore's patch score; with a bank of the coarse anomalies'
    most anomalous embeddings it measures how close a patch is to a labelled defect. The embedding follows
    PatchCore: the two deepest stages (its mid-level features), 3×3 average pooled, the deeper resampled to the
    other's resolution, concatenated along channels; for WRN-50 ``layer1..3`` that is PatchCore's
    ``layer2 + layer3`` (``stages`` picks others). A bank keeps a random subset (default) or PatchCore's greedy
    coreset (:func:`greedy_coreset`), which covers the embeddings as well with fewer rows, so the search is faster.
    The search runs over fixed chunks of the bank, so memory stays bounded and the graph exports
    (:func:`.exact_ops.nearest_distance`).

    Args:
        bank_size: Most embeddings kept in the memory bank.
        chunk_size: Bank rows compared at once.
        description: What fills the bank, for the error raised while it is empty.
        stages: Indices of the stages the embedding concatenates, at the resolution of the first (``None``: the two
            deepest, PatchCore's choice). Finer stages give a finer map: see ``Ckaad(nearest_layers=...)``.
        sampling: How the bank keeps ``bank_size`` of more embeddings: ``"random"`` or ``"coreset"``.
        normalize: L2-normalise each stage's feature vector at every position before pooling, so that distances
            compare the features' directions (as STFPM's cosine does) and not their magnitudes.

    Example:
        >>> nearest = NearestPatchMap(bank_size=128)  # room for all 2 × 8 × 8 positions
        >>> f = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
        >>> nearest.set_memory_bank(nearest.patches(f))
        >>> nearest(f).abs().max() < 1e-3  # every query is in the bank
        tensor(True)
    """

    memory_bank: torch.Tensor
    normalized: torch.Tensor

    def __init__(
        self,
        bank_size: int = 16384,
        chunk_size: int = 2048,
        description: str = "the normal training images",
        stages: Sequence[int] | None = None,
        sampling: BankSampling | str = BankSampling.RANDOM,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.bank_size, self.chunk_size, self.description = bank_size, chunk_size, description
        self.sampling = BankSampling(sampling)
        self.normalize = normalize
        self.stages = None if stages is None else list(stages)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.register_buffer("memory_bank", torch.zeros(0, 0))
        self.register_buffer("normalized", torch.tensor(normalize))  # saved, so a checkpoint says how it compares

    @property
    def empty(self) -> bool:
        """Whether the bank still has to be filled."""
        return self.memory_bank.numel() == 0

    def embed(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, D, h, w)`` embedding of the used stages."""
        used = features[-2:] if self.stages is None else [features[i] for i in self.stages]
        if self.normalize:
            used = [l2_normalize(f) for f in used]
        pooled = [self.pool(f) for f in used]
        size = pooled[0].shape[-2:]
        resized = [resize_bilinear(p, size) for p in pooled[1:]]
        return torch.cat([pooled[0], *resized], dim=1)

    def patches(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, h·w, D)``: one row per position, what a bank stores and what is searched."""
        embedding = self.embed(features)
        return embedding.permute(0, 2, 3, 1).reshape(len(embedding), -1, embedding.shape[1])

    def set_memory_bank(self, embeddings: torch.Tensor, seed: int = 0) -> None:
        """Keep ``bank_size`` of ``(M, D)`` (or ``(N, h·w, D)``) embeddings (all if fewer), as ``sampling`` says.

        Seeded, so every DDP rank that passes the same embeddings keeps the same subset.
        """
        embeddings = embeddings.reshape(-1, embeddings.shape[-1])
        if len(embeddings) > self.bank_size:
            if self.sampling is BankSampling.CORESET:
                keep = greedy_coreset(embeddings, self.bank_size, seed)
            else:
                keep = torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(seed))[: self.bank_size]
            embeddings = embeddings[keep.to(embeddings.device)]
        self.memory_bank = embeddings.detach().clone()

    def distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of each position of ``(N, D, h, w)`` (or row of ``(M, D)``) to its nearest bank row."""
        if self.empty:
            msg = (
                f"The memory bank filled from {self.description} is empty: Ckaad fills it in the first training "
                "epoch. Train (or load a trained checkpoint) before scoring; with a plain Lightning Trainer also "
                "pass num_sanity_val_steps=0."
            )
            raise RuntimeError(msg)
        if embedding.dim() == 2:
            return nearest_distance(embedding[:, :, None, None], self.memory_bank, self.chunk_size).reshape(-1)
        return nearest_distance(embedding, self.memory_bank, self.chunk_size)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, 1, h, w)`` Euclidean distance of each position to the nearest bank embedding."""
        return self.distances(self.embed(features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """Take the checkpoint's bank whatever its size (a new model's bank is empty), and how it compares.

        A checkpoint from before ``normalized`` was saved keeps the constructor's setting.
        """
        key = prefix + "memory_bank"
        if key in state_dict:
            self.memory_bank = torch.empty_like(state_dict[key])
        key = prefix + "normalized"
        if key in state_dict:
            self.normalize = bool(state_dict[key])
        else:
            state_dict[key] = self.normalized.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
