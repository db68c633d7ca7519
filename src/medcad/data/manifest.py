"""One table of samples for every task: image, label, patient, domain, subgroup, mask, boxes (+ extra columns).

Paths in the table are relative to `Manifest.root`. A DICOM file with several frames gives one row per frame
(column `frame`). `mask` holds one or more mask paths joined by `|` (their union is the mask); `boxes` is a
JSON list of `[xmin, ymin, xmax, ymax, label]` in pixels of the original image, empty when unknown.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medcad.atomic import atomic_write_text
from medcad.data.ledger import Ledger
from medcad.data.media import FRAME_SEP
from medcad.errors import ConfigError, DataError

COLUMNS = ("image", "frame", "label", "patient", "domain", "subgroup", "mask", "boxes")
MASK_SEP = "|"


def shown_path(path: Path, root: Path) -> str:
    """A file as messages and tables name it: relative to the dataset's `root` (POSIX separators) when it lies
    under it, else as it is (a manifest may name files elsewhere, e.g. masks of another release by absolute path)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


LABELS_GIVEN = ("folders", "csv", "xlsx")  # layouts whose labels a person gave (not read from boxes or shapes)
# Roboflow's export name: `<source stem>_<source extension>.rf.<32 hex digits>.<extension>`
ROBOFLOW_COPY = re.compile(r"^(?P<source>.+_[A-Za-z0-9]{2,5})\.rf\.[0-9a-fA-F]{16,}\.[A-Za-z0-9]+$")


