"""Pooling a run's fold results into metrics.json and predictions.csv; JSON writing that any reader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medcad.data.labelmaps import MaskLabels
from medcad.data.manifest import Manifest, atomic_write_text
from medcad.runfolder import FoldFolder, RunFolder
from medcad.tasks import reference_label


def positive_label(labels: list[str]) -> str:
    """The class shown as 'positive' in ROC curves and binary metrics: for {X, normal} it is X (the finding),
    otherwise the last label."""
    ref = reference_label(labels)
    if len(labels) == 2 and ref is not None:
        return next(lab for lab in labels if lab != ref)
    return labels[-1]


def write_json(path: Path, obj: object) -> None:
    """Atomic JSON write; NaN and infinity become null so that any JSON reader accepts the file."""

    def clean(o: object) -> object:
        if isinstance(o, float):
            return o if np.isfinite(o) else None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    atomic_write_text(path, json.dumps(clean(obj), indent=1))


def pooled_metrics(
    manifest: Manifest, rows: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str], groups: np.ndarray
) -> dict:
    """Metrics of predictions `probs` for manifest rows `rows` (true label indices `y`), with cluster-bootstrap
    CIs by `groups`, per domain and subgroup, and each abnormality subtype against normal where that applies."""
    from medcad.metrics.classification import classification_metrics, subset_metrics, subtype_vs_reference

    positive = positive_label(labels) if len(labels) == 2 else None
    m = classification_metrics(y, probs, labels, groups=groups, positive=positive)
    for col in ("domain", "subgroup"):
        vals = manifest.table[col].to_numpy(dtype=str)[rows]
        if (vals != "").any():
            m[f"by_{col}"] = subset_metrics(y, probs, labels, vals, groups=groups, positive=positive)
    sub = manifest.table["subgroup"].to_numpy(dtype=str)[rows]
    ref = reference_label(labels)
    is_ref = y == (labels.index(ref) if ref else -1)
    if ref and (sub[~is_ref] != "").any() and (sub[is_ref] == "").all():
        # subgroups name abnormality subtypes (the renal study): each subtype against the normal images
        m["subtype_vs_reference"] = subtype_vs_reference(y, probs, labels, sub, ref, groups=groups)
    return m


def prediction_table(
    manifest: Manifest, rows: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str]
) -> pd.DataFrame:
    """predictions.csv: image, label, predicted, p_<label>..., and patient/domain/subgroup when present."""
    pred = pd.DataFrame(
        {
            "image": np.array(manifest.keys, dtype=object)[rows],
            "label": [labels[i] for i in y],
            "predicted": [labels[i] for i in probs.argmax(1)],
        }
    )
    for j, lab in enumerate(labels):
        pred[f"p_{lab}"] = probs[:, j]
    for col in ("patient", "domain", "subgroup"):
        if manifest.has(col):
            pred[col] = manifest.table[col].to_numpy(dtype=str)[rows]
    return pred


def fold_test_masks(fold_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A fold's test rows and predicted lesion probabilities (n, S, S) uint8 0..255 (test_masks.npz)."""
    with np.load(FoldFolder(fold_dir).masks) as z:
        return z["rows"], z["probs"]


def fold_test_lesion_classes(fold_dir: Path) -> np.ndarray | None:
    """A label-map run's fold: its test images' lesion-class probabilities (n, K, S, S) uint8, else None."""
    with np.load(FoldFolder(fold_dir).masks) as z:
        return z["lesion_classes"] if "lesion_classes" in z.files else None


FRAME_SPECIFICITY = 0.90  # the second frame-level decision: this share of lesion-free validation frames kept clean


def _spec_frame_threshold(result: dict, masks: np.ndarray, normal: int, specificity: float) -> float:
    """The lowest P(not normal) threshold that leaves `specificity` of the fold's lesion-free validation frames
    without a lesion (0.0 when its validation part lacks lesion-free or lesion frames: keep every mask)."""
    from medcad.metrics.operating import choose_threshold
    from medcad.metrics.segmentation import frame_scores

    val = np.asarray(result["val_rows"], dtype=int)
    lesion = np.asarray(masks[val]).reshape(len(val), -1).any(axis=1)
    score = frame_scores("p_lesion", None, result["val_probs"], normal, temperature=result.get("temperature") or 1.0)
    t = choose_threshold(lesion, score, f"spec>={specificity}")
    return 0.0 if np.isnan(t) else t


