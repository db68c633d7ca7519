"""Segmentation metrics from per-image pixel counts: Dice and IoU per image and pooled, with bootstrap CIs.

Everything derives from `mask_counts` (true/false positive and false negative pixels per image), so masks are
thresholded once and the bootstrap only reweighs N numbers per count. Conventions: an image whose truth and
prediction are both empty scores Dice = IoU = 1 (it correctly shows no lesion); any prediction on an empty
truth scores 0. Mean metrics weigh every image alike; pooled metrics sum pixels over images first, so large
lesions weigh more. Results are plain floats and lists, ready for JSON, in the house style of
`metrics.classification`: ``{"value": float, "ci95": [lo, hi]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medcad.metrics.stats import weighted_bootstrap

COUNT_KEYS = ("tp", "fp", "fn", "pred_area", "true_area")


def mask_counts(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image pixel counts of predicted and true binary masks.

    Args:
        pred: predicted masks (N, H, W), bool (or anything where nonzero means lesion).
        true: true masks (N, H, W).

    Returns:
        int64 arrays (N,): tp, fp, fn, pred_area, true_area.
    """
    p, t = np.asarray(pred).astype(bool, copy=False), np.asarray(true).astype(bool, copy=False)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"pred {p.shape} and true {t.shape} must both be (N, H, W) masks of one size")
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    tp = np.count_nonzero(p & t, axis=1).astype(np.int64)
    pred_area = np.count_nonzero(p, axis=1).astype(np.int64)
    true_area = np.count_nonzero(t, axis=1).astype(np.int64)
    return {"tp": tp, "fp": pred_area - tp, "fn": true_area - tp, "pred_area": pred_area, "true_area": true_area}


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den, with `empty` where den is 0."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    return np.divide(num, den, out=np.full(num.shape, empty), where=den > 0)


