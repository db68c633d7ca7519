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
    none_kept = lesion.any() and not kept.any()
    assert ("No lesion image keeps a mask" in out.get("note", "")) == none_kept
    assert out.get("no_lesion_image_kept", False) == none_kept
    if none_kept:  # every lesion image scores 0: the mean Dice is the lesion-free images' Dice summed over all
        assert out["dice"]["value"] * n == pytest.approx(dice_iou(after)[0][~lesion].sum())
    if not hidden.any():
        assert "lesion_images_hidden" not in out and ("note" in out) == none_kept
        return
    want = {"n": hidden.sum(), "of": (lesion & found).sum(), "n_lesion_images": lesion.sum()}
    assert out["lesion_images_hidden"] == want
    assert f"empties the masks of {hidden.sum()} of the {(lesion & found).sum()} lesion images given" in out["note"]


def test_a_segmenter_that_marks_only_lesion_free_frames_is_said_to_keep_no_lesion() -> None:
    """The reviewer's case: pixels only on the 6 lesion-free frames, which the decision empties; the mean Dice goes
    from 0 to 0.6 and no mask was hidden, yet no lesion image keeps one: said."""
    true = np.zeros((10, 8, 8), bool)
    true[:4, 2:5, 2:5] = True
    pred = np.zeros_like(true)
    pred[4:, 1:3, 1:3] = True
    before = mask_counts(pred, true)
    after = apply_frame_decision(before, np.r_[np.ones(4), np.zeros(6)], 0.5)
    out = _decided([after], before, np.arange(10), ["lesion_area"], "rule", [0.5])
    assert out["dice"]["value"] == pytest.approx(0.6) and "lesion_images_hidden" not in out
    assert out["no_lesion_image_kept"] and "comes from the lesion-free images alone" in out["note"]


def test_the_note_reaches_the_console() -> None:
    from rich.console import Console

    from medcad.metrics.segmentation import segmentation_metrics
    from medcad.report.console import print_metrics

    true = np.zeros((10, 8, 8), bool)
    true[:4, 2:5, 2:5] = True
    pred = true.copy()
    pred[4:, 1:3, 1:3] = True
    before = mask_counts(pred, true)
    after = apply_frame_decision(before, np.r_[np.zeros(4), np.ones(6)], 0.5)  # the lesion frames emptied
    seg = segmentation_metrics(before, n_boot=0)
    seg["frame_decision"] = _decided([after], before, np.arange(10), ["lesion_area"], "rule", [0.5])
    c = Console(record=True, width=300)
    print_metrics({"segmentation": seg, "n_images": 10}, console=c)
    text = c.export_text()
    assert "Frame-level decision (max mean Dice): The decision empties the masks of 4 of the 4 lesion images" in text
    assert "given lesion pixels by the masks alone (0 of 4 lesion images keep a mask)" in text
    assert "No lesion image keeps a mask" in text


def _native(counts: dict, hd95: np.ndarray, hw: np.ndarray):
    from medcad.engine.fullres import NativeScores

    return NativeScores(counts, hd95, np.where(np.isnan(hd95), np.nan, 0.5), np.asarray(hw, float), None)


def test_dice_by_lesion_size_scores_thirds_of_the_lesion_images_in_the_headline_resamples() -> None:
    """The lesion images in thirds by rank of the lesion's share of each image's own frame, each third's Dice the
    mean over its images, as the headline's; ties split by rank (8 of 12 lesions of one size had emptied the small
    third); a lesion too small to survive the training size stays in the small third."""
    from medcad.engine.mask_results import _native_size_metrics

    rng = np.random.default_rng(0)
    n, s = 30, 32
    true = np.zeros((n, s, s), bool)
    for k in range(24):  # 24 lesion images of growing size, 6 lesion-free
        true[k, 4:7, 4 : 5 + k] = True
    pred = true ^ (rng.random((n, s, s)) < 0.02)
    counts = mask_counts(pred, true)
    small = {**counts, "true_area": np.where(np.arange(n) < 2, 0, counts["true_area"])}  # vanished at S x S
    hw = np.full((n, 2), s)
    m = _native_size_metrics(_native(counts, np.full(n, np.nan), hw), small, np.arange(n), s)
    parts = m["by_lesion_size"]
    assert [p["n_images"] for p in parts.values()] == [8, 8, 8] and len(m["lesion_size_ranges"]) == 3
    dice = dice_iou(counts)[0]
    for part, rows in zip(parts.values(), (range(0, 8), range(8, 16), range(16, 24)), strict=True):
        assert part["dice"]["value"] == pytest.approx(dice[list(rows)].mean())
    assert list(parts)[0] == "small (0.3% to 2.3% of the frame)" and list(parts)[2].startswith("large (")
    tied = np.zeros((12, s, s), bool)
    for k in range(12):
        tied[k, 2:10, 2 : (12 if k < 8 else 14 + k)] = True  # 8 of one size
    tied_counts = mask_counts(tied, tied)
    m = _native_size_metrics(_native(tied_counts, np.full(12, np.nan), hw[:12]), tied_counts, np.arange(12), s)
    assert [p["n_images"] for p in m["by_lesion_size"].values()] == [4, 4, 4]


