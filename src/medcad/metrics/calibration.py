"""Calibration: temperature scaling fitted on validation predictions; Brier score, ECE and, for two classes, the
calibration intercept and slope, before and after.

Temperature scaling (Guo et al., ICML 2017) divides the logits by one scalar T > 0 fitted by minimising the
negative log-likelihood on held-out (validation) rows; it leaves the ranking, hence AUC and argmax, unchanged.
Softmax is invariant to adding a constant to the logits, so log-probabilities serve as logits:
softmax(log(p) / T) = p^(1/T) / sum(p^(1/T)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit, log_softmax

from medcad.metrics.roc import as_probs, class_score
from medcad.metrics.stats import weighted_bootstrap

EPS = 1e-12  # probabilities are clipped here before their log (temperature scaling, the calibration line)
NEWTON_STEPS, NEWTON_TOL = 50, 1e-8  # the calibration line's logistic fits: at most this many steps, to this step size
LINE_SEARCH_FROM = 0.5  # a Newton step longer than this (in any coefficient) is checked against the likelihood


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[np.ndarray, ...]:
    """Top-label bin index, confidence and correctness per row; bins are (i/M, (i+1)/M]."""
    p = as_probs(probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y_true)).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return bins, conf, correct


def weighted_ece(
    bins: np.ndarray, conf: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int = 15
) -> np.ndarray:
    """ECE under each row of a batch of row weights (B, N), from `calibration_bins` output; returns (B,)."""
    w = np.atleast_2d(weights)
    b = w.shape[0]
    idx = (bins + n_bins * np.arange(b)[:, None]).ravel()
    conf_sum = np.bincount(idx, (w * conf).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    acc_sum = np.bincount(idx, (w * correct).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    total = w.sum(axis=1)
    return np.divide(np.abs(acc_sum - conf_sum).sum(axis=1), total, out=np.full(b, np.nan), where=total > 0)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Args:
        y_true: true class indices (N,).
        probs: class probabilities (N, K), or p(class 1) (N,) for a binary problem.
        n_bins: number of bins on [0, 1].

    Returns:
        sum over bins of |accuracy - mean confidence| weighted by the bin's share of rows (nan if N = 0).
    """
    bins, conf, correct = calibration_bins(y_true, probs, n_bins)
    return float(weighted_ece(bins, conf, correct, np.ones(len(conf)), n_bins)[0])