def dice_iou(counts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dice 2TP / (2TP + FP + FN) and IoU TP / (TP + FP + FN) per image; 1.0 for both where both masks are empty."""
    tp, fp, fn = (np.asarray(counts[k], dtype=float) for k in ("tp", "fp", "fn"))
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0), _ratio(tp, tp + fp + fn, 1.0)


def segmentation_metrics(
    counts: dict[str, np.ndarray],
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    lesion: np.ndarray | None = None,
    subsets: dict[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Dice, IoU, pixel precision and recall over a test set, with percentile bootstrap 95 % CIs.

    Args:
        counts: `mask_counts` output for N images.
        groups: group id per image (patient, or duplicate group); whole groups are resampled.
        lesion: bool (N,) marking the images that show a lesion; default: those whose true mask is non-empty.
        subsets: {name: bool (N,)} parts of the images (e.g. one per class label) scored in the same bootstrap
            resamples as the whole set (each resample restricted to the part), so one statistic over the same
            images has one CI wherever it is reported.
        n_boot: bootstrap resamples.
        seed: random seed.

    Returns:
        "dice", "iou": mean per-image scores; "dice_pooled", "iou_pooled": from pixel counts summed over images;
        "precision", "recall": pooled pixel precision and recall; "dice_lesion", "iou_lesion": mean over lesion
        images (None when there are none); each ``{"value", "ci95"}``. "empty_images" (only when some true masks
        are empty): {"n", "false_positive_rate" (fraction with any predicted pixel), "ci95"}, and with it
        "lesion_images_found": {"n", "rate" (fraction of images with a true lesion and any predicted pixel), "ci95"}
        — the frame-level sensitivity beside the false-positive rate.
        "per_image_quantiles": {min, q25, median, q75, max} of the per-image Dice; "n_images", "n_lesion_images".
        With `subsets`, "subsets": {name: the same figures over that part} for each non-empty part.

    Raises:
        ValueError: no images, or `lesion` / a subset without one flag per image.
    """
    c = {k: np.asarray(counts[k], dtype=float) for k in COUNT_KEYS}
    n = len(c["tp"])
    if n == 0:
        raise ValueError("no images to score")
    dice, iou = dice_iou(counts)
    has_lesion = c["true_area"] > 0 if lesion is None else np.asarray(lesion, dtype=bool)
    parts = {"": np.ones(n, dtype=bool)}
    for name, part in {"lesion": has_lesion, **{f"subset {k}": v for k, v in (subsets or {}).items()}}.items():
        part = np.asarray(part, dtype=bool)
        if part.shape != (n,):
            raise ValueError(f"{name} has shape {part.shape}; pass one flag per image, shape ({n},)")
        if name != "lesion" and part.any():
            parts[name] = part
    empty = c["true_area"] == 0
    predicted = (c["pred_area"] > 0).astype(float)

    def one(w: np.ndarray, part: np.ndarray) -> dict[str, np.ndarray]:  # (B, N) image weights -> {name: (B,)}
        w = w * part
        tp, fp, fn = w @ c["tp"], w @ c["fp"], w @ c["fn"]
        total = w.sum(axis=1)
        out = {
            "dice": _ratio(w @ dice, total, np.nan),
            "iou": _ratio(w @ iou, total, np.nan),
            "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
            "iou_pooled": _ratio(tp, tp + fp + fn, 1.0),
            "precision": _ratio(tp, tp + fp, np.nan),
            "recall": _ratio(tp, tp + fn, np.nan),
        }
        if (has_lesion & part).any():
            wl = w * has_lesion
            out["dice_lesion"] = _ratio(wl @ dice, wl.sum(axis=1), np.nan)
            out["iou_lesion"] = _ratio(wl @ iou, wl.sum(axis=1), np.nan)
        if (empty & part).any():
            we = w * empty
            out["empty_fpr"] = _ratio(we @ predicted, we.sum(axis=1), np.nan)
            wl = w * ~empty
            out["lesion_found"] = _ratio(wl @ predicted, wl.sum(axis=1), np.nan)
        return out

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        return {f"{name}/{k}": v for name, part in parts.items() for k, v in one(w, part).items()}

    # the rows each figure is over, whose groups its interval is expanded for (the lesion images' Dice over 3
    # patients of 40 had been widened as for 40)
    rows = {}
    for name, part in parts.items():
        over = {"dice_lesion": has_lesion, "iou_lesion": has_lesion, "empty_fpr": empty, "lesion_found": ~empty}
        for k in ("dice", "iou", "dice_pooled", "iou_pooled", "precision", "recall", *over):
            rows[f"{name}/{k}"] = part & over.get(k, True)
    shares = [k for k in rows if k.rpartition("/")[2] in ("empty_fpr", "lesion_found")]  # shares of images
    stats = weighted_bootstrap(batch, n, groups=groups, n_boot=n_boot, seed=seed, rows=rows, proportions=shares)

    def summary(name: str, part: np.ndarray) -> dict:
        # keys are '<subset>/<statistic>': a subset (a label) may hold '/' ('CIN 1/2'), a statistic's name never does
        st = {k.rpartition("/")[2]: v for k, v in stats.items() if k.rpartition("/")[0] == name}
        out = {k: st[k] for k in ("dice", "iou", "dice_pooled", "iou_pooled", "precision", "recall")}
        out["dice_lesion"], out["iou_lesion"] = st.get("dice_lesion"), st.get("iou_lesion")
        if (empty & part).any():
            fpr = st["empty_fpr"]
            out["empty_images"] = {"n": int((empty & part).sum()), "false_positive_rate": fpr["value"]}
            out["empty_images"] |= {k: fpr[k] for k in ("ci95", "ci95_method", "no_ci") if k in fpr}
            if (~empty & part).any():
                found = st["lesion_found"]
                out["lesion_images_found"] = {"n": int((~empty & part).sum()), "rate": found["value"]}
                out["lesion_images_found"] |= {k: found[k] for k in ("ci95", "ci95_method", "no_ci") if k in found}
        quantiles = np.quantile(dice[part], [0, 0.25, 0.5, 0.75, 1]).tolist()
        out["per_image_quantiles"] = dict(zip(("min", "q25", "median", "q75", "max"), quantiles, strict=True))
        out["n_images"] = int(part.sum())
        out["n_lesion_images"] = int((has_lesion & part).sum())
        return out

    result = summary("", parts[""])
    if subsets is not None:
        result["subsets"] = {k: summary(f"subset {k}", parts[f"subset {k}"]) for k in subsets if f"subset {k}" in parts}
    return result


def per_image_table(counts: dict[str, np.ndarray], keys: Sequence[Any]) -> pd.DataFrame:
    """One row per image: key (e.g. the file), dice, iou, true_area, pred_area; to pick best/median/worst cases."""
    dice, iou = dice_iou(counts)
    if len(keys) != len(dice):
        raise ValueError(f"{len(keys)} keys for {len(dice)} images")
    return pd.DataFrame(
        {
            "key": list(keys),
            "dice": dice,
            "iou": iou,
            "true_area": np.asarray(counts["true_area"]),
            "pred_area": np.asarray(counts["pred_area"]),
        }
    )


def lesion_area(probs: np.ndarray, threshold: float = 128) -> np.ndarray:
    """Fraction of each image's pixels predicted as lesion: probs (N, S, S) uint8 0..255 (threshold 128, i.e.
    p >= 0.5) or float in [0, 1] (give threshold=0.5) -> (N,) float in [0, 1]."""
    p = np.asarray(probs)
    return (p.reshape(len(p), -1) >= threshold).mean(axis=1) if len(p) else np.zeros(0)


def frame_threshold(score: np.ndarray, counts: dict[str, np.ndarray]) -> float:
    """The frame-level lesion decision: the smallest frame score (e.g. the predicted lesion area as a fraction of
    the image, or a class head's probability that the frame shows a lesion) from which a frame shows a lesion,
    chosen to maximise the mean per-image Dice of `counts` (validation images) once the masks of frames below it
    are emptied. An emptied frame scores 1 when its truth is empty, else 0 (the Dice conventions of this module).
    0.0 keeps every predicted mask.

    Args:
        score: (N,) frame scores, higher meaning more likely a lesion.
        counts: `mask_counts` of the same frames' predicted masks against their true masks.

    Returns:
        The score threshold (0.0, or just above the largest score when emptying every frame scores best); ties go
        to the smallest one (the fewest frames emptied).
    """
    score = np.asarray(score, dtype=float)
    if len(score) == 0:
        return 0.0
    kept = dice_iou(counts)[0]  # Dice of each frame when its mask is kept
    emptied = (np.asarray(counts["true_area"]) == 0).astype(float)  # ... and when it is emptied
    order = np.argsort(score, kind="stable")
    a, gain = score[order], (emptied - kept)[order]
    # threshold t = a[j] empties frames 0..j-1 (score < a[j]); past the last frame, t empties them all
    candidates = np.append(a, np.nextafter(a[-1], np.inf))
    total = np.concatenate([[0.0], np.cumsum(gain)])  # Dice gained by emptying the first j frames
    distinct = np.append(np.r_[True, a[1:] != a[:-1]], True)  # only thresholds between distinct scores
    best = int(np.flatnonzero(distinct)[np.argmax(total[distinct])])
    return 0.0 if best == 0 else float(candidates[best])


def apply_frame_decision(counts: dict[str, np.ndarray], score: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """`counts` with the masks of frames whose score is below `threshold` emptied (no lesion shown)."""
    off = np.asarray(score, dtype=float) < threshold
    out = {k: np.asarray(v).copy() for k, v in counts.items()}
    out["fn"][off] = out["true_area"][off]
    for k in ("tp", "fp", "pred_area"):
        out[k][off] = 0
    return out


FRAME_SCORES = ("lesion_area", "p_lesion")


def frame_scores(
    kind: str,
    masks: np.ndarray | None,
    probs: np.ndarray | None,
    normal: int | None,
    threshold: float = 128,
    temperature: float | None = None,
) -> np.ndarray:
    """Per-frame scores of the frame-level decision (higher: more likely a lesion), as a predictor computes them.

    Args:
        kind: "lesion_area" (fraction of the frame predicted as lesion, from `masks`) or "p_lesion" (a class
            head's probability that the frame is not lesion-free: 1 - p[normal], from `probs`).
        masks: (N, H, W) lesion probabilities (for "lesion_area"): uint8 0..255, or float in [0, 1] with
            `threshold` 0.5.
        probs: (N, K) class probabilities (for "p_lesion").
        normal: column of the lesion-free class in `probs` (for "p_lesion").
        threshold: lesion-probability threshold of `masks` (128: p >= 0.5 on uint8 masks).
        temperature: the fold's temperature, applied to `probs` first (None: they are already scaled, as a
            predictor's are).

    Returns:
        (N,) float scores.
    """
    if kind == "lesion_area":
        return lesion_area(masks, threshold)
    if kind == "p_lesion":
        p = np.asarray(probs, dtype=np.float64)
        if temperature is not None:
            from medcad.metrics.calibration import apply_temperature

            p = apply_temperature(p, temperature)
        return 1.0 - p[:, normal]
    raise ValueError(f"unknown frame score {kind!r}; one of {FRAME_SCORES}")
