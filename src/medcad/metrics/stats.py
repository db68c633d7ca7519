"""Statistics for study metrics: bootstrap CIs, DeLong's test for ROC AUCs, calibration error.

Bootstrap resamples are drawn either as row indices (`bootstrap_ci`, any metric) or as row-count weights
(`bootstrap_weights`, for metrics written to take a batch of weights at once, e.g. `weighted_auc`), so thousands of rows
times 1000 resamples stay fast. Intervals are percentile intervals expanded for the number of units resampled (groups,
or rows): Hesterberg's expanded percentile interval (`expanded_alpha`), the same as the plain one for hundreds of
groups, wider for few (a reviewer's null simulation of the paired AUC test had rejected 11 % at 5 groups, 9 % at 10, 7 %
at 20 with plain percentiles; a single group had given a zero-width interval and p = 1/B). The ROC curve and AUC of a
class (weighted_auc, DeLong) are taken on its `class_score`, the log-odds of the class against the rest, so that two
classes' AUCs are one number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

_MAX_CELLS = 4_000_000  # largest (resamples x rows) weight block held in memory at once


def group_index(groups: Sequence[Any] | np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The group of each row as an integer, for a cluster bootstrap that draws whole groups.

    Ids of any type are compared as text (1 and "1" are one group), a whole-number float as the integer (1.0 is 1: a
    patient id column that pandas read as float because a cell was empty), numbered in `np.unique`'s order. A missing id
    (None, NaN, pd.NA, NaT; not the text "nan") is a group of its own, numbered after the others in row order: a
    row without a patient id is its own cluster, as `medcad.data.splits.sample_groups` makes it, not drawn together
    with every other row that lacks one.

    Args:
        groups: one group id per row (n,).
        n: the number of rows.

    Returns:
        (group per row (n,) in 0..G-1, G).

    Raises:
        ValueError: `groups` does not hold one id per row.
    """
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}; pass one group id (e.g. patient) per row, shape ({n},)")
    missing = pd.isna(g)
    text = [
        str(int(v)) if isinstance(v, float | np.floating) and float(v).is_integer() else str(v) for v in g[~missing]
    ]
    _, named = np.unique(np.array(text, dtype=str), return_inverse=True)
    inv = np.empty(n, dtype=int)
    inv[~missing] = named.ravel()
    inv[missing] = (named.max() + 1 if named.size else 0) + np.arange(missing.sum())
    return inv, int(inv.max()) + 1 if n else 0


class Resamples(dict):
    """Bootstrap samples by name ({name: (B, ...)}), with `units`: how many groups (or rows) each resample drew, for
    the interval's expansion (`expanded_alpha`)."""

    def __init__(self, samples: dict[str, np.ndarray], units: int | None) -> None:
        super().__init__(samples)
        self.units = units


def expanded_alpha(alpha: float, units: int | None) -> float:
    """The tail share for a bootstrap percentile interval over `units` independent units (groups, or rows): Hesterberg's
    expanded percentile interval, alpha'/2 = Phi(-sqrt(n/(n-1)) t_{n-1}(1 - alpha/2)) with n = `units` (T. Hesterberg,
    What teachers should know about the bootstrap, The American Statistician 69:371-386, 2015, section 4.4): the
    sqrt(n/(n-1)) the bootstrap's variance lacks and the t distribution's tails. `alpha` for None (not known); nan for
    fewer than 2 units (every resample is the data itself: no interval). 5 groups: 0.0019 for 0.05; 20: 0.033; 100:
    0.046."""
    from scipy import stats as sps

    if units is None:
        return alpha
    if units < 2:
        return float("nan")
    c = np.sqrt(units / (units - 1)) * sps.t.ppf(1 - alpha / 2, units - 1)
    return float(2 * sps.norm.sf(c))


def expanded_p(p: float, units: int | None) -> float:
    """A two-sided p read from a bootstrap's percentile interval (the share alpha at which it reaches 0), mapped as
    `expanded_alpha` maps alpha: p < alpha exactly where the expanded (1 - alpha) interval leaves 0 out. p for None."""
    from scipy import stats as sps

    if units is None or not np.isfinite(p):
        return p
    if units < 2:
        return float("nan")
    z = sps.norm.isf(p / 2)
    return float(min(1.0, 2 * sps.t.sf(z / np.sqrt(units / (units - 1)), units - 1)))


def usable_samples(samples: Sequence[float] | np.ndarray) -> np.ndarray | None:
    """The finite bootstrap samples, or None unless at least half of them are (too few resamples defined the
    statistic to read an interval or a p-value from them)."""
    s = np.asarray(samples, dtype=float).ravel()
    valid = s[np.isfinite(s)]
    return None if s.size == 0 or valid.size < 0.5 * s.size else valid


