"""Segmentation metrics: counts, Dice and IoU against a direct computation; empty-mask conventions; CIs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medcad.metrics.segmentation import dice_iou, mask_counts, per_image_table, segmentation_metrics


def _random_masks(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Discs of random centre and radius as truth; the prediction a shifted, resized disc plus speckle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.uniform(8, 24, n), rng.uniform(8, 24, n), rng.uniform(3, 8, n)
    true = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2 < r[:, None, None] ** 2
    dy, dx, dr = rng.normal(0, 2, n), rng.normal(0, 2, n), rng.normal(0, 1.5, n)
    pred = (yy - cy[:, None, None] - dy[:, None, None]) ** 2 + (xx - cx[:, None, None] - dx[:, None, None]) ** 2
    pred = (pred < (r + dr)[:, None, None] ** 2) | (rng.random((n, size, size)) < 0.01)
    return pred, true


def test_counts_and_scores_match_a_direct_computation() -> None:
    pred, true = _random_masks(12)
    counts = mask_counts(pred, true)
    dice, iou = dice_iou(counts)
    for i in range(12):
        p, t = pred[i], true[i]
        assert counts["tp"][i] == (p & t).sum() and counts["fp"][i] == (p & ~t).sum()
        assert counts["fn"][i] == (~p & t).sum() and counts["pred_area"][i] == p.sum()
        assert dice[i] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert iou[i] == pytest.approx((p & t).sum() / (p | t).sum())
    assert counts["tp"].dtype == np.int64

    m = segmentation_metrics(counts, n_boot=200)
    assert m["dice"]["value"] == pytest.approx(dice.mean()) and m["iou"]["value"] == pytest.approx(iou.mean())
    inter, union = (pred & true).sum(), (pred | true).sum()
    assert m["dice_pooled"]["value"] == pytest.approx(2 * inter / (pred.sum() + true.sum()))
    assert m["iou_pooled"]["value"] == pytest.approx(inter / union)
    assert m["precision"]["value"] == pytest.approx(inter / pred.sum())
    assert m["recall"]["value"] == pytest.approx(inter / true.sum())
    assert m["dice_lesion"]["value"] == pytest.approx(dice.mean())  # every truth is a disc
    assert "empty_images" not in m and m["n_images"] == m["n_lesion_images"] == 12
    q = m["per_image_quantiles"]
    assert q["min"] == pytest.approx(dice.min()) and q["median"] == pytest.approx(np.median(dice))

    quick = segmentation_metrics(counts, n_boot=0)  # per-fold summaries: values only, no CI
    assert quick["dice"]["value"] == m["dice"]["value"] and np.isnan(quick["dice"]["ci95"]).all()

    table = per_image_table(counts, [f"img{i}.png" for i in range(12)])
    assert list(table.columns) == ["key", "dice", "iou", "true_area", "pred_area"]
    assert table["dice"].to_numpy() == pytest.approx(dice) and table.loc[3, "key"] == "img3.png"


def test_empty_mask_conventions() -> None:
    z, one = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    one[2:4, 2:4] = True
    # both empty; prediction on an empty truth; missed lesion; perfect lesion
    pred, true = np.stack([z, one, z, one]), np.stack([z, z, one, one])
    dice, iou = dice_iou(mask_counts(pred, true))
    assert dice.tolist() == [1.0, 0.0, 0.0, 1.0] and iou.tolist() == [1.0, 0.0, 0.0, 1.0]
    m = segmentation_metrics(mask_counts(pred, true), n_boot=100)
    assert m["dice"]["value"] == 0.5 and m["dice_lesion"]["value"] == 0.5 and m["n_lesion_images"] == 2
    assert m["empty_images"]["n"] == 2 and m["empty_images"]["false_positive_rate"] == 0.5
    assert m["precision"]["value"] == 0.5 and m["recall"]["value"] == 0.5

    nothing = segmentation_metrics(mask_counts(np.stack([z, z]), np.stack([z, z])), n_boot=50)
    assert nothing["dice"]["value"] == nothing["dice_pooled"]["value"] == 1.0
    assert nothing["dice_lesion"] is None and nothing["iou_lesion"] is None
    assert np.isnan(nothing["precision"]["value"]) and nothing["empty_images"]["false_positive_rate"] == 0.0

    flagged = segmentation_metrics(mask_counts(pred, true), lesion=np.array([0, 1, 1, 1], bool), n_boot=50)
    assert flagged["dice_lesion"]["value"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must both be"):
        mask_counts(pred, true[:, :4])


def test_ci_contains_the_value_and_narrows_with_more_images() -> None:
    widths = []
    for n in (20, 320):
        m = segmentation_metrics(mask_counts(*_random_masks(n, seed=n)), n_boot=300, seed=1)
        for key in ("dice", "iou", "dice_pooled", "iou_pooled", "precision", "recall", "dice_lesion"):
            lo, hi = m[key]["ci95"]
            assert lo <= m[key]["value"] <= hi
        widths.append(m["dice"]["ci95"][1] - m["dice"]["ci95"][0])
    assert widths[1] < 0.5 * widths[0]


def test_grouped_bootstrap_resamples_whole_patients() -> None:
    counts = mask_counts(*_random_masks(30, seed=3))
    patients = np.repeat(np.arange(6), 5)
    m = segmentation_metrics(counts, groups=patients, n_boot=300)
    lo, hi = m["dice"]["ci95"]
    assert lo <= m["dice"]["value"] <= hi
    assert m == segmentation_metrics(counts, groups=patients, n_boot=300)  # seeded
    with pytest.raises(ValueError, match="one group id"):
        segmentation_metrics(counts, groups=patients[:10], n_boot=10)


def _hd95_scipy(p: np.ndarray, t: np.ndarray) -> float:
    """Reference: 95th percentile of edge-to-edge distances both ways (SciPy distance transform), the larger one."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    ep, et = p & ~binary_erosion(p), t & ~binary_erosion(t)
    d_pt = distance_transform_edt(~et)[ep]
    d_tp = distance_transform_edt(~ep)[et]
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))


