"""ROC AUC on a class's score: the log-odds score every ROC curve and AUC of a class is taken on (`class_score`), the
AUC under a batch of bootstrap row weights (`weighted_auc`, Mann-Whitney), and DeLong's variance, interval and paired
test (DeLong, DeLong & Clarke-Pearson 1988, in Sun & Xu's fast form 2014). Bootstrap intervals around them are
`medcad.metrics.stats`'s.
"""

from __future__ import annotations

import numpy as np


def binary_scores(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels as bool (N,), scores as float (N,)) for a ROC AUC, checked: a NaN score had ranked above every other
    (an AUC of 0.787 read 0.607 with 10 NaN scores, unsaid) and labels 1 / 2 had all been read as positive.

    Raises:
        ValueError: labels other than 0 / 1 (or bool), or a NaN score, naming how many and the first rows.
    """
    y, s = np.asarray(y_true), np.asarray(score, dtype=float)
    if y.dtype != bool:
        odd = np.flatnonzero((y != 0) & (y != 1))
        if odd.size:
            raise ValueError(f"binary labels must be 0 or 1; {odd.size} are not (rows {odd[:3].tolist()}: "
                             f"{y[odd[:3]].tolist()})")  # fmt: skip
    bad = np.flatnonzero(np.isnan(s))
    if bad.size:
        raise ValueError(
            f"{bad.size} of {len(s)} scores are NaN (rows {bad[:3].tolist()}): a model that diverged, or an empty "
            "cell of a predictions table"
        )
    return y.astype(bool), s


def weighted_auc(y_true: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC (Mann-Whitney; ties count 1/2) under each row of a batch of row weights. A class's AUC is taken on
    its `class_score`, not on its probability column.

    Args:
        y_true: binary labels (N,).
        score: scores (N,), higher means positive.
        weights: (B, N) or (N,) non-negative row weights; None means all ones.

    Returns:
        (B,) AUCs; nan where a resample lacks positives or negatives.

    Raises:
        ValueError: labels other than 0 / 1, or a score that is NaN (`binary_scores`).
    """
    y, s = binary_scores(y_true, score)
    w = np.ones((1, len(s))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    if len(s) == 0:
        return np.full(w.shape[0], np.nan)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # first row of each tied score
    ws = w[:, order]  # (B, N)
    pos = np.add.reduceat(ws * y_sorted, starts, axis=1)  # (B, U) positive weight per distinct score
    neg = np.add.reduceat(ws * ~y_sorted, starts, axis=1)  # (B, U)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    return np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0)


def _delong(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014): AUCs (k,) and their covariance (k, k) for score rows (k, N)."""
    y = np.asarray(y_true)
    if not np.isin(y, [0, 1]).all():
        raise ValueError("DeLong needs binary y_true with values in {0, 1}")
    y = y.astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    k, m, n = s.shape[0], int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    from scipy import stats as sps  # here: scipy.stats takes ~0.5 s to import, a predictor needs none of it

    x, z = s[:, y], s[:, ~y]  # (k, m), (k, n)
    tx, tz = sps.rankdata(x, axis=1), sps.rankdata(z, axis=1)
    txz = sps.rankdata(np.concatenate([x, z], axis=1), axis=1)  # midranks in the pooled sample
    auc = (txz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    if m < 2 or n < 2:
        return auc, np.full((k, k), np.nan)
    v01 = (txz[:, :m] - tx) / n  # (k, m) structural components of positives
    v10 = 1.0 - (txz[:, m:] - tz) / m  # (k, n) of negatives
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return auc, cov


def delong_roc_variance(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC AUC and its DeLong variance.

    Args:
        y_true: binary labels in {0, 1} (N,).
        score: scores (N,), higher means positive.

    Returns:
        (auc, variance); nan where undefined (one class absent; variance needs 2 of each).
    """
    auc, cov = _delong(y_true, score)
    return float(auc[0]), float(cov[0, 0])


def delong_ci(y_true: np.ndarray, score: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Normal-approximation CI of the ROC AUC from DeLong's variance, clipped to [0, 1]; (nan, nan) where the
    variance is 0 (an AUC of 0 or 1, or one score for every sample: the estimate is degenerate at the boundary, and
    [1, 1] had been given for 3 positives and 3 negatives perfectly separated)."""
    from scipy import stats as sps

    auc, var = delong_roc_variance(y_true, score)
    half = sps.norm.ppf(1 - alpha / 2) * np.sqrt(var) if var > 1e-15 else np.nan
    return float(np.clip(auc - half, 0, 1)), float(np.clip(auc + half, 0, 1))


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs on the same samples (two-sided).

    Args:
        y_true: binary labels in {0, 1} (N,).
        score_a: scores of model A (N,).
        score_b: scores of model B (N,).

    Returns:
        {auc_a, auc_b, difference (a - b), z, p_value}; identical scores give z = 0, p = 1; a difference without
        variance (both AUCs at 0 or 1, or a constant score beside a perfect one) gives nan: DeLong's estimate is
        degenerate there (it had given z = inf, p = 0 for 3 positives and 3 negatives).
    """
    auc, cov = _delong(y_true, np.vstack([score_a, score_b]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not np.isfinite(var) or not np.isfinite(diff):
        z = p = float("nan")
    elif var <= 1e-15:  # no variance of the difference: alike rankings, or the estimate degenerate at a boundary
        z, p = (0.0, 1.0) if abs(diff) <= 1e-12 else (float("nan"), float("nan"))
    else:
        from scipy import stats as sps

        z = diff / np.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "difference": diff, "z": float(z), "p_value": p}


def as_probs(probs: np.ndarray) -> np.ndarray:
    """(N, K) probabilities; a 1-D array is read as p(class 1) of a binary problem.

    Raises:
        ValueError: not 1-D or 2-D, or a probability that is not a number in [0, 1] (NaN from a model that diverged
            or an empty cell of a predictions table; a logit), naming the first rows that hold one.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim == 1:
        p = np.column_stack([1 - p, p])
    if p.ndim != 2:
        raise ValueError(f"probs has shape {p.shape}; expected (N, K) class probabilities")
    bad = np.flatnonzero(~((p >= -1e-6) & (p <= 1 + 1e-6)).all(axis=1))  # NaN fails both comparisons
    if bad.size:
        first = ", ".join(f"row {i}: {np.round(p[i], 4).tolist()}" for i in bad[:3])
        raise ValueError(
            f"{bad.size} of {len(p)} rows hold a probability that is not a number in [0, 1] ({first}"
            f"{', ...' if bad.size > 3 else ''}): a model that diverged in training (NaN), an empty cell in a "
            "predictions table, or scores that are not probabilities"
        )
    return p


_SMALLEST = float(np.finfo(np.float64).smallest_subnormal)  # a zero probability counts as this (finite log)


def class_score(probs: np.ndarray, c: int) -> np.ndarray:
    """The score every ROC curve and AUC of class `c` is computed on (metrics, bootstrap CIs, DeLong, ROC curves,
    paired tests, model selection): the log-odds of `c` against the other classes, log p_c - log(rest), in float64.
    The rest's mass is the other column for two classes; for more it is 1 - p_c, and the sum of the other columns
    where p_c saturates (p_c >= 1).

    Why not p_c itself: a float32 softmax saturates, p_c rounding to exactly 1.0 on every confident row while the
    other classes keep distinct tiny probabilities. p_c ties those rows and the rest's probabilities do not, so two
    classes' one-vs-rest AUCs differed (and their macro mean differed from the binary AUC), where for two classes
    they are one number. The log-odds rank rows by p_c and the rest's mass together: for two classes class 0's
    score is exactly minus class 1's (log p0 - log p1), so both AUCs, their mean and the binary AUC are equal, and
    the tiny values keep their order (1 - p_c or p_c - p_other in float64 tie them again below ~1e-16).

    For more classes the AUC stays the usual one-vs-rest AUC on p_c (scikit-learn's roc_auc_score(multi_class=
    "ovr")): below saturation the score is logit(p_c), strictly increasing in p_c, so the ranking is that of p_c
    (rows tied on p_c stay tied; the sum of the other columns would break such ties by its rounding, 0.1 + 0.5 being
    0.6 and 0.2 + 0.4 0.6000000000000001); rows where p_c saturates, tied only by rounding, are ordered by the sum
    of the others, and on rows that sum to 1 rank above every row with p_c < 1 (their rest is below the spacing of
    the floats under 1, which bounds 1 - p_c there). The score ranks p_c as given: for the classes of a
    sub-matrix, renormalise its rows first.

    Args:
        probs: class probabilities (N, K), or p(class 1) (N,) of a binary problem (see `as_probs`).
        c: the class index.

    Returns:
        (N,) float64 scores, higher means class `c`; finite, a zero probability counting as the smallest float64
        (|score| <= 745).

    Raises:
        ValueError: a probability that is not a number in [0, 1] (`as_probs`).
    """
    p = as_probs(probs)
    others = np.delete(p, c, axis=1).sum(axis=1)
    below = p[:, c] < 1
    rest = np.where(below, 1 - p[:, c], others) if p.shape[1] > 2 else others
    return np.log(np.maximum(p[:, c], _SMALLEST)) - np.log(np.maximum(rest, _SMALLEST))