@dataclass
class Manifest:
    """A table of samples and the folder its relative paths start from.

    Attributes:
        root: folder the `image` and `mask` paths are relative to.
        table: one row per sample, columns COLUMNS first, extra metadata after.
        layout: name of the reader that built it.
        problems: (path, problem) for rows that could not be used, kept out of the table.
        notes: how the reader interpreted the data (layout chosen and why, columns matched, ...), for the user.
        sources: files the reader read for their content (a CSV, a COCO or box JSON), relative to `root`.
        ledger: what the read used and what it did not (`medcad.data.ledger`), set by `load_manifest`.
    """

    root: Path
    table: pd.DataFrame
    layout: str = "csv"
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    ledger: Ledger | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def keys(self) -> list[str]:
        """One id per sample: the image path, with `#frame` for DICOM frames."""
        frames = self.table["frame"]
        pairs = zip(self.table["image"], frames, strict=True)
        return [img if pd.isna(fr) else f"{img}{FRAME_SEP}{int(fr)}" for img, fr in pairs]

    def image_path(self, i: int) -> Path:
        return self.root / self.table["image"].iat[i]

    def mask_paths(self, i: int) -> list[Path]:
        m = self.table["mask"].iat[i]
        return [self.root / p for p in m.split(MASK_SEP)] if m else []

    def frame(self, i: int) -> int | None:
        fr = self.table["frame"].iat[i]
        return None if pd.isna(fr) else int(fr)

    def boxes(self, i: int) -> list[list] | None:
        """Boxes as [[xmin, ymin, xmax, ymax, label], ...]; None when the row has no box information."""
        b = self.table["boxes"].iat[i]
        return json.loads(b) if b else None

    @property
    def labels(self) -> list[str]:
        """Sorted distinct non-empty labels."""
        return sorted(v for v in self.table["label"].unique() if v)

    def has(self, column: str) -> bool:
        """True when the column exists and at least one row has a value."""
        return column in self.table and bool((self.table[column].astype(str) != "").any())

    def subset(self, rows: Iterable[int]) -> Manifest:
        return Manifest(self.root, self.table.iloc[list(rows)].reset_index(drop=True), self.layout, [], self.notes)

    def frame_pairs(self) -> list[tuple[int, int]]:
        """(first row of its file, row) for every frame of a multi-frame file (DICOM cine, TIFF pages): the rows
        that are one acquisition, kept together wherever samples are grouped (splits, audit, confidence intervals)."""
        first: dict[str, int] = {}
        return [
            (first.setdefault(img, i), i)
            for i, (img, fr) in enumerate(zip(self.table["image"], self.table["frame"], strict=True))
            if not pd.isna(fr)
        ]

    def export_pairs(self) -> list[tuple[int, int]]:
        """(first row of its source, row) for every image that an annotation tool exported as one of several copies
        of one source image: Roboflow names each copy `<source>_<ext>.rf.<hash>.<ext>` (its augmented copies, a
        flip or a brightness change, with the same `<source>_<ext>`), in whichever split folder it put them, under
        one label where a person gave the labels (`LABELS_GIVEN`); only sources with two copies or more. They are one
        image, kept together wherever samples are grouped (a flipped copy was no near duplicate by hash, and 4 of 10
        source images of a 3-fold split had had a copy on each side)."""
        first: dict[tuple[str, str], int] = {}
        out = []
        given = self.layout in LABELS_GIVEN  # else labels come from the boxes: a crop that lost its box is 'background'
        for i, (image, label) in enumerate(zip(self.table["image"], self.table["label"], strict=True)):
            m = ROBOFLOW_COPY.match(image.rsplit("/", 1)[-1])
            if m:  # by name and a given label: two sources uploaded as `1.png` of two classes are two images
                out.append((first.setdefault((m.group("source").lower(), label if given else ""), i), i))
        copies = Counter(a for a, _ in out)
        return [(a, i) for a, i in out if copies[a] > 1]

    def used_files(self) -> set[str]:
        """The image and mask files of the rows, relative to `root`, with the other files each is read from
        (`filekinds.image_parts`: an Analyze / NIfTI pair's `.img`, a MetaImage's `.raw`, nnU-Net's green and blue
        channel files of an RGB image)."""
        from medcad.data.filekinds import image_parts

        files = set(self.table["image"]) | {p for m in self.table["mask"] if m for p in m.split(MASK_SEP)}
        parts = {
            Path(os.path.relpath(part, self.root)).as_posix() for f in files for part in image_parts(self.root / f)
        }
        return files | parts

    def check_complete(self, allow_missing: bool) -> None:
        """Stop when the read left rows out, unless the user allows it (`--allow-missing`).

        Raises:
            DataError: naming the dataset, how many rows were left out, why, and the first few of them.
        """
        if allow_missing or self.ledger is None or not self.ledger.left_out:
            return
        first = "; ".join(f"{p}: {r}" for p, r in self.ledger.left_out[:5])
        more = f" (and {len(self.ledger.left_out) - 5} more)" if len(self.ledger.left_out) > 5 else ""
        raise DataError(
            self.root.resolve(),
            f"{self.ledger.line()}: {first}{more}. Fix them, or rerun with --allow-missing to go on without them "
            "(`medcad data inspect` lists every one)",
        )

    def save(self, path: str | Path) -> Path:
        """Write the table as CSV with paths relative to the CSV's folder (so it is itself a valid input)."""
        path = Path(path).resolve()
        out = self.table.copy()
        rel = os.path.relpath(self.root.resolve(), path.parent)

        def rebase(p: str) -> str:
            return "" if not p else Path(os.path.normpath(os.path.join(rel, p))).as_posix()

        out["image"] = out["image"].map(rebase)
        out["mask"] = out["mask"].map(lambda m: MASK_SEP.join(rebase(p) for p in m.split(MASK_SEP)) if m else "")
        atomic_write_text(path, out.to_csv(index=False))
        return path