def percentile_ci(
    samples: Sequence[float] | np.ndarray, alpha: float = 0.05, units: int | None = None
) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, expanded for the `units` (groups or rows) each resample drew
    (`expanded_alpha`; plain where None); (nan, nan) where there is none (`ci_entry` says why); samples all alike
    give that value (two identical models' difference; a share at 0 or 1: `ci_entry` has an exact interval)."""
    return _interval(samples, alpha, units)[:2]


def ci_entry(
    samples: Sequence[float] | np.ndarray, units: int | None = None, alpha: float = 0.05, proportion: bool = False
) -> dict[str, Any]:
    """{"ci95": `percentile_ci`, and "no_ci": why, worded for the reports, where there is no interval}. A
    `proportion` (sensitivity, specificity, a share of images) that every resample gives as 0 or 1 gets the exact
    (Clopper-Pearson) interval of 0 or all successes in `units` trials instead ("ci95_method" says so): each
    independent group counted once, so at least as wide as the images would give (40 of 40 negatives, 40 groups:
    0.912-1; the bootstrap's had been 1.000-1.000)."""
    lo, hi, why = _interval(samples, alpha, units)
    valid = usable_samples(samples)
    if proportion and units and valid is not None and valid.min() == valid.max() and valid[0] in (0.0, 1.0):
        from scipy.stats import binomtest

        k = int(units * valid[0])
        ci = binomtest(k, units).proportion_ci(1 - alpha, method="exact")
        how = (
            f"exact (Clopper-Pearson) on {units} independent units (groups; images where none are given): every "
            f"resample gave {valid[0]:g}"
        )
        return {"ci95": [float(ci.low), float(ci.high)], "ci95_method": how}
    return {"ci95": [lo, hi], **({"no_ci": why} if why else {})}


def _interval(samples: Sequence[float] | np.ndarray, alpha: float, units: int | None) -> tuple[float, float, str]:
    """(lo, hi, why there is none: '' where there is one). None where fewer than half of the samples are finite; for
    fewer than 2 units (every resample is the data itself); or, with `units` given, where the tails hold less than
    half a sample each (4 groups at 1,000 resamples: 0.012 % each, beyond their resolution: the interval would be the
    samples' range, and a p read from it could not agree with it)."""
    nan = float("nan")
    valid = usable_samples(samples)
    if valid is None:
        return nan, nan, "fewer than half of the resamples define it"
    a = expanded_alpha(alpha, units)
    if not np.isfinite(a):
        return nan, nan, f"{units} group(s): every resample is the data itself"
    if units is not None and a / 2 * valid.size < 0.5:
        return nan, nan, f"too few groups ({units}) for a {100 * (1 - alpha):g} % interval from {valid.size} resamples"
    if valid.min() == valid.max():
        return float(valid[0]), float(valid[0]), ""
    lo, hi = np.percentile(valid, [50 * a, 100 - 50 * a])
    return float(lo), float(hi), ""


def bootstrap_weights(
    n: int, n_boot: int = 1000, seed: int = 0, groups: Sequence[Any] | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield bootstrap resamples as row-count weights, in chunks.

    Args:
        n: number of rows.
        n_boot: total number of resamples over all chunks.
        seed: random seed.
        groups: optional group id per row; whole groups are resampled (cluster bootstrap by patient; a missing id
            is a group of its own, see `group_index`).

    Yields:
        Float arrays (b, n): how many times each row is drawn in each of b resamples; none for fewer than 2 groups
        (or rows): every resample would be the data itself.
    """
    if n == 0 or n_boot <= 0:
        return
    rng = np.random.default_rng(seed)
    inv, g = (np.arange(n), n) if groups is None else group_index(groups, n)
    if g < 2:
        return
    step = max(1, _MAX_CELLS // max(n, g))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, g, size=(b, g)) + g * np.arange(b)[:, None]  # (b, G)
        counts = np.bincount(draws.ravel(), minlength=b * g).reshape(b, g)
        yield counts[:, inv].astype(float)  # (b, n)


def bootstrap_samples(
    batch: Callable[[np.ndarray], dict[str, np.ndarray]],
    n: int,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Point values and bootstrap samples of every quantity a batch function returns.

    `batch(w)` takes row weights (B, n) and returns {name: values (B, ...)}; the point values are under all weights
    1, the samples under `n_boot` resamples (of `groups` when given) drawn by `bootstrap_weights`.

    Returns:
        (point, samples): {name: (1, ...)} and `Resamples` {name: (n_boot, ...)} with the units drawn (no rows when
        n_boot is 0 or there are fewer than 2 units).
    """
    point = batch(np.ones((1, n)))
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for w in bootstrap_weights(n, n_boot, seed, groups):
        for k, v in batch(w).items():
            chunks[k].append(v)
    samples = {k: np.concatenate(v) if v else np.empty((0, *np.shape(point[k])[1:])) for k, v in chunks.items()}
    return point, Resamples(samples, resampled_units(groups, n))


def resampled_units(groups: Sequence[Any] | np.ndarray | None, n: int) -> int:
    """How many units a bootstrap of `n` rows draws: the groups (`group_index`), or the rows."""
    return n if groups is None else group_index(groups, n)[1]


def weighted_bootstrap(
    batch: Callable[[np.ndarray], dict[str, np.ndarray]],
    n: int,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    rows: dict[str, np.ndarray] | None = None,
    proportions: Collection[str] = (),
) -> dict[str, dict]:
    """Point value and percentile bootstrap CI of every quantity a batch function returns (see `bootstrap_samples`).

    Args:
        rows: {name: bool (n,)}: the rows a quantity is over, where fewer than all (a subset, the lesion images): its
            interval is expanded for the groups among them, not all the set's.
        proportions: the quantities that are shares of their rows (sensitivity, specificity): one every resample
            gives as 0 or 1 gets an exact interval on its groups (`ci_entry`).

    Returns:
        {name: {"value": float, "ci95": [lo, hi]}, and "no_ci" (why, `ci_entry`) where there is no interval}.
    """
    point, samples = bootstrap_samples(batch, n, groups=groups, n_boot=n_boot, seed=seed)
    return point_and_ci(point, samples, part_units(groups, rows or {}), proportions)


def part_units(groups: Sequence[Any] | np.ndarray | None, rows: dict[str, np.ndarray]) -> dict[str, int]:
    """{name: the units (groups, or rows without groups) a bootstrap draws among rows[name] (bool (n,))}: what the
    interval of a quantity over some rows (a class's images, those called positive) is expanded for."""
    g = None if groups is None else np.asarray(groups, dtype=object)
    return {k: resampled_units(None if g is None else g[r], int(np.sum(r))) for k, r in rows.items()}


def point_and_ci(
    point: dict[str, np.ndarray],
    samples: dict[str, np.ndarray],
    units: dict[str, int] | None = None,
    proportions: Collection[str] = (),
) -> dict[str, dict]:
    """{name: {"value": float, "ci95": [lo, hi]}, with "no_ci" (why) where there is none} from `bootstrap_samples`
    output: the point value and the `percentile_ci` of the samples, expanded for `units[name]` where given, else for
    the units `samples` says; `proportions` as `ci_entry` takes them."""
    default = getattr(samples, "units", None)
    return {
        k: {
            "value": float(point[k][0]),
            **ci_entry(samples[k], (units or {}).get(k, default), proportion=k in proportions),
        }
        for k in point
    }


def resamples_used(samples: dict[str, np.ndarray], keys: dict[str, str]) -> dict[str, int]:
    """{where: how many resamples define samples[key]} for each `where: key` of `keys`: for a macro figure
    (`macro_mean`), the resamples that drew every class its point estimate averages, the ones its interval is read
    from (the interval is nan when fewer than half did: `usable_samples`)."""
    return {where: int(np.isfinite(samples[key]).sum()) for where, key in keys.items()}


def macro_mean(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Macro average of per-class values under each resample, over the classes the point estimate averages.

    Args:
        values: (B, K) a per-class figure (AUC, recall, F1, AP) under each of B resamples; nan where undefined.
        defined: (K,) bool, the classes where the figure is defined on the full data.

    Returns:
        (B,) the mean over the `defined` classes; nan in a resample where one of them is undefined (e.g. a class
        absent from it), which `percentile_ci` then leaves out, so that every resample averages the same classes
        as the point estimate (a resample averaging the others alone would widen the interval towards their mean);
        nan everywhere when no class is defined.
    """
    v = np.asarray(values, dtype=float)[:, np.asarray(defined, dtype=bool)]
    return v.mean(axis=1) if v.shape[1] else np.full(len(v), np.nan)


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric(*arrays)`, resampling rows or whole groups.

    Resamples where the metric is undefined (returns nan or raises ValueError) are skipped; if fewer than
    half are valid, returns (nan, nan).

    Args:
        metric: function of the resampled arrays returning a float.
        *arrays: arrays with the same first dimension (rows).
        n_boot: number of resamples.
        seed: random seed.
        alpha: 1 - coverage (0.05 gives a 95 % CI).
        groups: optional group id per row (e.g. patient) for a cluster bootstrap (see `group_index`).

    Returns:
        (lower, upper).
    """
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"bootstrap_ci arrays differ in length: {[len(a) for a in arrs]}")
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is not None:
        inv, g = group_index(groups, n)
        order = np.argsort(inv, kind="stable")
        sizes = np.bincount(inv, minlength=g)
        starts = np.cumsum(sizes) - sizes
    values = np.full(n_boot, np.nan)
    units = resampled_units(groups, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(n_boot):
            if groups is None:
                idx = rng.integers(0, n, n)
            else:
                pick = rng.integers(0, g, g)
                lens = sizes[pick]
                offsets = np.repeat(starts[pick] - (np.cumsum(lens) - lens), lens)
                idx = order[offsets + np.arange(lens.sum())]
            try:
                values[b] = float(metric(*(a[idx] for a in arrs)))
            except (ValueError, ZeroDivisionError):
                continue
    return percentile_ci(values, alpha, units)


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


def mean_sd(values: Sequence[float | None] | np.ndarray) -> dict[str, float | int]:
    """Mean, sample SD (ddof=1) and count of the finite values, e.g. one metric over CV folds."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return {
        "mean": float(v.mean()) if v.size else float("nan"),
        "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
        "n": int(v.size),
    }
