"""Paired cluster-bootstrap comparisons and Holm: against SciPy / statsmodels / hand values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from medcad.metrics.compare import holm, paired_auc_bootstrap, paired_mean_test
from medcad.metrics.roc import delong_roc_variance, delong_test
from medcad.metrics.stats import expanded_alpha, expanded_p


def _clustered(n_groups: int = 40, per: int = 8, seed: int = 0):
    """Scores with a strong patient effect: every image of a patient shares the label and most of the score."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    y = rng.integers(0, 2, n_groups)[g]
    patient = rng.normal(size=n_groups)[g]
    a = 0.8 * y + patient + 0.1 * rng.normal(size=len(g))
    b = 0.8 * y + patient + 0.1 * rng.normal(size=len(g))
    return y, a, b, g


def test_hanley_mcneil_1982_worked_example():
    # Hanley & McNeil, Radiology 143:29 (1982), Table 1: 5-point ratings of 58 normal and 51 abnormal CT images;
    # published area 0.893 (Wilcoxon) with SE 0.032 (their approximation); DeLong's SE is close to it.
    y = np.r_[np.zeros(58), np.ones(51)].astype(int)
    s = np.r_[np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2]), np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])]
    auc, var = delong_roc_variance(y, s)
    assert auc == pytest.approx(0.893, abs=5e-4)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert np.sqrt(var) == pytest.approx(0.032, abs=0.002)


def test_paired_bootstrap_matches_sklearn_and_is_reproducible():
    y, a, b, g = _clustered()
    r1 = paired_auc_bootstrap(y, a, b, groups=g, n_boot=400, seed=1)
    r2 = paired_auc_bootstrap(y, a, b, groups=g, n_boot=400, seed=1)
    assert r1 == r2
    assert r1["auc_a"] == pytest.approx(roc_auc_score(y, a)) and r1["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert r1["ci95"][0] <= r1["difference"] <= r1["ci95"][1]
    assert r1["n_groups"] == 40 and r1["method"] == "paired cluster bootstrap"


def test_identical_models_give_p_one_and_zero_width():
    y, a, _, g = _clustered()
    r = paired_auc_bootstrap(y, a, a.copy(), groups=g, n_boot=200)
    assert r["difference"] == 0 and r["p_value"] == 1.0 and r["ci95"] == [0.0, 0.0]


def test_cluster_bootstrap_agrees_with_delong_when_groups_are_single_images():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    a = y + rng.normal(size=400)
    b = 0.7 * y + rng.normal(size=400)
    boot = paired_auc_bootstrap(y, a, b, n_boot=2000, seed=0)  # rows are independent: both estimate one SE
    dl = delong_test(y, a, b)
    se_boot, se_dl = boot["difference"] / boot["z"], dl["difference"] / dl["z"]
    assert se_boot == pytest.approx(se_dl, rel=0.15)


def test_clustered_comparison_is_less_confident_than_image_level():
    y, a, b, g = _clustered(seed=5)
    clustered = paired_auc_bootstrap(y, a, b, groups=g, n_boot=500)
    rows = paired_auc_bootstrap(y, a, b, n_boot=500)
    width = lambda r: r["auc_a_ci95"][1] - r["auc_a_ci95"][0]  # noqa: E731
    assert width(clustered) > 1.5 * width(rows)


def test_paired_dice_p_is_of_the_difference_it_shows():
    """The p of the paired Dice test inverts the interval of the mean per-image difference shown beside it: a
    reviewer's case, one patient's 40 frames favouring A and 10 patients favouring B, had read "+0.022, p 0.002"
    (a Wilcoxon test of per-group means: another quantity); now p > 0.05 with an interval across 0."""
    rng = np.random.default_rng(0)
    g = np.r_[np.zeros(40, int), np.arange(1, 11)]
    db = 0.70 + rng.normal(0, 0.005, 50)
    da = db.copy()
    da[:40] += 0.04
    da[40:] -= 0.05
    r = paired_mean_test(da, db, g, n_boot=2000)
    assert r["difference"] == pytest.approx((da - db).mean()) and r["n_groups"] == 11 and r["n_boot"] == 2000
    lo, hi = r["ci95"]
    assert lo < 0 < hi and r["p_value"] > 0.05
    assert r["test"].startswith("paired cluster bootstrap")
    clear = paired_mean_test(db + 0.05 + rng.normal(0, 0.01, 50), db, g, n_boot=2000)  # A better on every image
    # no resample crossed 0: p at its floor, 1/B expanded for 11 groups (a bound: shown "< 0.0078")
    assert clear["ci95"][0] > 0 and clear["p_value"] == clear["p_floor"] == pytest.approx(expanded_p(1 / 2000, 11))
    assert 1 / 2000 < clear["p_floor"] < 0.05
    assert paired_mean_test(da, da, g, n_boot=50)["p_value"] == 1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 40), st.integers(1, 8), st.floats(0.05, 0.5), st.integers(0, 10_000))
