"""Multi-label classification metrics (several findings per image, each present or absent), with CIs.

Per label: ROC AUC (Mann-Whitney), and at the decision threshold sensitivity, specificity, precision, F1 and
prevalence. Over labels: macro AUC (the mean over the labels with both outcomes present) and macro F1 (over the
labels present or predicted, as scikit-learn's, which also counts a label neither present nor predicted, as 0; a
label present in every image had been left out); a bootstrap resample where one of those labels is undefined gives
none, see `medcad.metrics.stats.macro_mean`; `averaged_over` names the labels of each), micro F1,
exact-match ratio (every label right) and Hamming loss (the fraction of wrong label decisions). Every figure with a
percentile bootstrap 95 % CI that resamples the run's groups (patients / duplicate groups) when given.
Definitions: Tsoumakas & Katakis, "Multi-label classification: an overview", IJDWM 3(3), 2007.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcad.metrics.roc import as_probs, weighted_auc
from medcad.metrics.stats import bootstrap_samples, macro_mean, part_units, point_and_ci, resamples_used


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def multilabel_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    threshold: float = 0.5,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of multi-label predictions.

    Args:
        y_true: (N, K) {0, 1}: which labels each image has.
        probs: (N, K) independent probabilities (sigmoid outputs).
        labels: the K label names.
        threshold: a label is predicted present when its probability reaches this.
        groups: group (patient) per row: CIs come from a cluster bootstrap over groups.
        n_boot: bootstrap resamples (0: no CIs).

    Returns:
        {"n", "labels", "threshold", "macro_auc", "macro_f1", "micro_f1", "exact_match", "hamming_loss" (each
        {"value", "ci95"}), "averaged_over": {"macro_auc", "macro_f1"}: the labels each mean is over,
        "per_label": {label: {"auc", "f1", "sensitivity", "specificity", "precision" (each
        {"value", "ci95"}), "n_positive", "prevalence"}}, "bootstrap": {"n_boot", "seed", "by_group",
        "resamples_used": {"macro_auc", "macro_f1"}: how many resamples defined the figure for every label the point
        estimate averages, the ones its interval is read from (nan when fewer than half did)}}.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, np.float64)
    if p.ndim == 2:
        as_probs(p)  # NaN or values outside [0, 1] raise (a NaN had been read as absent and ranked above every score)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(labels):
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (N, {len(labels)})")
    n, k = y.shape
    pred = p >= threshold
    both = [j for j in range(k) if 0 < y[:, j].sum() < n]
    in_both = np.isin(np.arange(k), both)  # the labels macro AUC averages, in every resample
    in_f1 = y.any(0) | pred.any(0)  # the labels macro F1 averages: its F1 is defined

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:  # w: (B, N) row weights
        out: dict[str, np.ndarray] = {}
        tp = w @ (pred & y)  # (B, K)
        fp, fn, tn = w @ (pred & ~y), w @ (~pred & y), w @ (~pred & ~y)
        f1 = _f1(tp, fp, fn)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec, prec = tp / (tp + fn), tn / (tn + fp), tp / (tp + fp)
        aucs = np.full((len(w), k), np.nan)
        for j in both:
            aucs[:, j] = weighted_auc(y[:, j], p[:, j], w)
        for j, lab in enumerate(labels):
            out |= {f"{lab}|auc": aucs[:, j], f"{lab}|f1": f1[:, j], f"{lab}|sensitivity": sens[:, j]}
            out |= {f"{lab}|specificity": spec[:, j], f"{lab}|precision": prec[:, j]}
        out["macro_auc"], out["macro_f1"] = macro_mean(aucs, in_both), macro_mean(f1, in_f1)
        out["micro_f1"] = _f1(tp.sum(1), fp.sum(1), fn.sum(1))
        total = w.sum(1)
        out["exact_match"] = (w @ (pred == y).all(1)) / total
        out["hamming_loss"] = (w @ (pred != y).mean(1)) / total
        return out

    point, samples = bootstrap_samples(batch, n, groups=groups, n_boot=n_boot, seed=seed)
    # a finding's sensitivity is a share of its positive images, its specificity of the rest: each interval expanded
    # for (and, at 0 or 1, exact on) the groups among them
    rows = {
        f"{lab}|{m}": part
        for j, lab in enumerate(labels)
        for m, part in (("sensitivity", y[:, j]), ("specificity", ~y[:, j]))
    }
    res = point_and_ci(point, samples, part_units(groups, rows), {*rows, "exact_match"})
    per_label = {
        lab: {
            **{m: res[f"{lab}|{m}"] for m in ("auc", "f1", "sensitivity", "specificity", "precision")},
            "n_positive": int(y[:, j].sum()),
            "prevalence": float(y[:, j].mean()),
        }
        for j, lab in enumerate(labels)
    }
    headline = {m: res[m] for m in ("macro_auc", "macro_f1", "micro_f1", "exact_match", "hamming_loss")}
    used = resamples_used(samples, {m: m for m in ("macro_auc", "macro_f1")})
    bootstrap = {"n_boot": int(n_boot), "seed": int(seed), "by_group": groups is not None, "resamples_used": used}
    averaged = {"macro_auc": [labels[j] for j in both], "macro_f1": [lab for j, lab in enumerate(labels) if in_f1[j]]}
    return {
        "n": n,
        "labels": list(labels),
        "threshold": threshold,
        **headline,
        "averaged_over": averaged,
        "per_label": per_label,
        "bootstrap": bootstrap,
    }
