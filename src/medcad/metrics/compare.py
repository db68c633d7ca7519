"""Paired model comparisons that respect the run's groups, and the Holm correction of a family of tests.

Two models scored on the same test images are compared on the same cluster-bootstrap resamples: each resample draws
whole groups (patients, or near-duplicate groups) and both models' AUCs are computed under the same row weights, so the
difference keeps the pairing and the within-group correlation. The p-value inverts the percentile interval of the
bootstrap differences D* that the table shows beside it (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch.
16): p = 2 min(#{D* <= 0}, #{D* >= 0}) / B over the B finite D*, at least 1 / B, then mapped as the interval is
expanded for the number of groups (`medcad.metrics.stats.expanded_p`), so p < 0.05 when that 95 % interval leaves 0
out and not otherwise, up to one resample where np.percentile interpolates. The normal statistic z = (AUC_a -
AUC_b) / sd(D*) of pROC's bootstrap test (Robin et al., BMC Bioinformatics 12:77, 2011) is kept beside it; its p had
disagreed with the interval on few groups (difference -0.088, interval -0.220 to -0.003, normal p 0.12). Two detectors'
AP50 and mAP are compared the same way, both scored under each resample's image weights (the PASCAL VOC challenge judged
differences between methods' AP by resampling images, Everingham et al., IJCV 111:98-136, 2015; here whole groups).
The mean per-image Dice of two segmenters is compared the same way (a Wilcoxon test of per-group means had tested
another quantity than the difference shown beside it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcad.metrics.roc import binary_scores, weighted_auc
from medcad.metrics.stats import (
    bootstrap_samples,
    bootstrap_weights,
    ci_entry,
    expanded_p,
    part_units,
    percentile_ci,
    resampled_units,
    usable_samples,
)


def _groups_or_rows(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """The group ids as given (a missing one stays missing: a group of its own, see `group_index`), or the rows."""
    return np.arange(n) if groups is None else np.asarray(groups, dtype=object)


def _bootstrap_p(diff: float, samples: np.ndarray, units: int | None) -> dict[str, float]:
    """{z, p_value, p_floor} of a difference from its bootstrap samples (B,) over `units` groups (or rows): z = diff /
    sd (pROC's statistic); p by inverting the samples' expanded percentile interval (see the module's docstring and
    `medcad.metrics.stats.expanded_p`: p < 0.05 exactly where the 95 % interval shown leaves 0 out); p_floor, the p
    where no resample crossed 0 (a bound, not a measurement: shown as "< p_floor"). nan for a nan difference, where
    `percentile_ci` gives no interval (fewer than half the samples finite), or for fewer than 2 units."""
    s = usable_samples(samples)
    nan = float("nan")
    if not np.isfinite(diff) or s is None or s.size < 2:
        return {"z": nan, "p_value": nan, "p_floor": nan}
    sd = float(s.std(ddof=1))
    if sd <= 1e-15:
        z = 0.0 if abs(diff) <= 1e-12 else float(np.copysign(np.inf, diff))
    else:
        z = diff / sd
    tail = min(int((s <= 0).sum()), int((s >= 0).sum()))
    p = min(1.0, max(2 * tail, 1) / s.size)
    return {"z": float(z), "p_value": expanded_p(p, units), "p_floor": expanded_p(1 / s.size, units)}


def paired_auc_bootstrap(
    y_true: Sequence[int] | np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired cluster-bootstrap comparison of two ROC AUCs on the same rows.

    Args:
        y_true: binary labels (N,), 1 = positive.
        score_a: scores of model A (N,), higher means positive (a class's: its `medcad.metrics.roc.class_score`,
            as the runs' own AUCs).
        score_b: scores of model B (N,).
        groups: group id per row (patient / duplicate group); None resamples rows (image level).
        n_boot: number of resamples.
        seed: random seed (the same seed gives the same resamples for every pair of models).

    Returns:
        {auc_a, auc_b, difference (a - b), ci95 (of the difference, percentile), auc_a_ci95, auc_b_ci95, z,
        p_value, n, n_groups, n_boot, method}.
    """
    y = np.asarray(y_true)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    n = len(y)
    if a.shape != (n,) or b.shape != (n,):
        raise ValueError(f"scores of shapes {a.shape} and {b.shape} do not match y_true ({n},)")
    (y, a), (_, b) = binary_scores(y, a), binary_scores(y, b)  # NaN scores and labels other than 0 / 1 raise
    g = _groups_or_rows(groups, n)

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:  # (B, N): the same draws for both models
        return {"a": weighted_auc(y, a, w), "b": weighted_auc(y, b, w)}

    point, samples = bootstrap_samples(batch, n, groups=g, n_boot=n_boot, seed=seed)
    sa, sb, units = samples["a"], samples["b"], samples.units
    auc_a, auc_b = float(point["a"][0]), float(point["b"][0])
    diff = auc_a - auc_b
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": diff,
        **ci_entry(sa - sb, units),
        "auc_a_ci95": list(percentile_ci(sa, units=units)),
        "auc_b_ci95": list(percentile_ci(sb, units=units)),
        **_bootstrap_p(diff, sa - sb, units),
        "n": int(n),
        "n_groups": units,
        "n_boot": int(n_boot),
        "method": "paired cluster bootstrap" if groups is not None else "paired bootstrap (image level)",
    }