def test_hd95_is_normalised_by_each_images_diagonal_where_sizes_differ() -> None:
    from medcad.engine.mask_results import _native_size_metrics

    true = np.zeros((4, 16, 16), bool)
    true[:, 4:8, 4:8] = True
    counts = mask_counts(true, true)
    dist = np.array([10.0, 20.0, np.nan, np.inf])
    hw = np.array([[60, 80], [240, 320], [30, 40], [30, 40]])  # diagonals 100, 400, 50, 50
    m = _native_size_metrics(_native(counts, dist, hw), counts, np.arange(4), 16)
    assert m["hd95_normalised"]["mean"]["value"] == pytest.approx((10 + 5) / 2)  # 10 % and 5 % of the diagonal
    assert m["hd95_normalised"]["unit"] == "% of the image diagonal" and m["hd95_normalised"]["n_undefined"] == 1
    same = _native_size_metrics(_native(counts, dist, np.full((4, 2), 40)), counts, np.arange(4), 16)
    assert "hd95_normalised" not in same
    # NSD's tolerance is the same share of each diagonal: 1 % of 100 to 400 px, said in pixels
    assert (
        m["nsd"]["tolerance_px"] == [0.5, 4.0]
        and m["nsd"]["tolerance"] == "1 % of each image's diagonal (0.5 to 4.0 px)"
    )
    assert same["nsd"]["tolerance"] == "1 % of each image's diagonal (0.6 px)"
    # over the lesion images alone too, as dice_lesion beside dice, where some images have none
    empty = {**counts, "true_area": np.r_[counts["true_area"][:3], 0]}
    alone = _native_size_metrics(_native(empty, dist, hw), empty, np.arange(4), 16)
    assert alone["nsd_lesion"]["n_scored"] == 2 and alone["nsd_lesion"]["tolerance_px"] == [0.5, 4.0]
    assert m["nsd_lesion"]["n_scored"] == m["nsd"]["n_scored"] == 3  # every image holds a lesion: the same images


def test_each_lesion_class_has_its_hd95_as_a_share_of_the_diagonal_and_its_nsd_where_sizes_differ() -> None:
    """Label maps: each class's HD95 is normalised by each image's diagonal as the headline's is (it had stayed in
    pixels alone), and each class has its NSD."""
    import pandas as pd

    from medcad.data.labelmaps import parse_mask_labels
    from medcad.engine.fullres import NativeScores
    from medcad.engine.mask_results import _class_results

    true = np.zeros((3, 16, 16), bool)
    true[:, 4:8, 4:8] = True
    counts = mask_counts(true, true)
    hw = np.array([[60, 80], [240, 320], [30, 40]], float)  # diagonals 100, 400, 50
    hd = np.array([[10.0, np.nan], [20.0, 40.0], [np.inf, 5.0]])  # (n, K): px
    nsd = np.array([[0.5, np.nan], [1.0, 0.25], [0.0, 1.0]])
    stones = mask_counts(true & (np.arange(3) == 1)[:, None, None], true & (np.arange(3) == 2)[:, None, None])
    native = NativeScores(counts, hd[:, 0], nsd[:, 0], hw, ([counts, stones], hd, nsd))
    table = pd.DataFrame({"image": ["a", "b", "c"]})
    out = _class_results(native, parse_mask_labels("1=cyst,2=stone"), np.arange(3), table)
    cyst, stone = out["per_class"]["cyst"], out["per_class"]["stone"]
    assert cyst["hd95_normalised"]["mean"]["value"] == pytest.approx((10 + 5) / 2)  # 10 % and 5 %; inf left out
    assert stone["hd95_normalised"]["mean"]["value"] == pytest.approx((10 + 10) / 2)
    assert cyst["nsd"]["mean"]["value"] == pytest.approx(0.5) and stone["nsd"]["n_scored"] == 2
    # and over the images with the class in the truth, as the Dice beside it in the console and the class table (a
    # stone falsely drawn on image b enters the NSD of either mask, not this one)
    assert stone["nsd_lesion"]["n_scored"] == 1 and stone["nsd_lesion"]["mean"]["value"] == pytest.approx(1.0)
    assert cyst["nsd_lesion"]["n_scored"] == 3 and cyst["nsd_lesion"]["mean"]["value"] == pytest.approx(0.5)
    assert {"dice_cyst", "dice_stone", "hd95_px_stone", "nsd_cyst"} <= set(table.columns)
    assert list(table["nsd_stone"].fillna(-1)) == [-1, 0.25, 1.0]
    same = NativeScores(counts, hd[:, 0], nsd[:, 0], np.full((3, 2), 40.0), ([counts, stones], hd, nsd))
    assert (
        "hd95_normalised"
        not in _class_results(same, parse_mask_labels("1=cyst,2=stone"), np.arange(3), table)["per_class"]["cyst"]
    )
