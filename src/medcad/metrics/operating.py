"""Operating points chosen on validation data only, applied to the test images of the same fold.

A threshold picked on the rows it is then scored on (the Youden point of the pooled out-of-fold ROC) flatters
sensitivity and specificity. Here each fold picks its threshold on its validation part by a rule, the test images
of that fold are classified with it, and the pooled test decisions are scored, with (cluster) bootstrap CIs
(the thresholds are held fixed in the resamples: the CI is conditional on them).

Rules: "youden" (max sensitivity + specificity - 1; Youden 1950), "spec>=T" (the lowest threshold whose validation
specificity is at least T: the most sensitive such point), "sens>=T" (the highest threshold whose validation
sensitivity is at least T).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from medcad.metrics.classification import sens_spec_batch
from medcad.metrics.stats import weighted_bootstrap

DEFAULT_RULES = ("youden", "spec>=0.90", "spec>=0.95", "sens>=0.90", "sens>=0.95")


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str) -> float:
    """Decision threshold (predict positive when score >= threshold) that `rule` picks on these rows.

    Args:
        y_true: binary labels (N,), 1 = positive.
        score: scores (N,), higher means positive.
        rule: "youden", "spec>=T" or "sens>=T" with T in (0, 1].

    Returns:
        The threshold; nan when the rows hold only one class. Where only calling none of these rows positive
        reaches a specificity target (the top-scored row is negative), the least threshold above every score here
        (the boundary, as roc_curve's other thresholds are): it had been +inf, which a fold's ensemble left out of
        its mean threshold, so the mean was the other folds' looser cut.
    """
    yb = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    if yb.all() or not yb.any():
        return float("nan")
    fpr, tpr, thr = roc_curve(yb, s, drop_intermediate=False)  # thresholds decreasing, fpr/tpr increasing
    if rule == "youden":
        return float(thr[1 + int(np.argmax((tpr - fpr)[1:]))])
    kind, _, target = rule.partition(">=")
    try:
        t = float(target)
    except ValueError:
        t = float("nan")
    if kind not in ("spec", "sens") or not 0 < t <= 1:
        raise ValueError(f"unknown operating-point rule {rule!r}; use 'youden', 'spec>=0.9' or 'sens>=0.9'")
    if kind == "spec":
        cut = float(thr[np.flatnonzero(1 - fpr >= t - 1e-12)[-1]])  # index 0 (inf) always qualifies
        return cut if np.isfinite(cut) else float(np.nextafter(s.max(), np.inf))
    return float(thr[np.flatnonzero(tpr >= t - 1e-12)[0]])


def validated_operating_points(
    y: np.ndarray,
    score: np.ndarray,
    fold: np.ndarray | None,
    validation: Mapping[Any, tuple[np.ndarray, np.ndarray]],
    *,
    rules: Sequence[str] = DEFAULT_RULES,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Sensitivity, specificity, PPV and NPV of rows thresholded as validation data dictates: each fold picks its
    threshold by the rule on its validation part; with `fold`, each test row is cut at its own fold's threshold
    (a run's pooled out-of-fold test images); without, every row is cut at the mean of the folds' thresholds (new
    data, such as an external test set, scored by the ensemble of the folds: the mean of the members' scores is
    thresholded at the mean of their thresholds, as the frame decision of mask ensembles is).

    Args:
        y: binary labels (N,), 1 = positive.
        score: scores (N,), on the scale of the validation scores.
        fold: fold id of each row (N,), or None for the ensemble.
        validation: {fold id: (binary labels (n_val,), scores (n_val,))} of each fold's validation part.
        rules: operating-point rules (see `choose_threshold`).
        groups: group id per row for a cluster bootstrap (None: rows).
        n_boot: bootstrap resamples.
        seed: random seed.

    Returns:
        {rule: {thresholds: {fold: t}, the ensemble's threshold (the folds' mean: `threshold` for new data,
        `ensemble_threshold` beside the folds' own; what predict and serve cut the ensemble's score at),
        sensitivity: {value, ci95}, specificity: {value, ci95}, ppv, npv}}; a fold whose validation part holds one
        class has no threshold (nan) and is listed (`folds_without_threshold`): its test rows are left out of the
        figures (they had been scored as all negative: sensitivity 0, specificity 1, with CIs of width 0), or it is
        left out of the ensemble's mean; with no fold left, every figure is None. A fold whose validation part meets
        a specificity rule only above every score there cuts there (`choose_threshold`), in the mean too. Metrics of
        runs from before that kept +inf for such a fold, left it out of the mean and listed it
        (`folds_calling_nothing`, still read by predict and the reports). CIs hold the thresholds fixed.

    Raises:
        ValueError: a row's fold has no validation predictions.
    """
    yb = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=float)
    by_str = {str(f): v for f, v in validation.items()}
    folds = None if fold is None else np.asarray(fold).astype(str)
    if folds is not None and set(folds) - set(by_str):
        raise ValueError(f"no validation predictions for fold(s) {sorted(set(folds) - set(by_str))}")
    used = sorted(set(by_str) if folds is None else set(folds))
    thresholds = {rule: {f: choose_threshold(*by_str[f], rule) for f in used} for rule in rules}
    without = sorted({f for thr in thresholds.values() for f, t in thr.items() if np.isnan(t)})  # one-class parts
    out: dict[str, dict[str, Any]] = {rule: {"thresholds": thr} for rule, thr in thresholds.items()}
    for rule, thr in thresholds.items():
        if without:
            out[rule]["folds_without_threshold"] = without
        chosen = [t for t in thr.values() if np.isfinite(t)]
        # where the ensemble of the folds cuts: the mean of the folds' thresholds
        out[rule]["threshold" if folds is None else "ensemble_threshold"] = float(np.mean(chosen)) if chosen else np.nan
    if folds is None:
        cuts = {rule: np.full(len(s), o["threshold"]) for rule, o in out.items() if not np.isnan(o["threshold"])}
    else:
        scored = ~np.isin(folds, without)
        yb, s, folds = yb[scored], s[scored], folds[scored]
        groups = None if groups is None else np.asarray(groups)[scored]
        cuts = {rule: np.array([thr[f] for f in folds]) for rule, thr in thresholds.items()} if len(yb) else {}
    preds = {rule: s >= cut for rule, cut in cuts.items()}
    for rule, point in score_decisions(yb, preds, rules, groups=groups, n_boot=n_boot, seed=seed).items():
        out[rule].update(point)
    return out