def paired_detection_bootstrap(
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    n_classes: int,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    score_threshold: float | None = None,
    lesions: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired cluster-bootstrap comparison of two detectors on the same images and truths: their rankings (AP50,
    mAP@[.5:.95], and the FROC's CPM over the `lesions` classes, `medcad.metrics.froc`) and their decisions at the
    score threshold (micro box F1 at IoU 0.5, frame accuracy at IoU 0.5), as
    `medcad.metrics.detection.detection_metrics` reports them.

    Each resample draws whole groups and scores both detectors under the same image weights
    (`medcad.metrics.detection.APScores` and `DecisionScores`: greedy matching fixes each detection's TP / FP flag,
    so a resample only reweights images); each difference's interval and p-value are read from those paired
    differences as for the AUC (module docstring). A resample where a class with truths is left out gives no macro
    AP and is not used for AP.

    Args:
        preds_a: per image (m, 6) [x0, y0, x1, y1, score, class_index] of detector A, the full ranking.
        preds_b: the same of detector B, in the same images' order and pixel coordinates.
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        n_classes: number of classes (no background).
        groups: group id per image (patient / duplicate group); None resamples images.
        score_threshold: detections at or above it count for F1 and the frame decision (None: the runs' own,
            `medcad.metrics.detection.SCORE_THRESHOLD`).
        lesions: (n_classes,) bool, the lesion classes of the CPM (default every class; whole-frame classes such as
            normal are no lesions).
        n_boot: number of resamples.
        seed: random seed.

    Returns:
        {"ap50": {...}, "map": {...}, "cpm": {...} (where a lesion class has truths), "f1": {...},
        "frame_accuracy": {...}, n, n_groups, n_boot, method,
        score_threshold, iou (of F1 and the frame decision)}; each measure: {value_a, value_b, difference (a - b),
        ci95 (of the difference, percentile), ci95_a, ci95_b, z, p_value, resamples_used,
        n_units: the independent units its interval and p are expanded for, the groups holding lesions for the CPM}.

    Raises:
        ValueError: the three lists differ in length, or a class index is out of range.
    """
    from medcad.metrics.detection import SCORE_THRESHOLD, APScores, DecisionScores
    from medcad.metrics.froc import FROCTable

    if len(preds_a) != len(preds_b):
        raise ValueError(f"detector A has predictions for {len(preds_a)} images, detector B for {len(preds_b)}")
    score = SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
    lesions = np.ones(n_classes, bool) if lesions is None else np.asarray(lesions, dtype=bool)
    scorers = [
        (
            APScores(p, truths, n_classes),
            DecisionScores(p, truths, n_classes, iou=0.5, score=score),
            FROCTable(p, truths, lesions),
        )
        for p in (preds_a, preds_b)
    ]
    n = len(preds_a)
    g = _groups_or_rows(groups, n)
    froc = scorers[0][2].has_lesions
    names = ("ap50", "map", *(("cpm",) if froc else ()), "f1", "frame_accuracy")

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:  # (B, N): the same draws for both detectors
        out = {}
        for x, (ap, decided, table) in zip("ab", scorers, strict=True):
            r = ap(w) | decided(w) | ({"cpm": table(w)["froc_cpm"]} if froc else {})
            out |= {f"{m}{x}": r[m] for m in names}
        return out

    point, samples = bootstrap_samples(batch, n, groups=g, n_boot=n_boot, seed=seed)
    # the CPM is over the groups holding lesions, its interval expanded for them, as each run's own (`FROCTable`)
    lesion_units = part_units(g, {"cpm": scorers[0][2].truths_per_image > 0}) if froc else {}
    out: dict[str, Any] = {}
    for m in names:
        a, b = samples[f"{m}a"], samples[f"{m}b"]
        va, vb = float(point[f"{m}a"][0]), float(point[f"{m}b"][0])
        units = lesion_units.get(m, samples.units)
        out[m] = {
            "value_a": va,
            "value_b": vb,
            "difference": va - vb,
            **ci_entry(a - b, units),
            "ci95_a": list(percentile_ci(a, units=units)),
            "ci95_b": list(percentile_ci(b, units=units)),
            **_bootstrap_p(va - vb, a - b, units),
            "resamples_used": int(np.isfinite(a - b).sum()),
            "n_units": int(units),  # the independent units its interval and p are expanded for
        }
    method = "paired cluster bootstrap" if groups is not None else "paired bootstrap (image level)"
    extra = {"score_threshold": score, "iou": 0.5}
    return out | {"n": int(n), "n_groups": samples.units, "n_boot": int(n_boot), "method": method} | extra


def paired_mean_test(
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    what: str = "Dice",
) -> dict[str, Any]:
    """Paired cluster-bootstrap comparison of the mean per-image Dice (or another per-image score in [0, 1], as NSD)
    of two models on the same images: the difference, its percentile CI and the p that inverts that interval
    (`_bootstrap_p`, as for AUC and AP), all of one quantity. (A Wilcoxon signed-rank test of per-group means had
    stood beside the per-image difference: with one patient's many frames the two can point opposite ways, "+0.022,
    p 0.002" where 10 of 11 patients favoured B.)

    Every figure is over the complete pairs, the images where both models have a score (not nan): the two means,
    their difference, its interval and the test are of the same images, as if the others had not been passed.

    Args:
        score_a: per-image score (`what`: Dice, NSD) of model A (N,), nan where missing.
        score_b: per-image score of model B (N,), nan where missing.
        groups: group id per image; None treats every image as its own group.
        n_boot: bootstrap resamples.
        seed: random seed.
        what: the score's name, for the `test` it reports.

    Returns:
        {mean_a, mean_b, difference (mean_a - mean_b), ci95, p_value, n (the complete pairs), n_left_out (images
        where either score is missing), n_groups (groups with a complete pair), n_boot, test}; nan figures when no
        pair is complete.
    """
    da, db = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    complete = np.isfinite(da) & np.isfinite(db)
    g = _groups_or_rows(groups, len(da))[complete]
    da, db = da[complete], db[complete]
    n = len(da)
    nan = float("nan")
    diff = da - db
    samples = [(w @ diff) / w.sum(axis=1) for w in bootstrap_weights(n, n_boot, seed, g)]
    samples = np.concatenate(samples) if samples else np.array([])
    mean_a, mean_b = (float(da.mean()), float(db.mean())) if n else (nan, nan)
    difference = mean_a - mean_b
    units = resampled_units(g, n)
    tested = _bootstrap_p(difference, samples, units)
    if n > 0 and not np.any(diff):  # no image differs: no difference to test
        tested = {**tested, "p_value": 1.0}
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "difference": difference,
        **ci_entry(samples, units),
        "p_value": tested["p_value"],
        "p_floor": tested["p_floor"],
        "n": int(n),
        "n_left_out": int((~complete).sum()),
        "n_groups": units,
        "n_boot": int(n_boot),
        "test": f"paired cluster bootstrap of the mean per-image {what} difference"
        if groups is not None
        else f"paired bootstrap of the mean per-image {what} difference (image level)",
    }


def p_floor(test: dict, n_boot: int | None = None) -> float | None:
    """The p a bootstrap test gives where no resample crossed 0: its p_floor, or 1 / B for a test written before
    p_floor (its p was not expanded for few groups); None for an analytic test."""
    n_boot = test.get("n_boot") or n_boot
    return test.get("p_floor") or (1 / n_boot if n_boot else None)


def at_floor(p: float | None, floor: float | None) -> bool:
    """Whether a bootstrap p is its resolution `floor` (no resample crossed 0): a bound, p < floor, not a value."""
    return bool(floor) and p is not None and p <= floor + 1e-12


def holm_bounds(p_values: Sequence[float | None], floors: Sequence[bool]) -> tuple[list[float], list[bool]]:
    """`holm` of a family where some raw p are bounds (`floors`: True where p < that value, `at_floor`), and whether
    each adjusted p is a bound too: Holm's adjusted p rises with every raw p, so the family adjusted with those p at 0
    gives each adjusted p's least value; where it is lower, the adjusted p shown is an upper bound (a raw "< 0.0005"
    had given a Holm p of "0.0020", as if measured).

    Returns:
        (adjusted p-values (m,), is a bound (m,)), in the input order.
    """
    adjusted = holm(p_values)
    least = holm([0.0 if f and v is not None and np.isfinite(v) else v for v, f in zip(p_values, floors, strict=True)])
    return adjusted, [bool(a - lo > 1e-12) for a, lo in zip(adjusted, least, strict=True)]


def holm(p_values: Sequence[float | None]) -> list[float]:
    """Holm step-down adjusted p-values (statsmodels `multipletests`); nan/None entries stay nan and are not
    counted in the family.

    Args:
        p_values: raw p-values of one family of tests (m,).

    Returns:
        Adjusted p-values (m,), in the input order.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.array([np.nan if v is None else float(v) for v in p_values], dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()
