from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from conftest import float32_softmax
from medcad.metrics.calibration import expected_calibration_error
from medcad.metrics.classification import classification_metrics, subset_metrics, subtype_vs_reference
from medcad.metrics.roc import class_score
from medcad.metrics.stats import bootstrap_weights, expanded_alpha

LABELS = ["normal", "polyp", "ulcer", "blur"]


def _data(n: int = 400, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def width(m: dict) -> float:
    lo, hi = m["accuracy"]["ci95"]
    return hi - lo


def _assert_ci(entry: dict) -> None:
    lo, hi = entry["ci95"]
    assert lo <= entry["value"] <= hi


def test_multiclass_matches_sklearn():
    y, p = _data()
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, LABELS, n_boot=200)
    assert m["n"] == 400 and m["labels"] == LABELS
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"]["value"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["ece"]["value"] == pytest.approx(expected_calibration_error(y, p))
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc", "ece"):
        _assert_ci(m[name])
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred)
    cm = confusion_matrix(y, pred)
    assert m["confusion_matrix"] == {"labels": LABELS, "matrix": cm.tolist()}
    for c, label in enumerate(LABELS):
        pc = m["per_class"][label]
        assert pc["precision"] == pytest.approx(prec[c]) and pc["recall"] == pytest.approx(rec[c])
        assert pc["f1"] == pytest.approx(f1[c]) and pc["support"] == sup[c]
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        assert pc["specificity"] == pytest.approx(tn / (cm.sum() - cm[c].sum()))
        assert pc["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    for avg in ("macro", "weighted"):
        ref = precision_recall_fscore_support(y, pred, average=avg)
        assert [m[avg][k] for k in ("precision", "recall", "f1")] == pytest.approx(list(ref[:3]))
    assert m["macro"]["specificity"] == pytest.approx(np.mean([m["per_class"][c]["specificity"] for c in LABELS]))
    assert set(m["roc"]) == set(LABELS) and "binary" not in m
    assert sum(m["reliability"]["bin_count"]) == 400
    json.loads(json.dumps(m, allow_nan=True))


def test_roc_is_downsampled():
    y, p = _data(n=3000, k=3, seed=1)
    m = classification_metrics(y, p, LABELS[:3], n_boot=0)
    for curve in m["roc"].values():
        assert 2 < len(curve["fpr"]) <= 200 and len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"])
        assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
    assert np.isnan(m["accuracy"]["ci95"]).all()


def test_ci_narrows_with_more_data_and_cluster_bootstrap_is_wider():
    y_s, p_s = _data(n=100, seed=2)
    y_l, p_l = _data(n=2000, seed=2)
    small = classification_metrics(y_s, p_s, LABELS, n_boot=300)
    large = classification_metrics(y_l, p_l, LABELS, n_boot=300)
    assert width(large) < 0.5 * width(small)
    # every patient contributes 10 identical frames
    y_rep, p_rep = np.repeat(y_s, 10), np.repeat(p_s, 10, axis=0)
    patients = np.repeat(np.arange(100), 10)
    rows = classification_metrics(y_rep, p_rep, LABELS, n_boot=300)
    clustered = classification_metrics(y_rep, p_rep, LABELS, groups=patients, n_boot=300)
    assert clustered["bootstrap"]["by_group"] and width(clustered) > 2 * width(rows)
    assert width(clustered) == pytest.approx(width(small), rel=0.35)


def test_binary_hand_example():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75])
    # 1,000 resamples: the sensitivity's interval is expanded for the 5 positive rows it is over (at 200 its tails
    # are beyond their resolution: no interval); the specificity, 3 of 3 at 0.5, is exact on those 3 rows
    m = classification_metrics(y, s, ["benign", "malignant"], n_boot=1000)
    b = m["binary"]
    assert b["positive"] == "malignant"
    assert b["at_0.5"]["specificity"]["ci95"] == pytest.approx([0.025 ** (1 / 3), 1.0])
    assert b["auc"]["value"] == pytest.approx(14 / 15) == pytest.approx(roc_auc_score(y, s))
    lo, hi = b["auc"]["ci95"]
    assert lo <= 14 / 15 <= hi <= 1
    youden = b["youden"]
    assert youden["threshold"] == pytest.approx(0.45)
    assert youden["sensitivity"]["value"] == pytest.approx(0.8) and youden["specificity"]["value"] == 1.0
    at = b["at_0.5"]
    assert at["threshold"] == 0.5 and at["sensitivity"]["value"] == pytest.approx(0.6)
    assert at["specificity"]["value"] == 1.0 and at["ppv"] == 1.0 and at["npv"] == pytest.approx(0.6)
    _assert_ci(at["sensitivity"])
    assert b["sensitivity_at_90_specificity"] == pytest.approx(0.8)
    assert b["specificity_at_90_sensitivity"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=True)


