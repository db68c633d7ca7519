"""The predictor of each task (the inference part of the task table in medcad.tasks)."""

from __future__ import annotations

from pathlib import Path

from medcad.checkpoint import run_task
from medcad.inference.classes import ClassPredictor, MultilabelPredictor
from medcad.inference.detections import BoxPredictor
from medcad.inference.masks import MaskPredictor
from medcad.inference.predictor import Predictor

PREDICTORS: dict[str, type[Predictor]] = {
    "classify": ClassPredictor,
    "segment": MaskPredictor,
    "multitask": MaskPredictor,
    "detect": BoxPredictor,
    "multilabel": MultilabelPredictor,
}


def load_predictor(run: str | Path, fold: int | None = None, **kwargs) -> Predictor:
    """The predictor of a run folder's (or model file's) task; kwargs as for `Predictor`."""
    return PREDICTORS[run_task(Path(run))](run, fold, **kwargs)
