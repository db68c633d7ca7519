"""The model card a server shows: what the model decides, how it reads an image, and how well it did."""

from __future__ import annotations

import json
from pathlib import Path

from medcad import __version__
from medcad.data.datasets import RESIZE_RULE
from medcad.data.splits import fold_split
from medcad.inference.operating_points import operating_rules, rule_threshold
from medcad.inference.outputs import frame_rule, no_finding_decisions
from medcad.inference.predictor import Predictor
from medcad.runfolder import RunFolder, fold_of
from medcad.tasks import get_task

DECISIONS = {
    "probabilities": "the most probable class",
    "boxes": "the class of the top box scoring at least the threshold, else 'background'",
    "mask": "the frame decision (frame_decision)",
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


def _rows(table: Path) -> int:
    """The data rows of a CSV (a run's manifest.csv: one per image, or per DICOM frame)."""
    import pandas as pd

    return len(pd.read_csv(table, usecols=[0], dtype=str, keep_default_na=False))


def _trained_on(data: str | None, folder: RunFolder, fold: int | None = None) -> dict:
    """What data made a run's models: the dataset folder's name (not its path), its images (manifest rows: the
    training, validation and test parts together), how many the models learned their weights from (the folds'
    training parts together; with `fold`, one fold's model alone: that fold's, as it had been given the ensemble's
    sum), were tuned on only (early stopping, temperature, thresholds: the validation parts, less those) and no model
    saw (a holdout's test part, domains a transfer run left out); for an ensemble also each fold model's own
    training part (`training_images_each`). Counts are of image keys (one per image, or DICOM frame), each fold's
    parts as it was trained (`_parts_as_trained`)."""
    out = {"dataset": Path(data).name if data else None}
    out["images"] = _rows(folder.manifest) if folder.manifest.is_file() else None
    if folder.splits.is_file():
        folds = json.loads(folder.splits.read_text())["folds"]
        numbered = [(int(f.get("fold", i)), f) for i, f in enumerate(folds)]
        if fold is not None and (own := fold_split(folds, fold)) is not None:
            numbered = [(fold, own)]
        parts = [_parts_as_trained(folder, k, f) for k, f in numbered]
        train = set().union(*(t for t, _ in parts))
        val = set().union(*(v for _, v in parts)) - train
        out |= {"training_images": len(train), "validation_images": len(val)}
        if len(numbered) > 1:
            out["training_images_each"] = [len(t) for t, _ in parts]
        if out["images"] is not None:
            out["unseen_images"] = out["images"] - len(train) - len(val)
    return out


def _parts_as_trained(folder: RunFolder, k: int, fold: dict) -> tuple[set[str], set[str]]:
    """A fold's training and validation keys as its model was trained: from its result.json (a transfer run trains
    on its domains' images only, and carves a validation part from them where splits.json's has none of them), else
    (a fold trained before result.json kept them, or not trained) as splits.json gives them."""
    result = folder.fold(k).result
    done = json.loads(result.read_text()) if result.is_file() else {}
    if "train_keys" in done and "val_keys" in done:
        return set(done["train_keys"]), set(done["val_keys"])
    return set(fold["train"]), set(fold.get("val", []))


def model_card(predictor: Predictor) -> dict:
    """A JSON-ready card: task, labels, decision rule, the decisions that say no finding (`no_finding`), threshold,
    models (files, ensemble), preprocessing, the run's headline metrics with 95 % CIs (from its metrics.json,
    out-of-fold or holdout), how they were estimated, and what data trained it (the dataset folder's name, not its
    path)."""
    task = get_task(predictor.task)
    cfg = predictor.config
    decision = DECISIONS["probabilities" if "probabilities" in task.outputs else task.outputs[0]]
    if task.label_kind == "multi":
        decision = "every label whose probability reaches the threshold (joined by '|'), else 'none'"
    if "mask" in task.outputs and "probabilities" in task.outputs:
        decision = "label: the most probable class (temperature-scaled); the mask's frame_decision is made apart"
    if predictor.cut:
        decision = class_decision(predictor) + ("; the mask's frame_decision is made apart" * ("mask" in task.outputs))
    card: dict = {
        "task": task.name,
        "summary": task.summary,
        "labels": list(predictor.labels),
        "outputs": list(task.outputs),
        "decision": decision,
        # what the page's video timeline treats as no finding (its other decisions are listed as intervals)
        "no_finding": no_finding_decisions(task.outputs, task.label_kind, list(predictor.labels)),
        # none for one class per image: the most probable decides (a threshold there would say nothing)
        "threshold": None if (task.outputs, task.label_kind) == (("probabilities",), "single") else predictor.threshold,
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
            "size": cfg.image_size,
            "mean": predictor.data_config.get("mean"),
            "std": predictor.data_config.get("std"),
            "interpolation": RESIZE_RULE,
            "bilateral_filter": bool(cfg.bilateral),
            "interface": cfg.interface,  # "crop": each frame cut to its imaging area first (medcad.data.interface)
        },
        "medcad": __version__,
        "intended_use": "research use only; not a medical device",
    }
    if "mask" in task.outputs:
        card["frame_decision"] = frame_decision(predictor)
    folder = _run_folder(predictor.run if predictor.run.is_dir() else predictor.run.parent)
    if folder is not None:
        m = json.loads(RunFolder(folder).metrics.read_text())
        card["metrics"] = {k: m[k] for k in task.headline if isinstance(m.get(k), dict) and "value" in m[k]}
        if "mask" in task.outputs:
            card["metrics_note"] = "dice, iou: every predicted mask, before the frame decision (out of fold)"
            decided = (m.get("segmentation") or {}).get("frame_decision")
            if decided and len(predictor.files) > 1:
                card["frame_decision"]["out_of_fold"] = {
                    "dice": decided["dice"],
                    "thresholds": decided["thresholds"],
                    "note": "each fold's test images decided by that fold's model at its own threshold (the "
                    "ensemble's threshold is their mean; medcad evaluate RUN --data SET scores the ensemble)",
                }
        card["evaluation"] = {
            "images": _n_images(m),
            "how": m.get("evaluation"),
            "splits": m.get("splits"),
            "ci": "95 % cluster bootstrap over the run's groups" if m.get("bootstrap", {}).get("by_group") else None,
        }
        card |= _one_fold(predictor, m) | _operating_points(predictor, m) | _calibration(predictor, m)
        config = RunFolder(folder).config
        data = json.loads(config.read_text()).get("data") if config.is_file() else None
        card["trained_on"] = _trained_on(data, RunFolder(folder), _fold_of(predictor))
    return card