def hd95(p: np.ndarray, t: np.ndarray) -> float:
    from medcad.metrics.boundary import boundary_scores

    return boundary_scores(p, t, 1.0)[0]


def test_hd95_matches_scipy_reference_and_conventions():
    from medcad.metrics.boundary import hd95_summary

    p = np.zeros((64, 80), bool)
    t = p.copy()
    p[10:40, 10:50] = True
    t[14:44, 8:60] = True
    assert hd95(p, t) == pytest.approx(_hd95_scipy(p, t), abs=1e-6)
    assert hd95(p, p) == 0.0
    assert np.isnan(hd95(np.zeros_like(p), np.zeros_like(p)))  # no boundary: not scored (it had scored 0.0)
    assert np.isinf(hd95(np.zeros_like(p), t))  # a missed lesion: counted, never averaged
    s = hd95_summary(np.array([1.0, 3.0, np.inf, 5.0, np.nan, np.nan]), n_boot=50)
    assert (s["n_defined"], s["n_undefined"], s["n_both_empty"]) == (3, 1, 2)
    assert s["mean"]["value"] == pytest.approx(3.0) and s["median"] == 3.0


def test_hd95_mean_is_monais_over_images_with_and_without_lesions():
    """The mean HD95 of a set holding lesion-free images (both masks empty), a missed lesion and lesions drawn
    is MONAI's HausdorffDistanceMetric(percentile=95, reduction="mean"): both leave out what has no boundary."""
    import torch
    from monai.metrics import HausdorffDistanceMetric

    from medcad.metrics.boundary import hd95_summary

    rng = np.random.default_rng(3)
    pairs = []
    for i in range(12):
        t = np.zeros((40, 40), bool)
        p = np.zeros((40, 40), bool)
        if i % 3:  # a lesion in the truth; predicted shifted, or missed (i == 4)
            y, x = rng.integers(5, 25, 2)
            t[y : y + 10, x : x + 8] = True
            if i != 4:
                dy, dx = rng.integers(-3, 4, 2)
                p[y + dy : y + dy + 9, x + dx : x + dx + 8] = True
        pairs.append((p, t))
    ours = hd95_summary(np.array([hd95(p, t) for p, t in pairs]), n_boot=20)
    metric = HausdorffDistanceMetric(percentile=95, reduction="mean")
    metric(torch.tensor(np.array([p for p, _ in pairs]))[:, None].float(),
           torch.tensor(np.array([t for _, t in pairs]))[:, None].float())  # fmt: skip
    assert ours["mean"]["value"] == pytest.approx(float(metric.aggregate()), rel=1e-6)
    assert (ours["n_defined"], ours["n_undefined"], ours["n_both_empty"]) == (7, 1, 4)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**16),
    st.sampled_from(["empty", "speck", "blob", "two"]),
    st.sampled_from(["empty", "speck", "blob", "two"]),
    st.one_of(st.sampled_from([1.0, 2**0.5, 2.0, 5**0.5, 3.0, 5.0]), st.floats(0.5, 12.0)),  # distances hit exactly
)
@example(seed=128, pred_kind="speck", true_kind="blob", tolerance=5**0.5)  # a distance of exactly the tolerance
def test_hd95_and_nsd_from_one_pass_are_monais_own(seed: int, pred_kind: str, true_kind: str, tolerance: float):
    """HD95 and NSD from one pass of edge distances equal MONAI's public compute_hausdorff_distance(percentile=95)
    and compute_surface_dice on masks of every kind (empty, one pixel, a blob, two blobs), with the conventions
    where a mask is empty: both empty (nan, nan), one empty (inf, 0)."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from medcad.metrics.boundary import boundary_scores

    rng = np.random.default_rng(seed)

    def mask(kind: str) -> np.ndarray:
        m = np.zeros((36, 44), bool)
        for _ in range({"empty": 0, "speck": 1, "blob": 1, "two": 2}[kind]):
            y, x = rng.integers(0, 30), rng.integers(0, 38)
            h, w = (1, 1) if kind == "speck" else rng.integers(2, 14, 2)
            m[y : y + h, x : x + w] = True
        return m

    p, t = mask(pred_kind), mask(true_kind)
    hd, nsd = boundary_scores(p, t, tolerance)
    if not p.any() or not t.any():
        assert (
            (np.isnan(hd), np.isnan(nsd)) == (True, True) if not p.any() and not t.any() else (hd, nsd) == (np.inf, 0)
        )
        return
    pt, tt = torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_hd = float(compute_hausdorff_distance(pt, tt, percentile=95))
        ref_nsd = float(compute_surface_dice(pt.float(), tt.float(), [tolerance], include_background=True))
    assert hd == pytest.approx(ref_hd, rel=1e-6, abs=1e-6)
    assert nsd == pytest.approx(ref_nsd, rel=1e-6, abs=1e-9)
    assert 0 <= nsd <= 1


def test_nsd_summary_leaves_out_pairs_without_a_lesion_and_says_its_tolerance():
    """The mean NSD is MONAI's SurfaceDiceMetric(reduction="mean") over the images with a lesion in either mask (a
    missed lesion scores 0, lesion-free pairs are left out); the summary names its tolerance."""
    import torch
    from monai.metrics import SurfaceDiceMetric

    from medcad.metrics.boundary import boundary_scores, nsd_summary

    rng = np.random.default_rng(5)
    pairs = []
    for i in range(12):
        t, p = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
        if i % 3:
            y, x = rng.integers(5, 25, 2)
            t[y : y + 10, x : x + 8] = True
            if i != 4:  # i == 4: missed
                dy, dx = rng.integers(-3, 4, 2)
                p[y + dy : y + dy + 9, x + dx : x + dx + 8] = True
        pairs.append((p, t))
    values = np.array([boundary_scores(p, t, 2.0)[1] for p, t in pairs])
    ours = nsd_summary(values, tolerance=2.5, tolerance_px=(2.0, 2.0), n_boot=20)  # 2.5 % of these 56.6 px diagonals
    metric = SurfaceDiceMetric([2.0], include_background=True, reduction="mean")
    metric(torch.tensor(np.array([p for p, _ in pairs]))[:, None].float(),
           torch.tensor(np.array([t for _, t in pairs]))[:, None].float())  # fmt: skip
    assert ours["mean"]["value"] == pytest.approx(float(metric.aggregate()), rel=1e-6)
    assert (ours["n_scored"], ours["n_both_empty"]) == (8, 4) and values[4] == 0.0
    assert ours["tolerance_pct_diagonal"] == 2.5 and ours["tolerance_px"] == [2.0, 2.0]


def test_frame_decision_threshold_maximises_mean_dice_by_brute_force() -> None:
    """The area threshold from `frame_threshold` gives the best mean Dice over every possible threshold, the
    smallest such one; emptied frames score 1 on empty truth and 0 on a lesion."""
    from medcad.metrics.segmentation import apply_frame_decision, frame_threshold, lesion_area

    rng = np.random.default_rng(3)
    pred, true = _random_masks(60, seed=3)
    true[:25] = False  # 25 lesion-free frames ...
    pred[:25] &= rng.random((25, 32, 32)) < 0.08  # ... whose predictions are small speckles
    area = lesion_area(pred.astype(np.uint8) * 255)
    counts = mask_counts(pred, true)
    t = frame_threshold(area, counts)

    def mean_dice(thr: float) -> float:
        return float(dice_iou(apply_frame_decision(counts, area, thr))[0].mean())

    grid = np.unique(np.concatenate([[0.0], area, [area.max() + 1e-9]]))
    best = max(mean_dice(g) for g in grid)
    assert mean_dice(t) == pytest.approx(best)
    assert t == min(g for g in grid if mean_dice(g) == pytest.approx(best))
    assert 0 < t < area[25:].max()  # speckle frames emptied, the large lesions kept
    decided = apply_frame_decision(counts, area, t)
    off = area < t
    assert (decided["pred_area"][off] == 0).all() and (decided["fn"][off] == counts["true_area"][off]).all()
    assert (decided["tp"][~off] == counts["tp"][~off]).all()
    # every frame has a lesion: emptying never helps, the decision keeps every mask
    assert frame_threshold(area[25:], {k: v[25:] for k, v in counts.items()}) == 0.0
    m = segmentation_metrics(decided)
    assert m["lesion_images_found"]["n"] == 35 and m["empty_images"]["n"] == 25
    assert m["lesion_images_found"]["rate"] == pytest.approx(float((decided["pred_area"][25:] > 0).mean()))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 10_000), n_groups=st.integers(1, 8))
def test_a_subset_is_scored_in_the_headline_resamples(n: int, seed: int, n_groups: int) -> None:
    """The lesion images' Dice has one CI: as the headline's dice_lesion and as the subset of the same images (a run's
    per-label table for the lesion label had come from a second bootstrap: 0.514 (0.436-0.588) beside (0.434-0.587));
    the subset of every image is the headline itself, whatever its name ('CIN 1/2': a '/' had crashed the run's end)."""
    pred, true = _random_masks(n, seed)
    true[np.random.default_rng(seed).random(n) < 0.4] = False  # some lesion-free images
    counts = mask_counts(pred, true)
    groups = np.random.default_rng(seed + 1).integers(0, n_groups, n)
    lesion = counts["true_area"] > 0
    m = segmentation_metrics(
        counts,
        groups=groups,
        subsets={"lesion": lesion, "CIN 1/2": np.ones(n, bool), "none": np.zeros(n, bool)},
        n_boot=50,
    )
    assert set(m["subsets"]) == ({"lesion", "CIN 1/2"} if lesion.any() else {"CIN 1/2"})
    if lesion.any():
        same = repr(m["subsets"]["lesion"]["dice"]) == repr(m["dice_lesion"])  # repr: nan intervals (few groups) alike
        assert same and repr(m["subsets"]["lesion"]["iou"]) == repr(m["iou_lesion"])
        assert m["subsets"]["lesion"]["n_images"] == int(lesion.sum())
    whole = m["subsets"]["CIN 1/2"]
    assert all(repr(whole[k]) == repr(m[k]) for k in ("dice", "iou", "dice_lesion", "precision", "per_image_quantiles"))
    assert repr(whole.get("empty_images")) == repr(m.get("empty_images"))


@settings(max_examples=15, deadline=None)
@given(st.integers(20, 90), st.integers(20, 90), st.integers(0, 10_000), st.booleans())
def test_a_runs_masks_at_full_size_are_the_masks_predict_gives(w: int, h: int, seed: int, external: bool) -> None:
    """A run scores its stored uint8 probabilities resized to each image's size as predict resizes them (in float,
    then p >= 0.5): a uint8 resize had rounded, the run's masks 0.3-0.5 % smaller than predict's on Kvasir. An
    external set scores the ensemble's float probabilities as predict has them (rounded to uint8 first, its HD95 had
    moved by up to 1.1 px and NSD by 0.004)."""
    import tempfile
    from pathlib import Path

    import cv2
    from PIL import Image

    from medcad.data.layouts import load_manifest
    from medcad.engine.fullres import native_mask_scores
    from medcad.inference.outputs import LesionMask

    rng = np.random.default_rng(seed)
    probs = cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (7, 7), 2)  # smooth, around 0.5
    stored = probs[None] if external else np.round(probs * 255).astype(np.uint8)[None]  # as test_masks.npz keeps them
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / "x.png")
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "x_mask.png")
        m = load_manifest(root)
        counts = native_mask_scores(m, np.array([0]), stored).counts
    settings_ = {"threshold": 0.5, "labels": ["lesion"], "frame_score_kind": "lesion_area", "min_frame_score": 0.0}
    predicted = LesionMask.from_infer({"mask": probs[None] if external else stored / 255.0}, 0, (h, w), 32, settings_)
    assert counts["pred_area"][0] == int(predicted.lesion.sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**16), st.floats(0.0, 0.6), st.floats(0.0, 0.6))
