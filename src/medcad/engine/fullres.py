"""Masks scored at each image's own resolution: the predicted lesion probabilities (stored at the training size)
are resized back to the image's height and width (bilinear) before the 0.5 threshold, as published Dice is measured
on the original masks; HD95 (pixels of the original image) comes with it."""

from __future__ import annotations

import cv2
import numpy as np

from medcad.data.datasets import read_sample_mask
from medcad.data.manifest import Manifest
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
