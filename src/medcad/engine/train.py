"""A classification run: splits, decoded-image cache, two-stage training per fold, out-of-fold evaluation.

Run folder:
    config.json, splits.json, manifest.csv
    fold_<k>/ model.pt, result.json, test_predictions.csv, checkpoints/, logs/ (TensorBoard + CSV)
    predictions.csv (out-of-fold for CV), metrics.json
A fold with a result.json is finished and skipped on resume; an interrupted stage 2 resumes from last.ckpt.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from medcad.config import TrainConfig
from medcad.data.datasets import ImageDataset, cached_images, cached_masks, check_mask_content, image_cache_key
from medcad.data.manifest import Manifest, atomic_write_text, load_manifest
from medcad.data.splits import fold_indices, group_holdout, load_splits, make_splits, save_splits
from medcad.data.transforms import Normalize, augmentation
from medcad.engine.common import class_weights, load_init_model, make_loader, make_trainer, quiet_lightning, save_model
from medcad.engine.features import backbone_features, run_batched
from medcad.engine.modules import val_score
from medcad.engine.results import evaluate_results, write_json
from medcad.errors import ConfigError, DataError
from medcad.metrics.calibration import fit_temperature
from medcad.models.backbones import backbone_data_config
from medcad.models.classifier import Classifier, freeze_backbone

log = logging.getLogger(__name__)


class _Softmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().softmax(-1)


def _predict(model: Classifier, normalize: Normalize, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return run_batched(_Softmax(model), normalize, images, rows)[0]


def _train_head(model, normalize, images, y, train, val, weights, cfg, fold_dir, feature_key, speed) -> float:
    """Stage 1: the frozen backbone runs once over every image (features cached across folds and runs), then the
    head trains on the features alone. Returns the validation score."""
    from torch.utils.data import TensorDataset

    from medcad.engine.modules import HeadModule

    feats, speed["feature_images_per_s"] = backbone_features(model.backbone, normalize, images, feature_key)
    f = torch.from_numpy(feats)
    yt = torch.from_numpy(y).long()
    head_mod = HeadModule(model.head, cfg.head_lr, cfg.weight_decay, cfg.optimizer, weights, cfg.label_smoothing)
    trainer, ckpt = make_trainer(fold_dir, "stage1", cfg.head_epochs, cfg, "val_loss", "min", 10, False)
    trainer.fit(
        head_mod,
        make_loader(TensorDataset(f[train], yt[train]), cfg, y[train], True, 64),
        make_loader(TensorDataset(f[val], yt[val]), cfg, None, False, 256),
    )
    head_mod.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])
    with torch.no_grad():
        p1 = model.head.eval()(f[val]).softmax(-1).numpy()
    return val_score(y[val], p1)


def train_fold(
    k: int,
    parts: dict[str, np.ndarray],
    images: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    cfg: TrainConfig,
    fold_dir: Path,
    feature_key: str,
    progress: bool = True,
    init_model: Path | None = None,
) -> dict:
    """Train one fold (stage 1 on cached features, stage 2 fine-tuning); returns its result dict.

    With `init_model` (a model.pt of an earlier step, e.g. the other domain in sequential transfer) training
    continues from those weights: stage 1 is skipped and stage 2 fine-tunes the whole set of unfrozen groups.
    """
    import lightning as L

    from medcad.engine.modules import ClassifierModule

    L.seed_everything(cfg.seed + k, verbose=False)
    fold_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = parts["train"], parts["val"], parts["test"]
    if len(val) == 0:
        raise ConfigError("each fold needs a validation part for early stopping: set val_fraction > 0")
    n = len(labels)
    model = Classifier(cfg.model, n, head=cfg.head, weights=cfg.weights, dropout=cfg.dropout)
    dc = backbone_data_config(model.backbone)
    normalize = Normalize(dc["mean"], dc["std"])
    weights = class_weights(y[train], n) if cfg.class_weights else None
    speed: dict[str, float | None] = {}

    t0 = time.perf_counter()
    if init_model is not None:
        prior, _ = load_init_model(init_model, labels, "classify")
        model.load_state_dict(prior.state_dict())
        stage1_score = val_score(y[val], _predict(model, normalize, images, val))
        best_stage = "init"
    else:
        stage1_score = _train_head(model, normalize, images, y, train, val, weights, cfg, fold_dir, feature_key, speed)
        best_stage = "stage1"
    speed["stage1_seconds"] = time.perf_counter() - t0

    # Stage 2: unfreeze the last groups and fine-tune with augmentation; keep it only if validation improves.
    if cfg.epochs > 0:
        t1 = time.perf_counter()
        freeze_backbone(model, cfg.unfreeze)
        module = ClassifierModule(
            model,
            normalize,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            class_weights=weights,
            label_smoothing=cfg.label_smoothing,
            max_epochs=cfg.epochs,
        )
        aug = augmentation(cfg.augment, cfg.image_size)
        trainer, ckpt = make_trainer(fold_dir, "stage2", cfg.epochs, cfg, "val_auc", "max", cfg.patience, progress)
        last = fold_dir / "checkpoints" / "stage2" / "last.ckpt"
        trainer.fit(
            module,
            make_loader(ImageDataset(images, y, train, aug), cfg, y[train], True),
            make_loader(ImageDataset(images, y, val), cfg, None, False, 64),
            ckpt_path=last if last.is_file() else None,
        )
        state = torch.load(ckpt.best_model_path, weights_only=False)["state_dict"]
        stage1_state = {k_: v.clone() for k_, v in model.state_dict().items()}
        module.load_state_dict(state)
        p2 = _predict(model, normalize, images, val)
        stage2_score = val_score(y[val], p2)
        speed["stage2_seconds"] = time.perf_counter() - t1
        speed["stage2_train_images_per_s"] = float(np.median(module.images_per_s)) if module.images_per_s else None
        if stage2_score >= stage1_score:
            best_stage = "stage2"
        else:
            model.load_state_dict(stage1_state)
        del stage1_state
    probs, speed["predict_images_per_s"] = run_batched(_Softmax(model), normalize, images, test)
    val_probs = _predict(model, normalize, images, val)  # operating points and temperature come from these
    temperature = fit_temperature(y[val], val_probs)
    save_model(fold_dir / "model.pt", model, cfg, labels, backbone_data_config(model.backbone), temperature)
    result = {
        "fold": k,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "selected_stage": best_stage,
        "val_score_stage1": stage1_score,
        "speed": speed,
        "test_rows": test.tolist(),
        "test_probs": probs.tolist(),
        "val_rows": val.tolist(),
        "val_probs": val_probs.tolist(),
        "temperature": temperature,
    }
    if cfg.epochs > 0:
        result["val_score_stage2"] = stage2_score
    write_json(fold_dir / "result.json", result)
    return result


def splits_for(manifest: Manifest, cfg: TrainConfig, progress: bool = True) -> dict:
    """New splits with a run's split settings (folds or holdout, validation fraction, seed, grouping)."""
    return make_splits(
        manifest,
        folds=cfg.folds,
        holdout=cfg.holdout,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        group_by=cfg.group_by,
        progress=progress,
    )


