"""Detection metrics against hand-computed cases: AP, P/R/F1 at IoU thresholds, the frame decision, CIs."""

from __future__ import annotations

import numpy as np
import pytest

from medcad.metrics.detection import average_precision, box_iou, detection_metrics, seeds_summary

A, B = [0, 0, 10, 10], [20, 20, 40, 40]  # two disjoint truths
FAR = [60, 60, 70, 70]  # overlaps nothing


def pr(*dets) -> np.ndarray:
    return np.array(dets, dtype=float).reshape(-1, 6)


def gt(*boxes) -> np.ndarray:
    return np.array(boxes, dtype=float).reshape(-1, 5)


def test_box_iou() -> None:
    iou = box_iou(np.array([A, [0, 0, 10, 5]]), np.array([A, B]))
    assert iou == pytest.approx(np.array([[1, 0], [0.5, 0]]))
    assert box_iou(np.zeros((0, 4)), np.array([A])).shape == (0, 1)


def test_perfect_predictions_give_ap_1_and_absent_class_is_nan() -> None:
    truths = [gt([*A, 0]), gt([*B, 0], [*A, 1])]
    preds = [pr([*A, 0.9, 0]), pr([*B, 0.8, 0], [*A, 0.3, 1])]
    ap = average_precision(preds, truths, 3, 0.5)
    assert ap[:2] == pytest.approx([1, 1]) and np.isnan(ap[2])
    m = detection_metrics(preds, truths, ["a", "b", "c"], n_boot=50)
    assert m["ap50"]["value"] == pytest.approx(1) and m["map"]["value"] == pytest.approx(1)
    assert m["ap50_per_class"]["a"] == pytest.approx(1) and np.isnan(m["ap50_per_class"]["c"])
    assert m["n_images"] == 2 and m["n_boxes"] == 3


def test_false_positive_ranked_first_and_misses() -> None:
    # one truth, the FP outranks the TP: precision 1/2 at every recall level
    assert average_precision([pr([*FAR, 0.9, 0], [*A, 0.8, 0])], [gt([*A, 0])], 1)[0] == pytest.approx(0.5)
    # TP, FP, TP on two truths: precision 1 up to recall 0.5 (51 points), then 2/3 (50 points)
    preds = [pr([*A, 0.9, 0], [*FAR, 0.8, 0], [*B, 0.7, 0])]
    truths = [gt([*A, 0], [*B, 0])]
    assert average_precision(preds, truths, 1)[0] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # one of two truths missed: recall stops at 0.5
    assert average_precision([pr([*A, 0.9, 0])], truths, 1)[0] == pytest.approx(51 / 101)
    # a duplicate of a matched truth is a false positive; the wrong class matches nothing
    assert average_precision([pr([*A, 0.9, 0], [*A, 0.8, 0])], [gt([*A, 0])], 1)[0] == pytest.approx(1)
    assert average_precision([pr([*A, 0.9, 1])], [gt([*A, 0])], 2)[0] == 0


def test_iou_just_below_and_above_the_threshold() -> None:
    truths = [gt([*A, 0])]
    above, below = pr([0, 0, 10, 5.2, 0.9, 0]), pr([0, 0, 10, 4.8, 0.9, 0])  # IoU 0.52, 0.48
    assert average_precision([above], truths, 1, 0.5)[0] == pytest.approx(1)
    assert average_precision([below], truths, 1, 0.5)[0] == 0
    m = detection_metrics([below], truths, ["polyp"], n_boot=0)
    assert m["iou_thresholds"]["0.45"]["f1"] == pytest.approx(1)
    for name in ("0.5", "0.55"):
        r = m["iou_thresholds"][name]
        assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1) and r["precision"] == 0 and r["recall"] == 0
    assert set(m["iou_thresholds"]) == {"0.45", "0.5", "0.55"}


