"""The model card a server shows: what the model decides, how it reads an image, and how well it did."""

from __future__ import annotations

import json
from pathlib import Path

from medcad import __version__
from medcad.inference.predictor import Predictor
from medcad.runfolder import RunFolder
from medcad.tasks import get_task

DECISIONS = {
    "probabilities": "the most probable class",
    "boxes": "the class of the top box scoring at least the threshold, else 'background'",
    "mask": "'lesion' when any pixel's lesion probability reaches the threshold, else 'no lesion'",
}


ENSEMBLE = {  # how the predictor combines the fold models (medcad.inference.predictor)
    "probabilities": "mean probabilities",
    "mask": "mean lesion probability per pixel",
    "boxes": "boxes merged by class-wise NMS",
}


def _run_folder(path: Path) -> Path | None:
    """The run folder of a run folder or of a model.pt inside it (fold_k/model.pt), where metrics.json is."""
    for folder in (path, path.parent, path.parent.parent):
        if RunFolder(folder).metrics.is_file():
            return folder
    return None


def _n_images(m: dict) -> int | None:
    return m.get("n") or m.get("n_images") or m.get("segmentation", {}).get("n_images")


def model_card(predictor: Predictor) -> dict:
    """A JSON-ready card: task, labels, decision rule, threshold, models (files, ensemble), preprocessing, the
    run's headline metrics with 95 % CIs (from its metrics.json, out-of-fold or holdout), how they were
    estimated, and what data trained it (the dataset folder's name, not its path)."""
    task = get_task(predictor.task)
    cfg = predictor.config
    decision = DECISIONS["probabilities" if "probabilities" in task.outputs else task.outputs[0]]
    if task.label_kind == "multi":
        decision = "every label whose probability reaches the threshold (joined by '+'), else 'none'"
    card: dict = {
        "task": task.name,
        "summary": task.summary,
        "labels": list(predictor.labels),
        "outputs": list(task.outputs),
        "decision": decision,
        "threshold": predictor.threshold,
        "model": {
            "backbone": cfg.model,
            "arch": cfg.arch if "mask" in task.outputs else None,
            "files": len(predictor.files),
            "ensemble": (
                f"{len(predictor.files)} fold models, {ENSEMBLE[task.outputs[-1]]}"
                if len(predictor.files) > 1
                else "one model"
            ),
            "backend": predictor.backend,
        },
        "preprocessing": {
            "input": "RGB, 8 bit (16-bit and DICOM data scaled as medcad reads training images)",
            "resize": f"{cfg.image_size} x {cfg.image_size} pixels",
            "mean": predictor.data_config.get("mean"),
            "std": predictor.data_config.get("std"),
            "interpolation": predictor.data_config.get("interpolation"),
            "bilateral_filter": bool(cfg.bilateral),
        },
        "medcad": __version__,
        "intended_use": "research use only; not a medical device",
    }
    folder = _run_folder(predictor.run if predictor.run.is_dir() else predictor.run.parent)
    if folder is not None:
        m = json.loads(RunFolder(folder).metrics.read_text())
        card["metrics"] = {k: m[k] for k in task.headline if isinstance(m.get(k), dict) and "value" in m[k]}
        card["evaluation"] = {
            "images": _n_images(m),
            "how": m.get("evaluation"),
            "splits": m.get("splits"),
            "ci": "95 % cluster bootstrap over the run's groups" if m.get("bootstrap", {}).get("by_group") else None,
        }
        config = RunFolder(folder).config
        data = json.loads(config.read_text()).get("data") if config.is_file() else None
        card["trained_on"] = {"dataset": Path(data).name if data else None, "images": _n_images(m)}
    return card
