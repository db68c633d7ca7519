"""Masks of several lesion classes (label maps): the pixel decision, and Dice / IoU / HD95 / NSD per class with CIs.

The pixel decision is hierarchical, so that it agrees with the lesion / no-lesion figures beside it: a pixel is
lesion when P(lesion) = 1 - P(background) reaches the threshold, and then of its most probable lesion class.
Per-class figures follow `medcad.metrics.segmentation` (an image where a class is absent from both masks scores
Dice 1 for it, as MONAI's compute_dice with ignore_empty=False); "class_dice" is the mean over classes of their
mean Dice over all images, i.e. per image the mean of its class Dice values averaged over images (the two orders
give the same number), with a cluster-bootstrap 95 % CI.

That is not nnU-Net's "foreground_mean" Dice: nnU-Net v2 (nnunetv2/evaluation/evaluate_predictions.py) sets a
class's Dice to nan on an image where tp + fp + fn = 0 and averages each class over the remaining images (nanmean)
before the mean over foreground classes, so an image with the class in neither mask does not count for it there,
where here it counts 1. The two agree when every class is in the truth or the prediction of every image; a class
seen on few images pulls them apart (one class on one image of four, missed there, the other found with Dice
0.909 on all four: class_dice 0.830, nnU-Net's 0.455).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcad.metrics.boundary import NSD_TOLERANCE, boundary_scores, hd95_summary, nsd_summaries
from medcad.metrics.segmentation import dice_iou, mask_counts, segmentation_metrics
from medcad.metrics.stats import weighted_bootstrap


def class_index_map(lesion: np.ndarray, lesion_classes: np.ndarray, threshold: float) -> np.ndarray:
    """The class index per pixel: 0 where the lesion probability is below `threshold`, else 1 + the most probable
    lesion class.

    Args:
        lesion: lesion probabilities (..., H, W) (any scale: uint8 0..255 with threshold 128, or floats with 0.5).
        lesion_classes: the lesion classes' probabilities (..., K, H, W), the same leading shape.
        threshold: on `lesion`'s scale.

    Returns:
        uint8 (..., H, W).
    """
    best = np.asarray(lesion_classes).argmax(axis=-3).astype(np.uint8) + 1
    return np.where(np.asarray(lesion) >= threshold, best, 0).astype(np.uint8)


def class_counts(pred: np.ndarray, true: np.ndarray, n_classes: int) -> list[dict[str, np.ndarray]]:
    """`mask_counts` of each lesion class (1..n_classes) between predicted and true class-index maps (N, H, W)."""
    return [mask_counts(pred == c, true == c) for c in range(1, n_classes + 1)]


def class_boundary_scores(pred: np.ndarray, true: np.ndarray, n_classes: int, tolerance_px: float) -> np.ndarray:
    """HD95 in pixels and NSD of each lesion class between two class-index maps (H, W): (n_classes, 2), (inf, 0)
    where one of the two has the class and the other not, (nan, nan) where neither has it
    (`medcad.metrics.boundary.boundary_scores`)."""
    return np.array([boundary_scores(pred == c, true == c, tolerance_px) for c in range(1, n_classes + 1)])


def class_metrics(
    counts: Sequence[dict[str, np.ndarray]],
    names: Sequence[str],
    *,
    hd95_px: np.ndarray | None = None,
    nsd: np.ndarray | None = None,
    nsd_tolerance: tuple[float, np.ndarray] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
) -> dict:
    """Per-class segmentation metrics and their mean.

    Args:
        counts: one `mask_counts` output per class, each over the same N images.
        names: the classes' names.
        hd95_px: (N, K) HD95 per image and class, or None.
        nsd, nsd_tolerance: (N, K) NSD per image and class, or None; its tolerance (% of each image's diagonal,
            and (N,) each image's in pixels).
        groups: group per image for the cluster bootstrap.

    Returns:
        {"per_class": {name: `segmentation_metrics` (+ "hd95": `hd95_summary`, "nsd": `nsd_summary` over the images
        with the class in either mask, "nsd_lesion" over those with it in the truth)},
        "class_dice", "class_iou": {"value", "ci95"} means over classes}.
    """
    per_class = {}
    for k, (name, c) in enumerate(zip(names, counts, strict=True)):
        per_class[name] = segmentation_metrics(c, groups=groups, n_boot=n_boot)
        if hd95_px is not None:
            per_class[name]["hd95"] = hd95_summary(hd95_px[:, k], groups=groups, n_boot=n_boot)
        if nsd is not None:  # over the images with the class in either mask, and in the truth (as dice_lesion)
            pct, px = nsd_tolerance or (NSD_TOLERANCE, None)
            has = np.asarray(c["true_area"]) > 0
            per_class[name] |= nsd_summaries(
                nsd[:, k], has, groups=groups, tolerance=pct, tolerance_px=px, n_boot=n_boot
            )
    dice = np.mean([dice_iou(c)[0] for c in counts], axis=0)  # (N,) each image's mean over classes
    iou = np.mean([dice_iou(c)[1] for c in counts], axis=0)
    stats = weighted_bootstrap(
        lambda w: {"class_dice": (w @ dice) / w.sum(axis=1), "class_iou": (w @ iou) / w.sum(axis=1)},
        len(dice),
        groups=groups,
        n_boot=n_boot,
    )
    return {"per_class": per_class, "class_dice": stats["class_dice"], "class_iou": stats["class_iou"]}