def test_paired_dice_is_over_complete_pairs(n: int, n_groups: int, missing: float, seed: int) -> None:
    """Every figure of the paired Dice test is over the images where both models have a Dice, as if the others had
    not been passed, and those are counted: the bootstrap had scored a missing Dice as a difference of 0 (difference
    0.100 beside an interval of 0.0375 to 0.119) and mean_a, mean_b were each over their own images (0.114 apart)."""
    rng = np.random.default_rng(seed)
    da, db, g = rng.uniform(0.3, 1, n), rng.uniform(0.2, 0.9, n), rng.integers(0, n_groups, n)
    da[rng.random(n) < missing] = np.nan
    db[rng.random(n) < missing] = np.nan
    ok = np.isfinite(da) & np.isfinite(db)
    r = paired_mean_test(da, db, g, n_boot=200)
    complete = paired_mean_test(da[ok], db[ok], g[ok], n_boot=200)
    counts = ("n_left_out",)
    np.testing.assert_equal(*({k: v for k, v in d.items() if k not in counts} for d in (r, complete)))
    assert r["n_left_out"] == (~ok).sum() and complete["n_left_out"] == 0 and r["n"] == ok.sum()
    if ok.any():
        assert r["mean_a"] == pytest.approx(da[ok].mean()) and r["mean_b"] == pytest.approx(db[ok].mean())
        assert r["difference"] == pytest.approx(r["mean_a"] - r["mean_b"])