def segmentation_results(
    manifest: Manifest,
    masks: np.ndarray,
    run: Path,
    results: list[dict],
    groups_of: dict,
    labels: list[str],
    mask_classes: MaskLabels | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Dice/IoU of the folds' predicted test masks, pooled over folds with cluster-bootstrap CIs, per fold, and per
    label; with the per-image table.

    The headline figures are scored at each image's own resolution (predicted probabilities resized back before
    thresholding) with HD95; the figures at the training size (against `masks`) stay beside them in
    "training_size" and the table's dice_training_size column. With `mask_classes` (label maps) the headline is
    lesion against background and "per_class", "class_dice", "class_iou" score each lesion class
    (`medcad.metrics.label_maps`), with per-image dice_<class> columns."""
    from medcad.engine.fullres import native_mask_scores
    from medcad.metrics.segmentation import (
        apply_frame_decision,
        dice_iou,
        frame_scores,
        mask_counts,
        per_image_table,
        segmentation_metrics,
    )
    from medcad.metrics.stats import mean_sd

    keys = manifest.keys
    parts, small, dists, per_fold, decided, thresholds, kinds = [], [], [], [], [], [], set()
    spec_decided, spec_thresholds = [], []
    ref = reference_label(labels)
    normal = labels.index(ref) if ref is not None else None
    by_class: list[tuple] = []
    for r in results:
        rows, probs = fold_test_masks(RunFolder(run).fold(r["fold"]).path)
        small.append(mask_counts(probs >= 128, masks[rows].astype(bool)))
        lesion_classes = fold_test_lesion_classes(RunFolder(run).fold(r["fold"]).path) if mask_classes else None
        c, d, classes_scored = native_mask_scores(manifest, rows, probs, "empty", lesion_classes, mask_classes)
        if classes_scored is not None:
            by_class.append(classes_scored)
        parts.append((rows, c))
        decision = r.get("decision") or {}
        if decision:  # the fold's frame-level decision on its test frames
            kinds.add(decision["frame_score"])
            t_fold = r.get("temperature") or 1.0  # the fold's class probabilities as its predictor scales them
            score = frame_scores(decision["frame_score"], probs, r.get("test_probs"), normal, temperature=t_fold)
            decided.append(apply_frame_decision(c, score, decision["min_frame_score"]))
            if decision["frame_score"] == "p_lesion" and "val_probs" in r:  # the clinician's operating point
                t = _spec_frame_threshold(r, masks, normal, FRAME_SPECIFICITY)
                spec_decided.append(apply_frame_decision(c, score, t))
                spec_thresholds.append(t)
        thresholds.append(decision.get("min_frame_score"))
        dists.append(d)
        fm = segmentation_metrics(c, n_boot=0)
        per_fold.append({"fold": r["fold"], "dice": fm["dice"]["value"], "iou": fm["iou"]["value"]})
    rows = np.concatenate([p[0] for p in parts])
    counts, counts_small = _joined([p[1] for p in parts]), _joined(small)
    dist = np.concatenate(dists)
    groups = np.array([groups_of.get(keys[i], i) for i in rows])
    m = _native_size_metrics(counts, counts_small, dist, groups, int(masks.shape[-1]))
    not_normal = f"the class head's probability that the frame is not {reference_label(labels)!r}"
    if len(decided) == len(results):  # runs from before the frame-level decision have none
        what = not_normal if kinds == {"p_lesion"} else "the predicted lesion area (fraction of the frame)"
        rule = f"a frame shows a lesion when {what} reaches the fold's threshold, chosen on its validation part to "
        rule += "maximise mean Dice; the masks of other frames are emptied"
        m["frame_decision"] = _decided(decided, groups, sorted(kinds), rule, thresholds)
    if len(spec_decided) == len(results):
        rule = f"a frame shows a lesion when {not_normal} reaches the fold's threshold, chosen on its validation part "
        rule += f"as the lowest that leaves at least {FRAME_SPECIFICITY:.0%} of the lesion-free validation frames "
        rule += "without lesion pixels"
        m["frame_decision_specificity"] = _decided(spec_decided, groups, ["p_lesion"], rule, spec_thresholds)
    label_of = manifest.table["label"].to_numpy(dtype=str)[rows]
    if len(set(label_of)) > 1:
        m["by_label"] = {
            lab: segmentation_metrics(
                {k: v[label_of == lab] for k, v in counts.items()}, groups=groups[label_of == lab]
            )
            for lab in labels
            if (label_of == lab).any()
        }
    m["per_fold"] = per_fold
    m["fold_summary"] = {name: mean_sd([f[name] for f in per_fold]) for name in ("dice", "iou")}
    table = per_image_table(counts, [keys[i] for i in rows]).rename(columns={"key": "image"})
    if by_class:
        m |= _class_results(by_class, mask_classes, groups, table)
    table.insert(1, "fold", np.concatenate([[r["fold"]] * len(p[0]) for r, p in zip(results, parts, strict=True)]))
    table.insert(2, "label", label_of)
    table["hd95_px"] = dist
    table["dice_training_size"] = dice_iou(counts_small)[0]
    if "frame_decision" in m:
        table["dice_frame_decision"] = dice_iou(_joined(decided))[0]
    return m, table


def _joined(per_fold: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image count arrays of several folds, joined in fold order."""
    return {k: np.concatenate([c[k] for c in per_fold]) for k in per_fold[0]}