def test_binary_positive_label_override():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75])
    p = np.column_stack([1 - s, s])
    m = classification_metrics(1 - y, p[:, ::-1], ["malignant", "benign"], positive="malignant", n_boot=50)
    assert m["binary"]["positive"] == "malignant"
    assert m["binary"]["auc"]["value"] == pytest.approx(14 / 15)
    assert m["binary"]["youden"]["sensitivity"]["value"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="positive"):
        classification_metrics(y, p, ["a", "b"], positive="c")


@settings(max_examples=25, deadline=None)
@given(st.integers(6, 25), st.integers(1, 3), st.integers(1, 4), st.integers(0, 10_000))
def test_macro_figures_average_every_class_in_each_resample(n_groups: int, rare: int, per: int, seed: int) -> None:
    """The macro figures' intervals come from the resamples that hold every class the point estimate averages: a
    resample without the rare class is left out (and counted), not scored as the mean of the classes it has. The rare
    class is always missed (AUC 0, recall 0) and the others are perfect, so every resample with all three classes
    gives macro AUC and balanced accuracy 2/3, as the point estimate does (the mean of the other two gave 1)."""
    groups = np.repeat(np.arange(n_groups), per)
    y = np.r_[0, 1, np.random.default_rng(seed).integers(0, 2, n_groups - 2)][groups]
    y[groups >= n_groups - rare] = 2  # the rare class: the last `rare` patients
    p = np.full((len(y), 3), 0.1)
    p[np.arange(len(y)), y] = 0.8
    p[y == 2] = [0.5, 0.49, 0.01]
    m = classification_metrics(y, p, ["a", "b", "c"], groups=groups, n_boot=200)
    truth, decided = y[:, None] == np.arange(3), p.argmax(axis=1)[:, None] == np.arange(3)
    draws = np.concatenate(list(bootstrap_weights(len(y), 200, 0, groups)))  # the resamples' row weights (200, N)
    every = int((draws @ truth > 0).all(axis=1).sum())  # resamples holding all three classes
    for name in ("macro_auc", "balanced_accuracy"):
        assert m[name]["value"] == pytest.approx(2 / 3)
        # an interval where at least half the resamples hold all three and the groups are enough for one (7 at 200
        # resamples: `expanded_alpha`)
        resolvable = expanded_alpha(0.05, n_groups) / 2 * every >= 0.5
        expected = [2 / 3] * 2 if every >= 100 and resolvable else [np.nan] * 2
        np.testing.assert_allclose(m[name]["ci95"], expected)
    f1_defined = int((draws @ (truth | decided) > 0).all(axis=1).sum())  # each class drawn as truth or decision
    assert m["bootstrap"]["resamples_used"] == {"balanced_accuracy": every, "macro_f1": f1_defined, "macro_auc": every}


def test_absent_class_does_not_crash():
    y, p = _data(n=200, k=3, seed=3)
    y = np.where(y == 2, 0, y)  # class 2 never true, still predicted sometimes
    m = classification_metrics(y, p, LABELS[:3], n_boot=100)
    pred = p.argmax(axis=1)
    absent = m["per_class"]["ulcer"]
    assert absent["support"] == 0 and np.isnan(absent["recall"]) and np.isnan(absent["auc"])
    assert absent["f1"] == 0.0 and 0 <= absent["specificity"] < 1
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["macro_auc"]["value"] == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1)]))
    assert m["roc"]["ulcer"] == {"fpr": [], "tpr": [], "thresholds": []}
    ref = precision_recall_fscore_support(y, pred, average="macro", zero_division=np.nan)
    assert m["macro"]["recall"] == pytest.approx(ref[1])
    json.loads(json.dumps(m, allow_nan=True))


