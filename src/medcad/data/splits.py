"""Holdout and k-fold splits, stratified by label and grouped by patient and near-duplicate image groups.

A split is saved as splits.json (sample keys per fold) from a seed, and reused by later runs so that every model
of a study is compared on the same folds. Each fold also carves a grouped validation set out of its training
part, for early stopping and tuning: the test part is never used for either.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import numpy as np

from medcad.atomic import atomic_write_text
from medcad.data.manifest import Manifest
from medcad.errors import ConfigError, DataError

SPLITS_VERSION = 1
GROUP_BY = ("auto", "patient", "duplicates", "patient+duplicates", "none")
# the values of a dataset's own split column, compared without case or punctuation
SPLIT_VALUES = {
    "train": ("train", "training", "trn"),
    "val": ("val", "valid", "validation", "dev", "tune", "tuning"),
    "test": ("test", "testing", "holdout", "heldout"),
}


def sample_groups(
    manifest: Manifest, group_by: str = "auto", progress: bool = False, fps: list | None = None
) -> tuple[np.ndarray, str]:
    """One group id per sample and a description of how groups were formed (`fps`: the manifest's `fingerprints`
    when the caller has them).

    `auto` groups by patient and near duplicates together (a duplicate pair never straddles train and test,
    whatever its patient ids say); `none` makes every sample its own group. The frames of one file (a multi-frame
    DICOM: one acquisition) are always one group, whatever `group_by` says ("+file" in the description), and so are
    the copies an annotation tool exported of one source image (`Manifest.export_pairs`: "+export source").
    """
    from medcad.data.duplicates import connected_groups, duplicate_groups
    from medcad.data.fingerprints import fingerprints

    if group_by not in GROUP_BY:
        raise ConfigError(f"group_by {group_by!r} is not one of {', '.join(GROUP_BY)}")
    n = len(manifest)
    pairs: list[tuple[int, int]] = []
    used = []
    if group_by in ("auto", "patient", "patient+duplicates") and manifest.has("patient"):
        first: dict[str, int] = {}
        for i, p in enumerate(manifest.table["patient"]):
            if p:
                pairs.append((first.setdefault(p, i), i))
        used.append("patient")
    elif group_by == "patient":
        raise ConfigError("group_by 'patient' needs a patient column, but the manifest has no patient ids")
    if group_by in ("auto", "duplicates", "patient+duplicates"):
        near = duplicate_groups(fps if fps is not None else fingerprints(manifest, progress=progress), near=True)
        for g in near:
            pairs += [(g[0], j) for j in g[1:]]
        used.append("duplicates")
        _say_duplicates_under_two_labels(manifest, near)
    frames = manifest.frame_pairs()
    pairs += frames
    if any(a != b for a, b in frames):
        used.append("file")
    copies = manifest.export_pairs()
    pairs += copies
    if copies:
        used.append("export source")
    groups = np.arange(n)
    for comp in connected_groups(n, pairs):
        groups[comp] = comp[0]
    return groups, "+".join(used) or "none"


def _say_duplicates_under_two_labels(manifest: Manifest, near: list[list[int]]) -> None:
    """A note when near-duplicate groups hold images of different labels: one picture labelled two ways (a new user's
    BUSI subset trained on benign (131) / malignant (51) with the report's audit the only place that said so)."""
    from medcad.data.duplicates import cross_label

    labels, keys = manifest.table["label"].astype(str).tolist(), manifest.keys
    mixed = cross_label([[i for i in g if labels[i]] for g in near], [], labels)  # the audit's rule, labelled images
    if mixed:
        shown = " / ".join(f"{keys[i]} ({labels[i]})" for i in mixed[0][:3])
        manifest.notes.append(
            f"{len(mixed)} near-duplicate group(s) hold images of different labels, one picture labelled two ways "
            f"(e.g. {shown}); they stay on one side of every split; `medcad data audit` lists them"
        )


def _groups_per_label(y: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    return {str(label): len(np.unique(groups[y == label])) for label in np.unique(y)}


def _stratifiable(y: np.ndarray, groups: np.ndarray, n_splits: int) -> bool:
    return min(_groups_per_label(y, groups).values(), default=0) >= n_splits


def _split_error(
    manifest: Manifest, y: np.ndarray, groups: np.ndarray, how: str, n_splits: int, holdout: float | None
) -> DataError:
    """Why a grouped stratified split is impossible, in the terms the user asked in, with settings that work."""
    per = _groups_per_label(y, groups)
    thin = {lab: c for lab, c in per.items() if c < n_splits}
    n_img = Counter(y.tolist())
    desc = ", ".join(
        f"{lab or '(no label)'!r}: {c} group(s) of {n_img[lab]} image(s)" for lab, c in sorted(thin.items())
    )
    if holdout is not None:
        asked = (
            f"--holdout {holdout:g} holds out about 1 in {n_splits} independent groups of each label, so each label "
            f"needs at least {n_splits} groups"
        )
    else:
        asked = f"{n_splits}-fold cross-validation needs at least {n_splits} independent groups of each label"
    lines = [f"{asked} (groups: {how}); too few: {desc}."]
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    if "duplicates" in how and sizes.max() >= max(3, 0.2 * len(groups)):
        biggest = groups == np.unique(groups)[sizes.argmax()]
        if manifest.has("patient"):
            spans = f"{len(set(manifest.table['patient'][biggest]))} patients"
        else:
            spans = f"{len({k.split('/')[0] for k in np.array(manifest.keys)[biggest]})} top folders"
        lines.append(
            f"Near-duplicate grouping joined {int(biggest.sum())} images ({biggest.mean():.0%}) into one group across "
            f"{spans}: `medcad data audit {manifest.root}` lists the links that joined them."
        )
    options = []
    m = min(per.values())
    if m >= 2:
        options.append(f"--holdout {np.ceil(100 / m) / 100:.2f}" if holdout is not None else f"--folds {m}")
    if "duplicates" in how and manifest.has("patient"):
        pg = np.unique(manifest.table["patient"].to_numpy(dtype=str), return_inverse=True)[1]
        pg = np.where(manifest.table["patient"].to_numpy(dtype=str) != "", pg, -1 - np.arange(len(pg)))
        if _stratifiable(y, pg, n_splits):
            options.append("--group patient (patient ids only: near duplicates across patients are not grouped)")
    few = sorted(lab for lab in thin if n_img[lab] < n_splits)  # too few images: no grouping gives them groups
    if not manifest.has("patient") and any(n_img[lab] >= n_splits for lab in thin):  # grouping could give groups
        options.append(
            "--group-from REGEX, when file or folder names carry the patient or study (e.g. '(P\\d+)_' "
            "for 'P012_frame3.png')"
        )
    if "duplicates" in how and _stratifiable(y, np.arange(len(y)), n_splits):
        options.append("--group none (every image its own group: duplicates may then leak between train and test)")
    if any(few):
        named = ", ".join(repr(lab) for lab in few if lab)
        lines.append(
            f"{named}: fewer images than {n_splits}, which no grouping changes: add images of it, or merge it into "
            "another label (--label-map OLD=NEW) or leave its images out."
        )
    if "" in few:  # a label map cannot name "no label" (a new user's --label-map '(no label)=background' was refused)
        lines.append(
            f"'(no label)': {n_img['']} image(s) without a label, fewer than {n_splits}: give them one (a manifest's "
            "label column, their annotation file) or leave them out."
        )
    lines.append(("Settings that would work: " + "; ".join(options) + ".") if options else "Add data for these labels.")
    return DataError(manifest.root, " ".join(lines))


def group_holdout(
    groups: np.ndarray, fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (kept, held out) holding out whole groups, never every group (a lone group is kept, nothing held
    out), and with `labels` never a group whose rows are the last kept of a label (training keeps every label).
    With `labels`, first the smallest group holding each label (in random order) that can be held, so that the
    held-out part has every label it can: a model is not selected on one class. Then groups in random order while
    the held-out rows stay within `fraction` of all; at least the smallest group (that can be held, if one can).
    (Drawing a fraction of the groups, as before, held out every row of a part of one group, and a part of one
    label as often as chance gave it.)"""
    rng = np.random.default_rng(seed)
    ug, index, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(ug))
    lab_of = (
        np.zeros(len(groups), int) if labels is None else np.unique(np.asarray(labels, str), return_inverse=True)[1]
    )
    counts = np.zeros((len(ug), lab_of.max() + 1 if len(lab_of) else 1), int)  # rows of each label in each group
    np.add.at(counts, (index, lab_of), 1)
    held: list[int] = []

    def can_hold(i: int) -> bool:  # not every group, and every label of group i still has kept rows without it
        kept = counts.sum(0) - counts[held].sum(0) - counts[i]
        return i not in held and len(held) + 1 < len(ug) and (labels is None or bool((kept[counts[i] > 0] > 0).all()))

    if labels is not None:
        for lab in rng.permutation(counts.shape[1]):
            having = [i for i in order if counts[i, lab] and can_hold(int(i))]
            if having and not counts[held, lab].any():
                held.append(int(min(having, key=lambda i: sizes[i])))  # the smallest; ties in random order
    n, target = int(sizes[held].sum()), fraction * len(groups)
    for i in order:
        if n + sizes[i] <= target and can_hold(int(i)):
            held.append(int(i))
            n += sizes[i]
    if not held and len(ug) > 1:
        allowed = [int(i) for i in order if can_hold(int(i))] or [int(i) for i in order]
        held = [min(allowed, key=lambda i: sizes[i])]
    out = np.flatnonzero(np.isin(index, held))
    return np.setdiff1d(np.arange(len(groups)), out), out


def _grouped_split(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def make_splits(
    manifest: Manifest,
    *,
    folds: int | None = 5,
    holdout: float | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    group_by: str = "auto",
    progress: bool = False,
    strata: np.ndarray | None = None,
    split_column: str | None = None,
) -> dict:
    """Grouped, label-stratified splits, or the dataset's own.

    Args:
        folds: k for k-fold cross-validation (ignored when `holdout` or `split_column` is given).
        holdout: fraction of groups held out as the test set, e.g. 0.2.
        split_column: a manifest column holding the dataset's own split (train / val / test, see SPLIT_VALUES):
            one fold with those parts ("given"); without val rows the validation part is carved from train as
            usual. Groups (patients, near duplicates) with images on both sides of its test part are counted and
            named in the notes: the split leaks.
        val_fraction: fraction of each training part kept aside (grouped) for validation; 0 for none.
        seed: the split is a function of the data and this seed.
        group_by: see `sample_groups`.
        strata: what to stratify by, one value per row (default: the label column).

    Returns:
        {"version", "method", "seed", "group_by", "n_groups", "groups": {key: group id},
         "folds": [{"fold", "train", "val", "test"}]}.
    """
    if split_column is not None:
        holdout, folds = None, 2
    if holdout is not None and not 0 < holdout < 1:
        raise ConfigError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    if holdout is None and (folds is None or folds < 2):
        raise ConfigError(f"folds must be at least 2, got {folds}")
    keys = np.array(manifest.keys, dtype=object)
    labels = manifest.table["label"].to_numpy(dtype=str) if strata is None else np.asarray(strata, dtype=str)
    groups, how = sample_groups(manifest, group_by, progress=progress)
    n_splits = max(2, round(1 / holdout)) if holdout is not None else int(folds)
    notes: list[str] = _export_note(manifest)
    given = _given_split(manifest, split_column, groups, notes) if split_column is not None else None
    if given is None and not _stratifiable(labels, groups, n_splits):
        raise _split_error(manifest, labels, groups, how, n_splits, holdout)
    y = labels
    if manifest.has("domain") and given is None:  # by label x domain where the data allow: each domain in each part
        both = np.char.add(np.char.add(labels, "|"), manifest.table["domain"].to_numpy(dtype=str))
        if _stratifiable(both, groups, n_splits):
            y = both
        else:
            notes.append("stratified by label only: too few groups to stratify by label x domain")
    outer = [given[::2]] if given is not None else _grouped_split(y, groups, n_splits, seed)
    if holdout is not None:
        outer = outer[:1]
    notes += _largest_group_note(manifest, groups, how, n_splits)
    out_folds = []
    for k, (train, test) in enumerate(outer):
        val = np.array([], dtype=int)
        train_before_val = train
        if given is not None and len(given[1]):
            val = given[1]
        elif val_fraction > 0:
            inner_k = max(2, round(1 / val_fraction))
            if _stratifiable(y[train], groups[train], inner_k):
                tr, va = _grouped_split(y[train], groups[train], inner_k, seed + 1 + k)[0]
            else:  # too small to stratify the validation part: split by group only
                tr, va = group_holdout(groups[train], 1 / inner_k, seed + 1 + k, y[train])
                notes.append(
                    f"fold {k}: validation part drawn by group, not stratified (too few groups per label): {len(va)} "
                    f"of {len(train)} images ({len(va) / len(train):.0%})"
                )
            train, val = train[tr], train[va]
        if not len(train) or (val_fraction > 0 and not len(val)):
            raise _fold_error(manifest, groups, how, k, train_before_val, (len(train), len(val), len(test)))
        out_folds.append(
            {
                "fold": k,
                "train": sorted(keys[train].tolist()),
                "val": sorted(keys[val].tolist()),
                "test": sorted(keys[test].tolist()),
            }
        )
    return {
        "version": SPLITS_VERSION,
        "method": "given" if given is not None else "holdout" if holdout is not None else "kfold",
        **({"split_column": split_column} if given is not None else {}),
        "n_folds": len(out_folds),
        "holdout": holdout,
        "val_fraction": val_fraction,
        "seed": seed,
        "group_by": how,
        "n_samples": len(keys),
        "n_groups": int(len(np.unique(groups))),
        "groups": {k: int(g) for k, g in zip(keys.tolist(), groups.tolist(), strict=True)},
        "folds": out_folds,
        "notes": notes,
    }


def _largest_group(manifest: Manifest, groups: np.ndarray, how: str, rows: np.ndarray | None = None) -> tuple[int, str]:
    """The largest group's number of rows (among `rows`, default all), and what it is made of in words (its
    patients, joined by near-duplicate images, when grouping is by patient and duplicates)."""
    rows = np.arange(len(groups)) if rows is None else np.asarray(rows)
    ug, sizes = np.unique(groups[rows], return_counts=True)
    rows = rows[groups[rows] == ug[sizes.argmax()]]
    patients = (
        sorted({p for p in manifest.table["patient"].to_numpy(dtype=str)[rows] if p}) if manifest.has("patient") else []
    )
    shown = ", ".join(patients[:4]) + ", ..." * (len(patients) > 4)
    made = f"{len(patients)} patient{'s' * (len(patients) != 1)} ({shown})"
    if len(patients) > 1 and "duplicates" in how:
        made += " joined by near-duplicate images"
    elif not patients:
        made = "images joined as near duplicates" if "duplicates" in how else "one file's frames"
    return len(rows), made


def _export_note(manifest: Manifest) -> list[str]:
    """What the split says of the exported copies of one source image it keeps together (`Manifest.export_pairs`)."""
    copies = manifest.export_pairs()
    if not copies:
        return []
    return [
        f"{len(copies)} images are copies an annotation tool exported of {len({a for a, _ in copies})} source images "
        f"(Roboflow's '<source>_<ext>.rf.<hash>' names, e.g. {manifest.keys[copies[0][1]]}): each source's copies "
        "are kept in one group, whatever their folders"
    ]


def _largest_group_note(manifest: Manifest, groups: np.ndarray, how: str, n_splits: int) -> list[str]:
    """A note when one group holds more than a fold's share of the rows: the folds cannot be balanced."""
    n, made = _largest_group(manifest, groups, how)
    if n <= len(groups) / n_splits or n < 2:
        return []
    return [
        f"one group holds {n} of {len(groups)} images ({n / len(groups):.0%}: {made}), more than a fold's share "
        f"(1/{n_splits}): the folds cannot be balanced, and the fold that tests it trains on the rest alone"
    ]


def _fold_error(manifest, groups, how, k, outside_test: np.ndarray, sizes: tuple[int, int, int]) -> DataError:
    """The error for a fold left without training or validation images (`sizes`: its training, validation and test
    images): its images outside the test part are one group, named."""
    n, made = _largest_group(manifest, groups, how, outside_test)
    if "duplicates" in how and manifest.has("patient"):
        fix = (
            "--group patient to group by patient ids alone (near duplicates of two patients may then lie on both sides)"
        )
    elif "duplicates" in how:
        fix = "medcad data audit to see which images are joined"
    else:
        fix = "a split with more than one group outside its test part"
    return DataError(
        manifest.root,
        f"fold {k} would have {sizes[0]} training, {sizes[1]} validation and {sizes[2]} test images: grouped by "
        f"{how}, the largest group of its {len(outside_test)} images outside the test part holds {n} ({made}), and "
        f"a validation part of whole groups cannot be drawn beside it. Use {fix}",
    )


def _given_split(
    manifest: Manifest, column: str, groups: np.ndarray, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions (train, val, test) of a dataset's own split column; leaking groups said in `notes`.

    Raises:
        DataError: no such column, a value that is not a split name, or no train or no test row.
    """
    found = {_split_key(c): c for c in manifest.table.columns}
    name = found.get(_split_key(column))
    if name is None:
        raise DataError(manifest.root, f"no column {column!r} to take the split from; columns: {list(manifest.table)}")
    part_of = _PART_OF
    cells = manifest.table[name].to_numpy(dtype=str)
    unknown = sorted({str(c) for c in cells if _split_key(c) not in part_of})
    if unknown:
        names = "; ".join(f"{part}: {', '.join(v)}" for part, v in SPLIT_VALUES.items())
        raise DataError(manifest.root, f"column {name!r} holds {unknown[:5]}, not split names ({names})")
    parts = np.array([part_of[_split_key(c)] for c in cells])
    train, val, test = (np.flatnonzero(parts == p) for p in ("train", "val", "test"))
    if not len(train) or not len(test):
        raise DataError(manifest.root, f"column {name!r} gives {len(train)} training and {len(test)} test images")
    shared = np.intersect1d(groups[test], groups[np.concatenate([train, val])])
    if len(shared):
        keys = np.array(manifest.keys, dtype=object)
        example = keys[np.isin(groups, shared[:1])].tolist()[:4]
        notes.append(
            f"the split of column {name!r} LEAKS: {len(shared)} group(s) of images (a patient, or near-duplicate "
            f"images) lie in its test part and in its training or validation part, e.g. {', '.join(example)}; "
            "its test figures are optimistic"
        )
    notes.append(
        f"split from column {name!r}: {len(train)} training, {len(val)} validation"
        + ("" if len(val) else " (to be carved from the training images)")
        + f", {len(test)} test images"
    )
    return train, val, test


def is_split_name(text: str) -> bool:
    """A folder or cell naming a part of a split (train, val, test and their spellings in SPLIT_VALUES)."""
    return _split_key(text) in _PART_OF


def _split_key(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


_PART_OF = {_split_key(v): part for part, values in SPLIT_VALUES.items() for v in values}  # a split name's part


def split_said(kept: bool) -> str:
    """What a read of an export's split folders says of its split (`split_from_folders`'s answer)."""
    if kept:
        return "the export's split is column 'split' (--split-column split keeps it)"
    return "the export's split is not kept (its folders do not each name one split)"


def split_from_folders(rows: list[dict]) -> bool:
    """Gives each row the split its folders name (`train/images/x.jpg`, `images/val/x.jpg`: an export's split
    folders, read together) in column `split`, where every row's folders name exactly one; whether they did. What
    `--split-column split` trains on (grouped folds stay the default)."""
    parents = [Path(r["image"]).parent for r in rows]
    names = {f: [p for p in f.parts if is_split_name(p)] for f in set(parents)}  # once per folder
    named = [names[f] for f in parents]
    if not rows or any(len(n) != 1 for n in named):
        return False
    for r, (part,) in zip(rows, named, strict=True):
        r["split"] = part
    return True


def save_splits(splits: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(splits, indent=1))
    return path


def load_splits(path: str | Path, manifest: Manifest | None = None, leave_out: Collection[str] = ()) -> dict:
    """Read splits.json; with a manifest, check that every key in it is a sample of that manifest. `leave_out`: keys
    taken out of every fold's parts first (images a run's read left out as unreadable)."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        folds = splits["folds"]
    except FileNotFoundError as e:
        raise DataError(path, "splits file not found") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(path, f"not a medcad splits.json ({e})") from e
    if leave_out:
        gone = set(leave_out)
        for fold in folds:
            for part in ("train", "val", "test"):
                if part in fold:
                    fold[part] = [k for k in fold[part] if k not in gone]
    if manifest is not None:
        known = set(manifest.keys)
        for fold in folds:
            missing = [k for part in ("train", "val", "test") for k in fold.get(part, []) if k not in known]
            if missing:
                raise DataError(
                    path,
                    f"fold {fold['fold']} names {len(missing)} image(s) not in the dataset, e.g. "
                    f"{missing[0]!r}: the splits belong to another dataset; delete them to re-split",
                )
    return splits


def row_groups(groups: dict, keys, rows=None) -> np.ndarray:
    """The group of each row's image, as splits.json holds them (`groups`: {key: group id}; `keys` the manifest's,
    `rows` (n,) indices into them, None for every key), for a cluster bootstrap over the groups the splits kept apart:
    an object array (n,). An image the splits do not hold is a group of its own, named by its key (never another
    group's id)."""
    chosen = keys if rows is None else [keys[i] for i in rows]
    return np.array([groups[k] if k in groups else f"image {k}" for k in chosen], dtype=object)


def fold_split(folds: list[dict], k: int) -> dict | None:
    """Fold k's split among splits.json's folds: the one numbered k (its "fold"), else the k-th; None where none is."""
    return next((f for i, f in enumerate(folds) if int(f.get("fold", i)) == k), None)


def fold_indices(manifest: Manifest, fold: dict) -> dict[str, np.ndarray]:
    """Row indices of the manifest for each part of a fold."""
    index = {k: i for i, k in enumerate(manifest.keys)}
    return {part: np.array([index[k] for k in fold.get(part, [])], dtype=int) for part in ("train", "val", "test")}
