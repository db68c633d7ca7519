"""Shortcut check: how much of a classifier's AUC survives when the lesion is removed from the image.

Each fold's model scores its own test images three times: as they are, with the lesion region (its mask dilated by
`margin` of the image side) blanked by inpainting from the surrounding tissue (OpenCV Telea; no flat patch that
would itself be a cue), and with only the lesion region kept (the rest set to black). Only images with a lesion
mask take part (the same rows in all three). A model that reads the lesion loses its AUC without it (toward 0.5);
one that still separates the classes with the lesion gone leans on something else: burned-in text, caliper marks,
the scanner, the crop.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from medcad.atomic import atomic_path
from medcad.config import TrainConfig
from medcad.data.datasets import cached_masks, run_images
from medcad.data.splits import fold_indices, load_splits, row_groups
from medcad.engine.results import write_json
from medcad.errors import ConfigError, DataError
from medcad.runfolder import RunFolder
from medcad.targets import run_dataset
from medcad.tasks import positive_label

VARIANTS = ("original", "lesion_blanked", "lesion_only")


def remove_lesion(images: np.ndarray, masks: np.ndarray, margin: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """(lesion blanked, lesion only) versions of uint8 images (n, S, S, 3) given masks (n, S, S) {0, 1}."""
    k = max(1, int(round(margin * images.shape[1])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    blanked, only = images.copy(), images.copy()
    for i in range(len(images)):
        region = cv2.dilate(masks[i].astype(np.uint8), kernel)
        blanked[i] = cv2.inpaint(np.ascontiguousarray(images[i]), region, k, cv2.INPAINT_TELEA)
        only[i][region == 0] = 0
    return blanked, only


def _fold_probs(run: Path, fold: int, images: np.ndarray) -> np.ndarray:
    """The fold model's class probabilities as predict gives them and the run's headline figures take them: with the
    fold's temperature (pooled over folds, each fold's scale as trained differs)."""
    from medcad.inference.registry import load_predictor

    predictor = load_predictor(run, fold, images=len(VARIANTS) * len(images))  # the fold's model sees every variant
    probs = predictor.infer(images).get("probabilities")
    if probs is None:
        raise ConfigError(f"{run}: a segment-only model gives no class probabilities; the check needs a classifier")
    return probs


def shortcut_check(run: str | Path, *, n_boot: int = 1000, margin: float = 0.03, gallery: int = 8) -> dict:
    """Score a classify or multitask run's test images with and without their lesion; writes shortcut_check.json
    (and shortcut_gallery.npz: the images still called positive with the lesion blanked) in the run folder.

    Returns:
        {labels, positive, n_images, margin, variants: {variant: classification metrics on the lesion images},
        auc_retained: (AUC_blanked - 0.5) / (AUC_original - 0.5) of the positive class, still_positive: images}.
    """
    from medcad.metrics.classification import classification_metrics

    run = Path(run)
    path = RunFolder(run).config
    if not path.is_file():
        raise DataError(run, "not a run folder (no config.json)")
    cfg, meta = TrainConfig.load(path), json.loads(path.read_text())
    if cfg.task not in ("classify", "multitask"):
        raise ConfigError(f"{run}: the shortcut check needs a classify or multitask run, not {cfg.task}")
    manifest = run_dataset(meta["data"], cfg, run)
    if not any(manifest.mask_paths(i) for i in range(len(manifest))):
        raise DataError(meta["data"], "has no lesion masks: the shortcut check blanks the lesion, so it needs them")
    labels = meta["labels"]
    splits = load_splits(RunFolder(run).splits, manifest)
    images = run_images(manifest, cfg, progress=False)
    masks = cached_masks(manifest, cfg.image_size, missing="empty", interface=cfg.interface, progress=False)
    y_all = np.array([labels.index(v) if v in labels else -1 for v in manifest.table["label"]])
    group_map = splits.get("groups") or {}
    rows_all, probs = [], {v: [] for v in VARIANTS}
    for fold in splits["folds"]:
        test = fold_indices(manifest, fold)["test"]
        test = test[(masks[test].reshape(len(test), -1).any(axis=1)) & (y_all[test] >= 0)]
        if len(test) == 0:
            continue
        x = np.asarray(images[test])
        blanked, only = remove_lesion(x, np.asarray(masks[test]), margin)
        for name, arr in zip(VARIANTS, (x, blanked, only), strict=True):
            probs[name].append(_fold_probs(run, fold["fold"], arr))
        rows_all.append(test)
    if not rows_all:
        raise DataError(run, "no labelled test image has a lesion mask")
    rows = np.concatenate(rows_all)
    y = y_all[rows]
    present = sorted(set(y.tolist()))
    groups = row_groups(group_map, manifest.keys, rows)
    held = [labels[c] for c in present]
    pos = positive_label(held, cfg.positive if len(held) == len(labels) == 2 else None) if len(held) >= 2 else held[0]
    c_pos = labels.index(pos)
    result: dict = {"labels": labels, "positive": pos, "n_images": int(len(rows)), "margin": margin, "variants": {}}
    result["probabilities"] = "temperature-scaled"  # as predict gives them (checks made before: as trained)
    for name in VARIANTS:
        p = np.concatenate(probs[name])
        m = classification_metrics(y, p, labels, groups=groups, n_boot=n_boot) if len(present) >= 2 else {}
        keep = ("accuracy", "macro_auc", "per_class")
        result["variants"][name] = {k: m.get(k) for k in keep} | {"mean_p_positive": float(p[:, c_pos].mean())}
        probs[name] = p

    def auc_of(v: str) -> float:
        pc = (result["variants"][v].get("per_class") or {}).get(pos) or {}
        return float(pc.get("auc", float("nan")))

    a0, a1 = auc_of("original"), auc_of("lesion_blanked")
    result["auc_positive"] = {v: auc_of(v) for v in VARIANTS}
    result["auc_retained"] = (a1 - 0.5) / (a0 - 0.5) if np.isfinite(a0) and abs(a0 - 0.5) > 1e-9 else float("nan")
    still = np.flatnonzero((y == c_pos) & (probs["lesion_blanked"].argmax(1) == c_pos))
    order = still[np.argsort(-probs["lesion_blanked"][still, c_pos])][:gallery]
    result["still_positive"] = {
        "n": int(len(still)),
        "of": int((y == c_pos).sum()),
        "images": [
            {"image": manifest.keys[rows[i]], "p_blanked": float(probs["lesion_blanked"][i, c_pos])} for i in order
        ],
    }
    x = np.asarray(images[rows[order]])
    blanked, _ = remove_lesion(x, np.asarray(masks[rows[order]]), margin)
    with atomic_path(RunFolder(run).shortcut_gallery) as tmp:
        np.savez_compressed(tmp, original=x, blanked=blanked, p=probs["lesion_blanked"][order, c_pos])
    write_json(RunFolder(run).shortcut_check, result)
    return result
