"""`medcad evaluate`: recompute a run's out-of-fold metrics, or score its models on an external dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medcad.config import DataOptions, TrainConfig
from medcad.data.manifest import atomic_write_text, load_manifest
from medcad.data.splits import load_splits
from medcad.engine.results import evaluate_results, pooled_metrics, prediction_table, write_json
from medcad.engine.train import task_masks
from medcad.errors import DataError


def _run_config(run: Path) -> tuple[TrainConfig, dict]:
    path = run / "config.json"
    if not path.is_file():
        raise DataError(run, "not a run folder (no config.json)")
    return TrainConfig.load(path), json.loads(path.read_text())


def evaluate_run(run: str | Path) -> tuple[dict, Path]:
    """Metrics of a run from its fold results (e.g. after an interruption, or with newer metric code)."""

    run = Path(run)
    cfg, meta = _run_config(run)
    manifest = load_manifest(meta["data"], cfg.data_options())
    splits = load_splits(run / "splits.json", manifest)
    labels = meta["labels"]
    results = []
    for fold in splits["folds"]:
        path = run / f"fold_{fold['fold']}" / "result.json"
        if not path.is_file():
            raise DataError(path, "fold not finished: rerun the same `medcad train` command to resume the run")
        results.append(json.loads(path.read_text()))
    y = np.array([labels.index(v) if v in labels else 0 for v in manifest.table["label"]])
    masks = task_masks(manifest, cfg, progress=False)
    boxes = None
    if cfg.task == "detect":
        from medcad.data.boxes import manifest_boxes

        _, boxes, _ = manifest_boxes(manifest, cfg.image_size, labels)
    metrics, pred = evaluate_results(manifest, labels, y, results, splits, masks, run, boxes)
    atomic_write_text(run / "predictions.csv", pred.to_csv(index=False))
    write_json(run / "metrics.json", metrics)
    return metrics, run


def evaluate_external(
    run: str | Path, data: str | Path, options: DataOptions | None = None
) -> tuple[dict, Path, list[str]]:
    """Predict every image of another dataset with the run's models and score it against its labels, masks or
    boxes (by the run's task); written to RUN/evaluations/<dataset>/.

    Args:
        run: the run folder.
        data: the external dataset, in any layout.
        options: how to read it (its own layout, pattern, label map, ...), not the training set's.

    Returns:
        (metrics, folder written, notes on how the dataset was read).
    """
    from medcad.data.datasets import cached_images

    run = Path(run)
    cfg, meta = _run_config(run)
    manifest = load_manifest(data, options or DataOptions())
    labels = meta["labels"]
    if cfg.task != "detect" and not (cfg.task == "segment" and not manifest.labels):
        unknown = sorted(set(manifest.labels) - set(labels))
        if unknown:
            raise DataError(
                data,
                f"labels {unknown} are not among the model's labels {labels}; rename them with --label-map "
                f"'{unknown[0]}={labels[0]}' (old=new, comma-separated)",
            )
    images = np.asarray(cached_images(manifest, cfg.image_size, bilateral=cfg.bilateral))
    patients = manifest.table["patient"].to_numpy(dtype=str)
    groups = np.where(patients != "", patients, np.arange(len(manifest)).astype(str))
    rows = np.arange(len(manifest))
    y = np.array([labels.index(v) if v in labels else 0 for v in manifest.table["label"]])
    metrics: dict = {}
    pred = pd.DataFrame({"image": manifest.keys})
    if cfg.task == "detect":
        from medcad.data.boxes import manifest_boxes
        from medcad.inference.detections import DetectionPredictor
        from medcad.metrics.detection import detection_metrics

        _, boxes, _ = manifest_boxes(manifest, cfg.image_size, labels)
        dets = DetectionPredictor(run).predict_arrays(images)
        metrics = detection_metrics(dets, boxes, labels, groups=groups)
    elif cfg.task in ("segment", "multitask"):
        from medcad.inference.masks import MaskPredictor
        from medcad.metrics.segmentation import mask_counts, per_image_table, segmentation_metrics

        masks, probs = MaskPredictor(run).predict_arrays(images)
        if probs is not None:
            metrics = pooled_metrics(manifest, rows, y, probs, labels, groups)
            pred = prediction_table(manifest, rows, y, probs, labels)
        if masks is not None:
            counts = mask_counts(masks >= 0.5, task_masks(manifest, cfg, progress=False).astype(bool))
            metrics["segmentation"] = segmentation_metrics(counts, groups=groups)
            metrics["dice"], metrics["iou"] = metrics["segmentation"]["dice"], metrics["segmentation"]["iou"]
            table = per_image_table(counts, manifest.keys).rename(columns={"key": "image"})
            pred = pred.merge(table, on="image", how="left")
    else:
        from medcad.inference.predictor import Predictor

        probs = Predictor(run).predict_arrays(images)
        metrics = pooled_metrics(manifest, rows, y, probs, labels, groups)
        pred = prediction_table(manifest, rows, y, probs, labels)
    metrics["evaluation"] = f"external test set {Path(data).resolve()}"
    where = run / "evaluations" / Path(data).resolve().name
    where.mkdir(parents=True, exist_ok=True)
    atomic_write_text(where / "predictions.csv", pred.to_csv(index=False))
    write_json(where / "metrics.json", metrics)
    return metrics, where, manifest.notes
