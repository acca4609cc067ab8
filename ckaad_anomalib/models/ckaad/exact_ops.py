"""Resize, blur and cosine distance written with ops that OpenVINO keeps in f32 on bf16 CPUs.

On a CPU with bf16 (AVX512-BF16 / AMX) OpenVINO's CPU plugin runs every model in bf16 unless the caller asks for
f32, and anomalib's ``OpenVINOInferencer`` does not ask: measured on a small Ckaad, the normalised map moved by
0.063 and the score by 0.089. An exported Ckaad therefore marks every op of its graph as precise
(:func:`~ckaad_anomalib.models.ckaad.export.keep_f32`), which the plugin honours for convolutions, reductions,
gathers and element-wise ops (OpenVINO PR #21440). It does *not* honour it for ``Interpolate`` and ``Pad``, nor for
the ops its own decompositions create (``Divide`` → ``Multiply`` + ``Power``, ``Unsqueeze`` → ``Reshape``), which
then run in bf16 and round the map, nor for a fused element-wise chain that ends in such a created op (its output
is bf16). So the map's tail avoids them: bilinear resizing and reflect padding are gathers with fixed weights, the
cosine distance and the L2 normalisation divide by multiplying with a power and end in a reduction or a product of
original ops, and the memory-bank products are a convolution. Each gives the values of the torch / kornia /
anomalib op it replaces to ~1e-6 (a few 1e-6 for strong downscaling, where torch rounds the source position), in
training too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.filters import get_gaussian_kernel1d
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _bilinear_taps(size_in: int, size_out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    The source position ``(dst + 0.5)·size_in/size_out − 0.5`` is kept as an integer over ``2·size_out``, and the
    weights are looked up in a constant table: with a dynamic input size (the exported pre-processing), no
    floating-point arithmetic runs in the graph, which OpenVINO would fuse into bf16 nodes.
    """
    denominator = 2 * size_out
    positions = 2 * torch.arange(size_out, device=device) + 1
    numerator = (positions * size_in - size_out).clamp(min=0)
    low = torch.div(numerator, denominator, rounding_mode="floor")
    fraction = numerator - low * denominator
    low = low.clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    table = torch.arange(denominator, device=device, dtype=torch.float32) / denominator
    return low, high, (1 - table).index_select(0, fraction), table.index_select(0, fraction)


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (no antialiasing) as two gathers per axis.

    Args:
        x: ``(N, C, h, w)`` tensor.
        size: Target ``(H, W)``.

    Returns:
        ``(N, C, H, W)`` tensor.
    """
    for dim, size_out in ((2, int(size[0])), (3, int(size[1]))):
        size_in = x.shape[dim]
        if isinstance(size_in, int) and size_in == size_out:
            continue
        low, high, w_low, w_high = _bilinear_taps(size_in, size_out, x.device)
        shape = [1, 1, size_out, 1] if dim == 2 else [1, 1, 1, size_out]
        x = x.index_select(dim, low) * w_low.view(shape).to(x.dtype) + x.index_select(dim, high) * w_high.view(
            shape
        ).to(x.dtype)
    return x


def _reflect_indices(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of ``F.pad(mode="reflect")`` along an axis of ``size`` (``pad < size``)."""
    index = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


class SeparableGaussianBlur(nn.Module):
    """kornia's separable ``GaussianBlur2d`` with reflect border, its padding done by gathers.

    Args:
        kernel_size: Odd kernel size (both axes).
        sigma: Standard deviation (both axes).

    Example:
        >>> from kornia.filters import GaussianBlur2d
        >>> x = torch.rand(1, 1, 40, 40)
        >>> reference = GaussianBlur2d((9, 9), (2.0, 2.0), border_type="reflect", separable=True)(x)
        >>> bool((SeparableGaussianBlur(9, 2.0)(x) - reference).abs().max() < 1e-6)
        True
    """

    kernel: torch.Tensor

    def __init__(self, kernel_size: int, sigma: float) -> None:
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size)
        self.pad = kernel_size // 2
        self.register_buffer("kernel", get_gaussian_kernel1d(kernel_size, sigma).reshape(-1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``(N, 1, H, W)`` maps (H, W > kernel_size // 2)."""
        kernel = self.kernel.to(x.dtype)
        x = x.index_select(3, _reflect_indices(x.shape[3], self.pad, x.device))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        x = x.index_select(2, _reflect_indices(x.shape[2], self.pad, x.device))
        return F.conv2d(x, kernel.view(1, 1, -1, 1))


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 − F.cosine_similarity(a, b, dim=1)``, kept as ``(N, 1, h, w)``.

    Written as ``Σ_c (1/C − a_c·b_c·s)`` with ``s = max(|a|²·|b|², eps²)^(−1/2)`` (torch's formula): ending in a
    reduction keeps OpenVINO from fusing the element-wise tail into a node that outputs bf16.
    """
    scale = ((a * a).sum(1, keepdim=True) * (b * b).sum(1, keepdim=True)).clamp_min(eps * eps).pow(-0.5)
    return (a * (-scale) * b + 1 / a.shape[1]).sum(1, keepdim=True)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` as ``x · max(|x|², eps²)^(−1/2)`` (no division op)."""
    return x * (x * x).sum(1, keepdim=True).clamp_min(eps * eps).pow(-0.5)


def nearest_distance(x: torch.Tensor, bank: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """Euclidean distance of each position of ``(N, D, h, w)`` to its nearest row of a ``(M, D)`` bank.

    ``|x|² − 2·x·b + |b|²`` as in anomalib's ``PatchcoreModel.euclidean_dist``, with the products as a 1×1
    convolution (OpenVINO turns a matrix product with a constant into a node that ignores the f32 mark), over
    fixed chunks of the bank so that memory stays bounded.

    Args:
        x: ``(N, D, h, w)`` embeddings.
        bank: ``(M, D)`` memory bank.
        chunk_size: Bank rows compared at once.

    Returns:
        ``(N, 1, h, w)`` distances.
    """
    nearest = []
    for chunk in bank.split(chunk_size):
        products = F.conv2d(x, chunk[:, :, None, None])
        nearest.append((products * -2 + (chunk * chunk).sum(1).view(1, -1, 1, 1)).amin(1, keepdim=True))
    best = nearest[0] if len(nearest) == 1 else torch.cat(nearest, dim=1).amin(1, keepdim=True)
    return (best + (x * x).sum(1, keepdim=True)).clamp_min(0).pow(0.5)


class ExactResize(nn.Module):
    """The exported pre-processing resize: bilinear without antialiasing, as anomalib exports ``Resize``.

    Args:
        size: Target ``(H, W)``.
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(N, C, h, w)`` images to ``size``."""
        return resize_bilinear(images, self.size)


class ExactNormalize(nn.Module):
    """``(x − mean) / std`` per channel, as a multiplication by ``1 / std`` (OpenVINO splits a division).

    Args:
        mean: Per-channel mean.
        std: Per-channel standard deviation.
    """

    mean: torch.Tensor
    inverse_std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer(
            "inverse_std", 1 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise ``(N, C, H, W)`` images."""
        return (images - self.mean) * self.inverse_std
