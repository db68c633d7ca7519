"""Pooling a run's fold results into metrics.json and predictions.csv (masks: medcad.engine.mask_results); JSON writing
that any reader accepts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medcad.atomic import atomic_write_text
from medcad.data.manifest import LABEL_JOIN, Manifest
from medcad.data.splits import row_groups
from medcad.engine.mask_results import segmentation_results
from medcad.metrics.boundary import NSD_TOLERANCE
from medcad.runfolder import RunFolder
from medcad.tasks import positive_label, reference_label

if TYPE_CHECKING:
    from medcad.targets import Targets

# what a fold result's predictions are: 2 = validation and test predictions (and stage 1's cached features) in fp32
# whatever the fold trained in, as predict computes them; results without it may hold bf16 predictions
RESULT_VERSION = 2


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
    manifest: Manifest,
    rows: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    groups: np.ndarray,
    positive: str | None = None,
) -> dict:
    """Metrics of predictions `probs` for manifest rows `rows` (true label indices `y`), with cluster-bootstrap
    CIs by `groups`, per domain and subgroup, and each abnormality subtype against normal where that applies.
    `positive`: a two-class run's positive class (`Targets.positive`; None: `positive_label`'s choice)."""
    from medcad.metrics.classification import classification_metrics, subset_metrics, subtype_vs_reference

    positive = positive_label(labels, positive) if len(labels) == 2 else None
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
    """predictions.csv of classes: image, label, predicted, p_<label>... (`with_identity` adds patient / domain /
    subgroup)."""
    pred = pd.DataFrame(
        {
            "image": np.array(manifest.keys, dtype=object)[rows],
            "label": [labels[i] for i in y],
            "predicted": [labels[i] for i in probs.argmax(1)],
        }
    )
    for j, lab in enumerate(labels):
        pred[f"p_{lab}"] = probs[:, j]
    return pred


IDENTITY_COLUMNS = ("patient", "domain", "subgroup")


def with_identity(pred: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """A predictions table with each image's patient, domain and subgroup (those the dataset has), looked up by its
    `image` key, whatever the task: a study's paired tests on one domain read them (a detection or mask table had
    none: the study stopped with KeyError 'domain')."""
    out = pred.copy()
    for col in IDENTITY_COLUMNS:
        if manifest.has(col) and col not in out:
            out[col] = out["image"].map(dict(zip(manifest.keys, manifest.table[col].astype(str), strict=True)))
    return out


FEW_VALIDATION = 10  # validated thresholds chosen on fewer positive (or negative) validation images are said
LISTED_MIN_SCORE = 0.05  # a run's predictions.csv lists each test image's detections from this score on


def detection_results(
    manifest: Manifest,
    boxes: list[np.ndarray],
    results: list[dict],
    groups_of: dict,
    labels: list[str],
    image_sizes: np.ndarray,
    size: int,
    frame_classes: tuple[str, ...] = (),
) -> tuple[dict, pd.DataFrame]:
    """AP50, mAP (and over the lesion classes alone, beside `frame_classes`), P/R/F1 at the IoU thresholds and the
    frame-level decision of the folds' test detections, pooled out-of-fold with cluster-bootstrap CIs, per fold; with
    the per-image table (top detection, frame decision).

    Metrics are computed where the folds predicted, in the model's S x S input (`size`), against `boxes` there;
    the table's `detections` are listed as predict lists them: in the image's own pixels (scaled back by
    `image_sizes`, (N, 2) width and height per manifest row), [x0, y0, x1, y1, score, class name], best first,
    from `LISTED_MIN_SCORE` on.
    """
    from medcad.metrics.detection import detection_metrics
    from medcad.metrics.stats import mean_sd

    keys = manifest.keys
    rows, dets, truths = pooled_detections(boxes, results)
    groups = row_groups(groups_of, keys, rows)
    m = detection_metrics(dets, truths, labels, groups=groups, frame_classes=frame_classes)
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
    if all("val_score_threshold" in r for r in results):  # runs made before it have none
        from medcad.metrics.detection_operating import validated_operating_point

        thresholds = [r["val_score_threshold"] for r in results]
        n_per_fold = [len(r["test_rows"]) for r in results]
        m["validated_operating_point"] = validated_operating_point(
            dets, truths, labels, thresholds, n_per_fold, groups=groups, frame_classes=frame_classes
        )
    table = detection_table(
        np.array(keys, dtype=object)[rows], dets, truths, labels, m["score_threshold"], image_sizes[rows], size
    )
    table.insert(1, "fold", np.concatenate([[r["fold"]] * len(r["test_rows"]) for r in results]))
    return m, table


def pooled_detections(
    boxes: list[np.ndarray], results: list[dict]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The folds' test detections pooled out-of-fold: (manifest rows (N,), detections per image (m, 6) [x0, y0, x1,
    y1, score, class_index] in the model's S x S input, the full ranking, and the true `boxes` of those rows (t, 5)
    there too), from fold `results` whose test_rows are today's manifest rows (`rows_by_key`)."""
    rows = np.concatenate([np.array(r["test_rows"], dtype=int) for r in results])
    dets = [_with_area(np.array(d, dtype=np.float64).reshape(-1, 6)) for r in results for d in r["test_detections"]]
    return rows, dets, [boxes[i] for i in rows]


