from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from medcad.metrics.calibration import expected_calibration_error, reliability_curve
from medcad.metrics.classification import classification_metrics
from medcad.metrics.roc import delong_ci, delong_roc_variance, delong_test, weighted_auc
from medcad.metrics.stats import bootstrap_ci, bootstrap_weights, ci_entry, mean_sd, percentile_ci


def _binary_data(n: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y * signal + rng.normal(size=n)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=100), rng.normal(size=2000)
    lo_s, hi_s = bootstrap_ci(np.mean, small, n_boot=500)
    lo_l, hi_l = bootstrap_ci(np.mean, large, n_boot=500)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)


def test_bootstrap_ci_is_reproducible_and_multi_array():
    y, s = _binary_data(300)
    a = bootstrap_ci(roc_auc_score, y, s, n_boot=200, seed=3)
    b = bootstrap_ci(roc_auc_score, y, s, n_boot=200, seed=3)
    assert a == b
    assert a[0] <= roc_auc_score(y, s) <= a[1]


def test_cluster_bootstrap_is_wider_when_rows_within_groups_are_identical():
    rng = np.random.default_rng(2)
    group_values = rng.normal(size=20)
    groups = np.repeat(np.arange(20), 10)
    values = group_values[groups]
    row = bootstrap_ci(np.mean, values, n_boot=500)
    cluster = bootstrap_ci(np.mean, values, n_boot=500, groups=groups.astype(str))
    assert cluster[0] <= values.mean() <= cluster[1]
    assert cluster[1] - cluster[0] > 2 * (row[1] - row[0])


def test_bootstrap_ci_skips_undefined_resamples():
    y = np.zeros(50, dtype=int)
    y[0] = 1  # about a third of resamples miss the only positive: roc_auc_score raises there
    lo, hi = bootstrap_ci(roc_auc_score, y, np.linspace(0, 1, 50), n_boot=200)
    assert np.isfinite(lo) and np.isfinite(hi)
    assert np.isnan(bootstrap_ci(roc_auc_score, np.zeros(20), np.arange(20.0), n_boot=50)).all()
    assert np.isnan(bootstrap_ci(lambda x: np.nan, np.arange(5.0), n_boot=20)).all()


def test_bootstrap_ci_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(roc_auc_score, [0, 1], [0.1, 0.2, 0.3])


def test_percentile_ci_needs_half_valid():
    assert np.isnan(percentile_ci([1.0, np.nan, np.nan])).all()
    assert percentile_ci([1.0, 1.0, np.nan, np.nan]) == (1.0, 1.0)  # a figure no resample moves (two models alike)
    assert ci_entry([1.0] * 50, units=30) == {"ci95": [1.0, 1.0]}  # a share at 1: exact only where said a share
    assert ci_entry([1.0] * 50, units=30, proportion=True)["ci95"][0] == pytest.approx(0.025 ** (1 / 30))


@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.integers(2, 60),
    per_group=st.integers(1, 4),
    all_right=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_a_share_no_resample_moves_gets_the_exact_interval_of_its_groups(n_groups, per_group, all_right, seed):
    """Specificity of 40 of 40 negatives had read 1.000 (1.000-1.000): every resample gave 1. It gets the exact
    (Clopper-Pearson) interval of all (or none) right in as many trials as the negatives' groups, as SciPy gives it;
    sensitivity, over the positives' groups, likewise; a share that varies keeps its bootstrap interval."""
    from scipy.stats import binomtest

    from medcad.metrics.operating import score_decisions

    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = np.repeat(np.arange(n_groups) % 2 == 0, per_group)  # half the groups positive
    called = y.copy() if all_right else np.zeros_like(y)
    called[y] = rng.random(int(y.sum())) < 0.6 if all_right else called[y]  # sensitivity varies (or is 0)
    out = score_decisions(y, {"r": called}, ["r"], groups=groups, n_boot=200, seed=seed)["r"]
    spec, sens = out["specificity"], out["sensitivity"]
    n_neg = len(set(groups[~y]))
    want = binomtest(n_neg, n_neg).proportion_ci(0.95, method="exact")
    assert spec["value"] == 1.0 and spec["ci95"] == pytest.approx([want.low, 1.0])
    assert str(n_neg) in spec["ci95_method"] and "Clopper-Pearson" in spec["ci95_method"]
    if not all_right:  # none called: sensitivity 0, exact on the positives' groups
        n_pos = len(set(groups[y]))
        zero = binomtest(0, n_pos).proportion_ci(0.95, method="exact")
        assert sens["value"] == 0.0 and sens["ci95"] == pytest.approx([0.0, zero.high])
    elif 0 < sens["value"] < 1:
        assert "ci95_method" not in sens


def test_bootstrap_weights_rows_and_groups():
    chunks = list(bootstrap_weights(10, n_boot=7, seed=0))
    w = np.concatenate(chunks)
    assert w.shape == (7, 10) and np.all(w.sum(axis=1) == 10)
    groups = np.array(list("aabbbcdddd"))
    wg = np.concatenate(list(bootstrap_weights(10, n_boot=50, seed=0, groups=groups)))
    for g in "abcd":
        cols = wg[:, groups == g]
        assert np.all(cols == cols[:, :1])  # a group is drawn whole
    assert list(bootstrap_weights(0, n_boot=5)) == []