def make_table(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest table from row dicts: the standard columns in order, strings filled with ''."""
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = np.nan if col == "frame" else ""
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[list(COLUMNS) + extra]
    for col in df.columns:
        if col == "frame":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        else:
            df[col] = df[col].fillna("").astype(str).str.strip()
    return df.reset_index(drop=True)


def nfc(text: str) -> str:
    """Unicode NFC form: an accented letter as one code point, as most tools write it."""
    import unicodedata

    return unicodedata.normalize("NFC", text)


def label_key(label: str) -> str:
    """A label compared as people mean it: Unicode NFKC form, case folded, runs of spaces, '_' and '-' as one
    space, trimmed (`Benign`, `benign `, `BENIGN` and `be\u0301nign` vs `bénign` each compare equal); a number by
    its value (`1`, `1.0` and `01`, as spreadsheets export one class code, compare equal)."""
    import unicodedata

    key = re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFKC", label).casefold()).strip()
    if re.fullmatch(r"\d+(\.\d+)?", key):
        value = float(key)
        return str(int(value)) if value.is_integer() else repr(value)
    return key


def label_spellings(counts: Counter) -> dict[str, str]:
    """{variant: spelling} for names (labels, patient ids; `counts`: how often each occurs) that differ only in
    case, spaces, Unicode or number form (`label_key`): each group is read as its most frequent spelling (ties: the
    lower-case one, else the first in sorted order). Multi-label values ('a|b') are compared whole."""
    counts = Counter({v: c for v, c in counts.items() if v})
    groups: dict[str, list[str]] = {}
    for v in sorted(counts):
        groups.setdefault(label_key(v), []).append(v)
    out = {}
    for variants in groups.values():
        if len(variants) > 1:
            keep = max(variants, key=lambda v: (counts[v], v == v.lower(), -variants.index(v)))
            out |= {v: keep for v in variants if v != keep}
    return out


LABEL_SEPARATORS = re.compile(r"\s*[|;,]\s*")  # between the labels of one multi-label cell: 'stone|cyst'
LABEL_JOIN = "|"  # how medcad writes several labels of one image (predictions, predict, serve): read back as written
MULTI_LABEL_CELL = re.compile(r"[|;]")  # a cell holding several labels for a label map (a comma may be in a name)


def cell_parts(value: str) -> list[str]:
    """A multi-label cell split at its separators ('stone|cyst' -> ['stone', 'cyst']), 'No Finding' included."""
    return LABEL_SEPARATORS.split(str(value).strip())


def label_identity(cell: str) -> str:
    """One spelling of a label cell for comparing two images' labels: a cell of several labels (separated by '|',
    ';' or ',', as multi-label cells are read) as its labels sorted ('mass|malignant', 'malignant; mass' and
    'malignant, mass' are one set of findings: 'malignant|mass'); any other cell as it is."""
    text = str(cell)
    parts = {part for part in cell_parts(text) if part}
    return LABEL_JOIN.join(sorted(parts)) if len(parts) > 1 else text


def label_counts(manifest: Manifest) -> Counter:
    """Every label the manifest holds, with how often: label cells, the labels of multi-label cells, box labels."""
    t = manifest.table
    counts = Counter(str(v) for v in t["label"] if str(v))
    for cell in [v for v in counts if MULTI_LABEL_CELL.search(v)]:  # as `rename_labels` splits them
        counts.update({part: counts[cell] for part in cell_parts(cell) if part})
    for b in t["boxes"]:
        if b:
            counts.update(str(x[4]) for x in json.loads(b))
    return counts


def check_label_map(manifest: Manifest, mapping: dict[str, str]) -> None:
    """ConfigError for a --label-map entry that names no label of the dataset (a typo turned a planned two-class
    study into a three-class one, with a note saying the rename was made), with the labels there and close ones."""
    import difflib

    present = label_counts(manifest)
    unknown = [old for old in mapping if old not in present]
    if not unknown:
        return
    hints = []
    for u in unknown:
        close = difflib.get_close_matches(u, present, 3)
        hints.append(f"{u!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(u))
    raise ConfigError(
        f"--label-map names {', '.join(hints)}, which no image or box of this dataset has; its labels: "
        f"{', '.join(sorted(present)) or 'none'}. Correct the name, or leave out the entries that do not apply here"
    )


def rename_labels(manifest: Manifest, mapping: dict[str, str], what: str = "labels renamed") -> None:
    """Apply a label map to the label column and to every box's label."""
    if not mapping:
        return
    t = manifest.table

    def label(v: str) -> str:  # a whole cell, else each label of a multi-label cell ('stone|cyst')
        if v in mapping or not MULTI_LABEL_CELL.search(str(v)):
            return mapping.get(v, v)
        return LABEL_JOIN.join(mapping.get(x, x) for x in cell_parts(v) if x)

    t["label"] = t["label"].map(label)

    def boxes(b: str) -> str:
        return json.dumps([[*x[:4], mapping.get(str(x[4]), x[4])] for x in json.loads(b)]) if b else b

    t["boxes"] = t["boxes"].map(boxes)
    merged = " (they differ only in case, spaces, Unicode or number form; --label-map sets others)"
    extra = merged if "merged" in what else ""
    extra = " (Unicode composed form: accents as one character)" if "NFC" in what else extra
    manifest.notes.append(f"{what}: " + ", ".join(f"{a} -> {b}" for a, b in mapping.items()) + extra)


