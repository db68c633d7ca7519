"""Detection metrics against hand-computed cases: AP, P/R/F1 at IoU thresholds, the frame decision, CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.metrics.box_matching import box_iou
from medcad.metrics.detection import average_precision, detection_metrics, seeds_summary
from medcad.metrics.stats import bootstrap_weights, expanded_alpha

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
    assert f["macro_f1"]["value"] == pytest.approx(np.mean([2 / 3, 2 / 3]))  # the classes, background left out
    assert f["macro_f1_with_background"]["value"] == pytest.approx(np.mean([2 / 3, 2 / 3, 0.5]))


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


def test_figures_of_kept_boxes_alone_are_the_full_results_own() -> None:
    """ranking=False (the validated operating point's boxes, already cut) gives the full result's box counts, frame
    decision and their intervals, value for value, without AP, mAP and FROC."""
    preds, truths = _random_study(60, seed=2)
    args = (preds, truths, ["a", "b", "c"])
    kw = {"groups": np.arange(60) // 3, "n_boot": 200, "frame_classes": ["c"], "score_threshold": 0.4}
    full, kept = detection_metrics(*args, **kw), detection_metrics(*args, **kw, ranking=False)
    assert not {"ap50", "map", "froc", "ap50_lesions", "map_per_class"} & set(kept)
    for key in ("iou_thresholds", "frame_level", "n_images", "n_boxes", "score_threshold"):
        assert json.dumps(kept[key], sort_keys=True) == json.dumps(full[key], sort_keys=True), key  # nan as nan
    used = kept["bootstrap"]["resamples_used"]
    assert used == {k: v for k, v in full["bootstrap"]["resamples_used"].items() if k in used} and "ap50" not in used


@settings(max_examples=15, deadline=None)
@given(st.integers(6, 25), st.sets(st.integers(0, 24), min_size=1, max_size=3))
def test_macro_figures_average_every_class_in_each_resample(n: int, rare: set) -> None:
    """AP50, mAP and the frame tables' macro F1 average the classes the point estimate does in every resample they
    are read from: a resample without the rare class is left out (and counted), not scored on the other class alone.
    Class a is found in every image; class b, the frame's class where it is (its box is the larger), is always missed:
    AP50 and mAP are 0.5 in every resample holding b (1 without it), and the frames' macro F1 stays below 1."""
    with_b = sorted(r % n for r in rare)
    truths = [gt([*A, 0], *([[*W, 1]] if i in with_b else [])) for i in range(n)]
    preds = [pr([*A, 0.9, 0]) for _ in range(n)]
    m = detection_metrics(preds, truths, ["a", "b"], n_boot=200)
    draws = np.concatenate(list(bootstrap_weights(n, 200, 0)))  # the resamples' image weights (200, n)
    every = int((draws[:, with_b].sum(axis=1) > 0).sum())  # resamples holding b
    usable = every >= 100
    # an interval of figures that vary needs its tails, widened for n images, to hold half a resample each
    varied = usable and expanded_alpha(0.05, n) / 2 * every >= 0.5
    for key in ("ap50", "map"):
        assert m[key]["value"] == 0.5
        np.testing.assert_array_equal(m[key]["ci95"], [0.5, 0.5] if varied else [np.nan, np.nan])
    frame = m["frame_level"]
    used = m["bootstrap"]["resamples_used"]
    assert used["ap50"] == used["map"] == used["frame_level.macro_f1"] == every
    for table in frame["iou_thresholds"].values():
        hi = table["macro"]["ci95"]["f1"][1]
        assert hi < 1 if varied else np.isnan(hi)
    assert frame["macro_f1"]["ci95"][1] < 1 if varied else np.isnan(frame["macro_f1"]["ci95"][1])


def test_seeds_summary() -> None:
    runs = [detection_metrics(*_random_study(20, seed), ["a", "b", "c"], n_boot=0) for seed in range(3)]
    s = seeds_summary(runs)
    assert s["n_runs"] == 3 and s["ap50"]["n"] == 3
    assert s["ap50"]["mean"] == pytest.approx(np.mean([r["ap50"]["value"] for r in runs]))
    assert set(s["f1"]) == {"0.45", "0.5", "0.55"} and s["f1"]["0.5"]["sd"] >= 0


W = [0, 0, 100, 100]  # the whole 100 x 100 frame: the box of a frame class
SPOT = [10, 10, 30, 30]  # a tumour


def test_frame_table_at_iou_thresholds_with_frame_classes_and_background() -> None:
    labels = ["normal", "tumour", "unclear"]  # indices 0, 1, 2; background 3
    truths = [
        gt([*W, 0]),  # 1 normal, found
        gt([*W, 0]),  # 2 normal, found with IoU 0.5 (half the frame)
        gt([*W, 2]),  # 3 unclear, called normal
        gt([*W, 2]),  # 4 unclear, found
        gt([*SPOT, 1]),  # 5 tumour, found
        gt([*SPOT, 1]),  # 6 tumour, right class, IoU 0.48
        gt([*SPOT, 1]),  # 7 tumour, detection under the score threshold -> background
        gt(),  # 8 background, nothing detected
        gt(),  # 9 background, a confident tumour elsewhere
    ]
    preds = [
        pr([*W, 0.9, 0], [*SPOT, 0.2, 1]),
        pr([0, 0, 100, 50, 0.8, 0]),
        pr([*W, 0.7, 0], [*W, 0.6, 2]),
        pr([*W, 0.9, 2]),
        pr([*SPOT, 0.9, 1], [*W, 0.4, 0]),
        pr([10, 10, 30, 19.6, 0.8, 1]),
        pr([*SPOT, 0.3, 1]),
        pr(),
        pr([*FAR, 0.6, 1]),
    ]
    f = detection_metrics(preds, truths, labels, score_threshold=0.5, n_boot=200)["frame_level"]
    # the class decision alone (no IoU): rows truth, columns decision, background last
    assert f["confusion_matrix"]["matrix"] == [[2, 0, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    t = f["iou_thresholds"]
    assert list(t) == ["0.45", "0.5", "0.55"]

    r = t["0.5"]
    assert r["accuracy"]["value"] == pytest.approx(5 / 9)  # frames 1, 2, 4, 5, 8
    normal, tumour, unclear, bg = (r["per_class"][c] for c in ["normal", "tumour", "unclear", "background"])
    assert (normal["tp"], normal["fp"], normal["fn"], normal["support"]) == (2, 1, 0, 2)
    assert normal["precision"] == pytest.approx(2 / 3) and normal["recall"] == 1 and normal["f1"] == pytest.approx(0.8)
    assert normal["accuracy"] == pytest.approx(8 / 9)  # one-vs-rest: frame 3 is the only error
    assert (tumour["tp"], tumour["fp"], tumour["fn"], tumour["mislocated"]) == (1, 2, 2, 1)
    assert tumour["f1"] == pytest.approx(1 / 3) and tumour["accuracy"] == pytest.approx(6 / 9)  # frames 6, 7, 9
    assert (unclear["precision"], unclear["recall"]) == (1, 0.5) and unclear["f1"] == pytest.approx(2 / 3)
    assert (bg["tp"], bg["fp"], bg["fn"], bg["support"]) == (1, 1, 1, 2) and bg["f1"] == 0.5
    assert bg["accuracy"] == pytest.approx(7 / 9)
    # averages over the three classes (background left out); weighted by support 2, 3, 2
    assert r["macro"]["precision"] == pytest.approx(2 / 3) and r["macro"]["recall"] == pytest.approx(11 / 18)
    assert r["macro"]["f1"] == pytest.approx(0.6) and r["macro"]["accuracy"] == pytest.approx(22 / 27)
    assert r["weighted"]["f1"] == pytest.approx((2 * 0.8 + 3 / 3 + 2 * 2 / 3) / 7)
    lo, hi = r["macro"]["ci95"]["f1"]
    assert lo <= r["macro"]["f1"] <= hi
    lo, hi = r["accuracy"]["ci95"]
    assert lo <= 5 / 9 <= hi

    # IoU 0.45: the tumour at IoU 0.48 counts; 0.55: the half-frame normal no longer does
    tumour45 = t["0.45"]["per_class"]["tumour"]
    assert (tumour45["tp"], tumour45["fp"], tumour45["fn"], tumour45["mislocated"]) == (2, 1, 1, 0)
    assert t["0.45"]["accuracy"]["value"] == pytest.approx(6 / 9)
    normal55 = t["0.55"]["per_class"]["normal"]
    assert (normal55["tp"], normal55["fp"], normal55["fn"], normal55["mislocated"]) == (1, 2, 1, 1)
    assert normal55["f1"] == pytest.approx(0.4) and t["0.55"]["accuracy"]["value"] == pytest.approx(4 / 9)


def test_frame_table_without_bootstrap_and_undefined_rates() -> None:
    # "rare": no frame, never decided: left out of the averages
    m = detection_metrics([pr([*A, 0.9, 0])], [gt([*A, 0])], ["polyp", "rare"], n_boot=0)
    r = m["frame_level"]["iou_thresholds"]["0.5"]
    assert r["accuracy"]["value"] == 1 and np.isnan(r["per_class"]["rare"]["precision"])
    assert r["macro"]["f1"] == 1 and r["weighted"]["f1"] == 1 and np.isnan(r["macro"]["ci95"]["f1"][0])
    assert r["per_class"]["rare"]["accuracy"] == 1  # never involved: right for it
    # "rare" has a frame but is never decided: its undefined precision counts 0 in the averages
    m = detection_metrics([pr([*A, 0.9, 0]), pr()], [gt([*A, 0]), gt([*B, 1])], ["polyp", "rare"], n_boot=0)
    r = m["frame_level"]["iou_thresholds"]["0.5"]
    assert np.isnan(r["per_class"]["rare"]["precision"]) and r["per_class"]["rare"]["recall"] == 0
    assert r["macro"]["precision"] == 0.5 and r["weighted"]["precision"] == 0.5 and r["macro"]["f1"] == 0.5


def _cocoeval_per_class(preds: list[np.ndarray], truths: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """AP50 and mAP@[.5:.95] per class as pycocotools' COCOeval computes them (bbox, area 'all', 100 detections)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    boxes = [(i + 1, b) for i, t in enumerate(truths) for b in t]
    anns = [
        {"id": j + 1, "image_id": i, "category_id": int(b[4]) + 1, "bbox": xywh(b), "iscrowd": 0,
         "area": float((b[2] - b[0]) * (b[3] - b[1]))}
        for j, (i, b) in enumerate(boxes)
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = {
            "images": [{"id": i + 1, "width": 100, "height": 100} for i in range(len(truths))],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(k)],
        }
        gt_coco.createIndex()
        dets = [
            {"image_id": i + 1, "category_id": int(d[5]) + 1, "bbox": xywh(d), "score": float(d[4])}
            for i, p in enumerate(preds)
            for d in p
        ]
        ev = COCOeval(gt_coco, gt_coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, classes), area all, 100 dets

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if (x > -1).all() else float("nan")

    return np.array([mean(prec[0, :, c]) for c in range(k)]), np.array([mean(prec[:, :, c]) for c in range(k)])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_ap_and_map_per_class_are_cocoevals(data) -> None:
    """AP50 and mAP@[.5:.95] per class, and their macro means, equal pycocotools' COCOeval (the field's reference
    implementation) on generated images: truths of several classes, detections that are jittered copies of them
    (some of the wrong class) and strays, with distinct scores (COCOeval breaks score ties by its own order)."""
    from medcad.metrics.detection import APScores

    k = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 5))
    coord = st.floats(0, 80, allow_nan=False).map(lambda v: round(v, 1))
    side = st.floats(2, 40, allow_nan=False).map(lambda v: round(v, 1))
    truths, preds = [], []
    for _ in range(n):
        box = st.tuples(coord, coord, side, side, st.integers(0, k - 1))
        boxes = data.draw(st.lists(box, max_size=4))
        truths.append(np.array([[x, y, x + w, y + h, c] for x, y, w, h, c in boxes], float).reshape(-1, 5))
        dets = []
        for x0, y0, x1, y1, c in truths[-1]:
            for _ in range(data.draw(st.integers(0, 2))):
                dx, dy = data.draw(st.tuples(st.floats(-6, 6), st.floats(-6, 6)))
                cls = data.draw(st.sampled_from([int(c), int(c), data.draw(st.integers(0, k - 1))]))
                dets.append([x0 + dx, y0 + dy, x1 + dx, y1 + dy, 0.0, cls])
        for x, y, w, h, c in data.draw(st.lists(box, max_size=3)):  # strays
            dets.append([x, y, x + w, y + h, 0.0, c])
        preds.append(np.array(dets, float).reshape(-1, 6))
    total = sum(len(p) for p in preds)
    if total == 0:
        return  # COCOeval cannot load an empty result list
    scores = iter(data.draw(st.permutations(range(1, total + 1))))
    for p in preds:
        for d in p:
            d[4] = next(scores) / (total + 1)
    ap50, map_ = _cocoeval_per_class(preds, truths, k)
    ours = APScores(preds, truths, k)(np.ones((1, n)))
    np.testing.assert_allclose(ours["ap50_per_class"][0], ap50, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(ours["map_per_class"][0], map_, atol=1e-9, equal_nan=True)
    if np.isfinite(ap50).any():
        assert ours["ap50"][0] == pytest.approx(np.nanmean(ap50)) and ours["map"][0] == pytest.approx(np.nanmean(map_))


def test_frame_accuracy_comes_with_naming_every_frame_its_most_frequent_class() -> None:
    """Beside the frame decision's accuracy, that of naming every frame its most frequent class: a detector of AP50
    0.001 had shown a frame accuracy of 0.870 alone, every frame called 'polyp' (40 of 46)."""
    truths = [np.array([[2, 2, 10, 10, 0]], float)] * 3 + [np.zeros((0, 5))]
    preds = [np.array([[0, 0, 30, 30, 0.9, 0]], float)] * 4  # 'a' everywhere, in the wrong place
    m = detection_metrics(preds, truths, ["a"], n_boot=0)
    assert m["frame_level"]["accuracy"]["value"] == 0.75
    assert m["frame_level"]["majority_accuracy"] == {"value": 0.75, "class": "a"}
