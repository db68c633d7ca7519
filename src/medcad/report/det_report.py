"""Figures of a detection run's report: the frame-level confusion matrix with its background row and column, and
test frames with true (green) and predicted boxes, explained by EigenCAM of the detector's backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medcad.explain.detection import eigencam
from medcad.report import plots


def sample_tiles(
    run: Path,
    manifest,
    images: np.ndarray,
    boxes: list[np.ndarray],
    pred: pd.DataFrame,
    labels: list[str],
    threshold: float,
    n: int = 8,
) -> bytes:
    """Test frames (highest-scoring misses and hits first) with true boxes (green), predicted boxes and EigenCAM."""
    from medcad.checkpoint import load_model_file
    from medcad.explain.gradcam import overlay
    from medcad.inference.prediction import draw_boxes

    wrong = pred[pred["true_frame"] != pred["predicted_frame"]].sort_values("top_score", ascending=False)
    right = pred[pred["true_frame"] == pred["predicted_frame"]].sort_values("top_score", ascending=False)
    picks = pd.concat([right.head(n // 2), wrong.head(n - min(n // 2, len(right)))]).head(n)
    index = {k: i for i, k in enumerate(manifest.keys)}
    models: dict[int, torch.nn.Module] = {}
    tiles, captions = [], []
    for _, row in picks.iterrows():
        i, fold = index[row["image"]], int(row["fold"])
        if fold not in models:
            models[fold] = load_model_file(run / f"fold_{fold}" / "model.pt")[0]
        dets = np.array(json.loads(row["detections"]), dtype=float).reshape(-1, 6)
        image = np.asarray(images[i])
        shown = draw_boxes(overlay(image, eigencam(models[fold], image), alpha=0.3), dets, labels, threshold, boxes[i])
        tiles.append(shown)
        captions.append(
            f"{row['image'][-24:]}\ntrue {row['true_frame']} / pred {row['predicted_frame']} {row['top_score']:.2f}"
        )
    return plots.image_grid_png(
        tiles, captions, cols=4, title="Test frames: true boxes green, predicted coloured; EigenCAM"
    )


def collect_detection(run: Path, manifest, cfg, metrics: dict, pred: pd.DataFrame, gallery: bool = True) -> dict:
    """Figures (PNG bytes) of a detection run."""
    cm = metrics["frame_level"]["confusion_matrix"]
    figures = {"frame_confusion": plots.confusion_matrix_png(cm["labels"], cm["matrix"], "Frame decision")}
    if gallery:
        from medcad.data.boxes import manifest_boxes
        from medcad.data.datasets import cached_images

        images = cached_images(manifest, cfg.image_size, bilateral=cfg.bilateral, progress=False)
        _, boxes, _ = manifest_boxes(manifest, cfg.image_size, metrics["labels"])
        figures["detections"] = sample_tiles(
            run, manifest, images, boxes, pred, metrics["labels"], metrics["score_threshold"]
        )
    return figures