def reliability_curve(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count for a reliability plot (empty bins give nan).

    Returns:
        {bin_confidence, bin_accuracy, bin_count, bin_edges}; the first three have n_bins entries.
    """
    bins, conf, correct = calibration_bins(y_true, probs, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    nan = np.full(n_bins, np.nan)
    return {
        "bin_confidence": np.divide(np.bincount(bins, conf, n_bins), count, out=nan.copy(), where=count > 0).tolist(),
        "bin_accuracy": np.divide(np.bincount(bins, correct, n_bins), count, out=nan.copy(), where=count > 0).tolist(),
        "bin_count": count.astype(int).tolist(),
        "bin_edges": np.linspace(0, 1, n_bins + 1).tolist(),
    }


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(as_probs(probs), EPS, 1.0))


# A fold's temperature is kept only where its validation rows show evidence against T = 1: the likelihood-ratio
# statistic 2 (NLL(1) - NLL(T)), summed over rows, at least chi-square(1)'s 95th percentile (rows taken as
# independent; images of one patient, and rows that also chose the fold's epoch, make it overstate the evidence).
# Fitted on the few dozen validation images that also chose the fold's epoch, temperatures made pooled test
# calibration worse than T = 1 in 25 of 36 folds (3 more tied: fits at a search bound, kept at 1; the demo's 30,
# BUSI's 6); with this guard the test Brier score was better than the fitted one's in 21 folds and worse in 5 (mean
# 0.2448 -> 0.2368; T = 1: 0.2376), NLL 0.700 -> 0.657 (docs/results.md, 2026-12-06).
EVIDENCE = 3.841


def fit_temperature(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = (0.05, 20)
) -> float:
    """Temperature T minimising the mean negative log-likelihood of softmax(log(probs) / T), kept where the rows
    show evidence against T = 1 (`temperature_evidence` at least EVIDENCE: a likelihood-ratio test, p < 0.05).

    Args:
        y_true: true class indices (N,).
        probs: class probabilities (N, K), or p(class 1) (N,).
        bounds: search range of T.

    Returns:
        T; 1.0 (no scaling) when there are no rows, when the rows show no evidence against T = 1, or, with a warning,
        when the optimum lies at a bound of the search: the rows are (nearly) separable, so the likelihood keeps
        improving as T shrinks (or grows) without limit, and no temperature is identified by so few or so easy rows.
    """
    return kept_temperature(*temperature_evidence(y_true, probs, bounds), len(np.asarray(y_true)), bounds)


def kept_temperature(
    t: float, evidence: float, rows: int, bounds: tuple[float, float] = (0.05, 20), stacklevel: int = 3
) -> float:
    """The temperature `fit_temperature` keeps from a fit `temperature_evidence` gave (`rows` validation rows): t,
    or 1.0 without evidence against T = 1 or, with a warning, at a bound of the search."""
    import warnings

    if evidence < EVIDENCE:
        return 1.0
    if at_search_bound(t, bounds):
        why = (
            "they are nearly separable: sharpening has no end"
            if t < 1
            else "its probabilities score worse than uniform ones there: flattening has no end"
        )
        warnings.warn(
            f"temperature scaling: the best temperature lies at the search bound {t:.3g} on {rows} "
            f"validation rows ({why}); kept T = 1 (no scaling)",
            stacklevel=stacklevel,
        )
        return 1.0
    return t


def at_search_bound(t: float, bounds: tuple[float, float] = (0.05, 20)) -> bool:
    """Whether a fitted temperature lies at a bound of its search (within 1 % of the log range): the likelihood kept
    improving past it, so no temperature is identified."""
    lo, hi = np.log(bounds)
    return bool(min(np.log(t) - lo, hi - np.log(t)) < 0.01 * (hi - lo))


def temperature_evidence(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = (0.05, 20)
) -> tuple[float, float]:
    """(T minimising the negative log-likelihood of softmax(log(probs) / T) within `bounds`, the likelihood-ratio
    statistic 2 * sum over rows of (NLL at T = 1 - NLL at T): chi-square with 1 degree of freedom where T = 1 is
    right); (1.0, 0.0) for no rows."""
    y = np.asarray(y_true, dtype=int)
    z = _logits(probs)  # (N, K)
    if len(y) == 0:
        return 1.0, 0.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    lo, hi = np.log(bounds)
    from scipy.optimize import minimize_scalar  # here: scipy.optimize takes ~0.3 s to import, predictors need none

    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x)), max(0.0, 2 * len(y) * (nll(0.0) - float(res.fun)))


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


def calibration_line(
    y: np.ndarray, logit: np.ndarray, weights: np.ndarray, start: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """The weak calibration of one class's probability (Cox 1958; Van Calster et al., BMC Medicine 2019, "Calibration:
    the Achilles heel of predictive analytics"), a weighted logistic fit under each row of `weights`:
    - calibration_intercept: a in logit P(y = 1) = a + logit(p), the logit fixed as an offset (calibration-in-the-
      large): 0 when the predictions' mean is right, < 0 when they are too high;
    - calibration_slope: b in logit P(y = 1) = c + b logit(p): 1 ideal, < 1 when the predictions are too extreme (as an
      overfit model's), > 1 when too moderate.
    Each fit is Newton-Raphson on the weighted log-likelihood, all rows of `weights` at once (the same estimates as
    statsmodels' GLM with a binomial family; a test holds them equal).

    Args:
        y: 1 where the row is of the class, else 0 (N,).
        logit: log(p / (1 - p)) of the class's probability (N,) (`class_logit`).
        weights: row weights (B, N) (bootstrap resamples; ones for the point estimate).
        start: where the fits start ({calibration_intercept, calibration_slope}: the point estimates, for resamples;
            default 0 and 1, the identity).

    Returns:
        {calibration_intercept: (B,), calibration_slope: (B,)}: nan where the fit does not converge in NEWTON_STEPS
        (a resample holding one class) or, for the slope, where the class is separated by p (no finite maximum).
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(logit, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    a0, b0 = (start or {}).get("calibration_intercept", 0.0), (start or {}).get("calibration_slope", 1.0)
    a0, b0 = (a0 if np.isfinite(a0) else 0.0), (b0 if np.isfinite(b0) else 1.0)
    intercept = _logistic_fit(y, np.ones((1, len(y))), x, w, start=[a0])[:, 0]
    slope = _logistic_fit(y, np.stack([np.ones_like(x), x]), 0.0, w, start=[a0 * b0, b0])[:, 1]
    return {"calibration_intercept": intercept, "calibration_slope": slope}


def class_logit(probs: np.ndarray, c: int) -> np.ndarray:
    """The log-odds of class c against the rest (N,) from probabilities (N, K): `roc.class_score` (the rest's mass
    from the other columns where 1 - p_c would round to 0), clipped to +-log(1 / EPS) so that a probability of exactly
    0 or 1 gives a finite logit to fit on."""
    return np.clip(class_score(probs, c), np.log(EPS), -np.log(EPS))


def _logistic_fit(y: np.ndarray, x: np.ndarray, offset, w: np.ndarray, start: list[float]) -> np.ndarray:
    """Coefficients (B, P) of logit P(y = 1) = coef . x + offset, maximising sum_n w[b, n] log-likelihood_n for each b;
    x (P, N) with P of 1 or 2 (the 2 x 2 solve written out); offset a scalar or (N,). Newton steps on the rows not yet
    converged, a step longer than LINE_SEARCH_FROM halved until the likelihood does not fall (a full step from far off
    overshoots on probabilities near 0 or 1); the log-likelihood is concave, so the point where the steps vanish is its
    maximum. nan where a step is not finite, where halving finds no better point, where the steps do not shrink below
    NEWTON_TOL in NEWTON_STEPS, or, for P = 2, where the fit puts every weighted row on its class (separation: no
    finite maximum; the offset fit has one whenever both classes weigh)."""

    def loglik(coef: np.ndarray, rows: np.ndarray) -> np.ndarray:
        eta = coef @ x + offset
        return (w[rows] * (y * eta - np.logaddexp(0.0, eta))).sum(axis=1)

    beta = np.tile(np.asarray(start, dtype=float), (len(w), 1))  # (B, P)
    done, failed = np.zeros(len(w), dtype=bool), np.zeros(len(w), dtype=bool)
    for _ in range(NEWTON_STEPS):
        rows = np.flatnonzero(~done)
        if not rows.size:
            break
        b, wr = beta[rows], w[rows]
        mu = expit(b @ x + offset)  # (R, N)
        g = (wr * (y - mu)) @ x.T  # the score (R, P)
        h = np.einsum("rn,pn,qn->rpq", wr * mu * (1 - mu), x, x)  # the information (R, P, P)
        with np.errstate(divide="ignore", invalid="ignore"):
            if x.shape[0] == 1:
                step = g / h[:, 0]
            else:
                det = h[:, 0, 0] * h[:, 1, 1] - h[:, 0, 1] ** 2
                step = np.stack(
                    [h[:, 1, 1] * g[:, 0] - h[:, 0, 1] * g[:, 1], h[:, 0, 0] * g[:, 1] - h[:, 0, 1] * g[:, 0]], 1
                )
                step = step / det[:, None]
        bad = ~np.isfinite(step).all(axis=1)
        step[bad] = 0.0
        # a long step may overshoot (probabilities near 0 or 1): halved until the likelihood does not fall; a short
        # one is Newton's near the maximum (resamples start at the point estimate: no likelihood computed at all)
        stuck = bad.copy()
        far = np.flatnonzero(np.abs(step).max(axis=1) > LINE_SEARCH_FROM)
        if far.size:
            old = loglik(b[far], rows[far])
            t = np.ones((far.size, 1))
            for _ in range(30):
                worse = ~(loglik(b[far] + t * step[far], rows[far]) >= old - 1e-9 * np.abs(old))
                if not worse.any():
                    break
                t[worse] /= 2
            step[far] *= t
            stuck[far] |= worse
        beta[rows] = b + step
        failed[rows[stuck]] = True
        done[rows[stuck | np.all(np.abs(step) < NEWTON_TOL, axis=1)]] = True
    failed |= ~done | ~np.isfinite(beta).all(axis=1)
    if x.shape[0] == 2:
        with np.errstate(invalid="ignore"):
            failed |= np.where(w > 0, np.abs(y - expit(beta @ x + offset)), 0.0).max(axis=1) < 1e-6
    beta[failed] = np.nan
    return beta


def calibration_summary(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    positive: int = 1,
) -> dict[str, Any]:
    """ECE and Brier score with (cluster) bootstrap CIs, the reliability curve, and calibration lines
    (`calibration_line`): of class `positive`'s probability for two classes, of each class against the rest for more.

    Returns:
        {ece: {value, ci95}, brier: {value, ci95}, reliability: {...}, lines: [one per class described: {class
        (index), prevalence (its share of the rows), calibration_intercept, calibration_slope ({value, ci95}; nan
        where the fit does not converge, an interval nan when fewer than half the resamples' fits did),
        balanced_training_intercept}]}. balanced_training_intercept is logit(prevalence) - logit(1 / K): the
        intercept a model trained as if the K classes were equally common (class weights, oversampling) has from
        that alone, by Bayes' rule on the prior odds (exact for two classes; for more, one class against the rest,
        approximate).
    """
    y = np.asarray(y_true, dtype=int)
    p = as_probs(probs)
    k = p.shape[1]
    bins, conf, correct = calibration_bins(y, p, n_bins)
    rows = brier_rows(y, p)
    described = [positive] if k == 2 else list(range(k))
    logits = {c: class_logit(p, c) for c in described}
    point = {
        c: {m: float(v[0]) for m, v in calibration_line(y == c, logits[c], np.ones((1, len(y)))).items()}
        for c in described
    }

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {"ece": weighted_ece(bins, conf, correct, w, n_bins), "brier": (w @ rows) / w.sum(axis=1)}
        for c in described:  # resamples start at the point estimate: a few steps each
            out |= {f"{name}/{c}": v for name, v in calibration_line(y == c, logits[c], w, point[c]).items()}
        return out

    stats = weighted_bootstrap(batch, len(y), groups=groups, n_boot=n_boot, seed=seed)
    lines = []
    for c in described:
        share = float(np.mean(y == c))
        balanced = float(np.log(share / (1 - share)) - np.log(1 / (k - 1))) if 0 < share < 1 else float("nan")
        fits = {name: stats.pop(f"{name}/{c}") for name in ("calibration_intercept", "calibration_slope")}
        lines.append({"class": c, "prevalence": share, **fits, "balanced_training_intercept": balanced})
    return {**stats, "lines": lines, "reliability": reliability_curve(y, p, n_bins)}


def fold_temperatures(calibration: dict) -> dict[str, float]:
    """{fold: temperature} a run's calibration block records (folds without one left out)."""
    return {f: t for f, t in (calibration.get("temperatures") or {}).items() if t is not None}


def scaled_by_temperature(calibration: dict) -> bool:
    """Whether a run's calibration block (metrics.json "calibration", `temperature_scaled`'s) has a fold whose
    temperature is not 1, so that its figures after temperature scaling differ from those before (every T = 1: they
    repeat them, and the console and report give them once); True where it records no temperatures."""
    temperatures = fold_temperatures(calibration).values()
    return not temperatures or any(t != 1 for t in temperatures)


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
    positive: int = 1,
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
        positive: for two classes, the class whose calibration line is given (`calibration_summary`).

    Returns:
        ({temperatures: {fold: T}, evidence: {fold: the likelihood-ratio statistic against T = 1 on its validation
        part (`temperature_evidence`)}, min_evidence, at_search_bound (folds with evidence whose fit ran to a bound:
        T = 1), guarded (whether every T follows the evidence rule), method, before: summary, after: summary},
        calibrated test probabilities (N, K): the test probabilities themselves where T = 1).
    """
    p = as_probs(probs_test)
    folds = np.asarray(fold_test)
    by_str = {str(f): v for f, v in validation.items()}
    known = {str(f): t for f, t in (temperatures or {}).items() if t is not None}
    # each fold's fit and evidence against T = 1 on its validation part (one fit each): where the evidence is short of
    # EVIDENCE, T stays 1; where the fit ran to a bound of its search, too (no temperature identified)
    fits = {str(f): temperature_evidence(*by_str[str(f)]) for f in np.unique(folds)}
    temps = {f: known.get(f) or kept_temperature(t, e, len(by_str[f][0])) for f, (t, e) in fits.items()}
    evidence = {f: round(e, 3) for f, (_, e) in fits.items()}
    bound = sorted(f for f, (t, e) in fits.items() if e >= EVIDENCE and at_search_bound(t))
    calibrated = p.copy()
    for f, t in temps.items():
        if t != 1.0:  # T = 1 leaves the probabilities exactly as they are
            sel = folds.astype(str) == f
            calibrated[sel] = apply_temperature(p[sel], t)
    kw = {"groups": groups, "n_boot": n_boot, "seed": seed, "positive": positive}
    result = {
        "temperatures": temps,
        "evidence": evidence,
        "min_evidence": EVIDENCE,
        "at_search_bound": bound,
        # whether the model files' temperatures follow the evidence rule (those made before 2026-12-06 need not)
        "guarded": all(temps[f] == 1.0 or evidence[f] >= EVIDENCE for f in temps),
        "method": "temperature scaling fitted per fold on its validation part (Guo et al. 2017)",
        "before": calibration_summary(y_test, p, **kw),
        "after": calibration_summary(y_test, calibrated, **kw),
    }
    return result, calibrated
