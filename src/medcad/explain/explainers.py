"""One explanation entry for every task: the CAM of a predictor's prediction on one image, as an RGB picture and a
caption. With an ensemble (fold=None) every member is explained: classifiers' Grad-CAMs are averaged, a
segmenter's or detector's maps are shown one row per fold model (their maps are not comparable pixel by pixel)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medcad.errors import ConfigError
from medcad.explain.gradcam import explain_predictor, overlay
from medcad.tasks import TASKS


def explain_classes(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None):
    """Grad-CAM of the predicted class (or `label`), averaged over the ensemble, over the original image."""
    if label is not None and label not in predictor.labels:
        raise ConfigError(f"--class {label!r} is not one of the model's labels {predictor.labels}")
    classes = None if label is None else [predictor.labels.index(label)]
    heat, probs = explain_predictor(predictor, predictor.prepare(rgb)[None], classes, layer)
    c = int(probs[0].argmax()) if classes is None else classes[0]
    caption = f"Grad-CAM for {predictor.labels[c]} (p={probs[0, c]:.3f})"
    return overlay(rgb, heat[0], f"{predictor.labels[c]} p={probs[0, c]:.2f}"), caption


def explain_masks(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None):
    """Per fold model: the predicted outline, the CBAM spatial attention maps (if any) and the Grad-CAM of the
    predicted lesion, side by side; one row per model."""
    from medcad.explain.segmentation import explain_mask

    x = predictor.prepare(rgb)
    rows, caption = [], ""
    for model in predictor.models:
        tiles = explain_mask(model, predictor.normalize, x, layer)
        rows.append(np.concatenate([t for t, _ in tiles], axis=1))
        caption = " | ".join(c for _, c in tiles)
    where = ", ".join(p.parent.name for p in predictor.files)
    return np.concatenate(rows, axis=0), f"{caption} (one row per model: {where})"


def explain_boxes(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None):
    """Per fold model: EigenCAM of the backbone under the ensemble's boxes."""
    from medcad.drawing import draw_boxes
    from medcad.explain.detection import eigencam

    x = predictor.prepare(rgb)
    pred = predictor.postprocess(predictor.infer(x[None]), 0, "image", x.shape[:2])
    rows = [
        draw_boxes(overlay(x, eigencam(m, x), alpha=0.3), pred.boxes.boxes, predictor.labels, predictor.threshold)
        for m in predictor.models
    ]
    where = ", ".join(p.parent.name for p in predictor.files)
    return np.concatenate(rows, axis=0), f"EigenCAM with boxes >= {predictor.threshold} ({pred.label}; rows: {where})"


# The CAM follows what a task's predictions carry (medcad.tasks: `Task.outputs`): boxes, else a mask, else classes.
EXPLAINERS: dict[str, Callable] = {
    t.name: explain_boxes if "boxes" in t.outputs else explain_masks if "mask" in t.outputs else explain_classes
    for t in TASKS.values()
}
