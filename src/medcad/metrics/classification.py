"""Classification metrics with bootstrap CIs: per class, averaged, binary operating points, subsets.

Every ROC curve and AUC of a class is computed on its `medcad.metrics.roc.class_score` (the log-odds of the class
against the rest, float64), not on its probability column: for two classes both classes' AUCs, the macro AUC and
the binary AUC are then one number even where a float32 softmax saturates; for more classes it is the usual
one-vs-rest AUC of p_c (see `class_score`). Thresholds that a decision applies (at_0.5, Youden, validated operating
points) stay on the probability.

Undefined quantities (0/0, e.g. the recall of a class absent from y_true) are nan and left out of macro and
weighted averages, as scikit-learn does with ``zero_division=np.nan``. Macro averages are over the classes the rows
hold or the model predicts, as scikit-learn's (its labels: y_true and y_pred together), specificity too: a class an
external set lacks and the model never predicts keeps its per-class row, but its specificity of 1 no longer enters
the macro mean (it had, beside recalls and F1s that left the class out). A bootstrap resample averages the same
classes as the point estimate: where one of them is undefined in it (a rare class not drawn), the resample
gives no macro figure and its interval is read from the other resamples (`medcad.metrics.stats.macro_mean`). Every
function returns plain Python floats, ints and lists, so the result goes straight into
``json.dumps(..., allow_nan=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_curve

from medcad.metrics.calibration import calibration_bins, reliability_curve, weighted_ece
from medcad.metrics.roc import as_probs, class_score, delong_ci, weighted_auc
from medcad.metrics.stats import (
    bootstrap_samples,
    group_index,
    macro_mean,
    part_units,
    point_and_ci,
    resamples_used,
    weighted_bootstrap,
)

Batch = Callable[[np.ndarray], dict[str, np.ndarray]]  # (B, N) row weights -> {name: (B,) values}
MAX_ROC_POINTS = 200
MACRO = ("balanced_accuracy", "macro_f1", "macro_auc")  # means over classes (`macro_mean` in the resamples)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return np.divide(a, b, out=np.full(a.shape, np.nan), where=b > 0)


def _nanmean(x: np.ndarray, weights: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Weighted mean over `axis` of the finite entries; nan where none (no warnings)."""
    ok = np.isfinite(x)
    w = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape)
    return _div(np.where(ok, x * w, 0).sum(axis=axis), np.where(ok, w, 0).sum(axis=axis))