MISSING = st.sampled_from([None, float("nan"), pd.NA])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["p1", "p2", "p3"]), MISSING), min_size=2, max_size=30), st.booleans())
def test_a_row_without_a_group_id_is_its_own_cluster(ids: list, as_series: bool) -> None:
    """A missing group id (None, NaN, pd.NA) makes its row a cluster of its own: the cluster bootstrap had read every
    missing id as the one group 'nan', drawing all such rows together (60 % of rows without a patient id: 81 groups
    instead of 200, an AUC interval of [0.799, 0.914] where rows as units give [0.836, 0.921])."""
    groups = pd.Series(ids, dtype=object) if as_series else ids
    key = [i if isinstance(i, str) else f"missing, row {r}" for r, i in enumerate(ids)]
    drawn = list(bootstrap_weights(len(ids), n_boot=200, seed=0, groups=groups))
    if len(set(key)) < 2:  # one group: every resample would be the data itself, so none is drawn
        assert drawn == []
        return
    w = np.concatenate(drawn)  # (200, N)
    for a in range(len(ids)):
        for b in range(a):
            same = np.array_equal(w[:, a], w[:, b])
            assert same == (key[a] == key[b]), (ids[a], ids[b])  # a group is drawn whole, two groups apart


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=30), st.data())
def test_a_whole_number_id_is_one_group_however_it_was_read(ids: list[int], data) -> None:
    """Patient 7 is one group whether an id reads as 7, 7.0 (pandas reads an integer column with an empty cell as
    float), "7" or np.int64(7): pooled tables read in different ways had split one patient into two clusters."""
    from medcad.metrics.stats import group_index

    forms = [lambda v: v, float, str, np.int64, np.float32]
    mixed = np.array([forms[data.draw(st.integers(0, len(forms) - 1))](v) for v in ids], dtype=object)
    inv, g = group_index(mixed, len(ids))
    assert g == len(set(ids))
    assert all((inv[a] == inv[b]) == (ids[a] == ids[b]) for a in range(len(ids)) for b in range(a))
    assert group_index(np.array([1.5, 1, "1.5"], dtype=object), 3)[1] == 2  # a fraction stays itself


def test_rows_without_group_ids_are_resampled_as_rows() -> None:
    """Groups all missing are the rows: the same resamples, intervals and group count as no groups at all."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1)
    none = classification_metrics(y, p, ["a", "b"], n_boot=200)
    missing = classification_metrics(y, p, ["a", "b"], groups=[np.nan] * 60, n_boot=200)
    assert missing["bootstrap"]["n_groups"] == 60
    assert missing["binary"]["auc"]["ci95"] == none["binary"]["auc"]["ci95"]
    assert missing["accuracy"] == none["accuracy"]


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400) + 0.3 * y, 1)  # many ties
    assert weighted_auc(y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, size=(3, 400)).astype(float)
    expected = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(weighted_auc(y, s, w), expected, atol=1e-12)
    assert np.isnan(weighted_auc(np.ones(5), np.arange(5.0))[0])


def _naive_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """DeLong et al. 1988 structural components, O(m n)."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(z)


def test_delong_matches_sklearn_auc_and_naive_variance():
    y, s = _binary_data(300, seed=5)
    s = np.round(s, 1)
    auc, var = delong_roc_variance(y, s)
    naive_auc, naive_var = _naive_delong(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc == pytest.approx(naive_auc, abs=1e-12)
    assert var == pytest.approx(naive_var, rel=1e-9)
    lo, hi = delong_ci(y, s)
    assert 0 <= lo < auc < hi <= 1


def test_delong_test_identical_and_perfect_vs_random():
    y, s = _binary_data(200, seed=6)
    same = delong_test(y, s, s.copy())
    assert same["difference"] == 0 and same["p_value"] > 0.9
    rng = np.random.default_rng(7)
    perfect, noise = y + 0.01 * rng.random(200), rng.random(200)
    res = delong_test(y, perfect, noise)
    assert res["auc_a"] == 1.0 and res["p_value"] < 1e-6 and res["z"] > 0
    assert res["auc_b"] == pytest.approx(roc_auc_score(y, noise))


def test_delong_undefined_cases():
    auc, var = delong_roc_variance(np.zeros(5, dtype=int), np.arange(5.0))
    assert np.isnan(auc) and np.isnan(var)
    auc, var = delong_roc_variance(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]))
    assert auc == 1.0 and np.isnan(var)
    assert np.isnan(delong_ci(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]))).all()
    with pytest.raises(ValueError, match="binary"):
        delong_roc_variance(np.array([0, 2]), np.array([0.1, 0.2]))
    # no variance at the boundary: no interval and no test (they had read [1, 1] and z = inf, p = 0 on 6 images)
    y, a, b = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.full(6, 0.5)
    assert np.isnan(delong_ci(y, a)).all()
    t = delong_test(y, a, b)
    assert t["difference"] == 0.5 and np.isnan(t["z"]) and np.isnan(t["p_value"])


