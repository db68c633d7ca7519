"""FROC: the sensitivity at each false-positive rate equals a brute-force reading that matches the boxes anew at
every threshold; whole-frame classes are left out; the curve and the CPM follow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.metrics.box_matching import box_iou, greedy_match
from medcad.metrics.detection import detection_metrics
from medcad.metrics.froc import FP_RATES, FROCTable


def _scene(seed: int, n: int, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random true boxes and predictions near them (some off, some of the wrong class), scores on a coarse grid
    so that ties occur."""
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(n):
        t = rng.uniform(0, 60, (rng.integers(0, 3), 2))
        t = np.c_[t, t + rng.uniform(5, 30, t.shape), rng.integers(0, k, len(t))]
        near = t[:, :4] + rng.normal(0, 4, (len(t), 4))
        far = rng.uniform(0, 60, (rng.integers(0, 5), 2))
        boxes = np.r_[near, np.c_[far, far + rng.uniform(5, 30, far.shape)]]
        classes = np.r_[t[:, 4], rng.integers(0, k, len(far))]
        classes = np.where(rng.random(len(classes)) < 0.15, rng.integers(0, k, len(classes)), classes)
        scores = rng.integers(1, 8, len(boxes)) / 8
        preds.append(np.c_[boxes, scores, classes].reshape(-1, 6))
        truths.append(t.reshape(-1, 5))
    return preds, truths


def _brute_force(preds, truths, lesions: np.ndarray, rate: float) -> float:
    keep = np.flatnonzero(lesions)
    n_lesions = sum(int(np.isin(t[:, 4], keep).sum()) for t in truths)
    best = 0.0
    for thr in sorted({float(s) for p in preds for s in p[:, 4]}):
        tp = fp = 0
        for p, t in zip(preds, truths, strict=True):
            p = p[(p[:, 4] >= thr) & np.isin(p[:, 5], keep)]
            t = t[np.isin(t[:, 4], keep)]
            hit = greedy_match(p, t, box_iou(p, t), 0.5)[0]
            tp, fp = tp + int(hit.sum()), fp + int((~hit).sum())
        if fp / len(preds) <= rate:
            best = max(best, tp / n_lesions)
    return best


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), k=st.integers(1, 3))
def test_sensitivity_at_each_rate_is_the_brute_force_reading(seed: int, n: int, k: int) -> None:
    preds, truths = _scene(seed, n, k)
    lesions = np.arange(k) != k - 1 if k > 1 else np.ones(1, bool)  # with several classes, the last a frame class
    table = FROCTable(preds, truths, lesions)
    if not table.has_lesions:
        return
    got = table(np.ones((1, n)))
    for j, rate in enumerate(FP_RATES):
        assert got["froc_sensitivity"][0, j] == pytest.approx(_brute_force(preds, truths, lesions, rate))
    assert got["froc_cpm"][0] == pytest.approx(got["froc_sensitivity"][0].mean())
    # counting an image twice is the same as listing it twice
    w = np.ones((1, n))
    w[0, 0] = 2
    twice = FROCTable([preds[0], *preds], [truths[0], *truths], lesions)(np.ones((1, n + 1)))
    assert table(w)["froc_sensitivity"] == pytest.approx(twice["froc_sensitivity"])


def test_detection_metrics_report_the_froc_of_lesion_classes_alone() -> None:
    preds, truths = _scene(5, 40, 2)
    m = detection_metrics(preds, truths, ["polyp", "normal"], frame_classes=["normal"], n_boot=200)
    f = m["froc"]
    assert f["classes"] == ["polyp"] and f["n_lesions"] == sum(int((t[:, 4] == 0).sum()) for t in truths)
    assert f["fp_per_image"] == list(FP_RATES)
    values = [s["value"] for s in f["sensitivity"]]
    assert values == sorted(values)  # more false positives allowed, never fewer lesions found
    for s in f["sensitivity"]:
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1]
    assert f["cpm"]["value"] == pytest.approx(np.mean(values))
    c = f["curve"]
    assert c["fp_per_image"] == sorted(c["fp_per_image"]) and c["sensitivity"] == sorted(c["sensitivity"])
    assert c["score"] == sorted(c["score"], reverse=True)
    # no lesion box anywhere: no FROC
    only_normal = [t[t[:, 4] == 1] for t in truths]
    assert "froc" not in detection_metrics(preds, only_normal, ["polyp", "normal"], frame_classes=["normal"], n_boot=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 10), k=st.integers(1, 3))
def test_the_f1_threshold_is_the_brute_force_best(seed: int, n: int, k: int) -> None:
    """`f1_threshold` keeps the boxes whose score reaches the threshold of the highest micro F1 (every class, IoU
    0.5), the highest such threshold, as counting the boxes anew at every score gives it."""
    from medcad.metrics.box_matching import box_counts, precision_recall_f1
    from medcad.metrics.detection_operating import f1_threshold

    preds, truths = _scene(seed, n, k)
    got = f1_threshold(preds, truths, k)
    scores = sorted({float(s) for p in preds for s in p[:, 4]})
    f1 = {}
    for s in scores:
        tp, fp, fn = box_counts(preds, truths, k, 0.5, s).sum(axis=(1, 2))
        f1[s] = float(precision_recall_f1(np.array(tp), np.array(fp), np.array(fn))["f1"]) if tp else 0.0
    if not any(f1.values()):
        assert got is None
        return
    best = max(f1.values())
    assert got == max(s for s, v in f1.items() if v == pytest.approx(best))


def test_the_validated_operating_point_keeps_each_folds_boxes_from_its_threshold() -> None:
    from medcad.metrics.detection import SCORE_THRESHOLD
    from medcad.metrics.detection_operating import validated_operating_point

    preds, truths = _scene(11, 30, 2)
    vo = validated_operating_point(preds, truths, ["a", "b"], [0.3, None], [12, 18], n_boot=0)
    kept = [p[p[:, 4] >= (0.3 if i < 12 else SCORE_THRESHOLD)] for i, p in enumerate(preds)]
    by_hand = detection_metrics(kept, truths, ["a", "b"], score_threshold=0.0, n_boot=0)
    assert vo["iou_thresholds"]["0.5"]["f1"] == by_hand["iou_thresholds"]["0.5"]["f1"]
    assert vo["iou_thresholds"]["0.5"]["tp"] == by_hand["iou_thresholds"]["0.5"]["tp"]
    assert vo["folds_without_threshold"] == [1] and vo["mean_threshold"] == pytest.approx((0.3 + SCORE_THRESHOLD) / 2)
