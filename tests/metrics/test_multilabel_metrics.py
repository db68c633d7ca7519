"""Multi-label metrics: the macro figures' bootstrap intervals (the match with scikit-learn is in
tests/engine/test_train_multilabel.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.metrics.multilabel import multilabel_metrics
from medcad.metrics.stats import bootstrap_weights


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
    np.testing.assert_array_equal(m["macro_auc"]["ci95"], [0.5, 0.5] if every >= 100 else [np.nan, np.nan])
    assert m["bootstrap"]["resamples_used"]["macro_auc"] == every
