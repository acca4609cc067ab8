"""INT8's threshold at FP32's operating point (``models/ckaad/export.py``)."""

from __future__ import annotations

import pytest
import torch

from ckaad_anomalib.models.ckaad.export import matched_threshold


def test_matched_threshold_flags_as_many_values_as_the_reference() -> None:
    reference = torch.tensor([0.1, 0.4, 0.2, 0.9, 0.7])
    scores = torch.tensor([1.0, 2.5, 2.0, 9.0, 3.0])  # the same items, another scale and a swapped pair
    for reference_threshold in (0.05, 0.2, 0.5, 0.8, 1.0):
        threshold = matched_threshold(reference, reference_threshold, scores)
        assert (scores >= threshold).sum() == (reference >= reference_threshold).sum()
    assert matched_threshold(reference, 0.5, scores) == pytest.approx(2.75)  # halfway between 2.5 and 3.0
    with pytest.raises(ValueError, match="same values in two precisions"):
        matched_threshold(reference, 0.5, scores[:3])
