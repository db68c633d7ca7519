"""Matching detections to true boxes in one image, and the counts and rates built on it (`medcad.metrics.detection`'s
parts; its docstring gives the arrays' layout and the matching rule, COCO's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def safe_div(a: Any, b: Any) -> np.ndarray:
    """a / b broadcast, as float; nan where b <= 0 (an undefined rate: the precision of a class never predicted)."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return np.divide(a, b, out=np.full(a.shape, np.nan), where=b > 0)


def nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the finite values along `axis`; nan where there are none (no warning)."""
    ok = np.isfinite(x)
    return safe_div(np.where(ok, x, 0).sum(axis=axis), ok.sum(axis=axis))


def checked_arrays(preds: Sequence, truths: Sequence, n_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Predictions as float (m, 6) and truths as (t, 5) arrays per image (module `medcad.metrics.detection`).

    Raises:
        ValueError: different numbers of images, or a class index outside 0..n_classes - 1 (names the image).
    """
    if len(preds) != len(truths):
        raise ValueError(f"got predictions for {len(preds)} images but truths for {len(truths)}")
    p = [np.asarray(a, dtype=float).reshape(-1, 6) for a in preds]
    t = [np.asarray(a, dtype=float).reshape(-1, 5) for a in truths]
    for name, arrs, col in (("prediction", p, 5), ("truth", t, 4)):
        for i, a in enumerate(arrs):
            if len(a) and (a[:, col].min() < 0 or a[:, col].max() >= n_classes):
                raise ValueError(f"{name} class index out of 0..{n_classes - 1} in image {i}")
    return p, t


def box_area(x: np.ndarray) -> np.ndarray:
    """Areas (...) of boxes (..., >=4) [x0, y0, x1, y1, ...], in squared pixels."""
    return (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (n, >=4) and (m, >=4) given as [x0, y0, x1, y1, ...]; returns (n, m)."""
    a, b = np.asarray(a, dtype=float)[:, None, :4], np.asarray(b, dtype=float)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    return safe_div(inter, box_area(a) + box_area(b) - inter).clip(0, 1) if inter.size else inter


def greedy_match(pred: np.ndarray, truth: np.ndarray, iou: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one image. Returns (TP flag per prediction, matched flag per truth)."""
    tp, matched = np.zeros(len(pred), bool), np.zeros(len(truth), bool)
    if not len(pred) or not len(truth):
        return tp, matched
    ok = (iou >= thr) & (pred[:, 5, None] == truth[None, :, 4])  # (m, t)
    for d in np.argsort(-pred[:, 4], kind="stable"):
        if not ok[d].any():
            continue
        cand = np.where(ok[d] & ~matched, iou[d], -1.0)
        g = int(cand.argmax())
        if cand[g] >= 0:
            tp[d], matched[g] = True, True
    return tp, matched


def box_counts(p: list[np.ndarray], t: list[np.ndarray], k: int, thr: float, score: float) -> np.ndarray:
    """TP, FP, FN per image and class (3, N, K) for predictions with score >= `score`."""
    out = np.zeros((3, len(p), k))
    for i, (pi, ti) in enumerate(zip(p, t, strict=True)):
        pi = pi[pi[:, 4] >= score]
        tp, matched = greedy_match(pi, ti, box_iou(pi, ti), thr)
        cls_p, cls_t = pi[:, 5].astype(int), ti[:, 4].astype(int)
        out[0, i] = np.bincount(cls_p[tp], minlength=k)
        out[1, i] = np.bincount(cls_p[~tp], minlength=k)
        out[2, i] = np.bincount(cls_t[~matched], minlength=k)
    return out


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 from counts of any one shape (nan where undefined: 0 / 0)."""
    return {
        "precision": safe_div(tp, tp + fp),
        "recall": safe_div(tp, tp + fn),
        "f1": safe_div(2 * tp, 2 * tp + fp + fn),
    }
