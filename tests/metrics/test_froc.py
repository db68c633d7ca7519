"""FROC: the sensitivity at each false-positive rate equals a brute-force reading that matches the boxes anew at
every threshold; whole-frame classes are left out; the curve and the CPM follow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.metrics.box_matching import box_iou
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


def _found(p: np.ndarray, t: np.ndarray) -> tuple[int, int]:
    """(lesions found, false positives) of one image's boxes, by the rule written out anew: by decreasing score a box
    finds the unfound lesion it overlaps most at IoU >= 0.5, whatever its class; a box overlapping only lesions
    already found is a double detection (no FP); any other box is an FP."""
    found, fp = set(), 0
    for d in np.argsort(-p[:, 4], kind="stable"):
        iou = box_iou(p[d : d + 1], t)[0] if len(t) else np.zeros(0)
        free = [(v, j) for j, v in enumerate(iou) if v >= 0.5 and j not in found]
        if free:
            found.add(max(free)[1])
        elif not (iou >= 0.5).any():
            fp += 1
    return len(found), fp


def _brute_force(preds, truths, lesions: np.ndarray, rate: float) -> float:
    keep = np.flatnonzero(lesions)
    n_lesions = sum(int(np.isin(t[:, 4], keep).sum()) for t in truths)
    best = 0.0
    for thr in sorted({float(s) for p in preds for s in p[:, 4]}):
        tp = fp = 0
        for p, t in zip(preds, truths, strict=True):
            hit, miss = _found(p[(p[:, 4] >= thr) & np.isin(p[:, 5], keep)], t[np.isin(t[:, 4], keep)])
            tp, fp = tp + hit, fp + miss
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


def test_a_lesion_found_twice_or_under_another_class_is_found_once_and_no_false_positive() -> None:
    """LUNA16's reading: a second box on a found lesion is ignored, and a box on a lesion naming another lesion
    class finds it (the COCO matching of AP had counted both as false positives: sensitivity 0.5 at every rate)."""
    a, b = [10, 10, 40, 40], [60, 60, 90, 90]
    truths = [np.array([[*a, 0], [*b, 1]], float)]
    preds = [np.array([[*a, 0.9, 0], [11, 10, 41, 40, 0.85, 0], [*b, 0.8, 0]], float)]  # the last names class 0
    got = FROCTable(preds, truths, np.ones(2, bool))(np.ones((1, 1)))
    assert got["froc_sensitivity"][0].tolist() == [1.0] * len(FP_RATES)
    boxes = FROCTable(preds, truths, np.ones(2, bool), lesion_level=False)  # as box F1 counts them
    assert boxes.tp.tolist() == [True, False, False] and boxes.fp.tolist() == [False, True, True]


def test_no_box_or_no_lesion_in_a_resample_gives_no_false_certainty() -> None:
    """No predicted box: sensitivity 0 at every rate. One lesion among ten images: resamples without it leave the
    FROC undefined (nan), counted in resamples_used, and the interval of an all-1 sensitivity is the exact one."""
    truths = [np.zeros((0, 5))] * 9 + [np.array([[10, 10, 40, 40, 0]], float)]
    none = [np.zeros((0, 6))] * 10
    m = detection_metrics(none, truths, ["polyp"], n_boot=200)
    assert [s["value"] for s in m["froc"]["sensitivity"]] == [0.0] * len(FP_RATES)
    assert m["froc"]["curve"]["score"] == []
    hit = none[:9] + [np.array([[10, 10, 40, 40, 0.9, 0]], float)]
    m = detection_metrics(hit, truths, ["polyp"], n_boot=200)
    assert m["froc"]["cpm"]["value"] == 1.0 and m["froc"]["cpm"]["ci95"][0] < 0.5  # exact on 1 unit, not 1.0-1.0
    assert "exact" in m["froc"]["cpm"]["ci95_method"]
    assert 0 < m["bootstrap"]["resamples_used"]["froc.cpm"] < 200
    assert np.isnan(FROCTable(hit, truths, np.ones(1, bool))(np.eye(10)[:1])["froc_cpm"][0])  # image 0 alone


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
    for rate, s in zip(f["fp_per_image"], f["sensitivity"], strict=True):  # the drawn step reads as the table
        on_curve = [v for x, v in zip(c["fp_per_image"], c["sensitivity"], strict=True) if x <= rate]
        assert (on_curve[-1] if on_curve else 0.0) == pytest.approx(s["value"], abs=1e-5)
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
    assert vo["folds_without_threshold"] == [1] and vo["mean_threshold"] == pytest.approx(0.3)  # 0.5 unvalidated
    assert (
        validated_operating_point(preds, truths, ["a", "b"], [None, None], [12, 18], n_boot=0)["mean_threshold"] is None
    )


def test_predict_takes_the_validated_folds_mean_or_refuses(tmp_path) -> None:
    """--operating-point f1 deploys the mean of the folds that chose a threshold, saying which did not; with none it
    is refused (it had deployed the fixed 0.5 as 'validated')."""
    import json

    from medcad.errors import ConfigError
    from medcad.inference.operating_points import validated_score_threshold

    def run_with(thresholds: list) -> None:
        missing = [k for k, t in enumerate(thresholds) if t is None]
        valid = [t for t in thresholds if t is not None]
        vo = {
            "thresholds": thresholds,
            "folds_without_threshold": missing,
            "mean_threshold": valid and np.mean(valid) or None,
        }
        (tmp_path / "metrics.json").write_text(json.dumps({"validated_operating_point": vo}))

    run_with([0.2, None])
    with pytest.warns(UserWarning, match=r"fold\(s\) 1 gave no threshold on validation"):
        assert validated_score_threshold(tmp_path, None, "f1") == pytest.approx(0.2)
    run_with([None, None])
    with pytest.raises(ConfigError, match="no fold's validation part gave a threshold"):
        validated_score_threshold(tmp_path, None, "f1")


def test_the_console_and_figure_show_the_froc_after_a_json_round_trip() -> None:
    """As `evaluate` prints a saved metrics.json: the FROC rows with their CIs, and the figure drawn, with no CI
    (None once written) and with no box at all."""
    import json

    from rich.console import Console

    from medcad.report.console import print_metrics
    from medcad.report.plots import froc_png

    preds, truths = _scene(5, 40, 1)
    m = json.loads(json.dumps(detection_metrics(preds, truths, ["polyp"], n_boot=100)))
    c = Console(record=True, width=200)
    print_metrics(m, console=c)
    text = c.export_text()
    cpm = m["froc"]["cpm"]
    assert f"FROC CPM (mean sensitivity at 0.125, 0.25, 0.5, 1, 2, 4, 8 FP/image) │ {cpm['value']:.3f} (" in text
    assert "lesion sensitivity at 1 FP/image (FROC)" in text
    assert froc_png(m["froc"])[:4] == b"\x89PNG"
    empty = json.loads(json.dumps(detection_metrics([np.zeros((0, 6))] * 40, truths, ["polyp"], n_boot=0)))
    assert froc_png(empty["froc"])[:4] == b"\x89PNG"


def test_a_long_curve_keeps_the_corners_the_table_reads() -> None:
    """With thousands of thresholds the stored curve is thinned to the points where the sensitivity rises (400
    evenly spaced points had drawn it below the table: 0.050 at 1/4 FP per image against 0.071)."""
    preds, truths = _scene(8, 300, 1)
    rng = np.random.default_rng(1)
    preds = [np.c_[p[:, :4], rng.random(len(p)), p[:, 5]] for p in preds]  # distinct scores: one threshold each
    table = FROCTable(preds, truths, np.ones(1, bool))
    c, got = table.point_curve(), table(np.ones((1, 300)))["froc_sensitivity"][0]
    assert len(table.ends) > 400 and len(c["score"]) < len(table.ends)
    full = table.curve(np.ones((1, 300)))
    steps = np.unique(np.round(full[1][0], 5))
    assert set(steps) <= set(c["sensitivity"]) | {0.0}  # every level the step reaches is drawn
    rises = np.flatnonzero(np.diff(np.r_[0.0, full[1][0]]) > 0)
    troughs = {round(float(v), 5) for v in full[2][0][rises[rises > 0] - 1]}
    assert troughs <= set(c["precision"])  # and precision's troughs before each rise (the PR panel's line)
    for rate, value in zip(FP_RATES, got, strict=True):
        on_curve = [v for x, v in zip(c["fp_per_image"], c["sensitivity"], strict=True) if x <= rate]
        assert (on_curve[-1] if on_curve else 0.0) == pytest.approx(value, abs=1e-5)