def test_precision_recall_f1_at_score_threshold() -> None:
    truths = [gt([*A, 0], [*B, 1]), gt([*A, 0])]
    preds = [pr([*A, 0.9, 0], [*B, 0.4, 1], [*FAR, 0.7, 1]), pr([*B, 0.6, 0])]
    m = detection_metrics(preds, truths, ["a", "b"], score_threshold=0.5, n_boot=0)
    r = m["iou_thresholds"]["0.5"]
    # kept: TP a, FP b (FAR), FP a (image 2); missed: B (score 0.4 < 0.5) and A of image 2
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 / 6)
    assert r["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 1, "fp": 1, "fn": 1}
    b = r["per_class"]["b"]
    assert b["precision"] == 0 and b["recall"] == 0 and b["f1"] == 0 and (b["tp"], b["fp"], b["fn"]) == (0, 1, 1)


def test_frame_level_with_background_row_and_column() -> None:
    labels = ["normal", "tumour"]
    truths = [
        gt([0, 0, 5, 5, 0], [0, 0, 30, 30, 1]),  # largest box: tumour
        gt(),  # background frame ...
        gt(),  # ... background frame with a confident false detection
        gt([*A, 0]),  # normal frame, detection below the threshold -> background
        gt([*A, 0]),
    ]
    preds = [
        pr([0, 0, 30, 30, 0.8, 1], [0, 0, 5, 5, 0.6, 0]),
        pr(),
        pr([*FAR, 0.7, 1]),
        pr([*A, 0.3, 0]),
        pr([*A, 0.9, 0]),
    ]
    f = detection_metrics(preds, truths, labels, score_threshold=0.5, n_boot=100)["frame_level"]
    assert f["labels"] == ["normal", "tumour", "background"]
    assert f["confusion_matrix"]["matrix"] == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert f["accuracy"]["value"] == pytest.approx(3 / 5)
    bg = f["per_class"]["background"]
    assert bg["precision"] == pytest.approx(0.5) and bg["recall"] == pytest.approx(0.5) and bg["support"] == 2
    assert f["macro_f1"]["value"] == pytest.approx(np.mean([2 / 3, 2 / 3]))


def test_empty_frames_and_no_predictions() -> None:
    m = detection_metrics([pr(), pr()], [gt(), gt([*A, 0])], ["polyp"], n_boot=20)
    assert m["ap50"]["value"] == 0 and m["iou_thresholds"]["0.5"]["fn"] == 1
    assert np.isnan(m["iou_thresholds"]["0.5"]["precision"])
    m = detection_metrics([pr(), pr()], [gt(), gt()], ["polyp"], n_boot=20)
    assert np.isnan(m["ap50"]["value"]) and m["frame_level"]["accuracy"]["value"] == 1
    with pytest.raises(ValueError, match="class index"):
        detection_metrics([pr([*A, 0.9, 3])], [gt()], ["polyp"])


def _random_study(n: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(n):
        t = []
        for _ in range(rng.integers(0, 3)):
            x, y, s = *rng.uniform(0, 200, 2), rng.uniform(20, 100)
            t.append([x, y, x + s, y + s, rng.integers(0, 3)])
        p = [[*np.add(b[:4], rng.normal(0, 5, 4)), rng.uniform(0.3, 1), b[4]] for b in t]
        for _ in range(50 - len(p)):  # the detector's low-score tail
            x, y, s = *rng.uniform(0, 250, 2), rng.uniform(10, 80)
            p.append([x, y, x + s, y + s, rng.uniform(0.01, 0.6), rng.integers(0, 3)])
        preds.append(pr(*p))
        truths.append(gt(*t))
    return preds, truths


def test_bootstrap_brackets_the_value_with_groups() -> None:
    preds, truths = _random_study(200)
    m = detection_metrics(preds, truths, ["a", "b", "c"], groups=np.arange(200) // 4, n_boot=1000)
    for key in ("ap50", "map"):
        lo, hi = m[key]["ci95"]
        assert 0 < lo <= m[key]["value"] <= hi < 1
    assert m["map"]["value"] < m["ap50"]["value"]
    assert m["bootstrap"]["by_group"]
    # the weighted AP with unit weights equals the direct computation
    direct = np.nanmean(average_precision(preds, truths, 3, 0.5))
    assert m["ap50"]["value"] == pytest.approx(direct)


def test_seeds_summary() -> None:
    runs = [detection_metrics(*_random_study(20, seed), ["a", "b", "c"], n_boot=0) for seed in range(3)]
    s = seeds_summary(runs)
    assert s["n_runs"] == 3 and s["ap50"]["n"] == 3
    assert s["ap50"]["mean"] == pytest.approx(np.mean([r["ap50"]["value"] for r in runs]))
    assert set(s["f1"]) == {"0.45", "0.5", "0.55"} and s["f1"]["0.5"]["sd"] >= 0
