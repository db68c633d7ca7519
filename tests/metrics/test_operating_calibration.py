"""Validation-chosen operating points and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss, log_loss

from medcad.metrics.calibration import (
    apply_temperature,
    brier_rows,
    calibration_line,
    calibration_summary,
    class_logit,
    fit_temperature,
    temperature_scaled,
)
from medcad.metrics.operating import choose_threshold, validated_operating_points


def test_choose_threshold_hand_example():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75])
    assert choose_threshold(y, s, "youden") == pytest.approx(0.45)
    assert choose_threshold(y, s, "sens>=0.9") == pytest.approx(0.25)  # all 5 positives at >= 0.25
    assert choose_threshold(y, s, "sens>=0.6") == pytest.approx(0.55)  # 3 of 5 positives
    assert choose_threshold(y, s, "spec>=0.9") == pytest.approx(0.45)  # lowest threshold with no false positive
    assert choose_threshold(y, s, "spec>=0.6") == pytest.approx(0.25)  # 2 of 3 negatives below
    assert np.isnan(choose_threshold(np.ones(3), s[:3], "youden"))
    with pytest.raises(ValueError, match="unknown operating-point rule"):
        choose_threshold(y, s, "ppv>=0.9")


def test_validated_points_use_each_folds_validation_threshold():
    y_val = np.array([0, 0, 1, 1])
    val = {0: (y_val, np.array([0.1, 0.2, 0.3, 0.4])), 1: (y_val, np.array([0.5, 0.6, 0.7, 0.8]))}
    y_test = np.array([0, 1, 0, 1])
    s_test = np.array([0.25, 0.35, 0.65, 0.75])
    fold = np.array([0, 0, 1, 1])
    out = validated_operating_points(y_test, s_test, fold, val, rules=["youden"], n_boot=50)
    r = out["youden"]
    assert r["thresholds"] == {"0": pytest.approx(0.3), "1": pytest.approx(0.7)}
    assert r["sensitivity"]["value"] == 1.0 and r["specificity"]["value"] == 1.0
    # pooled test scores would need one threshold: the in-sample Youden point would be chosen on the test rows
    with pytest.raises(ValueError, match="no validation predictions"):
        validated_operating_points(y_test, s_test, np.array([0, 0, 2, 2]), val)


def test_a_fold_that_meets_a_rule_only_above_every_validation_score_cuts_there_in_the_mean_too(tmp_path) -> None:
    """Fold 0's validation has two negatives, the top-scored one among them: spec >= 0.90 is met only above every
    score there. It cuts just above 0.9, in the ensemble's mean too: it had been +inf and left out of the mean, so
    the ensemble cut at the other folds' looser threshold (a new user's external set: specificity 0.355 at
    "spec>=0.90", below Youden's 0.935)."""
    val = {
        0: (np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.2, 0.7])),
        1: (np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9])),
    }
    y, s = np.array([0, 1, 0, 1]), np.array([0.2, 0.95, 0.1, 0.7])
    cut = choose_threshold(*val[0], "spec>=0.90")
    assert cut == np.nextafter(0.9, 1) and (val[0][1] < cut).all()
    pooled = validated_operating_points(y, s, np.array([0, 0, 1, 1]), val, rules=["spec>=0.90"], n_boot=20)
    o = pooled["spec>=0.90"]
    assert "folds_calling_nothing" not in o and o["ensemble_threshold"] == pytest.approx(0.75)
    assert o["sensitivity"]["value"] == 1.0 and o["specificity"]["value"] == 1.0  # 0.95 > 0.9 called in fold 0
    new = validated_operating_points(y, s, None, val, rules=["spec>=0.90"], n_boot=20)["spec>=0.90"]
    assert new["threshold"] == pytest.approx(0.75) and new["sensitivity"]["value"] == pytest.approx(0.5)
    both = {f: val[0] for f in (0, 1)}
    assert validated_operating_points(y, s, None, both, rules=["spec>=0.90"], n_boot=20)["spec>=0.90"][
        "threshold"
    ] == pytest.approx(0.9)
    # a run from before kept +inf (written as null) and listed the fold: predict still names why it has no threshold
    import json

    from medcad.errors import ConfigError
    from medcad.inference.operating_points import validated_cut

    before = o | {"thresholds": {"0": None, "1": 0.6}, "ensemble_threshold": 0.6, "folds_calling_nothing": ["0"]}
    block = {"positive": "lesion", "scale": "temperature-scaled", "spec>=0.90": json.loads(json.dumps(before))}
    (tmp_path / "metrics.json").write_text(json.dumps({"validated_operating_points": block}))
    assert validated_cut(tmp_path, None, "spec>=0.90") == ("lesion", pytest.approx(0.6))
    with pytest.raises(ConfigError, match="fold 0's validation part met it only by calling nothing positive"):
        validated_cut(tmp_path, 0, "spec>=0.90")
    # a three-class run's thresholds per class: predict says what they are for (it had said there were none)
    by_class = {"benign": block | {"positive": "benign", "one_vs_rest": True}}
    (tmp_path / "metrics.json").write_text(json.dumps({"validated_operating_points_by_class": by_class}))
    with pytest.raises(ConfigError, match="decides a two-class run's class; this run has more classes"):
        validated_cut(tmp_path, None, "spec>=0.90")


