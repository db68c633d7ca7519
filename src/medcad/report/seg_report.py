"""Figures of a segmentation or multitask run's report: best, median and worst cases with true and predicted
outlines (label maps: each class in its colour), the Dice distribution, and where the network attended (CBAM
maps, Grad-CAM with a mask target)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medcad.report import plots
from medcad.runfolder import RunFolder


def pick_cases(pred: pd.DataFrame, per_kind: int = 4) -> list[tuple[str, pd.Series]]:
    """The best, median and worst test images by Dice among images with a true lesion."""
    lesion = pred[pred["true_area"] > 0].sort_values("dice", ascending=False)
    if lesion.empty:
        return []
    mid = len(lesion) // 2
    lo = max(0, mid - per_kind // 2)
    picks = {
        "best": lesion.head(per_kind),
        "median": lesion.iloc[lo : lo + per_kind],
        "worst": lesion.tail(per_kind).iloc[::-1],
    }
    return [(kind, row) for kind, rows in picks.items() for _, row in rows.iterrows()]


def _fold_masks(run: Path, fold: int) -> dict[int, np.ndarray]:
    """Test row -> its predicted lesion probabilities (S, S) uint8, or for label-map runs its class map (S, S)
    uint8 (0 none, c for class c - 1; `medcad.metrics.label_maps.class_index_map`)."""
    from medcad.engine.mask_results import fold_test_lesion_classes, fold_test_masks
    from medcad.metrics.label_maps import class_index_map

    folder = RunFolder(run).fold(fold).path
    rows, probs = fold_test_masks(folder)
    classes = fold_test_lesion_classes(folder)
    if classes is not None:
        probs = class_index_map(probs, classes, 128)
    return dict(zip(rows.tolist(), probs, strict=True))


def case_tiles(
    run: Path, manifest, images: np.ndarray, masks: np.ndarray, pred: pd.DataFrame, classes: list[str] | None = None
) -> dict[str, bytes]:
    """One PNG grid per kind (best / median / worst): image, true outline (green), predicted lesion (red); with
    the lesion `classes` of a label-map run, each predicted class in its colour with a legend."""
    from medcad.drawing import class_overlay, colour_legend, mask_overlay

    index = {k: i for i, k in enumerate(manifest.keys)}
    shown = f"predicted {colour_legend(classes)}; Dice of lesion vs background" if classes else "red: prediction"
    by_fold: dict[int, dict[int, np.ndarray]] = {}
    grids: dict[str, tuple[list, list]] = {}
    for kind, row in pick_cases(pred):
        i, fold = index[row["image"]], int(row["fold"])
        if fold not in by_fold:
            by_fold[fold] = _fold_masks(run, fold)
        image, true, found = np.asarray(images[i]), np.asarray(masks[i]) > 0, by_fold[fold][i]
        tile = class_overlay(image, found, true, classes) if classes else mask_overlay(image, found >= 128, true)
        tiles, captions = grids.setdefault(kind, ([], []))
        tiles.append(tile)
        captions.append(f"{plots.tile_name(row['image'])}\nDice {row['dice']:.2f}  IoU {row['iou']:.2f}")
    return {
        kind: plots.image_grid_png(tiles, captions, cols=4, title=f"{kind} cases (green: truth, {shown})")
        for kind, (tiles, captions) in grids.items()
    }


def attention_tiles(run: Path, manifest, images: np.ndarray, pred: pd.DataFrame, cfg) -> bytes | None:
    """For the median case: predicted outline (the fold's lesion probability at 0.5, with the run's test-time
    augmentation, from its settings `cfg`), CBAM attention maps and Grad-CAM of the predicted lesion, from the model
    of the fold that tested the image, at the model's input size."""
    from medcad.checkpoint import load_model_file
    from medcad.data.transforms import Normalize
    from medcad.explain.segmentation import explain_mask
    from medcad.tasks import flip_tta

    cases = [row for kind, row in pick_cases(pred, per_kind=1) if kind == "median"]
    if not cases:
        return None
    row = cases[0]
    model, meta = load_model_file(RunFolder(run).fold(int(row["fold"])).model)
    normalize = Normalize(meta["data_config"]["mean"], meta["data_config"]["std"])
    image = np.asarray(images[manifest.keys.index(row["image"])])
    tiles = explain_mask(model, normalize, image, image, hflip=flip_tta(cfg.tta, cfg.task))
    return plots.image_grid_png(
        [t for t, _ in tiles], [c for _, c in tiles], cols=len(tiles), title=f"Where the network looked: {row['image']}"
    )


def collect_segmentation(run: Path, manifest, cfg, pred: pd.DataFrame, gallery: bool = True) -> dict:
    """Figures (as PNG bytes) of a segmentation or multitask run."""
    from medcad.data.datasets import run_images
    from medcad.data.labelmaps import parse_mask_labels
    from medcad.targets import load_targets

    lesion = pred[pred["true_area"] > 0]["dice"]
    figures: dict[str, bytes] = {
        "dice_hist": plots.histogram_png(
            lesion.to_numpy(),
            f"Dice of the {len(lesion)} of {len(pred)} images with a lesion, median {lesion.median():.3f}",
            "Dice per image (images with a lesion; every predicted mask)",
        )
    }
    if gallery:
        images = run_images(manifest, cfg, progress=False)
        masks = load_targets(manifest, cfg).masks
        classes = list(parse_mask_labels(cfg.mask_labels).names) if cfg.mask_labels else None
        for kind, png in case_tiles(run, manifest, images, masks, pred, classes).items():
            figures[f"cases_{kind}"] = png
        att = attention_tiles(run, manifest, images, pred, cfg)
        if att is not None:
            figures["attention"] = att
    return figures