@settings(max_examples=60, deadline=None)
@given(
    y=st.lists(st.integers(0, 3), min_size=3, max_size=40),
    pred=st.lists(st.integers(0, 3), min_size=40, max_size=40),
)
def test_macro_figures_average_the_classes_held_or_predicted_as_scikit_learn(y, pred) -> None:
    """The macro block (precision, recall, F1, and specificity too) averages the classes the rows hold or the model
    predicts, as scikit-learn's macro averages do: a class an external set lacks and the model never predicts had
    entered the macro specificity at 1."""
    y = np.array(y)
    pred = np.array(pred[: len(y)])
    p = np.full((len(y), 4), 0.1)
    p[np.arange(len(y)), pred] = 0.7
    m = classification_metrics(y, p, LABELS, n_boot=0)
    ref = precision_recall_fscore_support(y, pred, average="macro", zero_division=np.nan)
    for value, name in zip(ref[:3], ("precision", "recall", "f1"), strict=True):
        assert m["macro"][name] == pytest.approx(value, nan_ok=True), name
    seen = np.union1d(y, pred)
    spec = [((y != c) & (pred != c)).sum() / (y != c).sum() for c in seen if (y != c).any()]
    assert m["macro"]["specificity"] == pytest.approx(np.mean(spec) if spec else np.nan, nan_ok=True)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [2, 3])
def test_tiny_inputs(n, k):
    y, p = _data(n=n, k=k, seed=n)
    m = classification_metrics(y, p, LABELS[:k], n_boot=50)
    assert m["n"] == n
    json.dumps(m, allow_nan=True)


def test_input_validation():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], np.full((2, 3), 1 / 3), ["a", "b"])
    with pytest.raises(ValueError, match="indices"):
        classification_metrics([0, 5], np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match="no rows"):
        classification_metrics([], np.zeros((0, 2)), ["a", "b"])


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(2, 4), st.sampled_from([np.nan, np.inf, -0.2, 1.5]), st.data())
def test_a_row_that_holds_no_probability_is_named(n: int, k: int, bad: float, data) -> None:
    """A NaN (a diverged model, an empty predictions cell), an infinity or a score outside [0, 1] stops the metrics
    with the rows named, not sklearn's "Input contains NaN" from deep inside (or an AUC quietly ranked on it)."""
    y, p = np.arange(n) % k, np.full((n, k), 1 / k)
    rows = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    p[rows, data.draw(st.integers(0, k - 1))] = bad
    with pytest.raises(ValueError, match=rf"{len(rows)} of {n} rows .*\(row {rows[0]}: "):
        classification_metrics(y, p, LABELS[:k], n_boot=0)


def test_subset_metrics():
    y, p = _data(n=120, k=3, seed=4)
    domain = np.array(["cysto"] * 60 + ["uretero"] * 57 + ["single", None, ""], dtype=object)
    patients = np.arange(120) // 3
    out = subset_metrics(y, p, LABELS[:3], domain, groups=patients, n_boot=50)
    assert set(out) == {"cysto", "uretero", "single"}
    assert out["single"] == {"n": 1}
    direct = classification_metrics(y[:60], p[:60], LABELS[:3], groups=patients[:60], n_boot=50)
    assert repr(out["cysto"]["accuracy"]) == repr(direct["accuracy"])
    assert out["uretero"]["n"] == 57


def test_subtype_vs_reference():
    labels = ["abnormal", "normal"]
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    p_normal = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.6, 0.1, 0.4, 0.95])
    p = np.column_stack([1 - p_normal, p_normal])
    subtypes = np.array([None, "", "nan", None, "stone", "stone", "cyst", "cyst", "hydro"], dtype=object)
    out = subtype_vs_reference(y, p, labels, subtypes, "normal", n_boot=1000)  # 6 rows: an interval needs ~1000
    assert set(out) == {"stone", "cyst", "hydro"}
    stone = out["stone"]
    assert (stone["n"], stone["n_subtype"], stone["n_reference"]) == (6, 2, 4)
    assert stone["sensitivity"]["value"] == 0.5  # 0.2 -> abnormal, 0.6 -> normal
    assert stone["specificity"]["value"] == 0.75  # 0.3 predicted abnormal
    assert stone["accuracy"]["value"] == pytest.approx(4 / 6)
    rows = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    assert stone["auc"]["value"] == pytest.approx(roc_auc_score(y[rows] == 0, 1 - p_normal[rows]))
    assert out["cyst"]["sensitivity"]["value"] == 1.0 and out["hydro"]["sensitivity"]["value"] == 0.0
    assert out["hydro"]["auc"]["value"] == 0.0
    _assert_ci(stone["accuracy"])
    json.dumps(out, allow_nan=True)
    with pytest.raises(ValueError, match="reference_label"):
        subtype_vs_reference(y, p, labels, subtypes, "healthy")


