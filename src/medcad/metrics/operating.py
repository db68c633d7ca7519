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

from medcad.metrics.classification import operating_point, sens_spec_batch
from medcad.metrics.stats import weighted_bootstrap

DEFAULT_RULES = ("youden", "spec>=0.90", "spec>=0.95", "sens>=0.90", "sens>=0.95")


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str) -> float:
    """Decision threshold (predict positive when score >= threshold) that `rule` picks on these rows.

    Args:
        y_true: binary labels (N,), 1 = positive.
        score: scores (N,), higher means positive.
        rule: "youden", "spec>=T" or "sens>=T" with T in (0, 1].

    Returns:
        The threshold; nan when the rows hold only one class. Can be +inf ("call nothing positive") when only
        that reaches a specificity target.
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
        return float(thr[np.flatnonzero(1 - fpr >= t - 1e-12)[-1]])  # index 0 (inf) always qualifies
    return float(thr[np.flatnonzero(tpr >= t - 1e-12)[0]])


def validated_operating_points(
    y_test: np.ndarray,
    score_test: np.ndarray,
    fold_test: np.ndarray,
    validation: Mapping[Any, tuple[np.ndarray, np.ndarray]],
    *,
    rules: Sequence[str] = DEFAULT_RULES,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Sensitivity, specificity, PPV and NPV of the pooled test images, each fold thresholded as its validation
    part dictates.

    Args:
        y_test: binary test labels (N,), 1 = positive.
        score_test: test scores (N,).
        fold_test: fold id of each test row (N,).
        validation: {fold id: (binary labels (n_val,), scores (n_val,))} of each fold's validation part.
        rules: operating-point rules (see `choose_threshold`).
        groups: group id per test row for a cluster bootstrap (None: rows).
        n_boot: bootstrap resamples.
        seed: random seed.

    Returns:
        {rule: {thresholds: {fold: t}, sensitivity: {value, ci95}, specificity: {value, ci95}, ppv, npv}}; a fold
        whose validation part holds one class has no threshold (nan): its test rows are left out of the figures and
        the fold is listed (`folds_without_threshold`); with no fold left, every figure is None (they had been
        scored as all negative: sensitivity 0, specificity 1, with CIs of width 0).
    """
    yb = np.asarray(y_test).astype(bool)
    s = np.asarray(score_test, dtype=float)
    folds = np.asarray(fold_test)
    missing = sorted({str(f) for f in np.unique(folds)} - {str(f) for f in validation})
    if missing:
        raise ValueError(f"no validation predictions for fold(s) {missing}")
    by_str = {str(f): v for f, v in validation.items()}
    out: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray] = {}
    thresholds = {rule: {str(f): choose_threshold(*by_str[str(f)], rule) for f in np.unique(folds)} for rule in rules}
    without = sorted({f for thr in thresholds.values() for f, t in thr.items() if np.isnan(t)})  # one-class parts
    scored = ~np.isin(folds.astype(str), without)
    yb, s, folds = yb[scored], s[scored], folds[scored]
    groups = None if groups is None else np.asarray(groups)[scored]
    for rule, thr in thresholds.items():
        out[rule] = {"thresholds": thr}
        if without:
            out[rule]["folds_without_threshold"] = without
        if not len(yb):
            none = {"value": None, "ci95": [None, None]}
            out[rule].update(sensitivity=none, specificity=none, ppv=None, npv=None)
            continue
        preds[rule] = pred = s >= np.array([thr[str(f)] for f in folds])
        point = operating_point(yb, np.where(pred, 1.0, 0.0), 0.5)
        out[rule].update({k: point[k] for k in ("ppv", "npv")})
    if not preds:
        return out

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        res = {}
        for rule, pred in preds.items():
            res[f"{rule}/sensitivity"], res[f"{rule}/specificity"] = sens_spec_batch(yb, pred, w)
        return res

    stats = weighted_bootstrap(batch, len(yb), groups=groups, n_boot=n_boot, seed=seed)
    for rule in preds:
        out[rule]["sensitivity"] = stats[f"{rule}/sensitivity"]
        out[rule]["specificity"] = stats[f"{rule}/specificity"]
    return out
