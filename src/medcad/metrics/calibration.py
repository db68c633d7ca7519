"""Calibration: temperature scaling fitted on validation predictions, Brier score, ECE before and after.

Temperature scaling (Guo et al., ICML 2017) divides the logits by one scalar T > 0 fitted by minimising the
negative log-likelihood on held-out (validation) rows; it leaves the ranking, hence AUC and argmax, unchanged.
Softmax is invariant to adding a constant to the logits, so log-probabilities serve as logits:
softmax(log(p) / T) = p^(1/T) / sum(p^(1/T)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import log_softmax

from medcad.metrics.stats import (
    as_probs,
    calibration_bins,
    reliability_curve,
    weighted_bootstrap,
    weighted_ece,
)

EPS = 1e-12  # probabilities are clipped here before their log (temperature scaling)


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(as_probs(probs), EPS, 1.0))


def fit_temperature(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = (0.05, 20)
) -> float:
    """Temperature T minimising the mean negative log-likelihood of softmax(log(probs) / T).

    Args:
        y_true: true class indices (N,).
        probs: class probabilities (N, K), or p(class 1) (N,).
        bounds: search range of T.

    Returns:
        T; 1.0 (no scaling) when there are no rows, or, with a warning, when the optimum lies at a bound of the
        search: the rows are (nearly) separable, so the likelihood keeps improving as T shrinks (or grows) without
        limit, and no temperature is identified by so few or so easy rows.
    """
    import warnings

    y = np.asarray(y_true, dtype=int)
    z = _logits(probs)  # (N, K)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    lo, hi = np.log(bounds)
    from scipy.optimize import minimize_scalar  # here: scipy.optimize takes ~0.3 s to import, predictors need none

    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    if min(res.x - lo, hi - res.x) < 0.01 * (hi - lo):
        why = (
            "they are nearly separable: sharpening has no end"
            if res.x - lo < hi - res.x
            else "its probabilities score worse than uniform ones there: flattening has no end"
        )
        warnings.warn(
            f"temperature scaling: the best temperature lies at the search bound {float(np.exp(res.x)):.3g} on "
            f"{len(y)} validation rows ({why}); kept T = 1 (no scaling)",
            stacklevel=2,
        )
        return 1.0
    return float(np.exp(res.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): (N, K) probabilities."""
    return np.exp(log_softmax(_logits(probs) / float(temperature), axis=1))


def brier_rows(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-row Brier score (N,): (p_positive - y)^2 for two classes (scikit-learn's `brier_score_loss`),
    sum over classes of (p_k - [y = k])^2 for more (Brier 1950)."""
    p = as_probs(probs)
    y = np.asarray(y_true, dtype=int)
    if p.shape[1] == 2:
        return (p[:, 1] - (y == 1)) ** 2
    return ((p - (y[:, None] == np.arange(p.shape[1]))) ** 2).sum(axis=1)


def calibration_summary(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
) -> dict[str, Any]:
    """ECE and Brier score with (cluster) bootstrap CIs, and the reliability curve.

    Returns:
        {ece: {value, ci95}, brier: {value, ci95}, reliability: {...}}.
    """
    y = np.asarray(y_true, dtype=int)
    p = as_probs(probs)
    bins, conf, correct = calibration_bins(y, p, n_bins)
    rows = brier_rows(y, p)

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"ece": weighted_ece(bins, conf, correct, w, n_bins), "brier": (w @ rows) / w.sum(axis=1)}

    stats = weighted_bootstrap(batch, len(y), groups=groups, n_boot=n_boot, seed=seed)
    return {**stats, "reliability": reliability_curve(y, p, n_bins)}


def temperature_scaled(
    y_test: np.ndarray,
    probs_test: np.ndarray,
    fold_test: np.ndarray,
    validation: Mapping[Any, tuple[np.ndarray, np.ndarray]],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    temperatures: Mapping[Any, float | None] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Calibration of pooled test predictions before and after each fold's temperature (fitted on its validation
    part).

    Args:
        y_test: test class indices (N,).
        probs_test: test probabilities (N, K).
        fold_test: fold id per test row (N,).
        validation: {fold: (class indices (n_val,), probabilities (n_val, K))}.
        groups, n_boot, seed: bootstrap settings.
        temperatures: {fold: T} the folds already fitted on the same validation parts (and stored with their
            models); a fold missing here, or with None, is fitted now.

    Returns:
        ({temperatures: {fold: T}, before: summary, after: summary}, calibrated test probabilities (N, K)).
    """
    p = as_probs(probs_test)
    folds = np.asarray(fold_test)
    by_str = {str(f): v for f, v in validation.items()}
    known = {str(f): t for f, t in (temperatures or {}).items() if t is not None}
    temps = {str(f): known.get(str(f)) or fit_temperature(*by_str[str(f)]) for f in np.unique(folds)}
    calibrated = p.copy()
    for f, t in temps.items():
        sel = folds.astype(str) == f
        calibrated[sel] = apply_temperature(p[sel], t)
    kw = {"groups": groups, "n_boot": n_boot, "seed": seed}
    result = {
        "temperatures": temps,
        "method": "temperature scaling fitted per fold on its validation part (Guo et al. 2017)",
        "before": calibration_summary(y_test, p, **kw),
        "after": calibration_summary(y_test, calibrated, **kw),
    }
    return result, calibrated