def score_decisions(
    y: np.ndarray,
    decisions: Mapping[str, np.ndarray],
    rules: Sequence[str],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{rule: {sensitivity: {value, ci95}, specificity, ppv, npv}} of binary decisions (N,) against binary labels
    `y` (N,), each with its (cluster) bootstrap CI (PPV and NPV had been points alone); a rule without decisions gets
    None everywhere."""
    none = {"value": None, "ci95": [None, None]}
    figures = ("sensitivity", "specificity", "ppv", "npv")
    out: dict[str, dict[str, Any]] = {rule: dict.fromkeys(figures, none) for rule in rules}
    if not decisions or not len(y):
        return out
    yb = np.asarray(y).astype(bool)

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        res = {}
        for rule, pred in decisions.items():
            res[f"{rule}/sensitivity"], res[f"{rule}/specificity"] = sens_spec_batch(yb, pred, w)
            res[f"{rule}/ppv"], res[f"{rule}/npv"] = sens_spec_batch(pred, yb, w)  # the roles swapped
        return res

    # each figure over its own images (sensitivity the positives', PPV the ones called positive): intervals expanded
    # for their groups, exact on them where every resample gives 0 or 1 (40 of 40 had read 1.000 (1.000-1.000))
    rows = {}
    for r, pred in decisions.items():
        pred = np.asarray(pred, dtype=bool)
        rows |= {f"{r}/sensitivity": yb, f"{r}/specificity": ~yb, f"{r}/ppv": pred, f"{r}/npv": ~pred}
    stats = weighted_bootstrap(batch, len(yb), groups=groups, n_boot=n_boot, seed=seed, rows=rows, proportions=rows)
    for rule in decisions:
        out[rule] = {name: stats[f"{rule}/{name}"] for name in figures}
    return out
