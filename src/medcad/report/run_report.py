"""Collect everything a run's report shows: data summary, audit, splits, curves, metrics, figures, gallery, card."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medcad.config import STAGED_TASKS
from medcad.data.manifest import Manifest
from medcad.metrics.calibration import scaled_by_temperature
from medcad.report import plots
from medcad.runfolder import FoldFolder, RunFolder, read_predictions
from medcad.tasks import Task, metrics_positive, pooled_positive, settings_read


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, for an <img src=...> of a self-contained HTML report."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _fit_stage(fold: FoldFolder) -> str | None:
    """The fold's last training stage with a CSV log: "train", or the highest "stage<n>" (a classifier's fine-tuning
    after its head on cached features, or the last of a stage list); None when nothing was logged as CSV."""
    names = {p.parent.name for p in (fold.logs / "csv").glob("*/metrics.csv")}
    if "train" in names:
        return "train"
    numbers = [int(n[5:]) for n in names if re.fullmatch(r"stage\d+", n)]
    return f"stage{max(numbers)}" if numbers else None


def _history(csv_path: Path) -> dict[str, list[float]]:
    """Per-epoch train_loss, val_loss and the validation score (val_score, val_auc of classification's stage 2, or a
    detector's val_ap50) from a Lightning CSV log."""
    if not csv_path.is_file():
        return {}
    by_epoch: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            e = int(float(row["epoch"]))
            for k, key in (
                ("train_loss", "train_loss"),
                ("val_loss", "val_loss"),
                ("val_auc", "val_score"),
                ("val_ap50", "val_score"),
                ("val_score", "val_score"),
            ):
                if row.get(k):
                    by_epoch.setdefault(e, {})[key] = float(row[k])
    epochs = sorted(by_epoch)
    return {k: [by_epoch[e].get(k, np.nan) for e in epochs] for k in ("train_loss", "val_loss", "val_score")}


def _epochs(history: dict[str, list[float]], scored: bool) -> dict | None:
    """{ran, and where `scored` (the fold kept this stage's model, chosen by its validation score) kept, score}: the
    epochs a fold's logged stage ran and the one (from 1) whose weights it kept, the best validation score's (as the
    checkpoint chose it; the first of ties); None without a logged epoch."""
    scores = np.asarray(history.get("val_score", []), dtype=float)
    ran = max(len(scores), len(history.get("train_loss", [])))
    if not ran:
        return None
    if not scored or not len(scores) or np.isnan(scores).all():
        return {"ran": ran}
    return {"ran": ran, "kept": int(np.nanargmax(scores)) + 1, "score": float(np.nanmax(scores))}


def _gallery(run: Path, manifest, pred: pd.DataFrame, labels: list[str], per_class: int = 2) -> list[dict]:
    """Grad-CAM overlays of the most confident right and wrong test predictions per class, each explained by the
    model of the fold that had the image in its test part."""
    from medcad.data.io import read_image
    from medcad.explain.gradcam import explain_predictor, overlay
    from medcad.inference.classes import ClassPredictor

    index = {k: i for i, k in enumerate(manifest.keys)}
    picks = []
    for lab in labels:
        rows = pred[pred["label"] == lab]
        right = rows[rows["predicted"] == lab].sort_values(f"p_{lab}", ascending=False).head(per_class)
        wrong = rows[rows["predicted"] != lab]
        wrong = wrong.assign(pmax=[r[f"p_{r['predicted']}"] for _, r in wrong.iterrows()])
        wrong = wrong.sort_values("pmax", ascending=False).head(per_class)
        picks += [("right", r) for _, r in right.iterrows()] + [("wrong", r) for _, r in wrong.iterrows()]
    picks = [(kind, row, index[row["image"]]) for kind, row in picks if row["image"] in index]
    tiles: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # pick -> (tile, probabilities)
    for fold in sorted({int(row["fold"]) for _, row, _ in picks}):
        p = ClassPredictor(run, fold=fold)
        mine = [j for j, (_, row, _) in enumerate(picks) if int(row["fold"]) == fold]
        x = np.stack(
            [p.prepare(read_image(manifest.image_path(i), manifest.frame(i))) for _, _, i in (picks[j] for j in mine)]
        )
        heat, probs = explain_predictor(p, x)  # one batch per fold model
        for k, j in enumerate(mine):
            tiles[j] = overlay(x[k], heat[k]), probs[k]
    out = []
    for j, (kind, row, _) in enumerate(picks):
        tile, probs = tiles[j]
        c = int(probs.argmax())
        out.append(
            {
                "kind": kind,
                "label": row["label"],
                "tile": tile,
                "caption": f"{plots.tile_name(row['image'])}\ntrue {row['label']} / pred {labels[c]} {probs[c]:.2f}",
            }
        )
    return out


def collect_run(run: Path, gallery: bool = True, shared: dict | None = None) -> dict:
    """Everything the HTML report of a run needs, figures as data URIs.

    Args:
        shared: a dict kept across the runs of one study's report: the data summary and audit of a dataset read
            with the same options and splits, and the model card of one architecture, are computed once.
    """
    from medcad.config import TrainConfig
    from medcad.data.audit import audit
    from medcad.data.splits import load_splits
    from medcad.data.summary import summarize
    from medcad.targets import run_dataset
    from medcad.tasks import get_task

    folder = RunFolder(run)
    meta = json.loads(folder.config.read_text())
    cfg = TrainConfig.load(folder.config)
    metrics = json.loads(folder.metrics.read_text())
    labels = meta["labels"]
    shared = {} if shared is None else shared
    label_maps = get_task(cfg.task).mask_kind == "classes"  # masks read as a segment-multiclass run reads them
    data_key = ("data", str(meta["data"]), cfg.data_options(), folder.splits.read_text(), label_maps)
    if data_key not in shared:
        manifest = run_dataset(meta["data"], cfg, folder.root)
        splits = load_splits(folder.splits, manifest)
        # what an interface option would remove is `medcad data audit`'s: the report shows none of it, and working it
        # out read every image of the dataset again (9 s of BUSI's report)
        findings = audit(manifest, splits, interface="none", mask_labels=meta.get("mask_labels"), label_maps=label_maps)
        shared[data_key] = manifest, splits, findings, summarize(manifest)
    manifest, splits, findings, data_summary = shared[data_key]
    pred = read_predictions(folder.predictions)
    figures: dict[str, str] = {}
    gallery_items: list[dict] = []
    if "confusion_matrix" in metrics:
        class_gallery = gallery and "mask" not in get_task(cfg.task).outputs  # masks: explained in their section
        figures, gallery_items = _classification_figures(run, manifest, metrics, labels, pred, class_gallery)
    if "frame_level" in metrics:
        from medcad.report.det_report import collect_detection

        figures.update(
            {k: png_data_uri(v) for k, v in collect_detection(run, manifest, cfg, metrics, pred, gallery).items()}
        )
    if "segmentation" in metrics:
        from medcad.report.seg_report import collect_segmentation

        figures.update({k: png_data_uri(v) for k, v in collect_segmentation(run, manifest, cfg, pred, gallery).items()})
    stages = {k: _fit_stage(folder.fold(k)) for k in range(len(splits["folds"]))}
    histories = {f"fold {k}": _history(folder.fold(k).history(s)) for k, s in stages.items() if s}
    histories = {k: v for k, v in histories.items() if v}
    if histories:
        stage = next(s for s in stages.values() if s)
        title = {"train": "Training", "stage2": "Stage 2 (fine-tuning)"}.get(stage, f"Stage {stage[5:]}")
        figures["curves"] = png_data_uri(plots.curves_png(histories, get_task(cfg.task).val_score, title))
    epochs = {}
    for k, stage in stages.items():
        if f"fold {k}" in histories:
            result = folder.fold(k).result
            selected = json.loads(result.read_text()).get("selected_stage") if result.is_file() else None
            # the best score's epoch is the kept one where the fold kept this stage's model, fitted on that score (a
            # classifier's head stage picks by validation loss)
            scored = selected == stage and not (stage == "stage1" and cfg.task in STAGED_TASKS)
            if e := _epochs(histories[f"fold {k}"], scored):
                epochs[f"fold {k}"] = e | ({} if scored else {"selected": selected})
    card = _card(run, cfg, labels, shared)
    shortcut = _shortcut(run)
    external = [
        {"name": p.parent.name, "metrics": json.loads(p.read_text())}
        for p in sorted(folder.evaluations.glob("*/metrics.json"))
    ]
    if shortcut and shortcut.get("gallery"):
        figures["shortcut_gallery"] = shortcut.pop("gallery")
    now = pooled_positive(metrics)
    if now:  # outputs made before the run was pooled with another positive class
        for e in external:
            was = pooled_positive(e["metrics"])
            if was not in (None, now):
                e["stale"] = _stale(was, now, "medcad evaluate RUN --data on this set")
        if shortcut and shortcut.get("positive") not in (None, now):
            shortcut["stale"] = _stale(shortcut["positive"], now, "medcad evaluate RUN --shortcut-check")
    scale = metrics.get("probabilities")
    if shortcut and "stale" not in shortcut and scale and shortcut.get("probabilities", "as trained") != scale:
        shortcut["stale"] = (
            f"Made on the probabilities as trained; the run's figures are now on the {scale} ones: medcad evaluate "
            "RUN --shortcut-check makes it again."
        )
    out = {
        "run": str(run),
        "meta": meta,
        "config": cfg.to_dict(),
        "settings": _settings_as_used(settings_read(cfg), folder, splits),  # the table: the settings its task reads
        "metrics": metrics,
        "labels": labels,
        "summary": data_summary,
        "audit": findings,
        "splits": splits,
        "fold_sizes": _fold_sizes(folder, splits, manifest, get_task(cfg.task)),
        "flow": _flow(folder),
        "epochs": epochs if histories else {},  # per fold: epochs its last stage ran, and the one whose weights it kept
        "figures": figures,
        "gallery": gallery_items,
        "card": card,
        "outputs": list(get_task(cfg.task).outputs),  # what the task predicts: probabilities, mask, boxes
        "shortcut": shortcut,
        "external": external,  # evaluate --data: the run's models on other sets
        "without_cross_label": _without_cross_label(pred, findings, labels, splits, metrics),
    }
    from medcad.report.checklist import checklist

    out["checklist"] = checklist(out, run)
    return out


def _without_cross_label(pred, findings: dict, labels: list[str], splits: dict, metrics: dict) -> dict | None:
    """The headline classification figures again without the images of near-duplicate groups under two labels (the
    audit's `cross_label_duplicates`): a sensitivity analysis, since one label of each such pair is wrong or the
    images differ where the duplicate test cannot tell (BUSI has 8 groups). None for other tasks or where there are
    none among the scored images."""
    from medcad.metrics.classification import classification_metrics

    names = [f"p_{lab}" for lab in labels]
    if "confusion_matrix" not in metrics or pred is None or not set(names) <= set(pred.columns):
        return None
    doubtful = {k for g in findings.get("cross_label_duplicates") or [] for k in g}
    left_out = pred["image"].isin(doubtful).to_numpy()
    kept = pred[~left_out & pred["label"].isin(labels).to_numpy()]  # scored rows: each of the run's labels
    if not left_out.any() or kept["label"].nunique() < 2:
        return None
    groups = splits.get("groups") or {}
    m = classification_metrics(
        kept["label"].map(labels.index).to_numpy(),
        kept[names].to_numpy(dtype=float),
        labels,
        groups=[groups.get(k) for k in kept["image"]] if groups else None,
        positive=pooled_positive(metrics),
    )
    n_groups = sum(1 for g in findings["cross_label_duplicates"] if set(g) & set(pred["image"]))
    return {
        "n_left_out": int(left_out.sum()),
        "n_groups": n_groups,
        "n": int(len(kept)),
        **{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
    }


def _fold_sizes(folder: RunFolder, splits: dict, manifest: Manifest, task: Task) -> list[dict]:
    """Images each fold's model trained, validated and was tested on: its result.json's (a run on some domains
    trains and validates on their share of the study's splits: the splits' own sizes had been shown, twice the
    images for a one-domain run), else, for a fold not finished, the splits'; `of_splits` the splits' sizes. With
    the run's `manifest`: each part's groups (patients, or near-duplicate groups) and, for a `task` with labels, its
    images per label (each finding of a multi-label one), where the part's images are known (result.json's keys, or
    the splits' of the same size)."""
    from collections import Counter

    from medcad.tasks import split_labels

    label_of = dict(zip(manifest.keys, manifest.table["label"].astype(str), strict=True))
    group_of = splits.get("groups") or {}
    out = []
    for f in splits["folds"]:
        result = folder.fold(f["fold"]).result
        n = json.loads(result.read_text()) if result.is_file() else {}
        sizes = {part: n.get(f"n_{part}", len(f[part])) for part in ("train", "val", "test")}
        row = {"fold": f["fold"], **sizes, "of_splits": [len(f[part]) for part in ("train", "val", "test")]}
        keys = {p: n.get(f"{p}_keys", f[p] if len(f[p]) == sizes[p] else None) for p in ("train", "val", "test")}
        if all(k is not None for k in keys.values()):
            row["groups"] = {p: len({group_of.get(k, k) for k in ks}) for p, ks in keys.items()}
            multi = task.label_kind == "multi"
            cells = {p: [label_of.get(k, "") for k in ks] for p, ks in keys.items()}
            counts = {
                p: Counter(x for c in cs for x in (split_labels(c) if multi else [c]) if x) for p, cs in cells.items()
            }
            if "labels" in task.targets and any(counts.values()):
                row["labels"] = {p: dict(c) for p, c in counts.items()}
        out.append(row)
    return out


def _settings_as_used(settings: dict, folder: RunFolder, splits: dict) -> dict:
    """The settings table with what an "auto" became in this run: the training precision of each fold (its
    result.json) and the grouping of its splits (a new user had read "precision auto" of a run trained in fp32)."""
    out = dict(settings)
    if out.get("group_by") == "auto" and splits.get("group_by"):
        out["group_by"] = f"auto: {splits['group_by']}"
    if out.get("precision") == "auto":
        used = {}
        for f in splits["folds"]:
            result = folder.fold(f["fold"]).result
            if result.is_file() and (p := json.loads(result.read_text()).get("train_precision")):
                used[f["fold"]] = p
        if used:
            same = len(set(used.values())) == 1
            out["precision"] = "auto: " + (
                next(iter(used.values())) if same else ", ".join(f"fold {k} {v}" for k, v in used.items())
            )
    return out


def _flow(folder: RunFolder, shown: int = 8) -> dict | None:
    """The run's data flow from its data_ledger.csv (what the training's read left out and why, what it did not
    read): {left_out: n, by_reason: {reason: n}, examples: [[path, reason]] (the first `shown`), not_read: n}; None
    for a run without one. A paper's flow of cases (STARD, CLAIM): it had been in data_ledger.csv alone."""
    from medcad.data.ledger import reason_kind

    if not folder.ledger.is_file():
        return None
    table = pd.read_csv(folder.ledger, dtype=str, keep_default_na=False)
    out = table[table["status"] == "left out"]
    kinds = out["reason"].map(reason_kind).value_counts()
    return {
        "left_out": len(out),
        "by_reason": {str(k): int(n) for k, n in kinds.items()},
        "examples": out[["path", "reason"]].head(shown).values.tolist(),
        "not_read": int((table["status"] == "not read").sum()),
    }


def _stale(was: str, now: str, command: str) -> str:
    """What a report says of an output made with another positive class than the run's figures now have."""
    return f"Made with positive class {was!r}; the run's figures are now pooled with {now!r}: {command} makes it again."


def _shortcut(run: Path) -> dict | None:
    """shortcut_check.json with its gallery (each image as it is and with the lesion blanked) as a data URI."""
    path = RunFolder(run).shortcut_check
    if not path.is_file():
        return None
    sc = json.loads(path.read_text())
    gal = RunFolder(run).shortcut_gallery
    if gal.is_file():
        with np.load(gal) as z:
            tiles = [t for pair in zip(z["original"], z["blanked"], strict=True) for t in pair]
            caps = [c for p in z["p"] for c in ("as it is", f"lesion blanked: p {p:.2f}")]
        if tiles:
            title = f"Still called {sc['positive']} with the lesion blanked"
            sc["gallery"] = png_data_uri(plots.image_grid_png(tiles, caps, cols=4, title=title))
    return sc


def _classification_figures(
    run: Path, manifest, metrics: dict, labels: list[str], pred: pd.DataFrame, gallery: bool
) -> tuple[dict[str, str], list[dict]]:
    """Confusion matrix, ROC (overall, per domain and subgroup), reliability, and the Grad-CAM gallery."""
    figures: dict[str, str] = {}
    cm = metrics["confusion_matrix"]
    figures["confusion"] = png_data_uri(plots.confusion_matrix_png(cm["labels"], cm["matrix"]))
    aucs = {lab: metrics["per_class"][lab].get("auc") for lab in labels}
    figures["roc"] = png_data_uri(plots.roc_png(metrics.get("roc", {}), "ROC, one class vs rest", aucs))
    cal = metrics.get("calibration")
    # as trained (the calibration section's "before"; metrics' own is on the pooled, now scaled, probabilities)
    before = bool(cal) and metrics.get("probabilities") == "temperature-scaled" and scaled_by_temperature(cal)
    shown = cal["before"] if before else metrics
    figures["reliability"] = png_data_uri(
        plots.reliability_png(
            shown.get("reliability", {}), (shown.get("ece") or {}).get("value"), "as trained" if before else ""
        )
    )
    if cal and scaled_by_temperature(cal):  # every T = 1: the diagram after scaling would repeat the one before
        figures["reliability_after"] = png_data_uri(
            plots.reliability_png(
                cal["after"]["reliability"], cal["after"]["ece"]["value"], "after temperature scaling"
            )
        )
    for col in ("domain", "subgroup"):
        sub = metrics.get(f"by_{col}") or {}
        pos = metrics_positive(metrics, labels)
        curves = {name: (m.get("roc") or {}).get(pos, {}) for name, m in sub.items() if isinstance(m, dict)}
        if curves:
            figures[f"roc_{col}"] = png_data_uri(
                plots.roc_png(
                    curves,
                    f"ROC of '{pos}' per {col}",
                    {n: (sub[n].get("per_class") or {}).get(pos, {}).get("auc") for n in curves},
                )
            )
    gallery_items = []
    if gallery:
        items = _gallery(run, manifest, pred, labels)
        for kind in ("right", "wrong"):
            sel = [g for g in items if g["kind"] == kind]
            if sel:
                gallery_items.append(
                    {
                        "kind": kind,
                        "png": png_data_uri(
                            plots.image_grid_png(
                                [g["tile"] for g in sel],
                                [g["caption"] for g in sel],
                                cols=4,
                                title=f"Grad-CAM: most confident {kind} predictions per class",
                            )
                        ),
                    }
                )
    return figures, gallery_items


def _card(run: Path, cfg, labels: list[str], shared: dict) -> dict:
    """Parameters, GFLOPs and latency of the run's model (the same for every run of one architecture and input
    size, so measured once per study), its file size and number of fold models."""
    import torch

    from medcad.atomic import atomic_write_text
    from medcad.checkpoint import load_model_file
    from medcad.devices import cpu_has_bf16, machine
    from medcad.models.card import model_card

    folder = RunFolder(run)
    path = folder.fold(0).model
    key = ("card", cfg.task, cfg.model, cfg.arch, cfg.head, cfg.image_size, len(labels))
    # kept with the model file and machine it was measured on: a report made again shows the same latency (one
    # run's had read 10.1, 23.5 and 9.5 ms in three reports), measured anew only for another model file or machine
    st = path.stat() if path.is_file() else None
    stamp = {
        "model_file": [st.st_size, st.st_mtime_ns] if st else None,
        "cpu": machine().cpu,
        "bf16": cpu_has_bf16(),  # the latency's precision (MEDCAD_CPU_FLAGS can change it)
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        kept = json.loads(folder.model_card.read_text())
    except (OSError, ValueError):
        kept = {}
    if kept.get("measured_on") == stamp and isinstance(kept.get("card"), dict):
        found = kept["card"]  # this run's own, before another run's of the architecture (a study's report)
    else:
        if key not in shared:
            shared[key] = model_card(load_model_file(path)[0], cfg.image_size)
        found = shared[key]
        try:
            atomic_write_text(folder.model_card, json.dumps({"measured_on": stamp, "card": found}, indent=1))
        except OSError:  # a run folder read-only here: measured again next time
            pass
    card = dict(found)
    if path.is_file():
        card["file_mb"] = path.stat().st_size / 1e6
    card["model"] = cfg.model
    card["n_fold_models"] = len(RunFolder(run).fold_models())
    return card