def _with_area(dets: np.ndarray) -> np.ndarray:
    """Detections (m, 6) less those without area: runs made before `detections_to_array` dropped them kept them."""
    return dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]


def detection_table(
    keys: Sequence[str],
    dets: list[np.ndarray],
    truths: list[np.ndarray],
    labels: list[str],
    threshold: float,
    image_sizes: np.ndarray,
    size: int,
) -> pd.DataFrame:
    """One row per image of detections `dets` ((m, 6) [x0, y0, x1, y1, score, class_index] each, in the model's
    S x S input, `size`) against its true boxes `truths` ((t, 5) [x0, y0, x1, y1, class_index], there too): the
    true frame class (its largest box's), the frame decision at `threshold`, the top score, and the detections
    listed as predict lists them (`LISTED_MIN_SCORE` on, in the image's own pixels: `image_sizes` (N, 2) width and
    height; class by name)."""
    from medcad.data.boxes import listed_boxes, scale_boxes

    top = [d[d[:, 4].argmax()] if len(d) else None for d in dets]
    return pd.DataFrame(
        {
            "image": list(keys),
            "n_true_boxes": [len(t) for t in truths],
            "true_frame": [
                labels[int(t[np.argmax((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])), 4])] if len(t) else "background"
                for t in truths
            ],
            "predicted_frame": [
                labels[int(d[5])] if d is not None and d[4] >= threshold else "background" for d in top
            ],
            "top_score": [float(d[4]) if d is not None else 0.0 for d in top],
            "detections": [
                json.dumps(listed_boxes(scale_boxes(d[d[:, 4] >= LISTED_MIN_SCORE], (size, size), wh), labels))
                for d, wh in zip(dets, (tuple(int(v) for v in x) for x in image_sizes), strict=True)
            ],
        }
    )


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
    targets: Targets,
    results: list[dict],
    splits: dict,
    run: Path | None,
    size: int,
    *,
    nsd_tolerance: float = NSD_TOLERANCE,
) -> tuple[dict, pd.DataFrame]:
    """Pool the folds' test predictions (out-of-fold), compute metrics with CIs, per-fold and per-subset figures,
    against the run's `targets` (`medcad.targets.load_targets`) at its training size `size`.

    Class probabilities (classify, multitask) give the classification metrics, and with multi-hot targets (N, K)
    the multi-label metrics; predicted masks (segment, multitask; read from the run's fold folders, compared with
    the target masks) give "segmentation", with "dice" and "iou" also at the top level; detections (detect, against
    the target boxes at the training size; listed in the table in each image's pixels, by the targets' image sizes)
    give the detection metrics. Masks' NSD is at `nsd_tolerance` % of each image's diagonal.
    """
    labels, y, masks, boxes = targets.labels, targets.y, targets.masks, targets.boxes
    group_map = splits.get("groups") or {}
    results = rows_by_key(results, splits, manifest)
    m: dict = {}
    pred = None
    if boxes is not None:
        m, pred = detection_results(
            manifest, boxes, results, group_map, labels, targets.image_sizes, size, targets.frame_classes
        )
    if all("test_probs" in r for r in results):
        if y.ndim == 2:
            m, pred = _multilabel_results(manifest, labels, y, results, group_map)
        else:
            m, pred = _classification_results(manifest, labels, y, results, group_map, targets.positive)
    if masks is not None and run is not None and all((RunFolder(run).fold(r["fold"]).masks).is_file() for r in results):
        seg, table = segmentation_results(
            manifest, masks, run, results, group_map, labels, targets.mask_classes, nsd_tolerance
        )
        m["segmentation"] = seg
        m["dice"], m["iou"] = seg["dice"], seg["iou"]
        if "class_dice" in seg:
            m["class_dice"], m["class_iou"] = seg["class_dice"], seg["class_iou"]
        pred = table if pred is None else pred.merge(table.drop(columns=["fold", "label"]), on="image", how="left")
        if "per_fold" not in m:
            m["per_fold"], m["fold_summary"] = seg["per_fold"], seg["fold_summary"]
    older = [r["fold"] for r in results if r.get("version", 1) < RESULT_VERSION]
    if older:  # said wherever the metrics are shown: predict computes in fp32 what these folds may have in bf16
        m["results_note"] = (
            f"fold(s) {', '.join(map(str, older))} were scored by an older medcad, which predicted in bf16 where "
            "the CPU computes bf16 natively (whatever the run trained in): on such a machine these figures may "
            "differ from what predict and evaluate --data compute now (in fp32); train the run again to refresh them"
        )
    m["evaluation"] = "out-of-fold" if splits["method"] == "kfold" else "holdout test set"
    m["splits"] = {k: splits[k] for k in ("method", "n_folds", "group_by", "n_groups", "seed")}
    return m, with_identity(pred, manifest)


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
    groups = row_groups(group_map, keys, rows)
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
        return LABEL_JOIN.join(lab for lab, b in zip(labels, bits, strict=True) if b)

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
    positive: str | None = None,
) -> tuple[dict, np.ndarray]:
    """What needs each fold's validation predictions: temperature scaling fitted on validation ("calibration"), and
    operating points chosen on validation and applied to the fold's test images (binary runs: the positive class;
    more classes: each class but 'normal' against the rest), both on the temperature-scaled probabilities: the scale
    the fold's model file predicts on, so a threshold read in the report is the one to apply to predict's output
    (they had been chosen on the raw scale: a Youden threshold of 0.834 where predict's scale needed 0.825). Returns
    (those metrics, the test probabilities (N, K) as the models predict them). For runs whose fold results predate
    validation predictions: ({validation_note}, `probs` unchanged)."""
    from medcad.metrics.calibration import apply_temperature, temperature_scaled

    if not all("val_probs" in r for r in results):
        return {
            "validation_note": "fold results hold no validation predictions (older run): retrain to get "
            "validation-chosen operating points and temperature scaling"
        }, probs
    k = len(labels)
    val = {
        r["fold"]: (y[np.array(r["val_rows"], dtype=int)], np.array(r["val_probs"], dtype=np.float64).reshape(-1, k))
        for r in results
    }
    yt = y[rows]
    out: dict = {}
    fitted = {r["fold"]: r.get("temperature") for r in results}  # each fold's own, kept in its model.pt
    # the class of the calibration line for two classes (for more, each class has its own)
    line = labels.index(positive_label(labels, positive)) if k == 2 else 0
    out["calibration"], scaled = temperature_scaled(
        yt, probs, fold_of, val, groups=groups, temperatures=fitted, positive=line
    )
    temps = out["calibration"]["temperatures"]
    val = {f: (v[0], apply_temperature(v[1], temps[str(f)])) for f, v in val.items() if str(f) in temps}
    note = (
        "thresholds chosen per fold on its validation part, applied to its test images; both on the "
        "temperature-scaled probabilities each fold's model predicts"
    )
    points = class_operating_points(
        labels, yt, scaled, fold_of, val, groups, positive, note=note, scale="temperature-scaled"
    )
    return out | points, scaled


