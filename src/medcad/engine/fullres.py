"""Masks scored at each image's own resolution: the predicted lesion probabilities (stored at the training size)
are resized back to the image's height and width (bilinear) before the 0.5 threshold, as published Dice is measured
on the original masks; HD95 (pixels of the original image) and NSD (tolerance a share of the image's diagonal) come
with it. Label maps are scored per lesion class the same way."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from medcad.data.datasets import read_sample_mask
from medcad.data.labelmaps import MaskLabels
from medcad.data.manifest import Manifest
from medcad.metrics.boundary import NSD_TOLERANCE, boundary_scores, nsd_tolerance_px
from medcad.metrics.label_maps import class_boundary_scores, class_counts, class_index_map
from medcad.metrics.segmentation import mask_counts


def joined_counts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image `mask_counts` arrays of several sets (the folds', the images'), joined in order."""
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}


class NativeScores(NamedTuple):
    """Masks scored at each image's own size, one entry per predicted image (n of them).

    counts: `mask_counts` output, arrays (n,). hd95: (n,) pixels, nan where both masks are empty and inf where one
    is. nsd: (n,) in [0, 1] at `tolerance` % of each image's diagonal, nan where both are empty, 0 where one is.
    hw: (n, 2) each image's (height, width) in pixels (HD95 is normalised by its diagonal where images differ in size;
    a lesion's share of the frame is its area over their product). by_class: label maps only, else None: (one
    `mask_counts` output per lesion class, HD95 (n, K), NSD (n, K)). tolerance: NSD's, % of each image's diagonal."""

    counts: dict[str, np.ndarray]
    hd95: np.ndarray
    nsd: np.ndarray
    hw: np.ndarray
    by_class: tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray] | None
    tolerance: float = NSD_TOLERANCE

    @staticmethod
    def joined(parts: list[NativeScores]) -> NativeScores:
        """Several sets' scores (e.g. the folds' test images) joined in order."""
        if len({p.tolerance for p in parts}) > 1:
            raise ValueError("NSD scores at different tolerances cannot be joined")
        by_class = None
        if parts[0].by_class is not None:
            per = [joined_counts([p.by_class[0][c] for p in parts]) for c in range(len(parts[0].by_class[0]))]
            by_class = (per, *(np.concatenate([p.by_class[i] for p in parts]) for i in (1, 2)))
        arrays = (np.concatenate([getattr(p, name) for p in parts]) for name in ("hd95", "nsd", "hw"))
        return NativeScores(joined_counts([p.counts for p in parts]), *arrays, by_class, parts[0].tolerance)

    def tolerances_px(self) -> np.ndarray:
        """(n,) each image's NSD tolerance in pixels."""
        return np.array([nsd_tolerance_px(h, w, self.tolerance) for h, w in self.hw], dtype=float)


def native_mask_scores(
    manifest: Manifest,
    rows: np.ndarray,
    probs: np.ndarray,
    missing: str = "empty",
    lesion_classes: np.ndarray | None = None,
    classes: MaskLabels | None = None,
    tolerance: float = NSD_TOLERANCE,
) -> NativeScores:
    """Pixel counts, HD95 and NSD per image at the original resolution; each true mask is read once.

    Args:
        manifest: the run's samples.
        rows: manifest rows (n,) of the predictions.
        probs: predicted lesion probabilities (n, S, S) at the training size: uint8 0..255 (a fold's stored test
            masks) or float 0..1 (an ensemble's, resized as predict resizes them: rounding them to uint8 first had
            moved an external set's HD95 by up to 1.1 px and NSD by up to 0.004).
        missing: the run's policy for images without a mask ("empty": no lesion).
        lesion_classes, classes: for label maps, the classes' predicted probabilities (n, K, S, S) and the
            run's classes: each lesion class is scored too, after the pixel decision of
            `medcad.metrics.label_maps.class_index_map` on the resized probabilities.
        tolerance: NSD's tolerance, % of each image's diagonal.
    """
    k = len(classes.values) if classes is not None else 0
    parts, by_class = [], []
    boundary, class_boundary = np.full((len(rows), 2), np.nan), np.full((len(rows), k, 2), np.nan)
    hw = np.zeros((len(rows), 2))
    scale = 255.0 if np.asarray(probs).dtype == np.uint8 else 1.0
    for j, r in enumerate(rows):
        true = read_sample_mask(manifest, int(r), missing, classes)  # bool (H, W), or class indices (label maps)
        h, w = true.shape
        hw[j] = h, w
        tolerance_px = nsd_tolerance_px(h, w, tolerance)
        # resized in float, as predict resizes its probabilities (a uint8 resize rounds: masks 0.3-0.5 % smaller)
        lesion = cv2.resize(probs[j].astype(np.float32) / scale, (w, h), interpolation=cv2.INTER_LINEAR)
        pred = lesion >= 0.5  # (H, W)
        parts.append(mask_counts(pred[None], true[None] > 0))
        boundary[j] = boundary_scores(pred, true > 0, tolerance_px)
        if classes is not None:
            per_class = np.stack(
                [cv2.resize(c.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for c in lesion_classes[j]]
            )
            found = class_index_map(lesion, per_class, 0.5)
            by_class.append(class_counts(found[None], true[None], k))
            class_boundary[j] = class_boundary_scores(found, true, k, tolerance_px)
    counts = joined_counts(parts) if parts else {}
    joined = None
    if classes is not None:
        per = [joined_counts([p[c] for p in by_class]) for c in range(k)]
        joined = (per, class_boundary[..., 0], class_boundary[..., 1])
    return NativeScores(counts, boundary[:, 0], boundary[:, 1], hw, joined, tolerance)
