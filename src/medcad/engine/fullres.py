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
    manifest: Manifest,
    rows: np.ndarray,
    probs: np.ndarray,
    missing: str = "empty",
    lesion_classes: np.ndarray | None = None,
    classes: MaskLabels | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple | None]:
    """Pixel counts and HD95 per image at the original resolution; each true mask is read once.

    Args:
        manifest: the run's samples.
        rows: manifest rows (n,) of the predictions.
        probs: predicted lesion probabilities (n, S, S) uint8 0..255 at the training size.
        missing: the run's policy for images without a mask ("empty": no lesion).
        lesion_classes, classes: for label maps, the classes' predicted probabilities (n, K, S, S) uint8 and the
            run's classes: each lesion class is scored too, after the pixel decision of
            `medcad.metrics.label_maps.class_index_map` on the resized probabilities.

    Returns:
        (`mask_counts` output with arrays (n,), HD95 in pixels (n,), nan where both masks are empty and inf where one
        is; for label maps (one `mask_counts` output per class, HD95 (n, K)), else None; each image's (height,
        width) in pixels (n, 2): HD95 is normalised by its diagonal where images differ in size, and a lesion's share
        of the frame is its area over their product).
    """
    k = len(classes.values) if classes is not None else 0
    parts, by_class, dist, class_dist = [], [], np.full(len(rows), np.nan), np.full((len(rows), k), np.nan)
    hw = np.zeros((len(rows), 2))
    for j, r in enumerate(rows):
        true = read_sample_mask(manifest, int(r), missing, classes)  # bool (H, W), or class indices (label maps)
        h, w = true.shape
        hw[j] = h, w
        # resized in float, as predict resizes its probabilities (a uint8 resize rounds: masks 0.3-0.5 % smaller)
        lesion = cv2.resize(probs[j].astype(np.float32) / 255, (w, h), interpolation=cv2.INTER_LINEAR)
        pred = lesion >= 0.5  # (H, W)
        parts.append(mask_counts(pred[None], true[None] > 0))
        dist[j] = hd95(pred, true > 0)
        if classes is not None:
            per_class = np.stack(
                [cv2.resize(c.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for c in lesion_classes[j]]
            )
            found = class_index_map(lesion, per_class, 0.5)
            by_class.append(class_counts(found[None], true[None], k))
            class_dist[j] = class_hd95(found, true, k)
    counts = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
    if classes is None:
        return counts, dist, None, hw
    joined = [{key: np.concatenate([p[c][key] for p in by_class]) for key in by_class[0][c]} for c in range(k)]
    return counts, dist, (joined, class_dist), hw