def test_a_fold_whose_validation_holds_one_class_is_left_out_not_scored_negative():
    """A validation part of one class chooses no threshold: that fold's test rows had been called negative (a run
    with 1-image validation parts showed sensitivity 0.000 (0.000-0.000), specificity 1.000 (1.000-1.000))."""
    y_val = np.array([0, 0, 1, 1])
    val = {0: (y_val, np.array([0.1, 0.2, 0.3, 0.4])), 1: (np.array([1]), np.array([0.9]))}
    y_test, s_test, fold = np.array([0, 1, 0, 1]), np.array([0.25, 0.35, 0.65, 0.75]), np.array([0, 0, 1, 1])
    r = validated_operating_points(y_test, s_test, fold, val, rules=["youden", "spec>=0.90"], n_boot=50)["youden"]
    assert r["folds_without_threshold"] == ["1"] and np.isnan(r["thresholds"]["1"])
    assert r["sensitivity"]["value"] == 1.0 and r["specificity"]["value"] == 1.0  # fold 0's two rows alone
    val[0] = (np.array([0]), np.array([0.1]))
    r = validated_operating_points(y_test, s_test, fold, val, rules=["youden"], n_boot=50)["youden"]
    assert r["sensitivity"] == {"value": None, "ci95": [None, None]} == r["ppv"]
    assert r["folds_without_threshold"] == ["0", "1"]


def test_prespecified_points_threshold_new_data_at_the_mean_of_the_folds_thresholds():
    """An external set is scored at thresholds fixed on the run's validation parts (its in-sample Youden point had
    been the only one): fold thresholds 0.3 and 0.7 give the ensemble 0.5."""
    y_val = np.array([0, 0, 1, 1])
    val = {
        0: (y_val, np.array([0.1, 0.2, 0.3, 0.4])),
        1: (y_val, np.array([0.5, 0.6, 0.7, 0.8])),
        2: (y_val[:1], [0.9]),
    }
    y_new, s_new = np.array([0, 0, 1, 1, 1]), np.array([0.2, 0.55, 0.45, 0.5, 0.9])
    r = validated_operating_points(y_new, s_new, None, val, rules=["youden"], n_boot=50)["youden"]
    assert r["thresholds"]["0"] == pytest.approx(0.3) and r["threshold"] == pytest.approx(0.5)
    assert r["folds_without_threshold"] == ["2"]  # one class on validation: left out of the mean
    assert r["sensitivity"]["value"] == pytest.approx(2 / 3) and r["specificity"]["value"] == pytest.approx(0.5)
    assert r["ppv"]["value"] == pytest.approx(2 / 3) and r["npv"]["value"] == pytest.approx(0.5)
    assert len(r["ppv"]["ci95"]) == len(r["npv"]["ci95"]) == 2  # PPV and NPV with their intervals too
    r = validated_operating_points(y_new, s_new, None, {2: val[2]}, rules=["youden"], n_boot=50)["youden"]
    assert np.isnan(r["threshold"]) and r["sensitivity"]["value"] is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=30),
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=30),
    st.sampled_from(["youden", "spec>=0.9", "sens>=0.8"]),
)
def test_prespecified_points_of_one_fold_score_its_own_threshold(val_rows, new_rows, rule) -> None:
    """One member: the threshold is the one its validation part chooses, and the figures are those of the new
    scores cut there, whatever the data."""
    yv, sv = map(np.array, zip(*val_rows, strict=True))
    y, s = map(np.array, zip(*new_rows, strict=True))
    r = validated_operating_points(y, s, None, {0: (yv, sv)}, rules=[rule], n_boot=20)[rule]
    t = choose_threshold(yv, sv, rule)
    assert r["threshold"] == t or (np.isnan(t) and np.isnan(r["threshold"]))
    if np.isnan(t):
        assert r["sensitivity"]["value"] is None
    elif y.any():
        assert r["sensitivity"]["value"] == pytest.approx((s[y] >= t).mean())
    else:  # no positive among the new images: no sensitivity
        assert np.isnan(r["sensitivity"]["value"])


