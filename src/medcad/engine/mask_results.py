"""A run's predicted masks scored: its folds' test masks pooled into the "segmentation" metrics (at each image's own
size, at the training size, per label, per lesion class, after the frame-level decisions), and an external set's
masks scored the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medcad.data.labelmaps import MaskLabels
from medcad.data.manifest import Manifest
from medcad.data.splits import row_groups
from medcad.engine.fullres import NativeScores, joined_counts, native_mask_scores
from medcad.metrics.boundary import NSD_TOLERANCE
from medcad.runfolder import FoldFolder, RunFolder
from medcad.tasks import p_lesion_words, reference_label


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
    nsd_tolerance: float = NSD_TOLERANCE,
) -> tuple[dict, pd.DataFrame]:
    """Dice/IoU of the folds' predicted test masks, pooled over folds with cluster-bootstrap CIs, per fold, and per
    label; with the per-image table.

    The headline figures are scored at each image's own resolution (predicted probabilities resized back before
    thresholding) with HD95 and NSD (`NativeScores`; the table's hd95_px and nsd columns); the figures at the training
    size (against `masks`) stay beside them in "training_size" and the table's dice_training_size column. With
    `mask_classes` (label maps) the headline is lesion against background and "per_class", "class_dice", "class_iou"
    score each lesion class (`medcad.metrics.label_maps`), with per-image dice_<class>, hd95_px_<class> and
    nsd_<class> columns."""
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
    parts, small, natives, per_fold, decided, thresholds, kinds = [], [], [], [], [], [], set()
    spec_decided, spec_thresholds = [], []
    ref = reference_label(labels)
    normal = labels.index(ref) if ref is not None else None
    for r in results:
        rows, probs = fold_test_masks(RunFolder(run).fold(r["fold"]).path)
        small.append(mask_counts(probs >= 128, masks[rows].astype(bool)))
        lesion_classes = fold_test_lesion_classes(RunFolder(run).fold(r["fold"]).path) if mask_classes else None
        scores = native_mask_scores(manifest, rows, probs, "empty", lesion_classes, mask_classes, nsd_tolerance)
        c = scores.counts
        natives.append(scores)
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
        fm = segmentation_metrics(c, n_boot=0)
        per_fold.append({"fold": r["fold"], "dice": fm["dice"]["value"], "iou": fm["iou"]["value"]})
    rows = np.concatenate([p[0] for p in parts])
    native = NativeScores.joined(natives)
    counts, counts_small = native.counts, joined_counts(small)
    groups = row_groups(groups_of, keys, rows)
    label_of = manifest.table["label"].to_numpy(dtype=str)[rows]
    by_label = {lab: label_of == lab for lab in labels} if len(set(label_of)) > 1 else None
    m = _native_size_metrics(native, counts_small, groups, int(masks.shape[-1]), by_label)
    not_normal = p_lesion_words(labels)
    if len(decided) == len(results):  # runs from before the frame-level decision have none
        what = not_normal if kinds == {"p_lesion"} else "the predicted lesion area (fraction of the frame)"
        rule = f"a frame shows a lesion when {what} reaches the fold's threshold, chosen on its validation part to "
        rule += "maximise mean Dice; the masks of other frames are emptied"
        m["frame_decision"] = _decided(decided, counts, groups, sorted(kinds), rule, thresholds)
    if len(spec_decided) == len(results):
        rule = f"a frame shows a lesion when {not_normal} reaches the fold's threshold, chosen on its validation part "
        rule += f"as the lowest that leaves at least {FRAME_SPECIFICITY:.0%} of the lesion-free validation frames "
        rule += "without lesion pixels"
        m["frame_decision_specificity"] = _decided(spec_decided, counts, groups, ["p_lesion"], rule, spec_thresholds)
    m["per_fold"] = per_fold
    m["fold_summary"] = {name: mean_sd([f[name] for f in per_fold]) for name in ("dice", "iou")}
    table = per_image_table(counts, [keys[i] for i in rows]).rename(columns={"key": "image"})
    if native.by_class is not None:
        m |= _class_results(native, mask_classes, groups, table)
    table.insert(1, "fold", np.concatenate([[r["fold"]] * len(p[0]) for r, p in zip(results, parts, strict=True)]))
    table.insert(2, "label", label_of)
    table["hd95_px"] = native.hd95
    table["nsd"] = native.nsd
    table["dice_training_size"] = dice_iou(counts_small)[0]
    if "frame_decision" in m:
        table["dice_frame_decision"] = dice_iou(joined_counts(decided))[0]
    return m, table


def _decided(
    per_fold: list[dict], before: dict, groups: np.ndarray, frame_score: list[str], rule: str, thresholds: list
) -> dict:
    """Segmentation metrics after a frame-level decision (the folds' counts with emptied masks), with its rule;
    "lesion_images_hidden" where it empties the masks of lesion images the masks alone found, "no_lesion_image_kept"
    where no lesion image keeps a mask, and a "note" saying either (a mean Dice that rose because every lesion-free
    frame scores 1 once emptied must not read as a better segmenter: helper's run, 0.131 -> 0.333 with 0 of 16 lesion
    images shown). `before`: the same images' counts undecided."""
    from medcad.metrics.segmentation import segmentation_metrics

    after = joined_counts(per_fold)
    metrics = segmentation_metrics(after, groups=groups)
    out = {**metrics, "frame_score": frame_score, "rule": rule, "thresholds": thresholds}
    lesion = np.asarray(before["true_area"]) > 0
    found_before = lesion & (np.asarray(before["pred_area"]) > 0)
    found_after = lesion & (np.asarray(after["pred_area"]) > 0)
    hidden = int((found_before & ~found_after).sum())
    said = []
    if hidden:
        out["lesion_images_hidden"] = {"n": hidden, "of": int(found_before.sum()), "n_lesion_images": int(lesion.sum())}
        said.append(
            f"The decision empties the masks of {hidden} of the {int(found_before.sum())} lesion images given lesion "
            f"pixels by the masks alone ({int(found_after.sum())} of {int(lesion.sum())} lesion images keep a mask)"
        )
    if lesion.any() and not found_after.any():
        out["no_lesion_image_kept"] = True
        said.append(
            f"No lesion image keeps a mask: the mean Dice ({metrics['dice']['value']:.3f}) comes from the lesion-free "
            "images alone (an emptied lesion-free frame scores 1, every lesion image 0); read the Dice over lesion "
            "images and the lesion images found"
        )
    if said:
        out["note"] = ". ".join(said) + "."
    return out


def external_mask_results(
    manifest: Manifest,
    probs: np.ndarray,
    true_small: np.ndarray,
    groups: np.ndarray,
    missing: str,
    lesion_classes: np.ndarray | None = None,
    classes: MaskLabels | None = None,
    decision: tuple[str, float, np.ndarray] | None = None,
    nsd_tolerance: float = NSD_TOLERANCE,
) -> tuple[dict, pd.DataFrame]:
    """An external set's masks scored as a run's are: at each image's own size (Dice, IoU with cluster-bootstrap CIs,
    HD95, NSD), with the training-size figures beside them, for label maps each lesion class, and with `decision` the
    deployed predictor's frame-level decision ("frame_decision", as a run's is scored).

    Args:
        manifest: the external set (every row predicted, in order).
        probs: (N, S, S) predicted lesion probabilities, float 0..1 at the training size.
        true_small: (N, S, S) its masks at the training size (label maps: class indices).
        groups: (N,) cluster of each image (patient, else the image).
        missing: the run's policy for images without a mask.
        lesion_classes, classes: label maps: (N, K, S, S) the classes' probabilities 0..1, and the run's classes.
        decision: (frame score kind, the predictor's threshold, (N,) frame scores) of a model with a frame-level
            decision: masks of frames scoring below the threshold are emptied, as predict and serve show them.
        nsd_tolerance: NSD's tolerance, % of each image's diagonal.

    Returns:
        (the "segmentation" metrics, the per-image table with image, dice, iou, hd95_px, nsd, dice_training_size and
        dice_<class>, hd95_px_<class>, nsd_<class> columns).
    """
    from medcad.metrics.segmentation import dice_iou, mask_counts, per_image_table

    rows = np.arange(len(manifest))
    # at each image's size from the float probabilities, as predict shows the masks
    native = native_mask_scores(manifest, rows, probs, missing, lesion_classes, classes, nsd_tolerance)
    counts = native.counts
    small = mask_counts(np.asarray(probs) >= 0.5, true_small > 0)
    m = _native_size_metrics(native, small, groups, int(true_small.shape[-1]))
    table = per_image_table(counts, manifest.keys).rename(columns={"key": "image"})
    if native.by_class is not None:
        m |= _class_results(native, classes, groups, table)
    table["hd95_px"] = native.hd95
    table["nsd"] = native.nsd
    table["dice_training_size"] = dice_iou(small)[0]
    if decision is not None:
        from medcad.metrics.segmentation import apply_frame_decision

        kind, threshold, score = decision
        decided = apply_frame_decision(counts, score, threshold)
        rule = f"the deployed models' frame-level decision ({kind} from {threshold:.4g}, the mean of the folds' "
        rule += "thresholds chosen on their validation parts); the masks of other frames are emptied"
        m["frame_decision"] = _decided([decided], counts, groups, [kind], rule, [threshold])
        table["dice_frame_decision"] = dice_iou(decided)[0]
    return m, table


def _native_size_metrics(
    native: NativeScores, small: dict, groups: np.ndarray, size: int, by_label: dict | None = None
) -> dict:
    """Masks' metrics at each image's own size (`native`: Dice, IoU, HD95, NSD with cluster-bootstrap CIs) and, under
    "training_size", at the S x S training size: the same for a run's test images and an external set's. With
    `by_label` ({label: bool (N,)}), "by_label" scores each label's images in the headline's bootstrap resamples (so
    the lesion images' Dice has one CI, whether as the headline's dice_lesion or the lesion label's dice);
    "by_lesion_size" scores the lesion images in thirds by lesion size at each image's own size (`_by_lesion_size`)
    alike. Where images differ in size, "hd95_normalised" gives HD95 as a share of each image's diagonal (a 10 px
    error on a 1920 px frame and on a 332 px one are not alike: Kvasir-SEG holds both), as NSD's tolerance is."""
    from medcad.metrics.boundary import hd95_normalised_summary, hd95_summary, nsd_summaries
    from medcad.metrics.segmentation import segmentation_metrics

    counts, dist, hw = native.counts, native.hd95, native.hw
    lesion_sizes, ranges = _by_lesion_size(counts, hw.prod(axis=1))
    subsets = {f"label:{k}": v for k, v in (by_label or {}).items()} | {f"size:{k}": v for k, v in lesion_sizes.items()}
    m = segmentation_metrics(counts, groups=groups, subsets=subsets)
    parts = m.pop("subsets", {})
    if by_label is not None:
        m["by_label"] = {k: parts[f"label:{k}"] for k in by_label if f"label:{k}" in parts}
    if lesion_sizes:
        m["by_lesion_size"] = {k: parts[f"size:{k}"] for k in lesion_sizes}
        m["lesion_size_ranges"] = ranges  # each third's smallest and largest share of the frame
    m["resolution"] = "each image's own size (predicted probabilities resized back before the 0.5 threshold)"
    m["hd95"] = hd95_summary(dist, groups=groups)
    if (share := hd95_normalised_summary(dist, hw, groups=groups)) is not None:  # images of several sizes
        m["hd95_normalised"] = share
    lesion = np.asarray(counts["true_area"]) > 0
    tolerance = {"tolerance": native.tolerance, "tolerance_px": native.tolerances_px()}
    m |= nsd_summaries(native.nsd, lesion, groups=groups, **tolerance)  # nsd, and nsd_lesion as dice_lesion
    m["training_size"] = {**segmentation_metrics(small, groups=groups), "resolution": f"{size}x{size} px"}
    return m


def _by_lesion_size(counts: dict, area: np.ndarray) -> tuple[dict[str, np.ndarray], list[list[float]]]:
    """The lesion images in thirds by rank of the true lesion's share of the frame (`counts`' true area over each
    image's `area` in pixels: at each image's own size, where a lesion image is decided; ties split by rank, so each
    third holds a third): ({"small (a-b % of the frame)": bool (N,), "medium (...)": ..., "large (...)": ...},
    [[lo, hi] share of each third]), or ({}, []) under 6 lesion images. Dice by lesion size, as polyp and
    ultrasound papers report it (small lesions are the hard ones); the thirds are the data's own, named by range."""
    share = np.asarray(counts["true_area"], dtype=float) / np.asarray(area, dtype=float)
    lesion = np.flatnonzero(share > 0)
    if len(lesion) < 6:
        return {}, []
    thirds = np.array_split(lesion[np.argsort(share[lesion], kind="stable")], 3)
    parts, ranges = {}, []
    for name, rows in zip(("small", "medium", "large"), thirds, strict=True):
        lo, hi = float(share[rows].min()), float(share[rows].max())
        part = np.zeros(len(share), bool)
        part[rows] = True
        parts[f"{name} ({lo:.1%} to {hi:.1%} of the frame)"] = part
        ranges.append([lo, hi])
    return parts, ranges


def _class_results(native: NativeScores, classes: MaskLabels, groups: np.ndarray, table: pd.DataFrame) -> dict:
    """Label maps: per-class metrics of `native`'s lesion classes, and dice_<class>, hd95_px_<class> and nsd_<class>
    columns in `table`."""
    from medcad.metrics.boundary import hd95_normalised_summary
    from medcad.metrics.label_maps import class_metrics
    from medcad.metrics.segmentation import dice_iou

    names = list(classes.names)
    counts, hd95_px, nsd = native.by_class
    for k, (name, c) in enumerate(zip(names, counts, strict=True)):  # each image's figures of each class
        table[f"dice_{name}"] = dice_iou(c)[0]
        table[f"hd95_px_{name}"], table[f"nsd_{name}"] = hd95_px[:, k], nsd[:, k]
    tolerance = (native.tolerance, native.tolerances_px())
    out = class_metrics(counts, names, hd95_px=hd95_px, nsd=nsd, nsd_tolerance=tolerance, groups=groups)
    for k, name in enumerate(names):  # images of several sizes: each class's HD95 as % of the diagonal too
        if (share := hd95_normalised_summary(hd95_px[:, k], native.hw, groups=groups)) is not None:
            out["per_class"][name]["hd95_normalised"] = share
    return out | {"lesion_classes": classes.describe()}