def _validate(y_true: Any, probs: Any, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = [str(label) for label in labels]
    p = as_probs(probs)
    y = np.asarray(y_true)
    if p.shape[1] != len(labels) or y.shape != (p.shape[0],):
        raise ValueError(f"probs {p.shape} and y_true {y.shape} do not fit {len(labels)} labels {labels}")
    if y.size and (y.min() < 0 or y.max() >= len(labels) or not np.all(np.equal(np.mod(y, 1), 0))):
        raise ValueError(f"y_true must hold class indices 0..{len(labels) - 1} into labels {labels}")
    return y.astype(int), p, labels


def _confusion(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices (B, K, K) for row weights (B, N); rows true, columns predicted."""
    b = w.shape[0]
    idx = (y * k + pred)[None, :] + (k * k) * np.arange(b)[:, None]
    return np.bincount(idx.ravel(), w.ravel(), minlength=b * k * k).reshape(b, k, k)


def _per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates from confusion matrices (..., K, K); each (..., K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))[..., None]
    fp, fn = predicted - tp, support - tp
    tn = total - tp - fp - fn
    return {
        "precision": _div(tp, predicted),
        "recall": _div(tp, support),
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * tp, support + predicted),
        "support": support,
    }


def operating_point(yb: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold, sensitivity, specificity, PPV and NPV of calling `score >= threshold` positive against the
    bool truths `yb` (an undefined ratio is NaN)."""
    pp = score >= threshold
    tp, fp = np.sum(yb & pp), np.sum(~yb & pp)
    fn, tn = np.sum(yb & ~pp), np.sum(~yb & ~pp)
    return {
        "threshold": float(threshold),
        "sensitivity": float(_div(tp, tp + fn)),
        "specificity": float(_div(tn, tn + fp)),
        "ppv": float(_div(tp, tp + fp)),
        "npv": float(_div(tn, tn + fn)),
    }


def sens_spec_batch(yb: np.ndarray, pred_pos: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity (B,) of fixed predictions under row weights (B, N)."""
    yf, pf = yb.astype(float), pred_pos.astype(float)
    return _div(w @ (yf * pf), w @ yf), _div(w @ ((1 - yf) * (1 - pf)), w @ (1 - yf))


def _roc(yb: np.ndarray, score: np.ndarray, max_points: int = MAX_ROC_POINTS) -> dict[str, list[float]]:
    """One-vs-rest ROC curve of a `class_score`, at most `max_points` points (ends kept); empty lists if undefined.
    Its thresholds are probabilities of the class, as the runs' tables give them: the log-odds' sigmoid (the class's
    probability where a row sums to 1; the first, above every score, is 1)."""
    if yb.all() or not yb.any():
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = roc_curve(yb, score)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": expit(thr).tolist()}


def _binary(y: np.ndarray, p: np.ndarray, labels: list[str], positive: str | None) -> tuple[dict, Batch]:
    """Binary-only results and a batch function for the CIs of their sensitivities and specificities.

    The AUC, its DeLong interval and the sensitivity / specificity at 90 % (read off the ROC curve) are on the
    positive class's `class_score`, as every class AUC is; the thresholded points (at_0.5, Youden) are on its
    probability, the number a decision thresholds."""
    pos_label = labels[1] if positive is None else str(positive)
    if pos_label not in labels:
        raise ValueError(f"positive={positive!r} is not one of the labels {labels}")
    c = labels.index(pos_label)
    yb, s, score = y == c, p[:, c], class_score(p, c)
    nan = float("nan")
    youden = {"threshold": nan, "sensitivity": nan, "specificity": nan, "ppv": nan, "npv": nan}
    sens_at_spec = spec_at_sens = nan
    if yb.any() and not yb.all():
        fpr, tpr, thr = roc_curve(yb, s, drop_intermediate=False)
        best = 1 + int(np.argmax((tpr - fpr)[1:]))  # skip the infinite "predict nothing" threshold
        youden = operating_point(yb, s, thr[best])
        fpr, tpr, _ = roc_curve(yb, score, drop_intermediate=False)
        sens_at_spec = float(tpr[fpr <= 0.1].max())
        spec_at_sens = float((1 - fpr[tpr >= 0.9]).max())
    points = {"at_0.5": operating_point(yb, s, 0.5), "youden": youden}
    preds = {name: s >= pt["threshold"] for name, pt in points.items()}  # nan threshold -> all False

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, pred in preds.items():
            out[f"{name}/sensitivity"], out[f"{name}/specificity"] = sens_spec_batch(yb, pred, w)
        return out

    result = {
        "positive": pos_label,
        # ci95 is filled in from the (cluster) bootstrap; DeLong's interval treats images as independent
        "auc": {
            "value": float(weighted_auc(yb, score)[0]),
            "ci95_delong_image_level": list(delong_ci(yb.astype(int), score)),
        },
        **points,
        "sensitivity_at_90_specificity": sens_at_spec,
        "specificity_at_90_sensitivity": spec_at_sens,
        "chosen_on": (
            "youden and the *_at_90_* figures are chosen on these same rows (optimistic: a clinician's threshold "
            "must come from other data); validated_operating_points are chosen on each fold's validation part"
        ),
    }
    return result, batch


CLASS_RATES = ("precision", "recall", "specificity", "f1")  # per class, each with its interval


def _share_units(
    y: np.ndarray, pred: np.ndarray, labels: Sequence[str], binary: dict, groups
) -> tuple[dict[str, int], set[str]]:
    """The figures of `classification_metrics` that are shares of images (accuracy; each class's recall,
    specificity and precision; a two-class run's sensitivity and specificity), and for those of some images the
    groups among them their intervals resample (recall: the class's images; specificity: the others; precision: the
    images called that class), for `point_and_ci`: the expanded interval and, where every resample gives 0 or 1, the
    exact one on those groups."""
    rows: dict[str, np.ndarray] = {}
    for c, lab in enumerate(labels):
        rows |= {f"recall/{lab}": y == c, f"specificity/{lab}": y != c, f"precision/{lab}": pred == c}
    if binary:
        pos = np.asarray(y) == list(labels).index(binary["positive"])
        for name in ("at_0.5", "youden"):
            rows |= {f"{name}/sensitivity": pos, f"{name}/specificity": ~pos}
    return part_units(groups, rows), {"accuracy", *rows}


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    positive: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All classification metrics a CAD paper reports, headline ones with percentile bootstrap 95 % CIs.

    Args:
        y_true: true class index per row (N,), indexing `labels`.
        probs: class probabilities (N, K) (rows sum to 1), or p(labels[1]) (N,) for two labels.
        labels: class names (K).
        groups: optional group (patient) per row: CIs then come from a cluster bootstrap over groups (a row without
            an id is a group of its own, see `medcad.metrics.stats.group_index`).
        positive: positive label of a binary problem (default labels[1]).
        n_boot: bootstrap resamples (0 skips CIs: they are nan).
        seed: bootstrap seed.

    Returns:
        JSON-ready dict: n, labels, accuracy, balanced_accuracy, macro_f1, weighted_f1, macro_auc, ece (each
        {value, ci95}), macro, weighted, per_class, confusion_matrix, roc, reliability, bootstrap (n_boot, seed,
        by_group, n_groups, and resamples_used: {balanced_accuracy, macro_f1, macro_auc: how many resamples defined
        the figure for every class the point estimate averages, the ones its interval is read from; the interval is
        nan when fewer than half did}), and for two labels `binary`. Every AUC and ROC curve of a class is on its
        `class_score` (log-odds against the rest): for two labels both classes' AUCs, the macro AUC and the binary
        AUC are one number; for more it is the usual one-vs-rest AUC of p_c. AUC CIs (binary, per class, macro)
        come from the bootstrap (over `groups` when given); DeLong's image-level interval is kept beside the binary
        AUC as `ci95_delong_image_level`. The Youden point and the sensitivity/specificity at 90 % here are chosen on
        the same rows they are scored on (in-sample, optimistic); runs report validation-chosen operating points
        separately.
    """
    y, p, labels = _validate(y_true, probs, labels)
    n, k = p.shape
    if n == 0:
        raise ValueError("classification_metrics got no rows; check the split or subset that produced them")
    pred = p.argmax(axis=1)
    onehot = y[:, None] == np.arange(k)  # (N, K)
    scores = np.column_stack([class_score(p, c) for c in range(k)])  # (N, K): what each class's AUC ranks
    auc_classes = [c for c in range(k) if 0 < onehot[:, c].sum() < n]
    bins, conf, correct = calibration_bins(y, p)
    binary, binary_batch = _binary(y, p, labels, positive) if k == 2 else ({}, None)
    cm = _confusion(y, pred, k, np.ones((1, n)))[0]
    rates = _per_class(cm)
    seen = (rates["support"] > 0) | (cm.sum(axis=0) > 0)  # held or predicted: the classes macro figures average
    aucs = [float(weighted_auc(onehot[:, c], scores[:, c])[0]) if c in auc_classes else float("nan") for c in range(k)]

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        cms = _confusion(y, pred, k, w)
        per = _per_class(cms)
        class_aucs = np.full((w.shape[0], k), np.nan)
        for c in auc_classes:
            class_aucs[:, c] = weighted_auc(onehot[:, c], scores[:, c], w)
        out = {
            "accuracy": _div(np.trace(cms, axis1=1, axis2=2), cms.sum(axis=(1, 2))),
            "balanced_accuracy": macro_mean(per["recall"], np.isfinite(rates["recall"])),
            "macro_f1": macro_mean(per["f1"], np.isfinite(rates["f1"])),
            "weighted_f1": _nanmean(per["f1"], per["support"]),
            "macro_auc": macro_mean(class_aucs, np.isfinite(aucs)),
            "ece": weighted_ece(bins, conf, correct, w),
            **{f"auc/{labels[c]}": class_aucs[:, c] for c in auc_classes},
            **{f"{m}/{labels[c]}": per[m][:, c] for m in CLASS_RATES for c in range(k)},
        }
        return out | (binary_batch(w) if binary_batch else {})

    point, samples = bootstrap_samples(batch, n, groups=groups, n_boot=n_boot, seed=seed)
    stats = point_and_ci(point, samples, *_share_units(y, pred, labels, binary, groups))
    names = ("precision", "recall", "specificity", "f1")
    result: dict[str, Any] = {
        "n": int(n),
        "labels": labels,
        **{m: stats[m] for m in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc", "ece")},
        "macro": {m: float(_nanmean(np.where(seen, rates[m], np.nan))) for m in names},
        "weighted": {m: float(_nanmean(rates[m], rates["support"])) for m in names},
        "per_class": {
            label: {
                **{m: float(rates[m][c]) for m in names},
                "support": int(rates["support"][c]),
                "auc": aucs[c],
                "auc_ci95": stats[f"auc/{label}"]["ci95"] if c in auc_classes else [float("nan")] * 2,
                **{f"{m}_ci95": stats[f"{m}/{label}"]["ci95"] for m in CLASS_RATES},
                **{
                    f"{m}_ci95_method": stats[f"{m}/{label}"]["ci95_method"]
                    for m in CLASS_RATES
                    if "ci95_method" in stats[f"{m}/{label}"]
                },
            }
            for c, label in enumerate(labels)
        },
        # the classes each macro figure averages: fewer than `labels` in a subset that lacks a class (a domain's
        # macro AUC over two of three classes had stood in one matrix beside others over all three, unsaid)
        "averaged_over": {
            "macro_auc": [labels[c] for c in auc_classes],
            "balanced_accuracy": [lab for c, lab in enumerate(labels) if np.isfinite(rates["recall"][c])],
            "macro_f1": [lab for c, lab in enumerate(labels) if np.isfinite(rates["f1"][c])],
        },
        "confusion_matrix": {"labels": labels, "matrix": cm.astype(int).tolist()},
        "roc": {label: _roc(onehot[:, c], scores[:, c]) for c, label in enumerate(labels)},
        "reliability": reliability_curve(y, p),
        "bootstrap": {
            "n_boot": int(n_boot),
            "seed": int(seed),
            "by_group": groups is not None,
            "n_groups": group_index(groups, n)[1] if groups is not None else int(n),
            "resamples_used": resamples_used(samples, {m: m for m in MACRO}),
        },
    }
    if binary:
        for point in ("at_0.5", "youden"):
            for m in ("sensitivity", "specificity"):
                binary[point][m] = stats[f"{point}/{m}"]
        binary["auc"]["ci95"] = stats.get(f"auc/{binary['positive']}", {"ci95": [float("nan")] * 2})["ci95"]
        binary["auc"]["ci95_method"] = "cluster bootstrap over groups" if groups is not None else "bootstrap of images"
        result["binary"] = binary
    return result


def _subset_keys(values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    """Subset name per row as str; '' for empty, None or nan."""
    vals = np.asarray(values, dtype=object)
    if vals.shape != (n,):
        raise ValueError(f"subset column has shape {vals.shape}; expected one value per row ({n},)")
    empty = {"", "nan", "none", "<na>", "nat"}
    return np.array(["" if v is None or str(v).strip().lower() in empty else str(v) for v in vals], dtype=object)


def subset_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    subsets: Sequence[Any] | np.ndarray,
    **kw: Any,
) -> dict[str, dict[str, Any]]:
    """`classification_metrics` on the rows of each subset (e.g. domain, light modality, subgroup).

    Args:
        y_true, probs, labels: as for `classification_metrics`.
        subsets: subset name per row; empty, None and nan rows are left out.
        **kw: passed on (groups, if given, is subset along with the rows).

    Returns:
        {subset: metrics}; subsets with fewer than 2 rows get {"n": n} only.
    """
    y, p, labels = _validate(y_true, probs, labels)
    keys = _subset_keys(subsets, len(y))
    groups = kw.pop("groups", None)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(keys) - {""}):
        mask = keys == key
        n = int(mask.sum())
        sub_groups = None if groups is None else np.asarray(groups)[mask]
        out[key] = {"n": n} if n < 2 else classification_metrics(y[mask], p[mask], labels, groups=sub_groups, **kw)
    return out


def subtype_vs_reference(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    subtypes: Sequence[Any] | np.ndarray,
    reference_label: str,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    positive: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Each subtype (e.g. stone, cyst) against the reference class (e.g. normal), as in renal ultrasound.

    For subtype s the rows are those whose subtype is s (and label is not the reference) plus every row
    labelled `reference_label`. The score is minus the reference's `class_score` (the log-odds of "not reference",
    which ranks as 1 - p(reference) does, saturated rows apart); predictions are argmax.

    Args:
        y_true, probs, labels: as for `classification_metrics`.
        subtypes: subtype per row; empty, None and nan are no subtype.
        reference_label: the label all subtypes are compared with.
        groups, n_boot, seed: cluster bootstrap as in `classification_metrics`.
        positive: unused (the positive class is "not reference"); accepted so callers can pass the same kwargs.

    Returns:
        {subtype: {n, n_subtype, n_reference, accuracy, auc (bootstrap CI; DeLong beside it), sensitivity (on
        subtype rows), specificity (on reference rows)}}, each rate as {value, ci95}.
    """
    del positive
    y, p, labels = _validate(y_true, probs, labels)
    if reference_label not in labels:
        raise ValueError(f"reference_label={reference_label!r} is not one of the labels {labels}")
    ref = labels.index(reference_label)
    keys = _subset_keys(subtypes, len(y))
    pred = p.argmax(axis=1)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(keys[y != ref]) - {""}):
        sub_rows, ref_rows = (keys == key) & (y != ref), y == ref
        rows = sub_rows | ref_rows
        yb = ~ref_rows[rows]  # True = subtype (abnormal) row
        pred_pos = pred[rows] != ref
        correct = (pred[rows] == y[rows]).astype(float)
        score = -class_score(p[rows], ref)

        def batch(w: np.ndarray, yb=yb, pred_pos=pred_pos, correct=correct, score=score) -> dict[str, np.ndarray]:
            sens, spec = sens_spec_batch(yb, pred_pos, w)
            acc = _div(w @ correct, w.sum(axis=1))
            return {"accuracy": acc, "sensitivity": sens, "specificity": spec, "auc": weighted_auc(yb, score, w)}

        sub_groups = None if groups is None else np.asarray(groups)[rows]
        over = {"sensitivity": yb, "specificity": ~yb}  # shares of the subtype's / the reference's images
        shares = [*over, "accuracy"]
        stats = weighted_bootstrap(
            batch, int(rows.sum()), groups=sub_groups, n_boot=n_boot, seed=seed, rows=over, proportions=shares
        )
        out[key] = {
            "n": int(rows.sum()),
            "n_subtype": int(sub_rows.sum()),
            "n_reference": int(ref_rows.sum()),
            "accuracy": stats["accuracy"],
            "auc": {**stats["auc"], "ci95_delong_image_level": list(delong_ci(yb.astype(int), score))},
            "sensitivity": stats["sensitivity"],
            "specificity": stats["specificity"],
        }
    return out
