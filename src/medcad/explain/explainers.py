"""One explanation entry for every task: the CAM of a predictor's prediction on one image, as an RGB picture and a
caption. With an ensemble (fold=None) every member is explained: classifiers' Grad-CAMs are averaged, a
segmenter's or detector's maps are shown one row per fold model (their maps are not comparable pixel by pixel)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import cv2
import numpy as np

from medcad.data.interface import find_interface
from medcad.errors import ConfigError
from medcad.explain.gradcam import explain_predictor, overlay
from medcad.tasks import TASKS


def explain_classes(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None, prediction=None):
    """Grad-CAM of the predicted class (or `label`), averaged over the ensemble, over the original image;
    `prediction`: the predictor's `Prediction` of `rgb` when it has one already (not made again)."""
    if label is not None and label not in predictor.labels:
        raise ConfigError(f"--class {label!r} is not one of the model's labels {predictor.labels}")
    if label is None and prediction is not None and predictor.cut is not None:
        label = prediction.label  # the class decided at the operating point (serve's), not the most probable
    classes = None if label is None else [predictor.labels.index(label)]
    probs = None if prediction is None else prediction.probabilities[None]
    heat, probs = explain_predictor(predictor, predictor.prepare(rgb)[None], classes, layer, probs)
    c = int(probs[0].argmax()) if classes is None else classes[0]
    caption = f"Grad-CAM for {predictor.labels[c]} (p={probs[0, c]:.3f})"
    seen = find_interface(rgb, predictor.config.interface).box  # the imaging area a crop kept: the model saw that
    return overlay(rgb, heat[0], f"{predictor.labels[c]} p={probs[0, c]:.2f}", box=seen), caption


MAX_SIDE = 512  # explain tiles: the image's size, shrunk (aspect kept) so that its longer side is at most this


def explain_masks(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None, prediction=None):
    """One row per fold model (labelled with its fold) of tiles at the image's aspect and size (shrunk so that the
    longer side is at most MAX_SIDE px): the fold's predicted outline and lesion share, its CBAM spatial attention
    maps (if any), the Grad-CAM of its predicted lesion and, with `label` on a model with a class head (multitask),
    the Grad-CAM of that class; under a header with what predict says of the image (the ensemble's, or the one
    fold's, decision and lesion share, with its frame-level decision), as `predictor` computes it (explain loads
    torch-fp32: Grad-CAM needs the torch models; predict's default backend agrees with it >= 0.99); `prediction`:
    the predictor's `Prediction` of `rgb` when it has one already (serve's: not made again).

    Returns:
        (RGB uint8 picture, caption: predict's decision and lesion share, then what the rows and tiles are).

    Raises:
        ConfigError: `label` is not one of the model's labels, or the model has no class head (segment,
            segment-multiclass: only the lesion is explained).
    """
    from medcad.explain.gradcam import with_caption
    from medcad.explain.segmentation import explain_mask

    class_index = None
    if label is not None:
        if label not in predictor.labels:
            raise ConfigError(f"--class {label!r} is not one of the model's labels {predictor.labels}")
        if not predictor.with_class:
            raise ConfigError(
                f"--class {label!r}: this {predictor.task} model has no class head to explain; its Grad-CAM is of the "
                "predicted lesion (drop --class)"
            )
        class_index = (predictor.labels.index(label), label)
    x = predictor.prepare(rgb)
    pred = prediction or predictor.postprocess(predictor.infer(x[None]), 0, "image", rgb.shape[:2])
    shown, _ = _shown(rgb)
    rows: list[np.ndarray] = []
    names: tuple[list[str], list[str]] = ([], [])  # the rows' models, the tiles after the outline
    for model, file in zip(predictor.models, predictor.files, strict=True):
        tiles = explain_mask(
            model,
            predictor.normalize,
            x,
            shown,
            hflip=predictor.hflip,
            threshold=predictor.threshold,
            layer=layer,
            class_index=class_index,
            size=rgb.shape[:2],
        )
        where = file.parent.name if file.name == "model.pt" else file.name
        tiles[0] = (tiles[0][0], f"{where}: {tiles[0][1]}")
        rows.append(np.concatenate([with_caption(t, c, wrap=False) for t, c in tiles], axis=1))
        names[0].append(where)
        names[1][:] = [c for _, c in tiles[1:]]
    lesion = pred.mask
    said = f"{pred.label} ({pred.score:.2f}); predicted lesion {lesion.lesion_fraction:.1%} of the image"
    who = f"ensemble of {len(names[0])}" if len(names[0]) > 1 else names[0][0]
    picture = with_caption(np.concatenate(rows, axis=0), f"{who}: {said}", max(14, shown.shape[0] // 12))
    caption = (
        f"{who}: {said} ({lesion.frame_reason()}); one row per model ({', '.join(names[0])}): its "
        f"outline and lesion share at probability {predictor.threshold:g}, {', '.join(names[1])}"
    )
    return picture, caption


def explain_boxes(predictor, rgb: np.ndarray, layer: str | None = None, label: str | None = None, prediction=None):
    """Per fold model: EigenCAM of the backbone under the ensemble's boxes, over the image (shrunk so that its
    longer side is at most MAX_SIDE px); `prediction`: the predictor's `Prediction` of `rgb` when it has one."""
    from medcad.drawing import draw_boxes
    from medcad.explain.detection import eigencam

    x = predictor.prepare(rgb)
    pred = prediction or predictor.postprocess(predictor.infer(x[None]), 0, "image", rgb.shape[:2])
    shown, scale = _shown(rgb)
    boxes = pred.boxes.boxes.copy()
    boxes[:, :4] *= scale
    rows = [
        draw_boxes(overlay(shown, eigencam(m, x), alpha=0.3), boxes, predictor.labels, predictor.threshold)
        for m in predictor.models
    ]
    where = ", ".join(p.parent.name for p in predictor.files)
    return np.concatenate(rows, axis=0), f"EigenCAM with boxes >= {predictor.threshold} ({pred.label}; rows: {where})"


def _shown(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The image as explain shows it: shrunk (aspect kept) so that its longer side is at most MAX_SIDE px; and the
    scale applied (<= 1)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, MAX_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), scale


def bound_explainer(predictor) -> Callable:
    """The task's explainer bound to `predictor` for serve: (rgb (H, W, 3) uint8, the predictor's `Prediction` of
    it) -> (RGB picture, caption), the prediction not made again. Safe to call from several threads, beside
    predictions: it explains on networks of its own (`Predictor.with_own_networks`, made at the first call), one
    image at a time (the CAM hooks them)."""
    explainer = EXPLAINERS[predictor.task]
    lock = threading.Lock()
    own: list = []

    def explain(rgb: np.ndarray, prediction) -> tuple[np.ndarray, str]:
        with lock:
            if not own:
                own.append(predictor.with_own_networks())
            return explainer(own[0], rgb, prediction=prediction)

    return explain


# The CAM follows what a task's predictions carry (medcad.tasks: `Task.outputs`): boxes, else a mask, else classes.
EXPLAINERS: dict[str, Callable] = {
    t.name: explain_boxes if "boxes" in t.outputs else explain_masks if "mask" in t.outputs else explain_classes
    for t in TASKS.values()
}