def _fold_of(predictor: Predictor) -> int | None:
    """The fold whose model alone the predictor runs (`--fold k`, or a run of one fold), else None (an ensemble)."""
    return fold_of(predictor.files[0]) if len(predictor.files) == 1 else None


def _operating_points(predictor: Predictor, m: dict) -> dict:
    """A two-class run's positive class and the thresholds of its validated operating points on the scale predict
    and serve answer on (temperature-scaled p_<positive>): the folds' mean for their ensemble, the fold's own for
    one fold's model (they had been in the report alone)."""
    found = operating_rules(m)  # metrics.json, as the card read it
    if not found:
        return {}
    positive, rules = found
    k = _fold_of(predictor)
    cut = {r: rule_threshold(o, k) for r, o in rules.items()}
    return {
        "positive": positive,
        "operating_points": cut,
        "operating_points_note": f"thresholds on p_{positive} as predict and serve give it, each chosen by its "
        "rule on validation data" + (f" by fold {k}'s model" if k is not None else "; the fold models' mean"),
    }


def _calibration(predictor: Predictor, m: dict) -> dict:
    """The run's calibration lines on the scale predict and serve answer on (temperature-scaled; out of fold, from
    metrics.json): each described class's intercept and slope with 95 % CIs, and, for a run trained class-balanced,
    what that does to its probabilities."""
    cal = m.get("calibration") or {}
    lines = (cal.get("after") or {}).get("lines")
    if not lines:
        return {}
    cfg = predictor.config
    out: dict = {
        "calibration": [
            {
                "class": predictor.labels[x["class"]],
                "calibration_intercept": x["calibration_intercept"],
                "calibration_slope": x["calibration_slope"],
            }
            for x in lines
        ],
        "calibration_note": "each fold model's temperature-scaled probabilities on its own test images, pooled "
        "(ideal: intercept 0, slope 1)",
    }
    if cfg.class_weights or cfg.oversample:
        out["calibration_note"] += (
            "; trained class-balanced, so a probability is not the risk at the data's prevalence (the intercept "
            "shows the shift)"
        )
    return out


def class_decision(predictor: Predictor) -> str:
    """How a two-class predictor given an operating point (`predictor.cut`) names an image's class, in words."""
    positive, threshold = predictor.cut
    other = next(lab for lab in predictor.labels if lab != positive)
    return (
        f"{positive!r} when p_{positive} >= {threshold:.4g} (operating point {predictor.operating_point!r}, "
        f"validated), else {other!r}"
    )


def _one_fold(predictor: Predictor, m: dict) -> dict:
    """For one fold's model of a run of several (`--fold k`): that the headline metrics are the run's (every fold
    model on its own test images, pooled), and the fold's own test figures (no CI) from metrics.json's per_fold."""
    folds = m.get("per_fold") or []
    k = _fold_of(predictor)
    if len(folds) < 2 or k is None:
        return {}
    own = next((f for f in folds if f.get("fold") == k), None)
    return {
        "metrics_of": f"the run's {len(folds)} fold models, each on its own test images, pooled; this server "
        f"predicts with fold {k}'s model alone, whose test images score as fold_metrics says",
        "fold_metrics": {name: v for name, v in (own or {}).items() if name not in ("speed", "selected_stage")},
    }


def frame_decision(predictor: Predictor) -> dict:
    """A mask model's frame decision: its score, threshold (the mean of the folds' for an ensemble), the pixels'
    lesion-probability threshold and the rule in words."""
    labels = list(predictor.labels)
    kind, t = predictor.frame_score_kind, float(predictor.min_frame_score)
    return {
        "score": kind,
        "threshold": t,
        "pixel_threshold": predictor.threshold,
        "threshold_of": "the mean of the fold models' thresholds" if len(predictor.files) > 1 else "the model's",
        "rule": frame_rule(kind, t, predictor.threshold, labels),
    }