def merge_patient_spellings(manifest: Manifest) -> None:
    """Patient ids that differ only in case, spaces or number form (`007`, `7`, `7.0`: a spreadsheet dropped the
    zeros or wrote a float) name one patient, read as its most frequent spelling (`label_spellings`), with a note:
    as two patients, the images of one could fall on both sides of a split."""
    t = manifest.table
    mapping = label_spellings(Counter(t["patient"]))
    if mapping:
        t["patient"] = t["patient"].map(lambda v: mapping.get(v, v))
        shown = ", ".join(f"{a} -> {b}" for a, b in list(mapping.items())[:5])
        more = f" and {len(mapping) - 5} more" if len(mapping) > 5 else ""
        manifest.notes.append(
            f"patient ids merged: {shown}{more} (they differ only in case, spaces or number form: one patient each)"
        )


def note_missing_patients(manifest: Manifest) -> None:
    """Images without a patient id beside others with one are said: in grouped splits each is its own group unless
    it nearly duplicates another (they had been left to chance without a word)."""
    t = manifest.table
    missing = t["patient"] == ""
    if missing.any() and not missing.all():
        manifest.notes.append(
            f"{int(missing.sum())} of {len(t)} images have no patient id (e.g. {t.loc[missing, 'image'].iloc[0]}): "
            "in grouped splits each is its own group unless it nearly duplicates another"
        )


def patients_from_paths(manifest: Manifest, regex: str) -> None:
    """Set the patient column from a regular expression on each image path (see DataOptions.group_from)."""
    try:
        rx = re.compile(regex)
    except re.error as e:
        raise ConfigError(f"--group-from {regex!r} is not a valid regular expression ({e})") from e
    t = manifest.table

    def patient(path: str) -> str:
        m = rx.search(path)
        if m is None:
            return ""
        if "patient" in rx.groupindex:
            return m.group("patient") or ""
        return (m.group(1) if rx.groups else m.group(0)) or ""

    ids = t["image"].map(patient)
    n_missing = int((ids == "").sum())
    if n_missing == len(t):
        raise ConfigError(
            f"--group-from {regex!r} matches none of the {len(t)} image paths, e.g. {t['image'].iat[0]!r}; "
            "the expression is searched in the path relative to the dataset folder, with '/' between folders"
        )
    replaced = " (it replaces the patient column)" if manifest.has("patient") else ""
    t["patient"] = ids
    manifest.notes.append(
        f"patient ids from --group-from {regex!r}: {ids[ids != ''].nunique()} patients{replaced}"
        + (f"; {n_missing} images match nothing and stay ungrouped by patient" if n_missing else "")
    )


