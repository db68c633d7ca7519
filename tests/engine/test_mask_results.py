"""A segmentation run's frame-level decision says which lesion images it hides, and when its Dice is the
lesion-free images' alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.engine.mask_results import _decided
from medcad.metrics.segmentation import apply_frame_decision, dice_iou, mask_counts


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 25), seed=st.integers(0, 10_000), threshold=st.floats(0, 1.01))
def test_the_decision_names_the_lesion_images_it_hides(n: int, seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    true = rng.random((n, 8, 8)) < rng.random((n, 1, 1)) * (rng.random((n, 1, 1)) < 0.6)
    pred = rng.random((n, 8, 8)) < rng.random((n, 1, 1)) * (rng.random((n, 1, 1)) < 0.7)
    before = mask_counts(pred, true)
    score = rng.random(n)
    after = apply_frame_decision(before, score, threshold)
    out = _decided([after], before, np.arange(n), ["lesion_area"], "rule", [threshold])
    lesion, found = true.any(axis=(1, 2)), pred.any(axis=(1, 2))
    hidden = lesion & found & (score < threshold)
    kept = lesion & found & (score >= threshold)
    if not hidden.any():
        assert "note" not in out and "lesion_images_hidden" not in out
        return
    assert out["lesion_images_hidden"] == {
        "n": hidden.sum(),
        "of": (lesion & found).sum(),
        "n_lesion_images": lesion.sum(),
    }
    assert f"empties the masks of {hidden.sum()} of the {(lesion & found).sum()} lesion images" in out["note"]
    assert ("No lesion image keeps a mask" in out["note"]) == (not kept.any())
    if not kept.any():  # every lesion image scores 0: the mean Dice is the lesion-free images' Dice over all
        assert out["dice"]["value"] * n == pytest.approx(dice_iou(after)[0][~lesion].sum())