def rank_auc(yb: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC from midranks (ties count 1/2); infinite scores rank too."""
    r, m = rankdata(score), int(yb.sum())
    return float((r[yb].sum() - m * (m + 1) / 2) / (m * (len(yb) - m)))


# logit of class 1 minus class 0: moderate, or saturating either column in float32
LEADS = st.one_of(st.floats(-6, 6), st.floats(17, 120), st.floats(-120, -17))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), LEADS), min_size=2, max_size=60), st.booleans())
def test_two_class_aucs_are_one_number_when_float32_saturates(rows: list, by_group: bool) -> None:
    """Class 0's AUC, class 1's, the macro AUC and the binary AUC are one number (and so are their bootstrap CIs),
    equal to the AUC of the float64 log-odds log p1 - log p0, also where p1 or p0 is exactly 1.0 on many rows
    and the other column holds distinct tiny values (which p1 alone would tie)."""
    y = np.array([0, 1] + [int(b) for b, _ in rows[2:]])  # both classes present
    lead = np.array([d for _, d in rows])
    p = float32_softmax(np.column_stack([np.zeros_like(lead), lead]))
    groups = np.arange(len(y)) // 2 if by_group else None
    m = classification_metrics(y, p, ["benign", "malignant"], groups=groups, n_boot=20)
    pc, binary = m["per_class"], m["binary"]["auc"]
    values = [pc["benign"]["auc"], pc["malignant"]["auc"], m["macro_auc"]["value"], binary["value"]]
    assert values == [values[0]] * 4
    cis = [pc["benign"]["auc_ci95"], pc["malignant"]["auc_ci95"], m["macro_auc"]["ci95"], binary["ci95"]]
    np.testing.assert_array_equal(np.array(cis), np.array([cis[0]] * 4))
    with np.errstate(divide="ignore"):
        log_odds = np.log(p[:, 1].astype(np.float64)) - np.log(p[:, 0].astype(np.float64))
    yb = y == 1
    expected = roc_auc_score(yb, log_odds) if np.isfinite(log_odds).all() else rank_auc(yb, log_odds)
    assert values[0] == pytest.approx(expected, abs=1e-12)


def test_more_classes_rank_saturated_rows_by_the_rest() -> None:
    """With three classes a class's one-vs-rest AUC is sklearn's on p_c where p_c does not saturate, and rows tied at
    p_c = 1.0 are ordered by the rest's mass: the score is the logit of p_c, and -log(rest) where p_c = 1.0."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    p = float32_softmax(rng.normal(size=(90, 3)) * 25 + 10 * np.eye(3)[y])
    assert (p == 1.0).sum() > 20  # saturated rows
    m = classification_metrics(y, p, ["a", "b", "c"], n_boot=0)
    for c, lab in enumerate("abc"):
        p64 = p.astype(np.float64)
        rest = np.delete(p64, c, axis=1).sum(axis=1)
        with np.errstate(divide="ignore"):
            log_odds = np.where(p64[:, c] == 1, -np.log(rest), np.log(p64[:, c]) - np.log1p(-p64[:, c]))
        assert m["per_class"][lab]["auc"] == pytest.approx(rank_auc(y == c, log_odds), abs=1e-12)
        finite = np.isfinite(log_odds)
        np.testing.assert_allclose(class_score(p, c)[finite], log_odds[finite], rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 5), st.integers(4, 40), st.sampled_from([10, 20, 100]), st.integers(0, 10_000))