def _prepare_splits(manifest: Manifest, cfg: TrainConfig, out: Path, splits_path: Path | None) -> dict:
    target = out / "splits.json"
    if splits_path is not None:
        splits = load_splits(splits_path, manifest)
    elif target.is_file():
        splits = load_splits(target, manifest)  # resume, or the same folds as an earlier model
    else:
        splits = splits_for(manifest, cfg)
    if splits_path is None or not target.is_file():
        save_splits(splits, target)
    return splits


def _check_resume(out: Path, cfg: TrainConfig) -> None:
    path = out / "config.json"
    if not path.is_file():
        return
    old = TrainConfig.load(path).to_dict()
    changed = {k: (old.get(k), v) for k, v in cfg.to_dict().items() if old.get(k) != v and k != "threads"}
    if changed:
        desc = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"{out} holds a run with other settings ({desc}); choose another --out to start a new run, "
            "or repeat the same settings to resume it"
        )


TASKS = ("classify", "segment", "multitask", "detect")


def _check_labels(manifest: Manifest, task: str, data: str | Path) -> list[str]:
    """The run's class labels; classification and multitask need every image labelled and two labels at least.
    Segmentation keeps whatever labels there are (for stratified splits and per-label Dice)."""
    labels = manifest.labels
    if task == "segment":
        return labels or ["lesion"]
    unlabeled = int((manifest.table["label"] == "").sum())
    if len(labels) < 2:
        raise DataError(data, f"{task} needs at least two class labels, found {labels or 'none'}")
    if unlabeled:
        raise DataError(data, f"{unlabeled} image(s) have no label; label them or remove them for {task}")
    return labels


def task_masks(manifest: Manifest, cfg: TrainConfig, progress: bool = True) -> np.ndarray | None:
    """The true masks at the training size for segment and multitask runs (cached), else None."""
    if cfg.task not in ("segment", "multitask"):
        return None
    masks = cached_masks(manifest, cfg.image_size, missing=cfg.missing_masks, progress=progress)
    check_mask_content(manifest, masks)
    return masks


