"""Multi-label metrics: the macro figures' bootstrap intervals (the match with scikit-learn is in
tests/engine/test_train_multilabel.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.metrics.multilabel import multilabel_metrics
from medcad.metrics.stats import bootstrap_weights, expanded_alpha


@settings(max_examples=20, deadline=None)
@given(st.integers(6, 30), st.sets(st.integers(0, 29), min_size=1, max_size=3))
def test_macro_auc_averages_every_label_in_each_resample(n: int, rare: set) -> None:
    """The macro AUC's interval comes from the resamples where every label the point estimate averages has both
    outcomes: one without the rare finding's positives is left out (and counted), not scored on the other label alone.
    Label a is ranked perfectly and label b inversely, so every resample holding both outcomes of each gives 0.5."""
    y = np.zeros((n, 2), dtype=int)
    y[::2, 0] = 1
    y[sorted(r % n for r in rare), 1] = 1
    p = np.column_stack([0.1 + 0.8 * y[:, 0], np.where(y[:, 1] == 1, 0.01, 0.5)])
    m = multilabel_metrics(y, p, ["a", "b"], n_boot=200)
    draws = np.concatenate(list(bootstrap_weights(n, 200, 0)))  # the resamples' row weights (200, n)
    every = int(((draws @ y > 0) & (draws @ (1 - y) > 0)).all(axis=1).sum())  # both outcomes of both labels
    assert m["macro_auc"]["value"] == 0.5
    resolvable = expanded_alpha(0.05, n) / 2 * every >= 0.5  # enough images for an interval at 200 resamples
    expected = [0.5, 0.5] if every >= 100 and resolvable else [np.nan, np.nan]
    np.testing.assert_array_equal(m["macro_auc"]["ci95"], expected)
    assert m["bootstrap"]["resamples_used"]["macro_auc"] == every


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 30), st.integers(2, 4), st.integers(0, 2**16), st.sampled_from([0.0, 0.3, 1.0]))
def test_the_figures_over_labels_are_scikit_learns(n: int, k: int, seed: int, always: float) -> None:
    """Macro F1 and micro F1, exact match and Hamming loss equal scikit-learn's on the same decisions, and the macro
    AUC its roc_auc_score averaged over the labels with both outcomes. Macro F1 averages every label present or
    predicted (a label in every image had been left out of it): scikit-learn's with zero_division=nan, which leaves
    out a label neither present nor predicted (its default counts it as 0). `averaged_over` names each mean's
    labels."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.random((n, k)) < 0.4
    y[:, 0] = rng.random(n) < always if always != 0.3 else y[:, 0]  # a label absent, sometimes or always present
    p = np.clip(y * 0.4 + rng.random((n, k)) * 0.7, 0, 1)
    m = multilabel_metrics(y, p, [f"l{j}" for j in range(k)], n_boot=0)
    pred = p >= 0.5
    f1_labels = [j for j in range(k) if y[:, j].any() or pred[:, j].any()]
    assert m["averaged_over"]["macro_f1"] == [f"l{j}" for j in f1_labels]
    want = f1_score(y, pred, average="macro", zero_division=np.nan)  # every label; undefined ones left out
    assert m["macro_f1"]["value"] == pytest.approx(want, nan_ok=True)
    micro = f1_score(y, pred, average="micro", zero_division=np.nan)
    assert m["micro_f1"]["value"] == pytest.approx(micro, nan_ok=True)
    assert m["exact_match"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"]["value"] == pytest.approx(hamming_loss(y, pred))
    both = [j for j in range(k) if 0 < y[:, j].sum() < n]
    assert m["averaged_over"]["macro_auc"] == [f"l{j}" for j in both]
    if both:
        want = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in both])
        assert m["macro_auc"]["value"] == pytest.approx(want)


def test_a_findings_sensitivity_of_all_its_images_gets_the_exact_interval_of_their_groups() -> None:
    """Every image with the finding called, over 12 patients holding it: sensitivity 1 with the exact interval on
    those 12 (it had read 1.000 (1.000-1.000)); its specificity, varying, keeps the bootstrap's."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 2)
    y = np.zeros((60, 2), bool)
    y[:24, 0] = True  # 12 patients with finding a
    y[rng.random(60) < 0.4, 1] = True
    p = np.where(y, 0.9, 0.1).astype(float)
    p[30:40, 0] = 0.8  # some false positives of a: its specificity varies
    m = multilabel_metrics(y, p, ["a", "b"], groups=groups, n_boot=300)
    sens = m["per_label"]["a"]["sensitivity"]
    want = binomtest(12, 12).proportion_ci(0.95, method="exact")
    assert sens["value"] == 1.0 and sens["ci95"] == pytest.approx([want.low, 1.0]) and "12" in sens["ci95_method"]
    assert "ci95_method" not in m["per_label"]["a"]["specificity"]
