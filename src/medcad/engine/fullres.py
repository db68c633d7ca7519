"""Masks scored at each image's own resolution: the predicted lesion probabilities (stored at the training size)
are resized back to the image's height and width (bilinear) before the 0.5 threshold, as published Dice is measured
on the original masks; HD95 (pixels of the original image) comes with it. Label maps are scored per lesion class the
same way."""

from __future__ import annotations

import cv2
import numpy as np

from medcad.data.datasets import read_sample_mask
from medcad.data.labelmaps import MaskLabels
from medcad.data.manifest import Manifest
from medcad.metrics.label_maps import class_counts, class_hd95, class_index_map
from medcad.metrics.segmentation import hd95, mask_counts


def native_mask_scores(
    manifest: Manifest, rows: np.ndarray, probs: np.ndarray, missing: str = "empty"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pixel counts and HD95 per image at the original resolution.

    Args:
        manifest: the run's samples.
        rows: manifest rows (n,) of the predictions.
        probs: predicted lesion probabilities (n, S, S) uint8 0..255 at the training size.
        missing: the run's policy for images without a mask ("empty": no lesion).

    Returns:
        (`mask_counts` output with arrays (n,), HD95 in pixels (n,), nan where only one mask is empty).
    """
    parts, dist = [], np.full(len(rows), np.nan)
    for j, r in enumerate(rows):
        true = read_sample_mask(manifest, int(r), missing)  # bool (H, W)
        h, w = true.shape
        pred = cv2.resize(probs[j], (w, h), interpolation=cv2.INTER_LINEAR) >= 128  # (H, W), as p >= 0.5
        parts.append(mask_counts(pred[None], true[None]))
        dist[j] = hd95(pred, true)
    counts = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return counts, dist


def native_class_scores(
    manifest: Manifest,
    rows: np.ndarray,
    probs: np.ndarray,
    lesion_classes: np.ndarray,
    classes: MaskLabels,
    missing: str = "empty",
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per lesion class: pixel counts at each image's own resolution, and HD95 per image and class.

    Args:
        probs: lesion probabilities (n, S, S) uint8; lesion_classes: the classes' probabilities (n, K, S, S) uint8,
            both resized back (bilinear) before the pixel decision (`medcad.metrics.label_maps.class_index_map`).
        classes: the run's lesion classes (how the label maps are read).

    Returns:
        (one `mask_counts` output (arrays (n,)) per class, HD95 (n, K) in pixels).
    """
    k = len(classes.values)
    parts, dist = [], np.full((len(rows), k), np.nan)
    for j, r in enumerate(rows):
        true = read_sample_mask(manifest, int(r), missing, classes)  # uint8 class indices (H, W)
        h, w = true.shape
        lesion = cv2.resize(probs[j], (w, h), interpolation=cv2.INTER_LINEAR)
        per_class = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in lesion_classes[j]])
        pred = class_index_map(lesion, per_class, 128)
        parts.append(class_counts(pred[None], true[None], k))
        dist[j] = class_hd95(pred, true, k)
    counts = [{key: np.concatenate([p[c][key] for p in parts]) for key in parts[0][c]} for c in range(k)]
    return counts, dist
