"""Statistics for study metrics: bootstrap CIs (percentile, expanded for few groups), cluster ids, means over folds.

Bootstrap resamples are drawn either as row indices (`bootstrap_ci`, any metric) or as row-count weights
(`bootstrap_weights`, for metrics written to take a batch of weights at once, e.g. `weighted_auc`), so thousands of rows
times 1000 resamples stay fast. Intervals are percentile intervals expanded for the number of units resampled (groups,
or rows): Hesterberg's expanded percentile interval (`expanded_alpha`), the same as the plain one for hundreds of
groups, wider for few (a reviewer's null simulation of the paired AUC test had rejected 11 % at 5 groups, 9 % at 10, 7 %
at 20 with plain percentiles; a single group had given a zero-width interval and p = 1/B). ROC AUC and DeLong are
`medcad.metrics.roc`'s, calibration error `medcad.metrics.calibration`'s.
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


def mean_sd(values: Sequence[float | None] | np.ndarray) -> dict[str, float | int]:
    """Mean, sample SD (ddof=1) and count of the finite values, e.g. one metric over CV folds."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return {
        "mean": float(v.mean()) if v.size else float("nan"),
        "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
        "n": int(v.size),
    }