def test_ece_zero_for_perfectly_calibrated_construction():
    # confidence 0.8 with 8 of 10 right, confidence 0.6 with 6 of 10 right
    probs = np.array([[0.2, 0.8]] * 10 + [[0.6, 0.4]] * 10)
    y = np.array([1] * 8 + [0] * 2 + [0] * 6 + [1] * 4)
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(y, probs[:, 1], n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_and_reliability_hand_example():
    probs = np.array([[0.85, 0.1, 0.05]] * 3 + [[0.2, 0.65, 0.15]])
    y = np.array([0, 0, 0, 2])  # confidence 0.85 all right (gap 0.15); 0.65 wrong (gap 0.65)
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.75 * 0.15 + 0.25 * 0.65)
    curve = reliability_curve(y, probs, n_bins=10)
    assert curve["bin_count"] == [0, 0, 0, 0, 0, 0, 1, 0, 3, 0]
    assert curve["bin_confidence"][8] == pytest.approx(0.85) and curve["bin_accuracy"][8] == 1.0
    assert curve["bin_accuracy"][6] == 0.0 and np.isnan(curve["bin_accuracy"][0])
    assert len(curve["bin_edges"]) == 11


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0, np.nan, None]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    one = mean_sd([0.5])
    assert one["mean"] == 0.5 and np.isnan(one["sd"]) and one["n"] == 1
    assert mean_sd([])["n"] == 0


def test_auc_inputs_that_would_mislead_are_refused() -> None:
    """A NaN score had ranked above every other (AUC 0.787 read 0.607, unsaid) and labels 1 / 2 had all been
    positive: the AUC, the paired comparison and the multi-label metrics refuse them, naming the rows."""
    from medcad.metrics.compare import paired_auc_bootstrap
    from medcad.metrics.multilabel import multilabel_metrics

    y, s = _binary_data(60, seed=3)
    bad = s.copy()
    bad[[4, 9]] = np.nan
    with pytest.raises(ValueError, match=r"2 of 60 scores are NaN \(rows \[4, 9\]\)"):
        weighted_auc(y, bad)
    with pytest.raises(ValueError, match="NaN"):
        paired_auc_bootstrap(y, s, bad, n_boot=10)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        weighted_auc(y + 1, s)
    probs = np.column_stack([np.clip(s / s.max(), 0, 1), np.full(60, 0.3)])
    probs[5, 0] = np.nan
    with pytest.raises(ValueError, match="not a number in"):
        multilabel_metrics(np.column_stack([y, 1 - y]), probs, ["a", "b"], n_boot=0)
    assert weighted_auc(y.astype(bool), s)[0] == pytest.approx(roc_auc_score(y, s))


def test_intervals_widen_for_few_groups_as_hesterberg_expands_them() -> None:
    """The percentile interval is Hesterberg's expanded one (alpha'/2 = Phi(-sqrt(n/(n-1)) t_{n-1}(0.975)), n the
    groups drawn): wider for few groups, the plain one for many; none for one group (it had been zero-width, and a
    paired test's p 1/B); a p read from the interval agrees with it after the same expansion."""
    from scipy import stats as sps

    from medcad.metrics.classification import classification_metrics
    from medcad.metrics.compare import paired_auc_bootstrap
    from medcad.metrics.stats import expanded_alpha, expanded_p

    for n in (2, 5, 20, 100):
        want = 2 * sps.norm.cdf(-np.sqrt(n / (n - 1)) * sps.t.ppf(0.975, n - 1))
        assert expanded_alpha(0.05, n) == pytest.approx(want, rel=1e-12)
        assert expanded_p(expanded_alpha(0.05, n), n) == pytest.approx(0.05, rel=1e-9)
    assert expanded_alpha(0.05, 5) < 0.002 and 0.045 < expanded_alpha(0.05, 100) < 0.05
    assert expanded_alpha(0.05, None) == 0.05 and np.isnan(expanded_alpha(0.05, 1))
    samples = np.random.default_rng(0).normal(size=2000)
    few, many = percentile_ci(samples, units=5), percentile_ci(samples, units=500)
    assert few[1] - few[0] > 1.5 * (many[1] - many[0]) and many == pytest.approx(percentile_ci(samples), abs=0.02)
    y, s = _binary_data(40, seed=1)
    one = classification_metrics(y, np.column_stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))]), ["a", "b"],
                                 groups=np.zeros(40), n_boot=200)  # fmt: skip
    assert np.isnan(one["accuracy"]["ci95"]).all() and np.isfinite(one["accuracy"]["value"])
    test = paired_auc_bootstrap(y, s, -s, groups=np.zeros(40), n_boot=200)
    assert np.isnan(test["p_value"]) and np.isnan(test["ci95"]).all()
    # a statistic alike in every resample has no interval on one group either (it had been [4.5, 4.5])
    assert np.isnan(bootstrap_ci(np.mean, np.arange(10.0), groups=["p"] * 10, n_boot=100)).all()