def test_temperature_recovers_known_temperature_and_matches_log_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 3
    y = np.array([rng.choice(3, p=p) for p in softmax(logits, axis=1)])  # calibrated at T = 1
    over = softmax(logits * 2.5, axis=1)  # over-confident by a factor 2.5
    t = fit_temperature(y, over)
    assert t == pytest.approx(2.5, rel=0.1)
    fixed = apply_temperature(over, t)
    assert log_loss(y, fixed) < log_loss(y, over)
    assert (fixed.argmax(1) == over.argmax(1)).all()


def test_brier_matches_sklearn():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=50)
    y = (rng.uniform(size=50) < p).astype(int)
    assert brier_rows(y, p).mean() == pytest.approx(brier_score_loss(y, p))
    p3 = softmax(rng.normal(size=(50, 3)), axis=1)
    y3 = rng.integers(0, 3, 50)
    onehot = np.eye(3)[y3]
    assert brier_rows(y3, p3).mean() == pytest.approx(((p3 - onehot) ** 2).sum(1).mean())


def test_temperature_scaled_improves_ece_of_overconfident_folds():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1200, 2)) * 2
    y = np.array([rng.choice(2, p=p) for p in softmax(logits, axis=1)])
    probs = softmax(logits * 3, axis=1)
    fold = np.repeat([0, 1, 2], 400)
    val = {f: (y[fold == f][:200], probs[fold == f][:200]) for f in range(3)}
    test = np.concatenate([np.flatnonzero(fold == f)[200:] for f in range(3)])
    res, cal = temperature_scaled(y[test], probs[test], fold[test], val, n_boot=100)
    assert all(t > 1.5 for t in res["temperatures"].values())
    assert res["after"]["ece"]["value"] < res["before"]["ece"]["value"]
    assert res["after"]["brier"]["value"] < res["before"]["brier"]["value"]
    assert cal.shape == probs[test].shape
    # probabilities 3x too sharp on the logit scale: a calibration slope near 1/3, near 1 once scaled
    (before,), (after,) = res["before"]["lines"], res["after"]["lines"]
    assert 0.2 < before["calibration_slope"]["value"] < 0.5 and before["class"] == 1
    lo, hi = after["calibration_slope"]["ci95"]
    assert lo < 1 < hi and abs(after["calibration_slope"]["value"] - 1) < 0.2
    # the temperatures the folds stored with their models are used as they are (not fitted a second time)
    kept = {0: res["temperatures"]["0"], 1: None, 2: 1.25}
    again, _ = temperature_scaled(y[test], probs[test], fold[test], val, n_boot=10, temperatures=kept)
    assert again["temperatures"] == {"0": kept[0], "1": res["temperatures"]["1"], "2": 1.25}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 400),
    spread=st.floats(0.2, 4),
    slope=st.floats(0.3, 2.5),
    shift=st.floats(-1.5, 1.5),
    seed=st.integers(0, 2**16),
)
def test_the_calibration_line_is_statsmodels_logistic_fit(n, spread, slope, shift, seed) -> None:
    """Intercept (logit as offset) and slope equal statsmodels' binomial GLM, under bootstrap-like weights too; a fit
    that does not converge (classes separated by p, or one class) is nan, never a number from a diverging fit."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    rng = np.random.default_rng(seed)
    z = rng.normal(0, spread, n)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < 1 / (1 + np.exp(-(shift + slope * z)))).astype(int)
    w = np.vstack([np.ones(n), rng.poisson(1.0, (3, n))]).astype(float)
    got = calibration_line(y, z, w)
    assert np.allclose(class_logit(np.column_stack([1 - p, p]), 1), z)
    for b in range(len(w)):
        yb, wb = y[w[b] > 0], w[b][w[b] > 0]
        xb = z[w[b] > 0]
        separated = (
            yb.min() == yb.max() or xb[yb == 1].min() > xb[yb == 0].max() or xb[yb == 0].min() > xb[yb == 1].max()
        )
        if separated:
            assert np.isnan(got["calibration_slope"][b])
            continue
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", PerfectSeparationWarning)
            fam = sm.families.Binomial()
            slope_fit = sm.GLM(yb, sm.add_constant(xb, has_constant="add"), family=fam, freq_weights=wb).fit()
            offset_fit = sm.GLM(yb, np.ones(len(yb)), offset=xb, family=fam, freq_weights=wb).fit()
        assert got["calibration_slope"][b] == pytest.approx(slope_fit.params[1], rel=1e-6, abs=1e-6)
        assert got["calibration_intercept"][b] == pytest.approx(offset_fit.params[0], rel=1e-6, abs=1e-6)


def test_the_calibration_line_is_of_the_positive_class_or_of_each_class_against_the_rest() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.5 + 0.7 * z)))).astype(int)
    p = np.column_stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))])
    (one,), (zero,) = (calibration_summary(y, p, n_boot=50, positive=c)["lines"] for c in (1, 0))
    assert one["class"] == 1 and zero["class"] == 0
    assert one["calibration_slope"]["value"] == pytest.approx(zero["calibration_slope"]["value"])
    assert one["calibration_intercept"]["value"] == pytest.approx(-zero["calibration_intercept"]["value"])
    assert one["balanced_training_intercept"] == pytest.approx(np.log(y.mean() / (1 - y.mean())))
    # classes separated by p: no slope, but the intercept (the logit as offset) has its maximum (a reviewer found it
    # nan: every resample leaving out the one row that was not separated had been dropped from its interval)
    sep = np.r_[np.zeros(100), np.ones(100)]
    x = np.r_[np.full(100, -20.7), np.full(100, 20.7)]
    fit = calibration_line(sep, x, np.ones((1, 200)))
    assert np.isnan(fit["calibration_slope"][0]) and fit["calibration_intercept"][0] == pytest.approx(0, abs=1e-6)
    x[0] = 2.2  # one negative at p = 0.9: the intercept is finite, and so are the resamples that leave it out
    lo, hi = calibration_summary(sep.astype(int), np.column_stack([1 - expit(x), expit(x)]), n_boot=200)["lines"][0][
        "calibration_intercept"
    ]["ci95"]
    assert lo < -5 and hi > -1e-3
    # more classes: each against the rest, its line that of the two-class problem it makes
    y3 = rng.choice(3, 400, p=[0.5, 0.3, 0.2])
    p3 = softmax(rng.normal(size=(400, 3)) + 2 * np.eye(3)[y3], axis=1)
    lines = calibration_summary(y3, p3, n_boot=20)["lines"]
    assert [x["class"] for x in lines] == [0, 1, 2]
    for c, x in enumerate(lines):
        alone = calibration_line(y3 == c, class_logit(p3, c), np.ones((1, 400)))
        assert x["calibration_slope"]["value"] == pytest.approx(alone["calibration_slope"][0])
        share = np.mean(y3 == c)
        assert x["balanced_training_intercept"] == pytest.approx(np.log(share / (1 - share)) - np.log(1 / 2))


def test_a_temperature_is_kept_only_where_validation_shows_evidence_against_one() -> None:
    """Probabilities 2x too sharp on the logit scale: 400 rows show it (T near 2 kept); 12 rows of the same kind fit a
    T far from 1 that they cannot support (likelihood ratio below 3.84): T = 1. The statistic is twice the summed NLL
    difference (checked against a direct sum)."""
    from medcad.metrics.calibration import EVIDENCE, temperature_evidence

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(400, 2)) * 1.5
    y = np.array([rng.choice(2, p=p) for p in softmax(logits, axis=1)])
    probs = softmax(logits * 2, axis=1)
    t, lr = temperature_evidence(y, probs)
    assert lr >= EVIDENCE and fit_temperature(y, probs) == pytest.approx(t) and 1.6 < t < 2.6
    nll = lambda T: -np.log(apply_temperature(probs, T)[np.arange(len(y)), y]).sum()  # noqa: E731
    assert lr == pytest.approx(2 * (nll(1.0) - nll(t)), rel=1e-6)
    few = next(
        (y[i : i + 12], probs[i : i + 12])
        for i in range(0, 388, 4)
        if abs(np.log(temperature_evidence(y[i : i + 12], probs[i : i + 12])[0])) > 0.3
        and temperature_evidence(y[i : i + 12], probs[i : i + 12])[1] < EVIDENCE
    )
    assert fit_temperature(*few) == 1.0
    res, scaled = temperature_scaled(y[:12], probs[:12], np.zeros(12, int), {0: few}, n_boot=10)
    assert res["temperatures"] == {"0": 1.0} and res["evidence"]["0"] < EVIDENCE and res["guarded"]
    # T = 1 leaves the probabilities exactly as they are (a round trip through logits had made the Brier score
    # differ by 1e-9, and the report called scaling that scaled nothing "worse")
    assert np.array_equal(scaled, probs[:12]) and repr(res["after"]["brier"]) == repr(res["before"]["brier"])
    old, _ = temperature_scaled(y[:12], probs[:12], np.zeros(12, int), {0: few}, n_boot=10, temperatures={0: 1.7})
    assert not old["guarded"]  # a model file's own temperature, from before the rule
    # evidence, but the fit runs to a bound of its search (separable rows): T = 1, the fold listed
    sep_y, sep_p = np.r_[np.zeros(20, int), np.ones(20, int)], np.r_[np.full(20, 0.3), np.full(20, 0.7)]
    sep_p = np.column_stack([1 - sep_p, sep_p])
    with pytest.warns(UserWarning, match="search bound"):
        assert fit_temperature(sep_y, sep_p) == 1.0
    res, _ = temperature_scaled(sep_y, sep_p, np.zeros(40, int), {0: (sep_y, sep_p)}, n_boot=10)
    assert res["at_search_bound"] == ["0"] and res["evidence"]["0"] >= EVIDENCE and res["temperatures"]["0"] == 1.0


def test_temperature_at_the_search_bound_is_not_used() -> None:
    """Separable validation rows drive T to the bound: no temperature is identified, T = 1 with a warning."""
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    with pytest.warns(UserWarning, match="search bound"):
        assert fit_temperature(y, probs) == 1.0


_names = st.sampled_from(["a.png", "b.jpg", "c.png", "a.jpg"])
_folders = st.lists(st.sampled_from(["sub", "x", "benign", "a.png"]), max_size=2).flatmap(
    lambda f: st.sampled_from([f, ["..", *f]])  # a manifest may name files beside its folder: `../x/a.png`
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_folders, _names), min_size=1, max_size=12, unique_by=lambda t: "/".join([*t[0], t[1]])),
    st.sampled_from(["", "../data/", "../../elsewhere/set/", "data/"]),
    st.data(),
)
def test_a_folds_validation_rows_are_found_by_exact_path_whatever_the_names(files, prefix, data) -> None:
    """RUN/manifest.csv paths are the dataset's keys behind one prefix (`Manifest.save`); each key's row is the one
    whose path it is, even where a root file shares its name with a nested one (`a.png`, `sub/a.png`: a lookup by
    path tails had found two rows and given no operating point)."""
    import posixpath

    from medcad.study.external import _rows_of

    keys = ["/".join([*folders, name]) for folders, name in files]
    written = [posixpath.normpath(prefix + k) for k in keys]
    assume(len(set(written)) == len(written))  # distinct files are written apart
    chosen = data.draw(st.lists(st.sampled_from(range(len(keys))), min_size=1, unique=True))
    stale = data.draw(st.lists(st.integers(0, len(keys) - 1), min_size=len(chosen), max_size=len(chosen)))
    found = _rows_of([keys[i] for i in chosen], stale, written, keys)  # keys: the run's samples (samples.json)
    if all(".." in keys[i].split("/") for i in chosen):  # `../a.png` alone: written collapsed, no prefix to find
        assert found in (chosen, None)
    else:
        assert found == chosen
    assert _rows_of([*[keys[i] for i in chosen], "gone.png"], stale, written) is None


def test_a_runs_operating_points_are_on_the_scale_its_models_predict() -> None:
    """Thresholds chosen on each fold's temperature-scaled validation probabilities, and the test probabilities
    returned scaled: a threshold read in the report is the one to apply to predict's output (the run had chosen
    them on the raw scale: Youden 0.834 against 0.825 for the same rule on predict's scale)."""
    from medcad.engine.results import validated_metrics

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(240, 2)) * 2
    y = np.array([rng.choice(2, p=p) for p in softmax(logits, axis=1)])
    probs = softmax(logits * 3, axis=1)  # over-confident: each fold fits a temperature well above 1
    rows = np.arange(120, 240)
    results = [
        {"fold": f, "val_rows": list(range(60 * f, 60 * f + 60)), "val_probs": probs[60 * f : 60 * f + 60].tolist()}
        for f in (0, 1)
    ]
    fold_of = np.repeat([0, 1], 60)
    m, scaled = validated_metrics(y, results, rows, probs[rows], fold_of, ["benign", "malignant"], rows)
    temps = m["calibration"]["temperatures"]
    assert min(temps.values()) > 1.5
    for f in (0, 1):
        sel = fold_of == f
        np.testing.assert_allclose(scaled[sel], apply_temperature(probs[rows][sel], temps[str(f)]))
        val = apply_temperature(probs[60 * f : 60 * f + 60], temps[str(f)])
        want = choose_threshold(y[60 * f : 60 * f + 60] == 1, val[:, 1], "youden")
        assert m["validated_operating_points"]["youden"]["thresholds"][str(f)] == pytest.approx(want)