def test_holm_matches_statsmodels_and_hand_values():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.5]
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist())
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3p, max(2p, prev), max(p, prev)
    # docs/results.md (issue 4): three per-class DeLong p-values of one pair; malignant 0.033 does not survive
    assert holm([0.54, 0.033, 0.83])[1] == pytest.approx(0.099)
    out = holm([0.02, None, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.04) and np.isnan(out[1]) and np.isnan(out[2]) and out[3] == pytest.approx(0.04)


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 12), st.integers(1, 4), st.floats(0, 1.5), st.integers(0, 10_000))
def test_paired_auc_p_agrees_with_the_interval_beside_it(n_groups: int, per: int, effect: float, seed: int) -> None:
    """p < 0.05 when the 95 % interval of the difference leaves 0 out and not otherwise (up to one resample): on few
    groups pROC's normal p had said 0.12 beside an interval of -0.220 to -0.003."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    y = (np.arange(n_groups) % 2)[g]
    a = effect * y + rng.normal(size=len(g))
    b = rng.normal(size=len(g))
    n_boot = 400
    r = paired_auc_bootstrap(y, a, b, groups=g, n_boot=n_boot, seed=seed)
    lo, hi = r["ci95"]
    if np.isnan(r["p_value"]):
        return
    excludes = lo > 0 or hi < 0
    if r["p_value"] < 0.05:
        assert excludes
    if excludes:  # up to one resample, on the raw scale the expansion for few groups maps
        assert r["p_value"] <= expanded_p(expanded_alpha(0.05, n_groups) + 2 / n_boot, n_groups)


def _detector(truths: list[np.ndarray], rng: np.random.Generator, skill: float, k: int) -> list[np.ndarray]:
    """Per image, detections of a detector that finds each true box with probability `skill` (jittered box, high
    score) and adds false alarms (random box, any class, lower score)."""
    out = []
    for t in truths:
        found = [[*(b[:4] + rng.normal(0, 3, 4)), rng.uniform(0.5, 1), b[4]] for b in t if rng.random() < skill]
        false = [[*np.sort(rng.uniform(0, 100, 2)).repeat(2)[[0, 2, 1, 3]], rng.uniform(0, 0.7), rng.integers(k)]]
        out.append(np.array(found + false * int(rng.integers(0, 2)), dtype=float).reshape(-1, 6))
    return out


def _truths(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    boxes = []
    for _ in range(n):
        m = int(rng.integers(0, 3))
        xy = rng.uniform(0, 60, (m, 2))
        boxes.append(np.c_[xy, xy + rng.uniform(10, 40, (m, 2)), rng.integers(0, k, m)])
    return boxes


@settings(max_examples=25, deadline=None)
@given(st.integers(6, 40), st.integers(1, 3), st.integers(1, 4), st.floats(0.2, 1.0), st.integers(0, 10_000))
@example(14, 3, 3, 0.625, 756)  # 204 resamples define a measure, 6 at or below 0: p 12/204, the interval just above 0
@example(19, 2, 2, 1.0, 383)  # the CPM's interval leaves 0 out at p 0.0618: expanded for its 7 groups with lesions
def test_paired_detection_test_agrees_with_each_detectors_own(
    n: int, k: int, per: int, skill: float, seed: int
) -> None:
    """AP50, mAP, CPM, F1 and frame accuracy (IoU 0.5) of each detector are `detection_metrics`' figures; swapping the
    detectors negates the difference and its interval; p < 0.05 exactly when the interval leaves 0 out (up to one
    resample); a detector against itself differs by 0 with p 1."""
    from medcad.metrics.compare import paired_detection_bootstrap
    from medcad.metrics.detection import detection_metrics

    rng = np.random.default_rng(seed)
    truths = _truths(n, k, rng)
    a, b = _detector(truths, rng, skill, k), _detector(truths, rng, 0.6, k)
    groups = np.arange(n) // per
    n_boot = 300
    ab = paired_detection_bootstrap(a, b, truths, k, groups=groups, n_boot=n_boot, seed=seed)
    ba = paired_detection_bootstrap(b, a, truths, k, groups=groups, n_boot=n_boot, seed=seed)
    labels = [f"c{j}" for j in range(k)]
    ma, mb = (detection_metrics(d, truths, labels, n_boot=0) for d in (a, b))

    def own(m: dict, key: str) -> float:
        if key == "f1":
            return m["iou_thresholds"]["0.5"]["f1"]
        if key == "frame_accuracy":
            return m["frame_level"]["iou_thresholds"]["0.5"]["accuracy"]["value"]
        if key == "cpm":
            return m["froc"]["cpm"]["value"]
        return m[key]["value"]

    for m in ("ap50", "map", "cpm", "f1", "frame_accuracy"):
        r = ab[m]
        assert r["value_a"] == pytest.approx(own(ma, m), nan_ok=True)
        assert r["value_b"] == pytest.approx(own(mb, m), nan_ok=True)
        assert ba[m]["difference"] == pytest.approx(-r["difference"], nan_ok=True)
        assert ba[m]["ci95"] == pytest.approx([-r["ci95"][1], -r["ci95"][0]], nan_ok=True)
        lo, hi = r["ci95"]
        if np.isfinite(r["p_value"]):
            if r["p_value"] < 0.05:
                assert lo > 0 or hi < 0
            if lo > 0 or hi < 0:  # to the p's resolution over the resamples that define the measure
                units = r["n_units"]  # the CPM's: the groups holding lesions (p 0.0618 had met the bound of all)
                assert units == (ab["n_groups"] if m != "cpm" else len(set(groups[[len(t) > 0 for t in truths]])))
                assert r["p_value"] <= expanded_p(expanded_alpha(0.05, units) + 2 / r["resamples_used"], units)
    for same in paired_detection_bootstrap(a, a, truths, k, groups=groups, n_boot=50).values():
        if not isinstance(same, dict) or not np.isfinite(same["value_a"]):
            continue
        assert same["difference"] == 0
        if np.isfinite(same["p_value"]):  # else fewer than half the resamples define the macro AP: no interval
            # [0, 0]; or none where the interval's tails, widened for few groups, are beyond 50 resamples
            assert same["p_value"] == 1 and (same["ci95"] == [0, 0] or np.isnan(same["ci95"]).all())
        else:
            assert np.isnan(same["ci95"]).all()


def test_detectors_without_a_shared_class_are_not_compared() -> None:
    """No class to score: every measure is undefined (nan), frame accuracy included, whose frames would all be
    background and decided right by both; a nan p stays out of the study's Holm family."""
    from medcad.metrics.compare import paired_detection_bootstrap

    none = [np.zeros((0, 6))] * 5
    out = paired_detection_bootstrap(none, none, [np.zeros((0, 5))] * 5, 0, n_boot=50)
    for m in ("ap50", "map", "f1", "frame_accuracy"):
        assert np.isnan(out[m]["value_a"]) and np.isnan(out[m]["p_value"]), m