def class_operating_points(
    labels: list[str],
    y: np.ndarray,
    probs: np.ndarray,
    fold: np.ndarray | None,
    val: dict,
    groups: np.ndarray,
    positive: str | None = None,
    **about: str,
) -> dict:
    """Validation-chosen operating points of class probabilities (`medcad.metrics.operating.
    validated_operating_points`): for two classes, the positive one (`validated_operating_points`); for more, each
    finding present among `y` against every other class, the reference class ('normal') being no finding
    (`validated_operating_points_by_class`).

    Args:
        labels: the run's labels (K).
        y: true class index per row (N,).
        probs: (N, K) probabilities.
        fold: fold id per row (each row at its fold's threshold), or None (every row at the folds' mean: an ensemble).
        val: {fold: (class index (n_val,), probabilities (n_val, K))} of each fold's validation part.
        groups: group id per row (cluster bootstrap).
        positive: a two-class run's positive class (None: `positive_label`'s choice).
        about: fields written beside each block (note, applied_to).
    """
    from medcad.metrics.operating import validated_operating_points

    def points(c: int, one_vs_rest: bool) -> dict:
        fold_val = {f: (v[0] == c, v[1][:, c]) for f, v in val.items()}
        found = validated_operating_points(y == c, probs[:, c], fold, fold_val, groups=groups)
        # how many images of each side chose each fold's thresholds (a few had chosen them without a word)
        sizes = {str(f): [int(yv.sum()), int((~yv).sum())] for f, (yv, _) in fold_val.items()}
        few = min((min(n) for n in sizes.values()), default=0) < FEW_VALIDATION
        return {"positive": labels[c], "one_vs_rest": one_vs_rest, **about, **found, "validation_images": sizes} | (
            {"few_validation": f"a fold's thresholds were chosen on fewer than {FEW_VALIDATION} validation images of "
             "a side: they may move with one image (more folds' data, or --val-fraction, gives them more)"}
            if few else {}
        )  # fmt: skip

    if len(labels) == 2:
        return {"validated_operating_points": points(labels.index(positive_label(labels, positive)), False)}
    ref = reference_label(labels)
    by_class = {lab: points(c, True) for c, lab in enumerate(labels) if lab != ref and (y == c).any()}
    return {"validated_operating_points_by_class": by_class}


