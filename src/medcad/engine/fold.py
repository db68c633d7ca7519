"""One fold trainer for every task: the common loop, with the task's part in a `FoldHooks` object.

The loop, written once: seed; check the fold; build the model (or continue from an earlier step's model file);
score the model on the validation part before fitting (the classifier's stage-1 head, or the model continued from);
fit with Lightning (best and last checkpoints, early stopping on the task's validation score, resume from
last.ckpt); load the best checkpoint (the last one when no best was recorded); keep whichever of before-fit and
fitted scores better on validation; fit a temperature on validation class probabilities and the frame-level decision
(masks: the smallest frame score that makes a frame 'lesion') on the validation predictions; predict the validation
and test parts; save model.pt and result.json (atomically). A fold with a result.json is finished: its checkpoints
are removed then, unless `keep_checkpoints`.

With several processes (DDP), every process takes part in each fit; rank 0 alone scores, predicts (on its device)
and writes the fold folder, so the validation and test parts are predicted whole, once.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from medcad.checkpoint import load_init_model, save_model
from medcad.data.transforms import Normalize
from medcad.devices import is_primary
from medcad.engine.common import quiet_lightning, train_stage
from medcad.engine.results import RESULT_VERSION, write_json
from medcad.errors import ConfigError, MedcadError
from medcad.run import Run
from medcad.runfolder import FoldFolder


@dataclass
class FoldData:
    """What every fold of a run shares.

    Attributes:
        images: (N, S, S, 3) uint8 at the training size (a read-only memmap is fine).
        y: (N,) label index per row (0 where the task has no class labels), or (N, K) multi-hot for multi-label.
        labels: class names.
        masks: (N, S, S) uint8 {0, 1} lesion masks (segment, multitask), else None.
        boxes: per row (m, 5) [x0, y0, x1, y1, class_index] in S x S pixels (detect), else None.
        feature_key: identifies the images and backbone weights for the stage-1 feature cache (classify).
        keys: each row's sample key (`Manifest.keys`): result.json names its test and validation images by key, so
            that later commands pair predictions with images by identity, not by row position.
    """

    images: np.ndarray
    y: np.ndarray
    labels: list[str]
    masks: np.ndarray | None = None
    boxes: list[np.ndarray] | None = None
    feature_key: str = ""
    keys: list[str] | None = None


class FoldHooks:
    """A task's part of the fold loop, made for one run (`self.run`: its settings, task, compute and folder).
    `predict` returns a dict whose "probs" (N, K) give the classification fields of a result (and a temperature),
    and whatever else `result` turns into result.json fields. It runs in fp32 without autocast whatever the run
    trains in: the reference every predict backend is checked against (agreement >= 0.99), so the fold's
    validation choices (temperature, thresholds) and scored test outputs are what `medcad predict` reproduces."""

    stage = "train"  # checkpoint and log sub-folder of the fit
    before_stage = "init"  # what the before-fit model is called in result.json
    tasks: tuple[str, ...] = ()

    def __init__(self, run: Run) -> None:
        self.run, self.cfg = run, run.cfg

    def check(self, k: int, parts: dict[str, np.ndarray], data: FoldData) -> None:
        """Raise ConfigError when this fold cannot be trained."""

    def before_name(self, continued: bool) -> str:
        """What the model before the fit is called in result.json: "init" (the model continued from, as loaded)
        when continuing, else `before_stage`."""
        return "init" if continued else self.before_stage

    def build(self, data: FoldData, parts: dict, init: nn.Module | None, meta: dict | None):
        """(model, data_config) for this fold; `init` is the model continued from (sequential transfer)."""
        raise NotImplementedError

    def before_fit(self, model, normalize, data, parts, fold: FoldFolder, speed: dict, continued: bool) -> bool:
        """Work before the fit (the classifier's stage 1); True when the before-fit model deserves a validation
        score (it is trained or continued), False for a new, untrained head."""
        return continued

    def epochs(self) -> int:
        return self.cfg.epochs

    def module(self, model, normalize, data: FoldData, parts: dict) -> L.LightningModule:
        raise NotImplementedError

    def loaders(self, data: FoldData, parts: dict) -> tuple:
        raise NotImplementedError

    monitor = "val_score"  # what the module logs for checkpoint choice and early stopping (higher is better)

    def predict(self, model, normalize, data: FoldData, rows: np.ndarray) -> dict:
        raise NotImplementedError

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        """The validation score that picks between before-fit and fitted (the same measure as `monitor`)."""
        raise NotImplementedError

    def temperature(self, val: dict, data: FoldData, rows: np.ndarray) -> float | None:
        """The temperature of the class probabilities, fitted on the validation part (None without them)."""
        from medcad.metrics.calibration import fit_temperature

        return fit_temperature(data.y[rows], val["probs"]) if val.get("probs") is not None else None

    def decision(self, val: dict, data: FoldData, rows: np.ndarray, temperature: float | None) -> dict:
        """Frame-level decision settings fitted on the validation part, kept in model.pt and result.json."""
        return {}

    def result(self, test: dict, val: dict, data: FoldData, parts: dict, fold: FoldFolder) -> dict:
        """Task-specific result.json fields (and files) from the test and validation predictions."""
        return {}


def _check_finite(fold_dir: Path, outputs: dict[str, dict]) -> None:
    """Stop a fold whose kept model predicts non-finite values (NaN: its training diverged in every epoch it could
    have kept) as class probabilities, as masks (a part's "nonfinite" flags: masks are kept as uint8, which cannot
    hold a NaN) or as detections (boxes, scores), naming the fold and what to change, before anything is saved as its
    result.

    Raises:
        MedcadError: the probabilities or detections of some images of a part are not finite.
    """
    for part, out in outputs.items():
        probs, dets, flags = out.get("probs"), out.get("detections"), out.get("nonfinite")
        if flags is not None and len(flags):
            what, bad = "masks or probabilities", np.asarray(flags, bool)
        elif probs is not None and len(probs):
            what, bad = "probabilities", ~np.isfinite(np.asarray(probs, dtype=float).reshape(len(probs), -1)).all(1)
        elif dets is not None and len(dets):
            what, bad = "boxes or scores", np.array([not np.isfinite(np.asarray(d, dtype=float)).all() for d in dets])
        else:
            continue
        if bad.any():
            raise MedcadError(
                f"{fold_dir}: the fold's model predicts non-finite {what} (NaN) for {int(bad.sum())} of "
                f"{len(bad)} {part} images: its training diverged; train a new run (another --out) with a lower "
                "learning rate (lr)"
            )


def train_fold(
    k: int,
    parts: dict[str, np.ndarray],
    data: FoldData,
    hooks: FoldHooks,
    progress: bool = True,
    init_model: Path | None = None,
) -> dict:
    """Train one fold of any task (see the module docstring) in its folder of the hooks' run; returns the dict also
    written to result.json ({} in processes other than rank 0).

    Args:
        k: fold number (also offsets the seed).
        parts: row indices {"train", "val", "test"}.
        hooks: the task's part, made for the run (`FoldHooks.run`).
        init_model: a model.pt of an earlier step (same task family and labels) to continue from.

    Raises:
        ConfigError: no validation part, or the task's own checks fail.
    """
    quiet_lightning()
    run = hooks.run
    cfg, fold = run.cfg, run.folder.fold(k)
    L.seed_everything(cfg.seed + k, verbose=False)
    train, val, test = (np.asarray(parts[p], dtype=int) for p in ("train", "val", "test"))
    parts = {"train": train, "val": val, "test": test}
    if len(val) == 0:
        raise ConfigError(
            f"fold {k} has no validation images (each fold needs some for early stopping): set --val-fraction > 0, "
            "and give its training part more than one group (patient, or near-duplicate images)"
        )
    if len(train) == 0:
        raise ConfigError(f"fold {k} has no training images (its splits leave every image to validation or test)")
    hooks.check(k, parts, data)
    primary, device = is_primary(), run.device
    if primary:
        fold.path.mkdir(parents=True, exist_ok=True)
    init, meta = load_init_model(init_model, data.labels, *hooks.tasks) if init_model else (None, None)
    model, dc = hooks.build(data, parts, init, meta)
    model.to(device)
    normalize = Normalize(dc["mean"], dc["std"])
    speed: dict[str, float | None] = {}  # train_seconds, train_images_per_s, predict_images_per_s, seconds, ...
    t0 = time.perf_counter()
    before_name = hooks.before_name(init is not None)
    scores: dict[str, float] = {}
    before_state = val_out = None
    scored_before = hooks.before_fit(model, normalize, data, parts, fold, speed, init is not None)
    model.to(device)  # a fit in before_fit leaves its part on the CPU
    if scored_before and primary:
        val_out = hooks.predict(model, normalize, data, val)
        scores[before_name] = hooks.score(val_out, data, val)
        before_state = {n: v.detach().clone() for n, v in model.state_dict().items()}
        speed["before_fit_seconds"] = time.perf_counter() - t0
    selected, precision = before_name, None
    if hooks.epochs() > 0:
        t1 = time.perf_counter()
        model.train()  # predicting set eval mode, and Lightning keeps the modes of submodules as it finds them
        module = hooks.module(model, normalize, data, parts)
        precision = train_stage(
            run,
            fold,
            hooks.stage,
            module,
            hooks.loaders(data, parts),
            hooks.epochs(),
            hooks.monitor,
            cfg.patience,
            progress,
            load_best=primary,
        )
        if not primary:
            return {}  # rank 0 predicts and writes the fold
        model.to(device, memory_format=torch.contiguous_format)  # as a loaded model.pt: the same kernels and outputs
        fitted_out = hooks.predict(model, normalize, data, val)
        scores[hooks.stage] = hooks.score(fitted_out, data, val)
        speed["train_seconds"] = time.perf_counter() - t1
        ips = getattr(module, "images_per_s", None)
        speed["train_images_per_s"] = float(np.median(ips)) if ips else None
        if before_state is not None and scores[hooks.stage] < scores[before_name]:
            model.load_state_dict(before_state)  # fitting made validation worse: keep the model from before
        else:
            selected, val_out = hooks.stage, fitted_out
    del before_state
    if not primary:
        return {}
    t2 = time.perf_counter()
    test_out = hooks.predict(model, normalize, data, test)
    speed["predict_images_per_s"] = len(test) / max(time.perf_counter() - t2, 1e-9) if len(test) else None
    if val_out is None:
        val_out = hooks.predict(model, normalize, data, val)
    _check_finite(fold.result.parent, {"validation": val_out, "test": test_out})
    if scores and scores.get(selected) == 0:  # kept, but it learned nothing its validation part can see
        warnings.warn(
            f"fold {k}: the model kept scores 0 on its validation part ({hooks.monitor} of {len(val)} images, "
            f"'{selected}'): it found nothing there, and its test figures are those of a model that learned nothing; "
            "more epochs, a larger --image-size or another --lr may help",
            UserWarning,
            stacklevel=1,
        )
    with warnings.catch_warnings(record=True) as said:  # a temperature left at 1 is said with its fold
        warnings.simplefilter("always")
        temperature = hooks.temperature(val_out, data, val)
    for w in said:
        warnings.warn(f"fold {k}: {w.message}", w.category, stacklevel=1)
    decision = hooks.decision(val_out, data, val, temperature)
    save_model(fold.model, model.cpu(), cfg, list(data.labels), dc, temperature, decision)
    speed["seconds"] = time.perf_counter() - t0
    result = _fold_result(k, parts, data, selected, scores, speed, decision, temperature, test_out, val_out)
    result |= hooks.result(test_out, val_out, data, parts, fold)
    if precision is not None:
        result["train_precision"] = precision  # of the fold's fit (engine.precision); predictions: fp32
    result["version"] = RESULT_VERSION
    write_json(fold.result, result)
    if not cfg.keep_checkpoints:  # finished: what resuming it needed is dead weight (a study's were gigabytes)
        shutil.rmtree(fold.all_checkpoints, ignore_errors=True)
    return result


def _fold_result(
    k: int,
    parts: dict,
    data: FoldData,
    selected: str,
    scores: dict,
    speed: dict,
    decision: dict,
    temperature,
    test_out: dict,
    val_out: dict,
) -> dict:
    """result.json of a fold (without the task's own entries): sizes, the stage kept and its validation scores,
    speed, the frame decision, the test and validation rows (and keys), class probabilities with the temperature."""
    train, val, test = parts["train"], parts["val"], parts["test"]
    result = {
        "fold": k,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "selected_stage": selected,
        **{f"val_score_{name}": s for name, s in scores.items()},
        "val_score": scores.get(selected),
        "speed": speed,
        **({"decision": decision} if decision else {}),
        "test_rows": test.tolist(),
        "val_rows": val.tolist(),
        **(
            {
                "test_keys": [data.keys[i] for i in test],
                "val_keys": [data.keys[i] for i in val],
                "train_keys": [data.keys[i] for i in train],  # as trained: a transfer run's domains, a carved val
            }
            if data.keys
            else {}
        ),
    }
    if val_out.get("probs") is not None:
        result |= {"test_probs": test_out["probs"].tolist(), "val_probs": val_out["probs"].tolist()}
        result["temperature"] = temperature
    return result