def train_run(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    splits_path: Path | None = None,
    progress: bool = True,
    train_domains: tuple[str, ...] | None = None,
    init_run: Path | None = None,
) -> dict:
    """Train and evaluate a model of the run's task on a dataset with the run's splits; resumable.

    Returns metrics.json.

    Args:
        train_domains: train and validate on these domains only; the test parts keep every domain, so the
            metrics show how the model does on each (cross-domain evaluation).
        init_run: a run of the same data and splits whose fold models each fold continues from (sequential
            transfer).
    """

    quiet_lightning()
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    manifest = load_manifest(data, cfg.data_options())
    for note in manifest.notes:
        log.warning("note: %s", note)
    boxes = None
    if cfg.task == "detect":
        from medcad.data.boxes import manifest_boxes

        labels, boxes, box_problems = manifest_boxes(manifest, cfg.image_size)
        if box_problems:
            log.warning(
                "%d box problem(s), e.g. %s; all in %s", len(box_problems), box_problems[0], out / "box_problems.txt"
            )
            atomic_write_text(out / "box_problems.txt", "\n".join(box_problems) + "\n")
    else:
        labels = _check_labels(manifest, cfg.task, data)
    masks = task_masks(manifest, cfg, progress)  # checked before anything is written
    domains = manifest.table["domain"].to_numpy(dtype=str)
    if train_domains:
        missing = sorted(set(train_domains) - set(domains))
        if missing:
            raise DataError(data, f"no images of domain(s) {missing}; domains here: {sorted(set(domains) - {''})}")
    write_json(
        out / "config.json",
        {
            **cfg.to_dict(),
            "data": str(Path(data).resolve()),
            "labels": labels,
            "train_domains": list(train_domains or []),
            "init_run": str(init_run) if init_run else None,
            "data_notes": manifest.notes,
        },
    )
    manifest.save(out / "manifest.csv")
    splits = _prepare_splits(manifest, cfg, out, splits_path)
    t0 = time.perf_counter()
    images = cached_images(manifest, cfg.image_size, bilateral=cfg.bilateral, progress=progress)
    decode_s = time.perf_counter() - t0
    y = np.array([labels.index(v) if v in labels else 0 for v in manifest.table["label"]])
    feature_key = f"{image_cache_key(manifest, cfg.image_size, cfg.bilateral)}|{cfg.model}|{cfg.weights}"
    keys = manifest.keys
    results = []
    for fold in splits["folds"]:
        k = fold["fold"]
        fold_dir = out / f"fold_{k}"
        done = fold_dir / "result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        log.info("fold %d", k)
        parts = fold_indices(manifest, fold)
        if train_domains:
            keep = np.isin(domains, train_domains)
            parts["train"], parts["val"] = parts["train"][keep[parts["train"]]], parts["val"][keep[parts["val"]]]
            if len(parts["val"]) == 0 and len(parts["train"]) > 1:  # no validation image of these domains
                gmap = splits.get("groups") or {}
                g = np.array([gmap.get(keys[i], i) for i in parts["train"]])
                tr, va = group_holdout(g, cfg.val_fraction or 0.15, cfg.seed + k)
                parts["train"], parts["val"] = parts["train"][tr], parts["train"][va]
        init = init_run / f"fold_{k}" / "model.pt" if init_run else None
        if boxes is not None:
            from medcad.engine.detect import train_detect_fold

            results.append(train_detect_fold(k, parts, images, boxes, labels, cfg, fold_dir, progress, init))
        elif masks is not None:
            from medcad.engine.segment import train_segment_fold

            results.append(train_segment_fold(k, parts, images, masks, y, labels, cfg, fold_dir, progress, init))
        else:
            results.append(train_fold(k, parts, images, y, labels, cfg, fold_dir, feature_key, progress, init))
    metrics, pred = evaluate_results(manifest, labels, y, results, splits, masks, out, boxes)
    atomic_write_text(out / "predictions.csv", pred.to_csv(index=False))
    metrics["timing"] = {"decode_seconds": decode_s, "total_seconds_this_session": time.perf_counter() - t0}
    write_json(out / "metrics.json", metrics)
    return metrics


HEADLINES = ("accuracy", "macro_f1", "macro_auc", "dice", "iou", "ap50", "map")


def train_repeats(
    data: str | Path, out: str | Path, cfg: TrainConfig, repeats: int, *, splits_path: Path | None = None
) -> dict:
    """Train `repeats` runs with seeds cfg.seed, cfg.seed + 1, ... into out/seed_<s>, all on the first run's splits
    (so the spread is the training's alone), and write out/repeats.json: every headline metric as mean ± sd over
    the runs (for detection also F1 at each IoU threshold and the frame accuracy). Resumable like a run."""
    from medcad.metrics.stats import mean_sd

    out = Path(out)
    runs, metrics = [], []
    for s in range(cfg.seed, cfg.seed + repeats):
        run = out / f"seed_{s}"
        metrics.append(train_run(data, run, cfg.replace(seed=s), splits_path=splits_path, progress=False))
        splits_path = splits_path or run / "splits.json"
        runs.append(str(run))
    summary = {k: mean_sd([m[k]["value"] for m in metrics]) for k in HEADLINES if all(k in m for m in metrics)}
    if cfg.task == "detect":
        from medcad.metrics.detection import seeds_summary

        summary = {**summary, **seeds_summary(metrics)}
    result = {"runs": runs, "seeds": list(range(cfg.seed, cfg.seed + repeats)), "summary": summary}
    write_json(out / "repeats.json", result)
    return result