def test_more_classes_rank_rows_as_p_c_does(k: int, n: int, d: int, seed: int) -> None:
    """For three or more classes a class's score ranks the rows as p_c does wherever p_c < 1, rows tied on p_c
    included: the sum of the other columns differs by its rounding (0.1 + 0.5 = 0.6, 0.2 + 0.4 = 0.6000000000000001)
    and had broken such ties (per-class AUCs 0.9375, 0.625 where sklearn's are 0.875, 0.75). So each class's AUC is
    scikit-learn's one-vs-rest AUC on p_c."""
    rng = np.random.default_rng(seed)
    p = rng.multinomial(d, np.full(k, 1 / k), size=n) / d  # on a grid: exact ties on p_c, rows sum to 1 up to rounding
    y = rng.integers(0, k, n)
    labels = [f"class {c}" for c in range(k)]
    m = classification_metrics(y, p, labels, n_boot=0)
    for c, lab in enumerate(labels):
        below = p[:, c] < 1
        pc, score = p[below, c], class_score(p, c)[below]
        np.testing.assert_array_equal(np.sign(score[:, None] - score), np.sign(pc[:, None] - pc))
        if 0 < (y == c).sum() < n:
            assert m["per_class"][lab]["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)


def test_roc_thresholds_are_the_class_probabilities() -> None:
    """The ROC curve's thresholds in metrics.json are cut-offs on the class's probability, as the tables give it
    (the curve is computed on the log-odds: their thresholds had been log-odds under the same key)."""
    from medcad.metrics.classification import classification_metrics

    p1 = np.array([0.1, 0.3, 0.6, 0.8, 0.9, 0.2])
    y = np.array([0, 0, 1, 1, 1, 0])
    roc = classification_metrics(y, np.column_stack([1 - p1, p1]), ["benign", "malignant"], n_boot=0)["roc"]
    thresholds = np.array(roc["malignant"]["thresholds"])
    assert thresholds[0] == 1.0 and np.all((thresholds >= 0) & (thresholds <= 1))
    assert all(np.isclose(p1, t, rtol=1e-9).any() for t in thresholds[1:]), thresholds  # p values themselves


def test_macro_figures_say_which_classes_they_average() -> None:
    """A subset without a class averages its macro AUC over the others, and says so (a domain's macro AUC over two of
    three classes had stood in the study's matrix beside cells over all three); the study's cell carries the list."""
    from medcad.study.runner import _matrix_cell

    y, p = _data(n=120, k=3, seed=4)
    keep = y != 2
    whole = classification_metrics(y, p, LABELS[:3], n_boot=20)
    part = classification_metrics(y[keep], p[keep], LABELS[:3], n_boot=20)
    assert whole["averaged_over"]["macro_auc"] == LABELS[:3]
    assert part["averaged_over"]["macro_auc"] == LABELS[:2] and part["averaged_over"]["balanced_accuracy"] == LABELS[:2]
    aucs = [part["per_class"][lab]["auc"] for lab in LABELS[:2]]
    assert part["macro_auc"]["value"] == pytest.approx(np.mean(aucs))
    row = {"by_domain": {"d": {"macro_auc": part["macro_auc"], "auc_classes": LABELS[:2]}}}
    assert _matrix_cell(row, "d", LABELS[:3])["averaged_over"] == LABELS[:2]
    assert _matrix_cell(row, "d", LABELS[:2]) == part["macro_auc"]


def test_each_class_precision_recall_specificity_and_f1_have_intervals() -> None:
    """What a journal's per-class table asks for had been points alone: each class's precision, recall,
    specificity and F1 now carry the bootstrap's 95 % interval (recall over the class's images' groups, precision
    over those called the class), exact where every resample gives 0 or 1; the interval holds its point."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 40)
    groups = np.repeat(np.arange(60), 2)
    p = rng.dirichlet([1, 1, 1], len(y))
    p[np.arange(len(y)), y] += 1.5 * (rng.random(len(y)) < 0.7)  # mostly right
    p[y == 2] = [0.05, 0.05, 0.9]  # class 2 always right: recall 1, exact on its 20 groups
    p /= p.sum(1, keepdims=True)
    m = classification_metrics(y, p, ["a", "b", "c"], groups=groups, n_boot=400)
    for lab, r in m["per_class"].items():
        for k in ("precision", "recall", "specificity", "f1"):
            lo, hi = r[f"{k}_ci95"]
            assert lo <= r[k] + 1e-12 and r[k] <= hi + 1e-12, (lab, k)
    c = m["per_class"]["c"]
    assert c["recall"] == 1.0 and c["recall_ci95"][0] == pytest.approx(0.025 ** (1 / 20))
    assert "20 independent units" in c["recall_ci95_method"]
