"""The bf16-safe ops give the values of the torch / kornia / anomalib ops they replace."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from kornia.filters import GaussianBlur2d
from torch.nn import functional as F  # noqa: N812
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

from ckaad_anomalib.models.ckaad.exact_ops import (
    ExactNormalize,
    ExactResize,
    SeparableGaussianBlur,
    cosine_distance,
    l2_normalize,
    nearest_distance,
    resize_bilinear,
)
from ckaad_anomalib.models.ckaad.export import exact_export_transform


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (64, 64)), ((300, 300), (128, 128)), ((97, 131), (5, 256))])
def test_resize_equals_bilinear_interpolate(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size_in)
    expected = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    # torch rounds the source position in float32; ours is exact (differs by a few 1e-6 on strong downscaling)
    torch.testing.assert_close(resize_bilinear(x, size_out), expected, atol=1e-5, rtol=0)


def test_resize_to_same_size_is_identity() -> None:
    x = torch.rand(1, 1, 7, 9)
    assert torch.equal(resize_bilinear(x, (7, 9)), x)


def test_blur_equals_kornia_separable_reflect() -> None:
    x = torch.rand(2, 1, 48, 40)
    reference = GaussianBlur2d((33, 33), (4.0, 4.0), border_type="reflect", separable=True)(x)
    torch.testing.assert_close(SeparableGaussianBlur(33, 4.0)(x), reference, atol=1e-6, rtol=0)


def test_cosine_distance_and_normalize_equal_torch() -> None:
    a, b = torch.randn(2, 64, 5, 5), torch.randn(2, 64, 5, 5)
    expected = (1 - F.cosine_similarity(a, b, dim=1)).unsqueeze(1)
    torch.testing.assert_close(cosine_distance(a, b), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(l2_normalize(a), F.normalize(a, dim=1), atol=1e-6, rtol=0)


def test_nearest_distance_equals_patchcore_distance() -> None:
    x, bank = torch.randn(2, 16, 4, 3), torch.randn(50, 16)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 16)
    expected = PatchcoreModel.euclidean_dist(rows, bank).min(1).values.reshape(2, 4, 3, 1).permute(0, 3, 1, 2)
    for chunk in (7, 2048):  # several chunks, one chunk
        torch.testing.assert_close(nearest_distance(x, bank, chunk), expected, atol=1e-4, rtol=1e-5)


def test_export_transform_keeps_values_and_other_steps() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    exportable = exact_export_transform(Compose([Resize((32, 48), antialias=True), Normalize(mean, std)]))
    assert isinstance(exportable, Compose)
    assert [type(step) for step in exportable.transforms] == [ExactResize, ExactNormalize]
    x = torch.rand(2, 3, 70, 50)
    expected = Normalize(mean, std)(F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False))
    torch.testing.assert_close(exportable(x), expected, atol=5e-5, rtol=0)
    crop = exact_export_transform(CenterCrop(8))  # anything else: anomalib's exportable version
    assert crop is not None
    assert crop(x).shape[-2:] == (8, 8)