def _classification_results(
    manifest: Manifest, labels: list[str], y: np.ndarray, results: list[dict], group_map: dict, positive: str | None
) -> tuple[dict, pd.DataFrame]:
    from medcad.metrics.classification import classification_metrics
    from medcad.metrics.stats import mean_sd

    rows = np.concatenate([np.array(r["test_rows"], dtype=int) for r in results])
    probs = np.concatenate([np.array(r["test_probs"], dtype=np.float64).reshape(-1, len(labels)) for r in results])
    fold_of = np.concatenate([[r["fold"]] * len(r["test_rows"]) for r in results])
    keys = manifest.keys
    groups = row_groups(group_map, keys, rows)
    # every pooled figure and predictions.csv on the probabilities each fold's model predicts (temperature-scaled,
    # as predict gives them): pooled across folds, the scales as trained differ by fold (a new user's run: T 3.4, 1
    # and 8.7 had given a pooled AUC of 0.77 beside validated operating points on the scaled 0.92, the Youden point
    # far above the ROC drawn); the calibration section keeps the figures as trained beside them
    validated, probs = validated_metrics(y, results, rows, probs, fold_of, labels, groups, positive)
    m = pooled_metrics(manifest, rows, y[rows], probs, labels, groups, positive)
    m.update(validated)
    m["probabilities"] = "temperature-scaled" if "calibration" in validated else "as trained"
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
    pred = prediction_table(manifest, rows, y[rows], probs, labels)  # what the run's AUCs and studies read
    pred.insert(1, "fold", fold_of)
    return m, pred
