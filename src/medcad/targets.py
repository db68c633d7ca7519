"""A task's targets for a dataset, read in one place: training, `evaluate`, external sets and reports all ask here.

What a task learns from (`Task.targets` in medcad.tasks) decides what is read: class labels (an index per image, or
a multi-hot row for multi-label tasks), lesion masks at the training size (cached, content checked), boxes at the
training size (from the boxes column or from masks; frame classes as whole-frame boxes).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcad.config import TrainConfig
from medcad.data.datasets import MISSING_MASKS as READ_MISSING
from medcad.data.datasets import cached_masks, check_mask_content
from medcad.data.labelmaps import MaskLabels, resolve_mask_labels
from medcad.data.manifest import Manifest, cell_parts
from medcad.errors import DataError
from medcad.tasks import (
    findings,
    get_task,
    positive_from_names,
    run_positive,
    says_no_finding,
    split_labels,
)


@dataclass(frozen=True)
class Targets:
    """A dataset's targets for one task, row by row in manifest order.

    Attributes:
        labels: the class (or detection class) names; `y` indexes them.
        y: (N,) label index (0 for a row with none of `labels`), or (N, K) float32 multi-hot for multi-label tasks.
        masks: (N, S, S) uint8 lesion masks {0, 1} at the training size S, for tasks that learn masks (label maps:
            class indices 0..K, 0 background, i + 1 for `labels[i]`); else None.
        boxes: per row an (m, 5) [x0, y0, x1, y1, class index] array at the training size, for detection; else None.
        box_problems: boxes clipped or dropped, one message each (detection).
        mask_classes: the mask values of `labels` (label maps), else None.
        image_sizes: (N, 2) int (width, height) in pixels of each row's image as decoded, the frame its `boxes`
            were scaled from (detection; `medcad.data.boxes.scale_boxes` maps boxes back to it); else None.
        positive: the positive class of two class labels (its sensitivity, ROC and operating points), as the run's
            `positive` setting names it or `tasks.positive_label` chooses; None for other targets.
        frame_classes: detection classes boxed as whole frames (`frame_classes`, e.g. normal): not lesions.
    """

    labels: list[str]
    y: np.ndarray
    masks: np.ndarray | None = None
    boxes: list[np.ndarray] | None = None
    box_problems: list[str] = field(default_factory=list)
    mask_classes: MaskLabels | None = None
    image_sizes: np.ndarray | None = None
    positive: str | None = None
    frame_classes: tuple[str, ...] = ()


# what a mask task does with an image that has no mask: the reads' choices, or leave it out before reading
MISSING_MASKS = (*READ_MISSING, "leave-out")


def check_missing_masks(value: str) -> str:
    """`value` when it is one of MISSING_MASKS; else ConfigError naming them."""
    from medcad.errors import ConfigError

    if value not in MISSING_MASKS:
        raise ConfigError(f"--missing-masks {value!r}: use one of {', '.join(MISSING_MASKS)}")
    return value


def with_masks_only(manifest: Manifest, cfg: TrainConfig) -> Manifest:
    """`manifest` as a mask task of `--missing-masks leave-out` uses it: its rows without a mask left out, each
    named in the ledger and counted in a note (how many had boxes: annotated with boxes alone, as Label Studio's
    rectangles beside its polygons). Unchanged for other tasks and settings ("error": `load_targets` stops at such
    an image; "empty": it is lesion-free, counted in a note, `_read_as_lesion_free`).

    Raises:
        ConfigError: an unknown `missing_masks`.
    """
    check_missing_masks(cfg.missing_masks)
    if cfg.missing_masks == "empty" and "masks" in get_task(cfg.task).targets:
        return _read_as_lesion_free(manifest)
    if cfg.missing_masks != "leave-out" or "masks" not in get_task(cfg.task).targets:
        return manifest
    has_mask = (manifest.table["mask"] != "").to_numpy()
    if has_mask.all():
        return manifest
    if not has_mask.any():
        raise DataError(manifest.root, "no image has a mask: --missing-masks leave-out leaves nothing to use")
    keys = manifest.keys
    out_rows = np.flatnonzero(~has_mask)
    boxed = sum(1 for i in out_rows if manifest.boxes(int(i)))
    note = f"{len(out_rows)} image(s) without a mask left out (--missing-masks leave-out), e.g. {keys[out_rows[0]]}"
    note += f"; {boxed} of them have boxes: annotated with boxes alone" if boxed else ""
    return without_rows(manifest, [(int(i), "no mask (--missing-masks leave-out)") for i in out_rows], note)


def _read_as_lesion_free(manifest: Manifest) -> Manifest:
    """`manifest` with a note counting its images without a mask, read as lesion-free (`--missing-masks empty`), and
    naming those under a label other than the lesion-free one: a lesion image without its mask is trained and scored
    as if it showed none (an external set's benign image without its mask had been scored a false lesion, unsaid)."""
    import copy

    no_mask = (manifest.table["mask"] == "").to_numpy()
    if not no_mask.any():
        return manifest
    labels = manifest.table["label"].to_numpy(dtype=str)
    note = f"{int(no_mask.sum())} image(s) without a mask read as lesion-free (--missing-masks empty)"
    # a finding's label (each part of a multi-label cell); unlabelled frames and 'normal' are lesion-free as said
    finding = np.array([bool(split_labels(lab)) for lab in labels], dtype=bool)
    lesion = np.flatnonzero(no_mask & finding)
    if len(lesion):
        counts = ", ".join(f"{lab} {n}" for lab, n in sorted(Counter(labels[lesion]).items()))
        note += (
            f"; {len(lesion)} of them under a label that names a finding ({counts}), e.g. {manifest.keys[lesion[0]]}: "
            "each is read (trained on, or scored) as if it showed no lesion. Give their masks, or train with "
            "--missing-masks leave-out"
        )
    out = copy.copy(manifest)
    out.notes = [*manifest.notes, note]
    return out


def without_rows(manifest: Manifest, out: list[tuple[int, str]], note: str) -> Manifest:
    """`manifest` without the rows `out` ((row, reason) each), which the ledger names as left out, its line (among
    the notes) counting them ("used 46 of 46" had been said before the note that one was left out), and `note`."""
    import dataclasses

    gone = {i for i, _ in out}
    kept = manifest.subset(np.array([i for i in range(len(manifest)) if i not in gone], dtype=int))
    kept.problems, kept.sources = list(manifest.problems), list(manifest.sources)
    kept.notes = [*manifest.notes, note]
    if manifest.ledger is not None:
        keys = manifest.keys
        kept.ledger = dataclasses.replace(
            manifest.ledger, used=len(kept), left_out=(*manifest.ledger.left_out, *((keys[i], r) for i, r in out))
        )
        kept.notes = [kept.ledger.line() if n == manifest.ledger.line() else n for n in kept.notes]
    return kept


def without_unusable_boxes(manifest: Manifest, cfg: TrainConfig, used: Collection[str] = ()) -> Manifest:
    """`manifest` as a detection run uses it: an image whose every box is unusable (outside the image, no area,
    not a box) is not lesion-free, and had been scored as a negative ("background") with its boxes dropped. Such
    images stop the run, named, unless `allow_missing`: then they are left out, each named in the ledger with its
    boxes' problems, and counted in a note. Unchanged for tasks without box targets and for frame-class images
    (whose whole-frame box stands). Images among `used` (the samples of an existing run, read again: one made before
    such images were refused) stay as that run scored them, said in a note.

    Raises:
        DataError: such images without `allow_missing` (the first few named, with why).
    """
    from medcad.data.boxes import checked_boxes, parse_frame_classes
    from medcad.data.io import image_size

    if "boxes" not in get_task(cfg.task).targets:
        return manifest
    frames, labels = set(parse_frame_classes(cfg.frame_classes)), manifest.table["label"].astype(str).tolist()
    keys, unusable = manifest.keys, []
    for i in range(len(manifest)):
        boxes = manifest.boxes(i)
        if not boxes or labels[i] in frames:
            continue
        w, h = image_size(manifest.image_path(i), manifest.frame(i))
        kept, problems = checked_boxes(boxes, w, h)
        if not kept:
            unusable.append((i, "; ".join(p.removesuffix("; dropped") for p in problems)))
    kept_as_used = [keys[i] for i, _ in unusable if keys[i] in used]
    if kept_as_used:
        manifest.notes.append(
            f"{len(kept_as_used)} image(s) whose every box is unusable kept as this run used them, lesion-free (it was "
            f"made before such images were refused), e.g. {kept_as_used[0]}"
        )
    unusable = [(i, why) for i, why in unusable if keys[i] not in used]
    if not unusable:
        return manifest
    named = "; ".join(f"{keys[i]}: {why}" for i, why in unusable[:3]) + (" ..." if len(unusable) > 3 else "")
    if not cfg.allow_missing:
        raise DataError(
            manifest.root,
            f"{len(unusable)} image(s) have boxes but none usable, and would count as lesion-free: {named}. Fix their "
            "annotations, or rerun with --allow-missing to leave these images out",
        )
    note = f"{len(unusable)} image(s) whose every box is unusable left out (--allow-missing), not scored as "
    note += f"lesion-free: {named}"
    return without_rows(manifest, [(i, f"no usable box: {why}") for i, why in unusable], note)


def run_rows(manifest: Manifest, cfg: TrainConfig, used: Collection[str] = ()) -> Manifest:
    """The rows of `manifest` a run of settings `cfg` uses: without the images it leaves out for having no mask
    (`with_masks_only`) or no usable box (`without_unusable_boxes`; `used`: an existing run's samples)."""
    return without_unusable_boxes(with_masks_only(manifest, cfg), cfg, used)


def run_dataset(data: str | Path, cfg: TrainConfig, run: str | Path | None = None) -> Manifest:
    """The dataset at `data` as a run of settings `cfg` read it: with its data options, and without the images it
    left out (`run_rows`). What evaluate, export, the report and the shortcut check read again: with `run`, the
    images that run was made on are kept as it used them (`medcad.data.identity.run_samples`)."""
    from medcad.data.identity import run_samples
    from medcad.data.layouts import load_manifest

    used = set(run_samples(Path(run)) or {}) if run is not None else set()
    manifest = run_rows(load_manifest(data, cfg.data_options()), cfg, used)
    return manifest if run is None else left_out_as_by_run(manifest, Path(run))


UNREADABLE = "unreadable: "  # the ledger's reason of an image a run left out undecodable (--allow-missing)


def left_out_as_by_run(manifest: Manifest, run: Path) -> Manifest:
    """`manifest` without the images the run's training left out as unreadable (its data_ledger.csv), which every
    later read of its data leaves out alike (they had been read as images added since, or failed a decode)."""
    import pandas as pd

    from medcad.runfolder import RunFolder

    ledger = RunFolder(run).ledger
    if not ledger.is_file():
        return manifest
    table = pd.read_csv(ledger, dtype=str, keep_default_na=False)
    gone = dict(zip(table["path"], table["reason"], strict=True))
    out = [(i, gone[k]) for i, k in enumerate(manifest.keys) if gone.get(k, "").startswith(UNREADABLE)]
    if not out:
        return manifest
    return without_rows(manifest, out, f"{len(out)} image(s) left out as the run left them: unreadable")


def unreadable_keys(manifest: Manifest) -> set[str]:
    """The images this read of the data left out as unreadable (its ledger's UNREADABLE reasons): given splits that
    name them are this run's without them."""
    ledger = manifest.ledger
    return {k for k, why in (ledger.left_out if ledger else ()) if why.startswith(UNREADABLE)}


def _no_boxed_as_empty(manifest: Manifest, source) -> None:
    """A new run under --missing-masks empty: an image with boxes (a lesion) but no mask would train as lesion-free.

    Raises:
        DataError: such images, the first few named.
    """
    boxed = [manifest.keys[i] for i in range(len(manifest)) if not manifest.mask_paths(i) and manifest.boxes(i)]
    if boxed:
        shown = ", ".join(boxed[:3]) + (" ..." if len(boxed) > 3 else "")
        raise DataError(
            source or manifest.root,
            f"{len(boxed)} image(s) have boxes (a lesion) but no mask: --missing-masks empty would train them as "
            f"lesion-free ({shown}); add their masks, or use --missing-masks leave-out to leave them out (named)",
        )


def load_targets(
    manifest: Manifest,
    cfg: TrainConfig,
    labels: list[str] | None = None,
    *,
    source: str | Path | None = None,
    progress: bool = False,
) -> Targets:
    """The targets of `manifest` for the task of `cfg`.

    Args:
        manifest: the dataset as read.
        cfg: the run's settings (task, image size, missing-mask policy, frame classes).
        labels: the run's labels (evaluating a trained run); None for a new run: they are read from the manifest
            and checked (`run_labels`).
        source: the dataset path, for messages (default: the manifest's folder).
        progress: show a progress bar while masks are decoded.

    Raises:
        DataError: too few labels or unlabelled images for a labelled task, masks missing or unusable, a frame
            class that no image carries.
        ConfigError: a `positive` class for other than two class labels, or not one of them.
    """
    task = get_task(cfg.task)
    training = labels is None
    boxes, problems, classes, sizes = None, [], None, None
    if "boxes" in task.targets:
        from medcad.data.boxes import manifest_boxes, parse_frame_classes

        labels, boxes, problems, wh = manifest_boxes(manifest, cfg.image_size, labels, frame_classes=cfg.frame_classes)
        sizes = np.array(wh, dtype=int).reshape(-1, 2)
    elif task.mask_kind == "classes":
        mask_paths = [p for i in range(len(manifest)) for p in manifest.mask_paths(i)]
        given = "--mask-labels" if labels is None else "the run's classes (its --mask-labels)"
        classes = resolve_mask_labels(cfg.mask_labels, manifest.root, mask_paths, given)
        if labels is not None and list(labels) != list(classes.names):
            raise DataError(
                source or manifest.root,
                f"the run's lesion classes are {', '.join(labels)}, the masks' here are {classes.describe()}",
            )
        labels = list(classes.names)
    elif labels is None:
        labels = run_labels(manifest, cfg.task, source or manifest.root)
    masks = None
    if "masks" in task.targets:
        missing = cfg.missing_masks if cfg.missing_masks in READ_MISSING else "error"  # leave-out: none is left
        if training and missing == "empty":
            _no_boxed_as_empty(manifest, source)
        masks = cached_masks(manifest, cfg.image_size, missing=missing, progress=progress, classes=classes)
        check_mask_content(manifest, masks, training)
    if classes is not None:  # what splits stratify by: each image's largest lesion class (0: none or the first)
        absent = [f"{v}={name}" for c, (v, name) in enumerate(zip(classes.values, labels, strict=True), 1)
                  if not (masks == c).any()]  # fmt: skip
        if absent:
            warnings.warn(
                f"mask class(es) {', '.join(absent)} occur in none of the {len(masks)} masks: not learnable from "
                "these images, and scored only by false positives (Dice 0 where predicted, 1 elsewhere), in the "
                "mean over lesion classes too",
                stacklevel=2,
            )
        return Targets(list(labels), _largest_class(masks, len(labels)), masks, None, [], classes)
    if "labels" in task.targets and task.label_kind != "multi":  # no image is scored as a class it is not
        unknown = manifest.table["label"][~manifest.table["label"].isin(list(labels))]
        if len(unknown):
            raise DataError(
                source or manifest.root,
                f"{len(unknown)} image(s) have no label or one not among {list(labels)} (e.g. "
                f"{manifest.keys[unknown.index[0]]}: {unknown.iat[0]!r})",
            )
    y = label_targets(manifest, cfg.task, list(labels))
    positive = run_positive(cfg.task, list(labels), cfg.positive)
    if positive is not None and cfg.positive is None and positive_from_names(list(labels)) is None:
        manifest.notes.append(
            f"positive class {positive!r} (its sensitivity, ROC and operating points): neither class reads as no "
            f"finding or benign, so the last label; the positive setting (--positive) names the other"
        )
    frames = tuple(parse_frame_classes(cfg.frame_classes)) if boxes is not None else ()
    return Targets(list(labels), y, masks, boxes, problems, image_sizes=sizes, positive=positive, frame_classes=frames)


def _largest_class(masks: np.ndarray, n: int) -> np.ndarray:
    """Per label map (N, S, S): the index (0-based) of its largest lesion class, 0 when it has none."""
    counts = np.stack([(masks == c).reshape(len(masks), -1).sum(1) for c in range(1, n + 1)], axis=1)
    return counts.argmax(1)


def label_targets(manifest: Manifest, task: str, labels: list[str]) -> np.ndarray:
    """Per row: the label's index (0 when it has none of `labels`), or (N, K) multi-hot for multi-label tasks."""
    if get_task(task).label_kind == "multi":
        y = np.zeros((len(manifest), len(labels)), np.float32)
        for i, v in enumerate(manifest.table["label"]):
            for lab in split_labels(v):
                y[i, labels.index(lab)] = 1
        return y
    return np.array([labels.index(v) if v in labels else 0 for v in manifest.table["label"]])


def run_labels(manifest: Manifest, task: str, source: str | Path) -> list[str]:
    """A new run's class labels; tasks whose targets include labels need every image labelled and two labels at
    least (multi-label: two labels over the set; an image without labels has no finding). Others keep whatever
    labels there are (for stratified splits and per-label Dice).

    Raises:
        DataError: fewer than two labels, or unlabelled images, for a labelled task.
    """
    labels = manifest.labels
    kind = get_task(task)
    if "labels" not in kind.targets:
        return labels or ["lesion"]
    if kind.label_kind == "multi":
        cells = [str(v) for v in manifest.table["label"]]
        parts = [cell_parts(v) for v in cells]  # each cell split once (112 k cells in ChestX-ray14)
        found = [findings(p) for p in parts]
        labels = sorted({lab for f in found for lab in f})
        said = Counter(x for p in parts for x in p if says_no_finding(x))
        if said:
            named = ", ".join(f"{x!r} ({n} image{'s' * (n > 1)})" for x, n in sorted(said.items()))
            manifest.notes.append(f"multi-label cells {named} read as no finding, not as a label")
        both = [v for v, f, p in zip(cells, found, parts, strict=True) if f and any(says_no_finding(x) for x in p)]
        if both:
            manifest.notes.append(
                f"{len(both)} cell(s) name findings beside no finding (e.g. {both[0]!r}): read as their findings"
            )
        if len(labels) < 2:
            raise DataError(source, f"{task} needs at least two labels over the images, found {labels or 'none'}")
        empty = [i for i, v in enumerate(cells) if not v.strip()]
        if empty:
            manifest.notes.append(
                f"{len(empty)} image(s) with an empty label cell read as no finding (e.g. {manifest.keys[empty[0]]})"
            )
        everywhere = sorted(set.intersection(*(set(f) for f in found))) if found else []
        if everywhere:
            manifest.notes.append(
                f"label(s) {', '.join(everywhere)} in every image: nothing to tell apart, no AUC (left out of the "
                "macro AUC; kept in the macro F1)"
            )
        return labels
    blank = list(manifest.table.loc[manifest.table["label"] == "", "image"])
    if len(labels) < 2:
        raise DataError(source, f"{task} needs at least two class labels, found {labels or 'none'}")
    if blank:
        shown = ", ".join(blank[:5]) + (f" and {len(blank) - 5} more" if len(blank) > 5 else "")
        raise DataError(source, f"{len(blank)} image(s) have no label ({shown}); label them or remove them for {task}")
    return labels
