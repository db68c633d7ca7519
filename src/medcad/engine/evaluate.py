"""`medcad evaluate`: recompute a run's out-of-fold metrics, or score its models on an external dataset."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcad.atomic import atomic_write_text
from medcad.config import TrainConfig, check_nsd_tolerance
from medcad.data.identity import reconcile, run_samples
from medcad.data.manifest import Manifest
from medcad.data.splits import load_splits
from medcad.engine.results import evaluate_results, pooled_detections, rows_by_key, write_json
from medcad.errors import ConfigError, DataError
from medcad.runfolder import RunFolder
from medcad.targets import Targets, load_targets, run_dataset

log = logging.getLogger(__name__)


def load_run_config(run: Path) -> tuple[TrainConfig, dict]:
    """A run's training configuration and the whole of its config.json (data folder, labels, ... beside the
    TrainConfig fields).

    Raises:
        DataError: `run` is not a run folder (no config.json).
    """
    path = RunFolder(run).config
    if not path.is_file():
        raise DataError(run, RunFolder(run).not_a_run())
    return TrainConfig.load(path), json.loads(path.read_text())


def _run_results(run: Path, say_notes: bool = True) -> tuple[TrainConfig, Manifest, dict, list[dict], Targets]:
    """A finished run's configuration, today's dataset reconciled with the run's samples, its splits, fold results
    and targets (see `evaluate_run`); the dataset's notes logged unless `say_notes` is False (a caller that has
    said them).

    Raises:
        DataError: not a run folder, an unfinished fold, or removed or changed images.
    """
    cfg, meta = load_run_config(run)
    manifest = run_dataset(meta["data"], cfg, run)
    samples = run_samples(run)
    if samples is not None:  # removed or changed images stop; added ones are in no fold, so not evaluated
        why = "not evaluated: score them with `medcad evaluate RUN --data FOLDER`"
        manifest = reconcile(manifest, samples, run, new_images="ignore", why=why)
    for note in manifest.notes if say_notes else []:
        log.warning("note: %s", note)
    splits = load_splits(RunFolder(run).splits, manifest)
    labels = meta["labels"]
    results = []
    for fold in splits["folds"]:
        path = RunFolder(run).fold(fold["fold"]).result
        if not path.is_file():
            raise DataError(path, "fold not finished: rerun the same `medcad train` command to resume the run")
        results.append(json.loads(path.read_text()))
    return cfg, manifest, splits, results, load_targets(manifest, cfg, labels)


def evaluate_run(run: str | Path, nsd_tolerance: float | None = None) -> tuple[dict, Path]:
    """Metrics of a run from its fold results (e.g. after an interruption, or with newer metric code), each
    prediction paired with its image by key. Today's dataset is compared with the run's samples first: removed or
    changed images stop (DataError), added ones are named in a note and left out (they are in no fold). Masks' NSD
    at `nsd_tolerance` % of each image's diagonal (None: the run's), which config.json then keeps: the run's figures
    and its setting stay one (a resumed or re-pooled run scores at it again).

    Raises:
        ConfigError: `nsd_tolerance` outside (0, 100], or given for a run without masks."""
    run = Path(run)
    if nsd_tolerance is not None:
        check_nsd_tolerance(nsd_tolerance)
    cfg, manifest, splits, results, t = _run_results(run)
    if nsd_tolerance is not None:
        _keep_tolerance(run, cfg, nsd_tolerance)
    tolerance = cfg.nsd_tolerance if nsd_tolerance is None else nsd_tolerance
    metrics, pred = evaluate_results(manifest, t, results, splits, run, cfg.image_size, nsd_tolerance=tolerance)
    before = RunFolder(run).metrics
    if before.is_file() and "timing" in (kept := json.loads(before.read_text())):
        metrics["timing"] = kept["timing"]  # how long the run took to train: this recomputation does not change it
    atomic_write_text(RunFolder(run).predictions, pred.to_csv(index=False))
    write_json(RunFolder(run).metrics, metrics)
    return metrics, run


def _keep_tolerance(run: Path, cfg: TrainConfig, tolerance: float) -> None:
    """Keep NSD's `tolerance` in the run's config.json (a scoring setting: `RESUMABLE_KEYS`); ConfigError for a task
    without masks, where it scores nothing."""
    from medcad.tasks import get_task

    if "masks" not in get_task(cfg.task).targets:
        raise ConfigError(f"--nsd-tolerance scores masks; a {cfg.task} run has none")
    if tolerance != cfg.nsd_tolerance:
        path = RunFolder(run).config
        saved = json.loads(path.read_text())
        write_json(path, {**saved, "nsd_tolerance": tolerance})


@dataclass(frozen=True)
class RunDetections:
    """A detection run's out-of-fold test detections and true boxes, as its metrics score them."""

    keys: list[str]  # (N,) image keys
    detections: list[np.ndarray]  # per image (m, 6) [x0, y0, x1, y1, score, class_index], the full ranking
    truths: list[np.ndarray]  # per image (t, 5) [x0, y0, x1, y1, class_index]
    labels: list[str]  # the box classes class_index points into
    image_size: int  # S: both are in the model's S x S input, in pixels
    frame_classes: tuple[str, ...] = ()  # whole-frame classes (normal, unclear): no lesions, left out of the FROC


def run_detections(run: str | Path, say_notes: bool = True) -> RunDetections:
    """A detection run's out-of-fold test detections and true boxes (`RunDetections`); the dataset's notes are
    logged unless `say_notes` is False.

    Raises:
        DataError: not a finished run of boxes, or its images removed or changed since.
    """
    run = Path(run)
    cfg, manifest, splits, results, t = _run_results(run, say_notes)
    if t.boxes is None:
        raise DataError(run, "not a detection run (its targets have no boxes)")
    rows, dets, truths = pooled_detections(t.boxes, rows_by_key(results, splits, manifest))
    every = manifest.keys
    keys = [every[i] for i in rows]
    return RunDetections(keys, dets, truths, list(t.labels), cfg.image_size, tuple(t.frame_classes))
