"""Figures of a detection run's report: the frame-level confusion matrix with its background row and column, the
training and validation loss per epoch of each fold (with validation AP50), and test frames with true (green) and
predicted boxes, explained by EigenCAM of the detector's backbone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medcad.explain.detection import eigencam
from medcad.report import plots
from medcad.runfolder import RunFolder


def model_space_detections(listed: list, labels: list[str], wh, size: int) -> np.ndarray:
    """One image's detections as a run's predictions.csv lists them, back in the model's S x S input: (m, 6)
    [x0, y0, x1, y1, score, class_index].

    Args:
        listed: [[x0, y0, x1, y1, score, class name], ...] in the image's pixels; or, in a file written before they
            were listed so, [[x0, y0, x1, y1, score, class_index], ...] already at S x S (kept as they are).
        labels: the run's detection classes.
        wh: (width, height) of the image in pixels.
        size: S, the run's training size.
    """
    from medcad.data.boxes import listed_to_array, scale_boxes

    dets = listed_to_array(listed, labels)
    if not any(isinstance(b[5], str) for b in listed):
        return dets
    return np.array(scale_boxes(dets.tolist(), (int(wh[0]), int(wh[1])), size), np.float64).reshape(-1, 6)


def sample_tiles(
    run: Path,
    manifest,
    images: np.ndarray,
    boxes: list[np.ndarray],
    pred: pd.DataFrame,
    labels: list[str],
    threshold: float,
    image_sizes: np.ndarray,
    n: int = 8,
) -> bytes:
    """Test frames (highest-scoring misses and hits first) with true boxes (green), predicted boxes and EigenCAM,
    drawn on `images` (N, S, S, 3) at the training size: the predictions.csv boxes, in each image's own pixels
    (`image_sizes` (N, 2) width and height), are scaled to it (a run's file written before they were listed so
    holds them at S x S with the class as an index, and is drawn as it is)."""
    from medcad.checkpoint import load_model_file
    from medcad.drawing import draw_boxes
    from medcad.explain.gradcam import overlay

    wrong = pred[pred["true_frame"] != pred["predicted_frame"]].sort_values("top_score", ascending=False)
    right = pred[pred["true_frame"] == pred["predicted_frame"]].sort_values("top_score", ascending=False)
    picks = pd.concat([right.head(n // 2), wrong.head(n - min(n // 2, len(right)))]).head(n)
    index = {k: i for i, k in enumerate(manifest.keys)}
    models: dict[int, torch.nn.Module] = {}
    tiles, captions = [], []
    for _, row in picks.iterrows():
        i, fold = index[row["image"]], int(row["fold"])
        if fold not in models:
            models[fold] = load_model_file(RunFolder(run).fold(fold).model)[0]
        image = np.asarray(images[i])
        dets = model_space_detections(json.loads(row["detections"]), labels, image_sizes[i], image.shape[0])
        shown = draw_boxes(overlay(image, eigencam(models[fold], image), alpha=0.3), dets, labels, threshold, boxes[i])
        tiles.append(shown)
        captions.append(
            f"{plots.tile_name(row['image'])}\n"
            f"true {row['true_frame']} / pred {row['predicted_frame']} {row['top_score']:.2f}"
        )
    return plots.image_grid_png(
        tiles, captions, cols=4, title="Test frames: true boxes green, predicted coloured; EigenCAM"
    )


LOG_KEYS = ("train_loss", "val_loss", "val_ap50")
LOG_STAGE = "detect"  # medcad.engine.detect.STAGE: the fold's logs/csv sub-folder


def loss_history(csv_path: Path) -> dict[str, list[float]]:
    """Per epoch train_loss, val_loss and val_ap50 from a fold's Lightning CSV log (nan where an epoch has none);
    {} when there is no log. Runs made before val_loss was logged have train_loss and val_ap50 only."""
    if not csv_path.is_file():
        return {}
    by_epoch: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            e = int(float(row["epoch"]))
            for key in LOG_KEYS:
                if row.get(key):
                    by_epoch.setdefault(e, {})[key] = float(row[key])
    epochs = sorted(by_epoch)
    return {key: [by_epoch[e].get(key, np.nan) for e in epochs] for key in LOG_KEYS}


def loss_curves_png(histories: dict[str, dict[str, list[float]]]) -> bytes:
    """Training (solid) and validation (dashed) loss per epoch and fold, and validation AP50."""
    scored = {name: {**h, "val_score": h.get("val_ap50", [])} for name, h in histories.items()}
    return plots.curves_png(
        scored,
        "AP50",
        "Detector training",
        loss_title="SSD loss (box regression + classification)",
        score_title="validation AP50 (model selection)",
    )


def collect_detection(run: Path, manifest, cfg, metrics: dict, pred: pd.DataFrame, gallery: bool = True) -> dict:
    """Figures (PNG bytes) of a detection run."""
    cm = metrics["frame_level"]["confusion_matrix"]
    figures = {"frame_confusion": plots.confusion_matrix_png(cm["labels"], cm["matrix"], "Frame decision")}
    if metrics.get("froc"):
        figures["froc"] = plots.froc_png(metrics["froc"])
    folds = RunFolder(run).folds()
    histories = {f"fold {k}": loss_history(RunFolder(run).fold(k).history(LOG_STAGE)) for k in folds}
    histories = {k: h for k, h in histories.items() if h}
    if histories:
        figures["det_curves"] = loss_curves_png(histories)
    if gallery:
        from medcad.data.datasets import run_images
        from medcad.targets import load_targets

        images = run_images(manifest, cfg, progress=False)
        targets = load_targets(manifest, cfg, metrics["labels"])
        figures["detections"] = sample_tiles(
            run,
            manifest,
            images,
            targets.boxes,
            pred,
            metrics["labels"],
            metrics["score_threshold"],
            targets.image_sizes,
        )
    return figures