def test_paired_detection_test_resamples_whole_groups() -> None:
    """Images of one patient move together: with a strong patient effect (one detector finds every box of half the
    patients, the other of the other half) the cluster interval is wider than the image-level one."""
    from medcad.metrics.compare import paired_detection_bootstrap

    rng = np.random.default_rng(0)
    truths = _truths(200, 1, rng)
    truths = [t if len(t) else _truths(1, 1, rng)[0] for t in truths]
    groups = np.arange(200) // 10
    half = groups % 2 == 0
    a = [_detector([t], rng, 1.0 if h else 0.3, 1)[0] for t, h in zip(truths, half, strict=True)]
    b = [_detector([t], rng, 0.3 if h else 1.0, 1)[0] for t, h in zip(truths, half, strict=True)]
    clustered = paired_detection_bootstrap(a, b, truths, 1, groups=groups, n_boot=400)
    images = paired_detection_bootstrap(a, b, truths, 1, n_boot=400)
    assert clustered["n_groups"] == 20 and images["n_groups"] == 200
    for m in ("ap50", "f1", "frame_accuracy"):
        width = {name: np.diff(r[m]["ci95"])[0] for name, r in (("c", clustered), ("i", images))}
        assert width["c"] > 1.5 * width["i"], m


def test_the_paired_cpm_interval_is_expanded_for_the_groups_holding_lesions() -> None:
    """Each detector's CPM interval in the paired test is its own run's (expanded for the 6 groups holding lesions,
    not all 20: it had read [0.057, 0.609] beside the run's [0.000, 0.833])."""
    from medcad.metrics.compare import paired_detection_bootstrap
    from medcad.metrics.detection import detection_metrics

    rng = np.random.default_rng(3)
    truths = [np.array([[10, 10, 40, 40, 0]], float) if i < 12 else np.zeros((0, 5)) for i in range(40)]
    a = [np.array([[10 + rng.normal(0, 6), 10, 40, 40, rng.random(), 0]]) for _ in range(40)]
    b = [np.array([[10 + rng.normal(0, 3), 10, 40, 40, rng.random(), 0]]) for _ in range(40)]
    groups = np.arange(40) // 2  # 20 groups, the 12 lesion images in 6 of them
    out = paired_detection_bootstrap(a, b, truths, 1, groups=groups, n_boot=400, seed=1)
    own = detection_metrics(a, truths, ["polyp"], groups=groups, n_boot=400, seed=1)
    assert out["cpm"]["value_a"] == pytest.approx(own["froc"]["cpm"]["value"])
    assert out["cpm"]["ci95_a"] == pytest.approx(own["froc"]["cpm"]["ci95"], abs=1e-9)
