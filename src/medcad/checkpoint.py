"""Model files (model.pt): one self-contained file per trained model, of any task, written by training and read by
prediction, export, explanation and reports alike (so `engine` and `inference` never import each other).

A model file holds {"format", "config" (the run's TrainConfig), "labels", "data_config" (preprocessing), and
"state_dict"}; it is rebuilt by the task table's builder, with no network and no pretrained download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medcad.atomic import atomic_path
from medcad.config import TrainConfig
from medcad.errors import ConfigError, DataError
from medcad.runfolder import FoldFolder, RunFolder
from medcad.tasks import TASKS, get_task


def save_model(
    path: Path,
    model: nn.Module,
    cfg: TrainConfig,
    labels: list[str],
    data_config: dict,
    temperature: float | None = None,
    decision: dict | None = None,
) -> None:
    """Write a self-contained model file (weights, settings, labels, preprocessing) atomically.

    `temperature` (fitted on the fold's validation part) divides the class logits of predictors and exports;
    `decision` holds the frame-level decision fitted on the same part (masks: "frame_score", "min_frame_score")."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": get_task(cfg.task).model_format,
                "config": cfg.to_dict(),
                "labels": labels,
                "data_config": data_config,
                "state_dict": model.state_dict(),
                **({"temperature": float(temperature)} if temperature is not None else {}),
                **({"decision": dict(decision)} if decision else {}),
            },
            tmp,
        )


def load_model_file(path: Path, *tasks: str) -> tuple[nn.Module, dict]:
    """A model (in eval mode) and its metadata from a model file; with `tasks`, it must be of one of them.

    Raises:
        DataError: the file is missing, unreadable, not a medcad model, of another task, or its weights do not fit
            its network (`build_model`).
    """
    blob = read_model_file(path, *tasks)
    return build_model(blob, path), blob


def build_model(blob: dict, path: Path) -> nn.Module:
    """The network (in eval mode, on the CPU) of a model file's contents (`read_model_file` of `path`), its weights
    loaded.

    Raises:
        DataError: the weights do not fit the network its settings describe (missing, unexpected or differently
            shaped tensors), naming the file.
    """
    cfg = TrainConfig.from_saved(blob["config"])
    model = get_task(cfg.task).build(cfg.replace(weights="none"), len(blob["labels"]), blob["data_config"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        reason = str(e).strip().splitlines()
        raise DataError(
            path,
            f"its weights do not fit the {cfg.task} network its settings describe ({' '.join(reason[:3])[:300]}); "
            "retrain that fold (delete its folder and run the same train command)",
        ) from e
    return model.eval()


def read_model_file(path: Path, *tasks: str) -> dict:
    """A model file's contents (settings, labels, preprocessing, weights as tensors), checked, without building the
    network (a predictor on an exported graph needs no more); with `tasks`, it must be of one of them.

    Raises:
        DataError: the file is missing, unreadable, not a medcad model, or of another task.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(
            path,
            f"corrupt or unreadable model file ({type(e).__name__}: {e}); retrain that fold by "
            "deleting its folder and running the same train command",
        ) from e
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt not in {t.model_format for t in TASKS.values()}:
        raise DataError(path, f"not a medcad model file (format {fmt!r})")
    missing = [k for k in ("config", "labels", "data_config", "state_dict") if k not in blob]
    if missing:
        raise DataError(path, f"incomplete model file: no {', '.join(missing)}; retrain that fold")
    cfg = TrainConfig.from_saved(blob["config"])
    task = get_task(cfg.task)
    if task.model_format != fmt:
        raise DataError(path, f"format {fmt!r} does not match its task {cfg.task!r}")
    if tasks and cfg.task not in tasks:
        raise DataError(path, f"is a {cfg.task} model; this needs a {' or '.join(tasks)} model")
    return blob


def run_task(run: Path) -> str:
    """The task of a run folder (from config.json, else from its first fold's model file) or of a model file.

    Raises:
        DataError: neither a run folder nor a model file, or the model file is unusable.
    """
    run = Path(run)
    if run.is_file():
        return read_model_file(run)["config"].get("task", "classify")
    path = RunFolder(run).config
    if path.is_file():
        return TrainConfig.load(path).task
    if run.is_dir() and RunFolder(run).fold_models():
        return read_model_file(fold_model_files(run, None)[0])["config"].get("task", "classify")
    folder = RunFolder(run)
    raise DataError(
        run, folder.not_a_run() if folder.repeats.is_file() else "not a run folder (no config.json) nor a model.pt file"
    )


def fold_model_files(run: Path, fold: int | None) -> list[Path]:
    """The model files of a run, ordered by fold (one fold's when `fold` is given), or a model file itself.

    Raises:
        DataError: no trained model there; or no trained model of `fold` (naming the folds the run has).
    """
    run = Path(run)
    if run.is_file():
        return [run]
    folder = RunFolder(run)
    files = folder.fold_models()
    if not files:
        raise DataError(run, "no trained model found (fold_*/model.pt): train it first")
    if fold is None:
        return files
    trained = [FoldFolder(f.parent).number for f in files]
    if fold not in trained:
        has = _fold_list(trained)
        if fold in folder.folds():
            raise DataError(folder.fold(fold).model, f"fold {fold} has no trained model: this run has {has}")
        raise DataError(run, f"fold {fold} does not exist: this run has {has}")
    return [folder.fold(fold).model]


def _fold_list(folds: list[int]) -> str:
    """ "fold 0", "folds 0-4" or "folds 0, 2, 3" (sorted numbers)."""
    if len(folds) == 1:
        return f"fold {folds[0]}"
    if folds == list(range(folds[0], folds[-1] + 1)):
        return f"folds {folds[0]}-{folds[-1]}"
    return "folds " + ", ".join(map(str, folds))


def read_models(run: Path, fold: int | None, *tasks: str) -> tuple[list[Path], list[dict]]:
    """The model files of a run (every fold, or one), or a single model file, and their contents (`read_model_file`;
    networks not built); each must be of `tasks`.

    Raises:
        DataError: no model, or one of another task; ConfigError: the folds' models disagree on the labels.
    """
    files = fold_model_files(run, fold)
    blobs = [read_model_file(f, *tasks) for f in files]
    if any(b["labels"] != blobs[0]["labels"] for b in blobs):
        raise ConfigError(f"{run}: its fold models disagree on the labels")
    return files, blobs


def load_init_model(path: Path, labels: list[str], *tasks: str) -> tuple[nn.Module, dict]:
    """The model a fold continues from (sequential transfer): a model file of one of `tasks` with the run's labels.

    Raises:
        DataError: the file is unusable or of another task; ConfigError: its labels differ from the run's.
    """
    model, meta = load_model_file(Path(path), *tasks)
    if meta["labels"] != list(labels):
        raise ConfigError(f"{path}: labels {meta['labels']} differ from this run's {list(labels)}")
    return model, meta