def _decided(per_fold: list[dict], groups: np.ndarray, frame_score: list[str], rule: str, thresholds: list) -> dict:
    """Segmentation metrics after a frame-level decision (the folds' counts with emptied masks), with its rule."""
    from medcad.metrics.segmentation import segmentation_metrics

    metrics = segmentation_metrics(_joined(per_fold), groups=groups)
    return {**metrics, "frame_score": frame_score, "rule": rule, "thresholds": thresholds}


def external_mask_results(
    manifest: Manifest,
    probs: np.ndarray,
    true_small: np.ndarray,
    groups: np.ndarray,
    missing: str,
    lesion_classes: np.ndarray | None = None,
    classes: MaskLabels | None = None,
) -> tuple[dict, pd.DataFrame]:
    """An external set's masks scored as a run's are: at each image's own size (Dice, IoU with cluster-bootstrap CIs,
    HD95), with the training-size figures beside them and, for label maps, each lesion class.

    Args:
        manifest: the external set (every row predicted, in order).
        probs: (N, S, S) predicted lesion probabilities, float 0..1 at the training size.
        true_small: (N, S, S) its masks at the training size (label maps: class indices).
        groups: (N,) cluster of each image (patient, else the image).
        missing: the run's policy for images without a mask.
        lesion_classes, classes: label maps: (N, K, S, S) the classes' probabilities 0..1, and the run's classes.

    Returns:
        (the "segmentation" metrics, the per-image table with image, dice, iou, hd95_px, dice_training_size and
        dice_<class> columns).
    """
    from medcad.engine.fullres import native_mask_scores
    from medcad.metrics.segmentation import dice_iou, mask_counts, per_image_table

    rows = np.arange(len(manifest))
    as_u8 = lambda p: None if p is None else np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)  # noqa: E731
    probs = as_u8(probs)
    counts, dist, classes_scored = native_mask_scores(manifest, rows, probs, missing, as_u8(lesion_classes), classes)
    small = mask_counts(probs >= 128, true_small > 0)
    m = _native_size_metrics(counts, small, dist, groups, int(true_small.shape[-1]))
    table = per_image_table(counts, manifest.keys).rename(columns={"key": "image"})
    if classes_scored is not None:
        m |= _class_results([classes_scored], classes, groups, table)
    table["hd95_px"] = dist
    table["dice_training_size"] = dice_iou(small)[0]
    return m, table


def _native_size_metrics(counts: dict, small: dict, dist: np.ndarray, groups: np.ndarray, size: int) -> dict:
    """Masks' metrics at each image's own size (Dice, IoU, HD95 with cluster-bootstrap CIs) and, under
    "training_size", at the S x S training size: the same for a run's test images and an external set's."""
    from medcad.metrics.segmentation import hd95_summary, segmentation_metrics

    m = segmentation_metrics(counts, groups=groups)
    m["resolution"] = "each image's own size (predicted probabilities resized back before the 0.5 threshold)"
    m["hd95"] = hd95_summary(dist, groups=groups)
    m["training_size"] = {**segmentation_metrics(small, groups=groups), "resolution": f"{size}x{size} px"}
    return m