def test_dice_and_iou_per_image_are_monais(n: int, seed: int, p_true: float, p_pred: float) -> None:
    """Dice and IoU per image equal MONAI's `compute_dice` / `compute_iou` (ignore_empty=False: both masks empty
    score 1), on masks from empty to dense, correlated and not."""
    import torch
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(seed)
    true = rng.random((n, 12, 16)) < p_true
    pred = np.where(rng.random((n, 12, 16)) < 0.5, true, rng.random((n, 12, 16)) < p_pred)
    dice, iou = dice_iou(mask_counts(pred, true))
    p, t = (torch.from_numpy(a[:, None].astype(np.float32)) for a in (pred, true))
    np.testing.assert_allclose(dice, compute_dice(p, t, ignore_empty=False).numpy()[:, 0], atol=1e-6)
    np.testing.assert_allclose(iou, compute_iou(p, t, ignore_empty=False).numpy()[:, 0], atol=1e-6)


def test_a_part_of_the_images_is_widened_for_its_own_groups() -> None:
    """The lesion images' Dice over 3 patients of 40 is not widened as for 40: too few groups for an interval at
    1,000 resamples, said (`no_ci`); the Dice over every image keeps its interval."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    true = np.zeros((200, 16, 16), bool)
    true[:15, 4:12, 4:12] = True  # lesions in patients 0-2 alone
    pred = true.copy()
    pred[rng.random(200) < 0.3] = False
    m = segmentation_metrics(mask_counts(pred, true), groups=groups, n_boot=1000)
    assert np.isfinite(m["dice"]["ci95"]).all()
    assert np.isnan(m["dice_lesion"]["ci95"]).all() and "too few groups (3)" in m["dice_lesion"]["no_ci"]
