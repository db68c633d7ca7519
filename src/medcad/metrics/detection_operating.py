"""A detector's validated operating point: each fold's score threshold chosen on its validation part (the highest
box F1 at IoU 0.5), and its test images' boxes scored at it, pooled out-of-fold with cluster-bootstrap CIs, beside
the fixed score of `medcad.metrics.detection.SCORE_THRESHOLD` (a detector whose scores run low had scored
P / R / F1 0.013 / 0.305 / 0.024 at 0.5 alone)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcad.metrics.detection import SCORE_THRESHOLD, detection_metrics
from medcad.metrics.froc import FROCTable


def f1_threshold(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], n_classes: int) -> float | None:
    """The score threshold at which the boxes of every class, matched at IoU 0.5, reach their highest micro F1
    (2 TP / (2 TP + FP + FN)) on these images: chosen on a fold's validation part, it is the detector's validated
    operating point. Ties go to the highest threshold (the fewest boxes kept); None where no box finds a true one.

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index], the full ranking.
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        n_classes: number of classes (no background).
    """
    table = FROCTable(preds, truths, np.ones(n_classes, bool), lesion_level=False)  # the boxes as F1 counts them
    if not table.has_lesions or not table.tp.any():
        return None
    tp = np.cumsum(table.tp)[table.ends]
    fp = np.cumsum(table.fp)[table.ends]
    f1 = 2 * tp / (2 * tp + fp + (table.truths_per_image.sum() - tp))
    return float(table.score[table.ends][int(np.argmax(f1))])


def validated_operating_point(
    dets: list[np.ndarray],
    truths: list[np.ndarray],
    labels: list[str],
    thresholds: Sequence[float | None],
    n_per_fold: Sequence[int],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    frame_classes: Sequence[str] = (),
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The folds' test boxes kept from each fold's validated threshold and scored as `detection_metrics` scores them.

    Args:
        dets, truths: the folds' test images in fold order, as `detection_metrics` takes them.
        labels: class names.
        thresholds: each fold's `f1_threshold` on its validation part (None: no box found a true one there; that
            fold keeps `SCORE_THRESHOLD`).
        n_per_fold: test images of each fold, in order.
        groups, frame_classes, n_boot: as `detection_metrics`.

    Returns:
        {rule, thresholds, folds_without_threshold, mean_threshold (of the folds that have one: what `medcad
        predict --operating-point f1` applies to the ensemble; None where none has), iou_thresholds (P / R / F1
        with CIs at each IoU, as `detection_metrics`), frame_level ({accuracy, macro_f1})}.
    """
    used = [SCORE_THRESHOLD if t is None else float(t) for t in thresholds]
    per_image = np.repeat(used, n_per_fold)
    kept = [d[d[:, 4] >= t] for d, t in zip(dets, per_image, strict=True)]
    m = detection_metrics(
        kept,
        truths,
        labels,
        score_threshold=0.0,
        groups=groups,
        frame_classes=frame_classes,
        n_boot=n_boot,
        ranking=False,
    )
    return {
        "rule": "each fold's score threshold of the highest box F1 (every class, IoU 0.5) on its validation part",
        "thresholds": [None if t is None else float(t) for t in thresholds],
        "folds_without_threshold": [k for k, t in enumerate(thresholds) if t is None],
        # the folds' own thresholds alone (a fold without one keeps 0.5 for its test images, but 0.5 was never
        # validated: it does not enter what --operating-point f1 deploys); None where no fold has one
        "mean_threshold": float(np.mean(valid)) if (valid := [t for t in thresholds if t is not None]) else None,
        "iou_thresholds": m["iou_thresholds"],
        "frame_level": {"accuracy": m["frame_level"]["accuracy"], "macro_f1": m["frame_level"]["macro_f1"]},
    }
