"""The predictor of each task (the inference part of the task table in medcad.tasks)."""

from __future__ import annotations

import importlib
from pathlib import Path

from medcad.checkpoint import run_task
from medcad.errors import ConfigError
from medcad.inference.export import ensure_export, export_onnx
from medcad.inference.predictor import Predictor

# The predictor class of each task, imported when a run of that task is loaded (the detector's imports torchvision,
# ~1 s of a one-image predict); each class declares the tasks it serves (`Predictor.tasks`), a test holds them equal.
PREDICTORS: dict[str, str] = {
    "classify": "medcad.inference.classes:ClassPredictor",
    "multilabel": "medcad.inference.classes:MultilabelPredictor",
    "segment": "medcad.inference.masks:MaskPredictor",
    "segment-multiclass": "medcad.inference.masks:MaskPredictor",
    "multitask": "medcad.inference.masks:MaskPredictor",
    "detect": "medcad.inference.detections:BoxPredictor",
}


def predictor_class(task: str) -> type[Predictor]:
    """The predictor class of a task (a key of medcad.tasks.TASKS)."""
    module, name = PREDICTORS[task].split(":")
    return getattr(importlib.import_module(module), name)


def load_predictor(
    run: str | Path,
    fold: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    operating_point: str | None = None,
    images: int | None = None,
    **kwargs,
) -> Predictor:
    """The predictor of a run folder's (or model file's) task; `backend` "auto" (the default: the fastest backend
    that agrees with torch-fp32 on this machine, see medcad.inference.backends; why it chose is in
    `predictor.backend_choice`) or a name of `Predictor`; `device` "auto" (the default: the first GPU if any, as
    predict and serve; evaluate --data, explain and the shortcut check follow it), "cpu" or "cuda[:N]";
    `operating_point`: a two-class run's validated operating point to decide the class at (`Predictor.decide_at`),
    or a detection run's ("f1": its validated box-score threshold in place of `threshold`), checked before anything
    loads; `images`: how many images the caller will predict (video frames count; None:
    unknown or many, as serve), with "auto" and nothing measured before, fewer than `backends.MEASURE_FROM` run on
    torch-fp32 unmeasured (`backends.unmeasured_choice`); other kwargs as for `Predictor`.

    Raises:
        ConfigError: the run has no such operating point (`Predictor.operating_point_settings`), or `kwargs` give a
            setting it sets too (a detector's threshold).
    """
    settings, cut = {}, None
    if operating_point:
        settings, cut = predictor_class(run_task(Path(run))).operating_point_settings(Path(run), fold, operating_point)
    if clash := sorted(set(settings) & set(kwargs)):  # a detector's threshold, given and validated: say which wins
        raise ConfigError(
            f"operating point {operating_point!r} sets the {', '.join(clash)} itself ({settings[clash[0]]:.4g}, chosen "
            f"on validation): give it or --{clash[0]} ({kwargs[clash[0]]:g}), not both"
        )
    return _load(run, fold, backend, device, images, **(kwargs | settings)).decide_at(operating_point, cut)


def _load(run: str | Path, fold: int | None, backend: str, device: str, images: int | None, **kwargs) -> Predictor:
    cls = predictor_class(run_task(Path(run)))
    if backend != "auto":
        ensure_export(cls, Path(run), fold, backend, kwargs.get("threads"))
        return cls(run, fold, backend=backend, device=device, **kwargs)
    from medcad.inference.backends import MEASURE_FROM, known_choice, measure_choice, unmeasured_choice

    choice = known_choice(Path(run), fold, device, kwargs.get("threads"))
    if choice is None and images is not None and images < MEASURE_FROM:
        choice = unmeasured_choice(images)
    if choice is not None:  # no model loaded to know it: load the chosen backend's alone
        ensure_export(cls, Path(run), fold, choice["backend"], kwargs.get("threads"))
        predictor = cls(run, fold, backend=choice["backend"], device=device, **kwargs)
    else:
        ref = cls(run, fold, backend="torch-fp32", device=device, **kwargs)
        choice, predictor = measure_choice(ref, kwargs.get("threads"))
        if predictor is None:
            predictor = (
                ref if choice["backend"] == "torch-fp32" else cls(run, fold, choice["backend"], device=device, **kwargs)
            )
    predictor.backend_choice = choice
    return predictor


def export_run(
    run: str | Path, out: str | Path | None = None, *, fold: int | None = None, int8: bool = False, **kwargs
) -> dict:
    """Export a run folder to ONNX and check it (`medcad export`): medcad.inference.export.export_onnx on the run's
    torch-fp32 predictor; kwargs `opset`, `device` as there."""
    return export_onnx(load_predictor(run, fold, backend="torch-fp32", device="cpu"), out, int8=int8, **kwargs)