def _class_results(by_class: list[tuple], classes: MaskLabels, groups: np.ndarray, table: pd.DataFrame) -> dict:
    """Label maps: per-class metrics of the folds' (counts per class, HD95 (n, K)) pairs, and a dice_<class> column
    per class in `table`."""
    from medcad.metrics.label_maps import class_metrics
    from medcad.metrics.segmentation import dice_iou

    names = list(classes.names)
    counts = [_joined([f[0][c] for f in by_class]) for c in range(len(names))]
    for name, c in zip(names, counts, strict=True):
        table[f"dice_{name}"] = dice_iou(c)[0]
    out = class_metrics(counts, names, hd95_px=np.concatenate([f[1] for f in by_class]), groups=groups)
    return out | {"lesion_classes": classes.describe()}


def detection_results(
    manifest: Manifest, boxes: list[np.ndarray], results: list[dict], groups_of: dict, labels: list[str]
) -> tuple[dict, pd.DataFrame]:
    """AP50, mAP, P/R/F1 at the IoU thresholds and the frame-level decision of the folds' test detections, pooled
    out-of-fold with cluster-bootstrap CIs, per fold; with the per-image table (top detection, frame decision)."""
    from medcad.metrics.detection import detection_metrics
    from medcad.metrics.stats import mean_sd

    keys = manifest.keys
    rows = np.concatenate([np.array(r["test_rows"], dtype=int) for r in results])
    dets = [np.array(d, dtype=np.float64).reshape(-1, 6) for r in results for d in r["test_detections"]]
    truths = [boxes[i] for i in rows]
    groups = np.array([groups_of.get(keys[i], i) for i in rows])
    m = detection_metrics(dets, truths, labels, groups=groups)
    per_fold, start = [], 0
    for r in results:
        n = len(r["test_rows"])
        fm = detection_metrics(dets[start : start + n], truths[start : start + n], labels, n_boot=0)
        per_fold.append(
            {
                "fold": r["fold"],
                "ap50": fm["ap50"]["value"],
                "map": fm["map"]["value"],
                "f1_iou50": fm["iou_thresholds"]["0.5"]["f1"],
                "speed": r.get("speed", {}),
            }
        )
        start += n
    m["per_fold"] = per_fold
    m["fold_summary"] = {k: mean_sd([f[k] for f in per_fold]) for k in ("ap50", "map", "f1_iou50")}
    thr = m["score_threshold"]
    top = [d[d[:, 4].argmax()] if len(d) else None for d in dets]
    table = pd.DataFrame(
        {
            "image": np.array(keys, dtype=object)[rows],
            "fold": np.concatenate([[r["fold"]] * len(r["test_rows"]) for r in results]),
            "n_true_boxes": [len(t) for t in truths],
            "true_frame": [
                labels[int(t[np.argmax((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])), 4])] if len(t) else "background"
                for t in truths
            ],
            "predicted_frame": [labels[int(d[5])] if d is not None and d[4] >= thr else "background" for d in top],
            "top_score": [float(d[4]) if d is not None else 0.0 for d in top],
            "detections": [json.dumps(np.round(d[d[:, 4] >= 0.05], 2).tolist()) for d in dets],
        }
    )
    return m, table


def rows_by_key(results: list[dict], splits: dict, manifest: Manifest) -> list[dict]:
    """Each fold result with its `test_rows` / `val_rows` looked up in today's manifest by the keys the fold
    recorded (`test_keys` / `val_keys`), never taken as positions. Results written before keys were recorded take
    their fold's keys from splits.json (the order `fold_indices` gave them); a validation part filtered by domain
    keeps its positions, valid only for a dataset unchanged since the run (`medcad.data.identity.reconcile`).

    Raises:
        DataError: a recorded key is not in today's dataset.
    """
    from medcad.errors import DataError

    index = {k: i for i, k in enumerate(manifest.keys)}
    folds = {f["fold"]: f for f in splits["folds"]}
    out = []
    for r in results:
        r = dict(r)
        for part in ("test", "val"):
            keys = r.get(f"{part}_keys")
            if keys is None and len(folds.get(r["fold"], {}).get(part, [])) == len(r.get(f"{part}_rows", [])):
                keys = folds[r["fold"]][part]
            if keys is None:
                continue
            missing = [k for k in keys if k not in index]
            if missing:
                raise DataError(
                    manifest.root,
                    f"fold {r['fold']} predicted {len(missing)} image(s) that are not in the dataset today, e.g. "
                    f"{missing[0]!r}: restore them, or train a new run on today's data",
                )
            r[f"{part}_rows"] = [index[k] for k in keys]
        out.append(r)
    return out