def one_row_per_image(manifest: Manifest) -> None:
    """Each image (each DICOM frame) in one row, as sample identity by key needs. Rows naming the same file (`a.jpg`
    and `./a.jpg` alike, and two paths to one file through a link: a new user's alias had been scored twice):

    - with the same fields: read once, with a note;
    - differing only in mask and boxes (a manifest with one row per lesion): one row whose mask is the union of
      theirs and whose boxes are all of theirs, with a note naming other columns kept from the first row;
    - differing only in other columns (metadata): the first row, with a note naming the columns that differ;
    - differing in label, patient, domain or subgroup: all left out as problems naming what differs, since which
      one is right cannot be told (a run would otherwise score both rows with one row's label).
    """
    table = manifest.table
    same_image: dict[tuple[str, int | None], list[int]] = {}
    for i in range(len(table)):
        same_image.setdefault((os.path.realpath(manifest.image_path(i)), manifest.frame(i)), []).append(i)
    repeated = [rows for rows in same_image.values() if len(rows) > 1]
    if not repeated:
        return
    keys = manifest.keys
    aliases = [rows for rows in repeated if len({os.path.normpath(keys[i]) for i in rows}) > 1]
    if aliases:  # one file under several paths: said, with the rows' other fields as below
        shown = " and ".join(keys[i] for i in aliases[0][:2])
        manifest.notes.append(f"{len(aliases)} file(s) listed under two or more paths, one file each (e.g. {shown})")
    keep, merged, lesions, others, kept_first = np.ones(len(table), bool), [], [], [], set()
    fields = [c for c in table.columns if c != "image"]
    for rows in repeated:
        part = table.iloc[rows][fields].astype(str)
        differs = [c for c in fields if part[c].nunique() > 1]
        conflicts = [c for c in differs if c in ("frame", "label", "patient", "domain", "subgroup")]
        if conflicts:
            keep[rows] = False
            what = "; ".join(f"{c}: {' / '.join(repr(v) for v in dict.fromkeys(part[c]))}" for c in conflicts)
            for i in rows:
                manifest.problems.append(
                    (table["image"].iat[i], f"listed {len(rows)} times with different {', '.join(conflicts)} ({what})")
                )
            continue
        keep[rows[1:]] = False
        if {"mask", "boxes"} & set(differs):
            masks = [m for v in part["mask"] for m in v.split(MASK_SEP) if m]
            boxes = [b for v in part["boxes"] if v for b in json.loads(v)]
            table.loc[table.index[rows[0]], "mask"] = MASK_SEP.join(dict.fromkeys(masks))
            table.loc[table.index[rows[0]], "boxes"] = json.dumps(boxes) if boxes else ""
            lesions.append((table["image"].iat[rows[0]], len(rows)))
            kept_first |= set(differs) - {"mask", "boxes"}
        elif differs:  # other columns (metadata) differ: the first row's are kept, said
            others.append((table["image"].iat[rows[0]], len(rows), differs))
        else:
            merged.append((table["image"].iat[rows[0]], len(rows)))
    manifest.table = table[keep].reset_index(drop=True)
    if merged:
        image, n = merged[0]
        manifest.notes.append(
            f"{len(merged)} image(s) listed more than once with the same fields, each read once (e.g. {image!r}, "
            f"{n} times)"
        )
    if lesions:
        image, n = lesions[0]
        manifest.notes.append(
            f"{len(lesions)} image(s) listed once per lesion (e.g. {image!r}, {n} rows): one row each, its mask the "
            "union of the rows' masks and its boxes all of theirs"
            + (f"; {', '.join(sorted(kept_first))} kept from the first row" if kept_first else "")
        )
    if others:
        image, n, differs = others[0]
        manifest.notes.append(
            f"{len(others)} image(s) listed more than once with different {', '.join(differs)} (e.g. {image!r}, {n} "
            "rows): each read once, the first row's values kept"
        )


def patients_from_dicom(manifest: Manifest) -> None:
    """DICOM images without a patient id in the table get their file's PatientID, with a note; not when every file
    has the same one (an anonymised export: one id for all would make the whole set one group), which is said."""
    from medcad.data.media import dicom_patient_ids

    table = manifest.table
    empty = table["patient"] == ""
    found = dicom_patient_ids(manifest.root, list(table.loc[empty, "image"]))
    if not found:
        return
    ids = set(found.values())
    if len(ids) == 1 and len(found) > 1:
        manifest.notes.append(
            f"all {len(found)} DICOM files have PatientID {next(iter(ids))!r} (anonymised?): not used for grouping; "
            "give a patient column or --group-from"
        )
        return
    table.loc[empty, "patient"] = table.loc[empty, "image"].map(lambda rel: found.get(rel, ""))
    manifest.notes.append(
        f"patient ids from the DICOM PatientID of {len(found)} file(s) ({len(ids)} patients; a study's splits and "
        "confidence intervals group by them)"
    )


def label_map_advice(unknown: Sequence[str], labels: Sequence[str]) -> str:
    """What to do about `unknown` labels, not among `labels` (a model's, a run's): a --label-map for those that are
    one of `labels` spelled otherwise (as `label_key` compares labels: case, spaces, '-' or '_', Unicode form), and
    for the others the choice, not a guess (the first unknown label had been offered as the first of `labels`:
    'MALIGNANT=benign')."""
    same = {u: next((lab for lab in labels if label_key(lab) == label_key(u)), None) for u in unknown}
    said = []
    if matched := {u: lab for u, lab in same.items() if lab is not None}:
        said.append(f"rename them with --label-map '{','.join(f'{u}={lab}' for u, lab in matched.items())}'")
    if others := [u for u, lab in same.items() if lab is None]:
        said.append(
            f"{', '.join(map(repr, others))} {'is' if len(others) == 1 else 'are'} none of them: map "
            f"{'it' if len(others) == 1 else 'each'} to the label it means (--label-map OLD=NEW, "
            "comma-separated)"
        )
    return "; ".join(said)
