"""Scoring a run's models on an external dataset: predict every image with the run's predictor (ensemble of its
folds) and score it against the set's labels, masks or boxes; written to RUN/evaluations/<dataset>/."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

from medcad.atomic import atomic_write_text
from medcad.config import DataOptions, check_nsd_tolerance
from medcad.data.fingerprints import fingerprints
from medcad.data.identity import run_samples
from medcad.data.layouts import load_manifest
from medcad.data.manifest import FRAME_SEP, label_map_advice
from medcad.data.splits import sample_groups
from medcad.engine.evaluate import load_run_config
from medcad.engine.mask_results import external_mask_results
from medcad.engine.results import (
    class_operating_points,
    detection_table,
    multilabel_table,
    pooled_metrics,
    prediction_table,
    with_identity,
    write_json,
)
from medcad.errors import ConfigError, DataError
from medcad.inference.registry import load_predictor
from medcad.runfolder import FoldFolder, RunFolder
from medcad.targets import check_missing_masks, load_targets, run_dataset, run_rows
from medcad.tasks import get_task, split_labels

NOT_INDEPENDENT = " (NOT independent: "  # how an evaluation holding the run's own images is marked
UNSEEN_LABELS = ("stop", "leave-out")  # what evaluate --data does with images of labels the run never saw


def evaluate_external(
    run: str | Path,
    data: str | Path,
    options: DataOptions | None = None,
    unseen_labels: str = "stop",
    nsd_tolerance: float | None = None,
    missing_masks: str | None = None,
) -> tuple[dict, Path, list[str]]:
    """Predict every image of another dataset with the run's models and score it against its labels, masks or
    boxes (by the run's task); written to RUN/evaluations/<dataset>/.

    Args:
        run: the run folder.
        data: the external dataset, in any layout.
        options: how to read it (its own layout, pattern, label map, ...), not the training set's.
        unseen_labels: "stop" (a DataError naming them) or "leave-out" (score the images of the run's labels alone;
            the others are counted in the metrics and named in the notes).
        nsd_tolerance: masks: NSD's tolerance, % of each image's diagonal (None: the run's).
        missing_masks: masks: what the set's images without a mask are, "error", "empty" (lesion-free) or
            "leave-out" (named); None: the run's setting. (An external set with one unlabelled image had no way to
            be scored: the message named an option evaluate did not have.)

    Returns:
        (metrics, folder written, notes on how the dataset was read).
    """
    from medcad.data.datasets import run_images

    run = Path(run)
    if nsd_tolerance is not None:  # before anything is predicted
        check_nsd_tolerance(nsd_tolerance)
    trained, meta = load_run_config(run)  # the run's settings: its own images are read again with them
    cfg = trained
    if missing_masks is not None:  # this set's, not the training set's: checked before anything is read
        if "masks" not in get_task(cfg.task).targets:
            raise ConfigError(f"--missing-masks is for runs with masks; this run's task is {cfg.task}")
        cfg = cfg.replace(missing_masks=check_missing_masks(missing_masks))
    options = options or DataOptions()
    manifest = load_manifest(data, options)
    read = manifest.ledger  # what the read used and left out (--allow-missing), kept with the evaluation
    manifest.check_complete(options.allow_missing)
    # the run's own choices (images without masks), made at training; images without a usable box as this read allows
    manifest = run_rows(manifest, cfg.replace(allow_missing=options.allow_missing))
    labels = meta["labels"]
    task = get_task(cfg.task)
    multi = task.label_kind == "multi"  # a row's label lists its findings: 'stone|cyst', '' for none
    if unseen_labels not in UNSEEN_LABELS:
        raise ConfigError(f"--unseen-labels {unseen_labels!r}: use one of {', '.join(UNSEEN_LABELS)}")
    left_out: dict[str, int] = {}
    if "labels" in task.targets or ("probabilities" in task.outputs and manifest.labels):
        # an image without a label cannot be scored against one (multi-label: no label is no finding, a label)
        unlabelled = "(no label)" if "labels" in task.targets and not multi else None
        cells = [
            split_labels(v) if multi else [lab] if (lab := v or unlabelled) else [] for v in manifest.table["label"]
        ]
        unseen = [sorted(set(c) - set(labels)) for c in cells]
        unknown = sorted({lab for u in unseen for lab in u})
        if unlabelled in unknown and unseen_labels == "stop":
            first = manifest.keys[next(i for i, u in enumerate(unseen) if unlabelled in u)]
            raise DataError(
                data,
                f"{sum(unlabelled in u for u in unseen)} of {len(unseen)} image(s) have no label (e.g. {first}), so "
                "they cannot be scored; label them, score the labelled ones alone with --unseen-labels leave-out, or "
                "use `medcad predict` for predictions without labels",
            )
        if unknown and unseen_labels == "stop":
            said = (
                label_map_advice(unknown, labels)
                + ", or score the images of the model's labels alone with --unseen-labels leave-out"
            )
            raise DataError(data, f"labels {unknown} are not among the model's labels {labels}; {said}")
        if unknown:
            for u in unseen:
                for lab in u:
                    left_out[lab] = left_out.get(lab, 0) + 1
            keep = [i for i, u in enumerate(unseen) if not u]
            if not keep:
                raise DataError(data, f"no image has a label the model saw ({unknown}): nothing to score")
            manifest = manifest.subset(keep)
            manifest.notes = [
                *manifest.notes,
                f"left out {sum(bool(u) for u in unseen)} image(s) without a label or of label(s) the model never "
                "saw (--unseen-labels leave-out): " + ", ".join(f"{lab} ({n})" for lab, n in sorted(left_out.items())),
            ]
    fps = fingerprints(manifest)  # the set's: for its near duplicates of the run's images, and its CI groups
    overlap, near, near_note = _runs_own_images(run, manifest, meta, trained, fps)
    images = np.asarray(run_images(manifest, cfg))
    # clusters for the CIs, as a run's splits group: patient, near-duplicate group, the frames of one file
    groups, grouped_by = sample_groups(manifest, "auto", fps=fps)
    rows = np.arange(len(manifest))
    targets = load_targets(manifest, cfg, labels)
    y = targets.y
    predictor = load_predictor(run, images=len(images))
    out = predictor.infer(images)
    metrics: dict = {}
    pred = pd.DataFrame({"image": manifest.keys})
    if out.get("boxes") is not None:
        from medcad.metrics.detection import detection_metrics

        metrics = detection_metrics(
            out["boxes"], targets.boxes, labels, groups=groups, frame_classes=targets.frame_classes
        )
        pred = detection_table(  # each image's detections as a run's predictions.csv lists them
            manifest.keys, out["boxes"], targets.boxes, labels, metrics["score_threshold"], targets.image_sizes,
            cfg.image_size,
        )  # fmt: skip
        metrics |= _validated_boxes(run, out["boxes"], targets, labels, groups)
    if out.get("probabilities") is not None and multi:
        from medcad.metrics.multilabel import multilabel_metrics

        metrics = multilabel_metrics(y, out["probabilities"], labels, groups=groups)
        pred = multilabel_table(
            np.array(manifest.keys, dtype=object), y, out["probabilities"], labels, metrics["threshold"]
        )
    elif out.get("probabilities") is not None:
        metrics = pooled_metrics(manifest, rows, y, out["probabilities"], labels, groups, targets.positive)
        metrics.update(prespecified_points(predictor, y, out["probabilities"], groups, targets.positive))
        pred = prediction_table(manifest, rows, y, out["probabilities"], labels)
    if out.get("mask") is not None:  # scored as a run's masks are: at each image's own size
        seg, table = external_mask_results(
            manifest,
            out["mask"],
            np.asarray(targets.masks),
            groups,
            cfg.missing_masks,
            out.get("lesion_classes"),
            targets.mask_classes,
            _frame_decision(predictor, out, labels),
            cfg.nsd_tolerance if nsd_tolerance is None else nsd_tolerance,
        )
        metrics["segmentation"] = seg
        metrics["dice"], metrics["iou"] = seg["dice"], seg["iou"]
        if "class_dice" in seg:
            metrics["class_dice"], metrics["class_iou"] = seg["class_dice"], seg["class_iou"]
        pred = pred.merge(table, on="image", how="left")
    evaluation = f"test set {Path(data).resolve()} (evaluate --data)"  # the set's identity; a mark may follow
    metrics["evaluation"] = evaluation
    metrics["ci_clusters"] = f"{len(np.unique(groups))} groups of its images by {grouped_by}"
    notes = list(manifest.notes)
    if overlap or near:  # said, counted and marked, not refused (a check of the model on its own data is a choice)
        said = [f"{len(overlap)} file(s) the run was made on (the same content)"] if overlap else []
        said += [f"{len(near)} near duplicate(s) of the run's images (the same picture re-encoded, resized...)"] * (
            bool(near)
        )
        examples = [*overlap[:3], *(f"{a} ~ {b}" for a, b in near[:3])]
        notes.append(
            f"of the set's {len(manifest)} images, {' and '.join(said)}, e.g. {', '.join(examples)}: these figures "
            "are not those of an independent test set"
        )
        marks = [f"{len(overlap)} of its images were the run's own"] * bool(overlap)
        marks += [f"{len(near)} near duplicates of the run's images"] * bool(near)
        metrics["evaluation"] += f"{NOT_INDEPENDENT}{', '.join(marks)})"
        metrics["overlap_with_run"] = {"n": len(overlap), "images": overlap[:20]}
        metrics["near_duplicates_of_run"] = {"n": len(near), "pairs": [list(p) for p in near[:20]]}
    if near_note:
        notes.append(near_note)
    if left_out:
        metrics["left_out_unseen_labels"] = left_out  # images per label the model never saw, not scored
    if read is not None and read.left_out:  # rows the read left out (--allow-missing): counted and said, not lost
        metrics["left_out_by_the_read"] = {"n": len(read.left_out), "ledger": read.line()}
    metrics["backend"] = predictor.backend
    where = evaluation_folder(run, data, evaluation)
    if RunFolder(where).metrics.is_file():  # the same set evaluated again (other options): its evaluation replaced
        notes.append(f"this set's earlier evaluation in {where} is replaced (to keep both, evaluate a copy of the set)")
    where.mkdir(parents=True, exist_ok=True)
    if read is not None:  # every file and row of the set, used or not with why, as a run's data_ledger.csv
        atomic_write_text(RunFolder(where).ledger, read.table().to_csv(index=False))
    atomic_write_text(RunFolder(where).predictions, with_identity(pred, manifest).to_csv(index=False))
    write_json(RunFolder(where).metrics, metrics)
    return metrics, where, [*notes, f"backend {predictor.backend}: {predictor.backend_choice['reason']}"]


def prespecified_points(
    predictor, y: np.ndarray, probs: np.ndarray, groups: np.ndarray, positive: str | None = None
) -> dict:
    """The run's validated operating points carried to new data: each ensemble member's threshold chosen by each
    rule on its fold's validation part (on its temperature-scaled probabilities, the scale the ensemble predicts
    on), the ensemble at the mean threshold, scored on the new images' probabilities `probs` (N, K) with labels
    `y` (N,). Binary runs: the positive class (`positive`, the run's); more classes: each finding against the
    rest. Empty, with a `validation_note`, for runs without validation predictions or whose validation labels
    RUN/manifest.csv lacks."""
    val, why = _validation_parts(predictor)
    if val is None:
        return {"validation_note": f"no operating point carried from the run's validation: {why}"}
    note = (
        "thresholds chosen on each fold's validation part by the rule, before this set was seen; the ensemble of "
        f"the {len(val)} fold(s) uses their mean"
    )

    return class_operating_points(
        predictor.labels, y, probs, None, val, groups, positive, note=note, applied_to="this set"
    )


def _validation_parts(predictor) -> tuple[dict | None, str]:
    """({fold: (class index (n_val,), temperature-scaled probabilities (n_val, K))} of each ensemble member's
    validation part, ""), or (None, why not): labels from RUN/manifest.csv, the rows found by the images' keys."""
    from medcad.metrics.calibration import apply_temperature

    manifest = RunFolder(predictor.run).manifest
    found = [FoldFolder(Path(f).parent).result for f in predictor.files]  # each member's fold result
    results = [json.loads(p.read_text()) for p in found if p.is_file()]
    if len(results) < len(found) or not all("val_probs" in r for r in results):
        return None, "a fold result holds no validation predictions (an older run, or a model file alone)"
    if not manifest.is_file():
        return None, f"{manifest} is missing"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "label" not in table:
        return None, f"{manifest} has no label column"
    frames = table["frame"] if "frame" in table else pd.Series([""] * len(table))
    pairs = zip(table["image"], frames, strict=True)
    written = [img + (f"{FRAME_SEP}{int(float(fr))}" if fr else "") for img, fr in pairs]
    index = {lab: c for c, lab in enumerate(predictor.labels)}
    val = {}
    samples = list(run_samples(predictor.run) or {})
    for r, t in zip(results, predictor.temperatures, strict=True):
        rows = _rows_of(r.get("val_keys"), r["val_rows"], written, samples)
        if rows is None or any(table["label"].iat[i] not in index for i in rows):
            return None, f"the validation images of fold {r['fold']} are not all in {manifest} with a label of the run"
        p = np.array(r["val_probs"], dtype=np.float64).reshape(-1, len(index))
        val[r["fold"]] = (np.array([index[table["label"].iat[i]] for i in rows], dtype=int), apply_temperature(p, t))
    return val, ""


def _rows_of(
    keys: list[str] | None, rows: list[int], written: list[str], all_keys: list[str] | None = None
) -> list[int] | None:
    """The rows of RUN/manifest.csv (its paths `written`, each the dataset's key behind one prefix: the dataset's
    folder relative to the run folder) holding a fold's images: each key's row where the prefix and the key give
    its path exactly; None when a key has no such row or the prefix is not one (`manifest_prefix`; `all_keys`, the
    run's samples, decide between prefixes that fit the fold's keys alike). Results from before keys were kept:
    their row positions."""
    if keys is None:
        return list(rows) if all(0 <= i < len(written) for i in rows) else None
    prefix = manifest_prefix(written, keys, all_keys)
    if prefix is None:
        return None
    index = {path: i for i, path in enumerate(written)}
    found = [index.get(posixpath.normpath(prefix + key)) for key in keys]
    return None if None in found else found


def manifest_prefix(written: list[str], keys: list[str], all_keys: list[str] | None = None) -> str | None:
    """The one prefix P (`""`, or a folder ending in "/") with which every key in `keys` is a path in `written`
    (`normpath(P + key)`, as `Manifest.save` wrote it), found among the prefixes the first key without `..` gives
    (None when every key has one: `../a.png` is written collapsed). Where several prefixes find every key (`a.png`
    beside `sub/a.png`, or beside `../a.png`), the one that finds most of `all_keys` (the run's samples), then the
    one that begins every written path; None when no prefix, or no single one, does."""
    if not keys:
        return ""
    present = set(written)
    plain = [k for k in keys if ".." not in k.split("/")]  # `../x.png` (a manifest naming files beside its folder)
    first = plain[0] if plain else keys[0]  # is written collapsed: the prefix is found from a key without `..`
    candidates = {path[: len(path) - len(first)] for path in written if path == first or path.endswith("/" + first)}

    def rows_of(p: str, some: list[str]) -> set[str]:
        return {posixpath.normpath(p + k) for k in some} & present  # distinct rows found

    fits = sorted(p for p in candidates if len(rows_of(p, keys)) == len(set(keys)))  # every key, each its own row
    if len(fits) > 1 and all_keys:
        found = {p: len(rows_of(p, all_keys)) for p in fits}
        fits = [p for p in fits if found[p] == max(found.values())]
    if len(fits) > 1:
        fits = [p for p in fits if all(path.startswith(p) for path in written)]
    return fits[0] if len(fits) == 1 else None


def _runs_own_images(run: Path, manifest, meta: dict, cfg, fps: list) -> tuple[list[str], list[tuple[str, str]], str]:
    """The set's images that the run was made on: (keys of files with the same content, wherever they lie now;
    (set key, run key) pairs of near duplicates - the same picture re-encoded, resized or cropped a little -, found
    when the run's dataset is still where it was read; a note when that check could not be made). Scored as an
    external test set they give figures better than the run's own held-out ones."""
    from medcad.data.duplicates import duplicate_links
    from medcad.data.identity import sample_fingerprints

    own = {fp for fp in (run_samples(run) or {}).values() if fp}
    exact = [key for key, fp in sample_fingerprints(manifest).items() if fp in own] if own else []
    try:
        ran_on = run_dataset(meta["data"], cfg, run)  # the images the run used
    except (DataError, OSError, KeyError) as e:
        why = getattr(e, "problem", str(e))
        return exact, [], f"near duplicates of the run's images not looked for: its dataset cannot be read ({why})"
    n = len(ran_on)
    fps = fingerprints(ran_on) + fps
    said = set(exact)
    keys, run_keys = manifest.keys, ran_on.keys
    near = sorted(
        {
            (keys[link.j - n], run_keys[link.i])
            for link in duplicate_links(fps, near=True, between=n)  # the set's images against the run's alone
            if keys[link.j - n] not in said
        }
    )
    first: dict[str, str] = {}
    for key, other in near:  # one pair per image of the set
        first.setdefault(key, other)
    return exact, sorted(first.items()), ""


def _validated_boxes(run: Path, boxes: list, targets, labels: list[str], groups: np.ndarray) -> dict:
    """A detection run's boxes on this set also at its validated operating point, as `predict --operating-point
    f1` deploys them (the folds' mean score threshold; TRIPOD+AI asks for external figures at the prespecified
    threshold): {"validated_operating_point": ...}, or {} for a run without one."""
    from medcad.errors import ConfigError
    from medcad.inference.operating_points import DETECTION_RULE, validated_score_threshold
    from medcad.metrics.detection_operating import validated_operating_point

    try:
        threshold = validated_score_threshold(Path(run), None, DETECTION_RULE)
    except ConfigError:
        return {}
    found = validated_operating_point(
        boxes, targets.boxes, labels, [threshold], [len(boxes)], groups=groups, frame_classes=targets.frame_classes
    )
    rule = f"the run's validated operating point {DETECTION_RULE!r}: the folds' mean threshold, as predict applies it"
    return {"validated_operating_point": found | {"rule": rule}}


def _frame_decision(predictor, out: dict, labels: list[str]) -> tuple[str, float, np.ndarray] | None:
    """(kind, threshold, per-image scores) of the predictor's frame-level decision, scored as a run's folds score
    theirs (at the training size; class probabilities as the predictor scales them), or None without one."""
    from medcad.metrics.segmentation import frame_scores
    from medcad.tasks import reference_label

    kind, threshold = getattr(predictor, "frame_score_kind", None), getattr(predictor, "min_frame_score", None)
    if kind is None or not threshold or threshold <= 0:  # no decision, or one that keeps every frame
        return None
    ref = reference_label(labels)
    masks = np.clip(np.rint(out["mask"] * 255), 0, 255).astype(np.uint8) if kind == "lesion_area" else None
    score = frame_scores(kind, masks, out.get("probabilities"), labels.index(ref) if ref is not None else None)
    return kind, float(threshold), score


def evaluation_folder(run: str | Path, data: str | Path, evaluation: str) -> Path:
    """RUN/evaluations/<set>: the data folder's name (a manifest's: its folder's and its own stem), with -2, -3 ...
    where that name holds the evaluation of another set (hospitalA/data and hospitalB/data: the second had
    overwritten the first); the same set evaluated again keeps its folder."""
    data = Path(data).resolve()
    name = f"{data.parent.name}_{data.stem}" if data.is_file() else data.name
    base = RunFolder(run).evaluations
    for k in range(1, 1000):
        where = base / (name if k == 1 else f"{name}-{k}")
        metrics = RunFolder(where).metrics
        before = json.loads(metrics.read_text()).get("evaluation", "") if metrics.is_file() else None
        if before is None or before.split(NOT_INDEPENDENT)[0] == evaluation:  # the set's own, marked or not
            return where
    raise DataError(base, f"999 evaluations named {name}: remove some")
