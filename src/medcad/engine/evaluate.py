"""`medcad evaluate`: recompute a run's out-of-fold metrics, or score its models on an external dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medcad.config import TrainConfig
from medcad.data.identity import reconcile, run_samples
from medcad.data.manifest import atomic_write_text
from medcad.data.splits import load_splits
from medcad.engine.results import evaluate_results, write_json
from medcad.errors import DataError
from medcad.runfolder import RunFolder
from medcad.targets import load_targets, run_dataset

log = logging.getLogger(__name__)


def load_run_config(run: Path) -> tuple[TrainConfig, dict]:
    """A run's training configuration and the whole of its config.json (data folder, labels, ... beside the
    TrainConfig fields).

    Raises:
        DataError: `run` is not a run folder (no config.json).
    """
    path = RunFolder(run).config
    if not path.is_file():
        raise DataError(run, "not a run folder (no config.json)")
    return TrainConfig.load(path), json.loads(path.read_text())


def evaluate_run(run: str | Path) -> tuple[dict, Path]:
    """Metrics of a run from its fold results (e.g. after an interruption, or with newer metric code), each
    prediction paired with its image by key. Today's dataset is compared with the run's samples first: removed or
    changed images stop (DataError), added ones are named in a note and left out (they are in no fold)."""

    run = Path(run)
    cfg, meta = load_run_config(run)
    manifest = run_dataset(meta["data"], cfg)
    samples = run_samples(run)
    if samples is not None:  # removed or changed images stop; added ones are in no fold, so not evaluated
        why = "not evaluated: score them with `medcad evaluate RUN --data FOLDER`"
        manifest = reconcile(manifest, samples, run, new_images="ignore", why=why)
    for note in manifest.notes:
        log.warning("note: %s", note)
    splits = load_splits(RunFolder(run).splits, manifest)
    labels = meta["labels"]
    results = []
    for fold in splits["folds"]:
        path = RunFolder(run).fold(fold["fold"]).result
        if not path.is_file():
            raise DataError(path, "fold not finished: rerun the same `medcad train` command to resume the run")
        results.append(json.loads(path.read_text()))
    t = load_targets(manifest, cfg, labels)
    metrics, pred = evaluate_results(manifest, t, results, splits, run, cfg.image_size)
    atomic_write_text(RunFolder(run).predictions, pred.to_csv(index=False))
    write_json(RunFolder(run).metrics, metrics)
    return metrics, run