def evaluate_results(
    manifest: Manifest,
    labels: list[str],
    y: np.ndarray,
    results: list[dict],
    splits: dict,
    masks: np.ndarray | None = None,
    run: Path | None = None,
    boxes: list[np.ndarray] | None = None,
    mask_classes: MaskLabels | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Pool the folds' test predictions (out-of-fold), compute metrics with CIs, per-fold and per-subset figures.

    Class probabilities (classify, multitask) give the classification metrics, and with multi-hot targets `y`
    (N, K) the multi-label metrics; predicted masks (segment,
    multitask; read from the run's fold folders, compared with `masks`) give "segmentation", with "dice" and
    "iou" also at the top level; detections (detect, against `boxes`) give the detection metrics.
    """
    group_map = splits.get("groups") or {}
    results = rows_by_key(results, splits, manifest)
    m: dict = {}
    pred = None
    if boxes is not None:
        m, pred = detection_results(manifest, boxes, results, group_map, labels)
    if all("test_probs" in r for r in results):
        pooled = _multilabel_results if y.ndim == 2 else _classification_results
        m, pred = pooled(manifest, labels, y, results, group_map)
    if masks is not None and run is not None and all((RunFolder(run).fold(r["fold"]).masks).is_file() for r in results):
        seg, table = segmentation_results(manifest, masks, run, results, group_map, labels, mask_classes)
        m["segmentation"] = seg
        m["dice"], m["iou"] = seg["dice"], seg["iou"]
        if "class_dice" in seg:
            m["class_dice"], m["class_iou"] = seg["class_dice"], seg["class_iou"]
        pred = table if pred is None else pred.merge(table.drop(columns=["fold", "label"]), on="image", how="left")
        if "per_fold" not in m:
            m["per_fold"], m["fold_summary"] = seg["per_fold"], seg["fold_summary"]
    m["evaluation"] = "out-of-fold" if splits["method"] == "kfold" else "holdout test set"
    m["splits"] = {k: splits[k] for k in ("method", "n_folds", "group_by", "n_groups", "seed")}
    return m, pred


def _multilabel_results(
    manifest: Manifest, labels: list[str], y: np.ndarray, results: list[dict], group_map: dict
) -> tuple[dict, pd.DataFrame]:
    """Out-of-fold multi-label metrics with cluster-bootstrap CIs, per fold, and the per-image table (true labels,
    predicted labels at 0.5, p_<label>)."""
    from medcad.metrics.multilabel import multilabel_metrics
    from medcad.metrics.stats import mean_sd

    k = len(labels)
    rows = np.concatenate([np.array(r["test_rows"], dtype=int) for r in results])
    probs = np.concatenate([np.array(r["test_probs"], dtype=np.float64).reshape(-1, k) for r in results])
    fold_of = np.concatenate([[r["fold"]] * len(r["test_rows"]) for r in results])
    keys = manifest.keys
    groups = np.array([group_map.get(keys[i], i) for i in rows])
    m = multilabel_metrics(y[rows], probs, labels, groups=groups)
    per_fold = []
    for r in results:
        sel = fold_of == r["fold"]
        fm = multilabel_metrics(y[rows][sel], probs[sel], labels, n_boot=0)
        names = ("macro_auc", "macro_f1", "exact_match")
        per_fold.append({"fold": r["fold"], "n_test": int(sel.sum()), **{n: fm[n]["value"] for n in names}})
    m["per_fold"] = per_fold
    m["fold_summary"] = {n: mean_sd([f[n] for f in per_fold]) for n in ("macro_auc", "macro_f1", "exact_match")}
    pred = multilabel_table(np.array(keys, dtype=object)[rows], y[rows], probs, labels, m["threshold"])
    pred.insert(1, "fold", fold_of)
    return m, pred


def multilabel_table(
    keys: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float
) -> pd.DataFrame:
    """Per image: key, true labels and labels predicted at `threshold` ('|'-joined), p_<label>.

    Args:
        keys: (N,) image keys; y: (N, K) multi-hot truth; probs: (N, K) probabilities; labels: the K names.
    """

    def names(bits: np.ndarray) -> str:
        return "|".join(lab for lab, b in zip(labels, bits, strict=True) if b)

    pred = pd.DataFrame({"image": keys})
    pred["labels"] = [names(t) for t in y > 0]
    pred["predicted"] = [names(p) for p in probs >= threshold]
    for j, lab in enumerate(labels):
        pred[f"p_{lab}"] = probs[:, j]
    return pred


def validated_metrics(
    y: np.ndarray,
    results: list[dict],
    rows: np.ndarray,
    probs: np.ndarray,
    fold_of: np.ndarray,
    labels: list[str],
    groups: np.ndarray,
) -> dict:
    """What needs each fold's validation predictions: operating points chosen on validation and applied to the
    fold's test images (binary runs: the positive class; more classes: each class but 'normal' against the rest),
    and temperature scaling fitted on validation ("calibration"). Empty (with a
    note) for runs whose fold results predate validation predictions."""
    from medcad.metrics.calibration import temperature_scaled
    from medcad.metrics.operating import validated_operating_points

    if not all("val_probs" in r for r in results):
        return {
            "validation_note": "fold results hold no validation predictions (older run): retrain to get "
            "validation-chosen operating points and temperature scaling"
        }
    k = len(labels)
    val = {
        r["fold"]: (y[np.array(r["val_rows"], dtype=int)], np.array(r["val_probs"], dtype=np.float64).reshape(-1, k))
        for r in results
    }
    yt = y[rows]
    out: dict = {}
    fitted = {r["fold"]: r.get("temperature") for r in results}  # each fold's own, kept in its model.pt
    out["calibration"], _ = temperature_scaled(yt, probs, fold_of, val, groups=groups, temperatures=fitted)

    def points(c: int, one_vs_rest: bool) -> dict:
        return {
            "positive": labels[c],
            "one_vs_rest": one_vs_rest,
            "note": "thresholds chosen per fold on its validation part, applied to its test images",
            **validated_operating_points(
                yt == c, probs[:, c], fold_of, {f: (v[0] == c, v[1][:, c]) for f, v in val.items()}, groups=groups
            ),
        }

    if k == 2:
        out["validated_operating_points"] = points(labels.index(positive_label(labels)), False)
    else:  # each finding against every other class (the reference class 'normal' is no finding)
        ref = reference_label(labels)
        out["validated_operating_points_by_class"] = {
            lab: points(c, True) for c, lab in enumerate(labels) if lab != ref and (yt == c).any()
        }
    return out


def _classification_results(
    manifest: Manifest, labels: list[str], y: np.ndarray, results: list[dict], group_map: dict
) -> tuple[dict, pd.DataFrame]:
    from medcad.metrics.classification import classification_metrics
    from medcad.metrics.stats import mean_sd

    rows = np.concatenate([np.array(r["test_rows"], dtype=int) for r in results])
    probs = np.concatenate([np.array(r["test_probs"], dtype=np.float64).reshape(-1, len(labels)) for r in results])
    fold_of = np.concatenate([[r["fold"]] * len(r["test_rows"]) for r in results])
    keys = manifest.keys
    groups = np.array([group_map.get(keys[i], i) for i in rows])
    m = pooled_metrics(manifest, rows, y[rows], probs, labels, groups)
    m.update(validated_metrics(y, results, rows, probs, fold_of, labels, groups))
    per_fold = []
    for r in results:
        sel = fold_of == r["fold"]
        fm = classification_metrics(y[rows][sel], probs[sel], labels, n_boot=0) if sel.sum() > 1 else {}
        per_fold.append(
            {
                "fold": r["fold"],
                "n_test": int(sel.sum()),
                "selected_stage": r.get("selected_stage"),
                **{name: (fm.get(name) or {}).get("value") for name in ("accuracy", "macro_f1", "macro_auc")},
                "speed": r.get("speed", {}),
            }
        )
    m["per_fold"] = per_fold
    m["fold_summary"] = {name: mean_sd([f[name] for f in per_fold]) for name in ("accuracy", "macro_f1", "macro_auc")}
    pred = prediction_table(manifest, rows, y[rows], probs, labels)
    pred.insert(1, "fold", fold_of)
    return m, pred
