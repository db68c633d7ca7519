"""Manifest tables as people write them: CSV / TSV (delimiter sniffed, encoding by byte-order mark, UTF-8 or
Windows-1252) and Excel .xlsx (first sheet, cells as a CSV export holds them); column names by alias, image paths
with Windows separators or another machine's prefix resolved under the manifest's folder."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from medcad.config import DataOptions
from medcad.data.annotations.boxcsv import box_rows, corner_columns, row_box
from medcad.data.manifest import LABEL_JOIN, MASK_SEP, Manifest, make_table
from medcad.data.media import expand_frames
from medcad.data.paths import PathResolver
from medcad.data.splits import split_from_folders, split_said
from medcad.data.versions import per_file_version
from medcad.errors import DataError

# Header names are compared with case, spaces, '_' and '-' removed: "Patient ID", "PatientID", "patient_id" match.
COLUMN_ALIASES = {
    "image": ("image", "path", "file", "filename", "imagepath", "imagefile", "imagename", "img"),
    "label": (
        "label",
        "labels",
        "class",
        "target",
        "diagnosis",
        "classname",
        "category",
        "finding",
        "findings",
        "pathology",
    ),
    "patient": (
        "patient",
        "patientid",
        "patientnumber",
        "patientno",
        "group",
        "subject",
        "subjectid",
        "case",
        "caseid",
        "video",
        "videoid",
    ),
    "domain": ("domain", "modality"),
    "subgroup": ("subgroup", "subtype"),
    "mask": ("mask", "maskpath", "masks", "maskfile"),
    "boxes": ("boxes", "bbox", "bboxes"),
    "frame": ("frame", "frameindex"),
}
ID_WORDS = ("patient", "subject", "case", "study", "mrn", "participant", "person", "exam", "series", "pid", "lesionid")
SPLIT_TABLE = "_annotations.csv"  # Roboflow's TensorFlow box CSV, in the export's folder or in each split folder
MANIFEST_NAMES = ("manifest.csv", "manifest.tsv", SPLIT_TABLE)
SPLIT_COLUMNS = ("split", "subset", "partition", "fold", "set", "datasplit", "traintest")  # a dataset's own split


# Annotation files that decide a folder's layout, in the order they are looked for: (layout, finder, why)


def _norm(name: str) -> str:
    """A header name compared without case, spaces, punctuation or a byte-order mark."""
    return re.sub(r"[^0-9a-z]", "", str(name).replace("\ufeff", "").lower())


def _rename_columns(df: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, list[str]]:
    """Standard column names from the headers people write; notes on what was matched and what was not."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), c)
    mapping, notes, also = {}, [], set()
    for col, aliases in COLUMN_ALIASES.items():
        found = [by_norm[a] for a in aliases if a in by_norm and by_norm[a] not in mapping]
        if not found:
            continue
        mapping[found[0]] = col
        if str(found[0]) != col:
            notes.append(f"column {str(found[0]).strip()!r} read as {col!r}")
        if len(found) > 1:  # `class` beside `pathology`: one is read, the others said
            others = ", ".join(repr(str(c).strip()) for c in found[1:])
            notes.append(
                f"column(s) {others} would also be read as {col!r}: {str(found[0]).strip()!r} is, the others are "
                f"kept as metadata (rename the one meant to '{col}')"
            )
            also |= set(found[1:])
    df = df.rename(columns=mapping)
    if "image" not in df:
        found = ", ".join(repr(str(c)) for c in df.columns)
        raise DataError(
            source,
            f"no image column; a column headed one of {', '.join(COLUMN_ALIASES['image'])} (case, spaces and "
            f"'_' ignored) is needed, found {found}",
        )
    if "label" not in df:
        df, said = _one_hot_labels(df)
        others = [str(c).strip() for c in df.columns if c not in COLUMN_ALIASES]
        notes.append(
            said
            or f"no label column (one headed {', '.join(COLUMN_ALIASES['label'])}): the images have no label"
            + (f"; other columns kept as metadata: {', '.join(others)}" if others else "")
        )
    for c in df.columns:
        if c in also:
            continue
        if c not in COLUMN_ALIASES and any(w in _norm(c) for w in ID_WORDS):
            used = next((k for k, v in mapping.items() if v == "patient"), None)
            notes.append(
                f"column {str(c).strip()!r} looks like a patient, lesion or study id but is kept as metadata"
                + (f" (the patient column is {str(used).strip()!r})" if used else "; splits do NOT group by it")
                + ": rename it to 'patient' to group the splits by it"
            )
        elif c not in COLUMN_ALIASES and _norm(c) in SPLIT_COLUMNS:
            cells = df[c].astype(str).str.strip()
            counts = cells.replace("", "(empty)").value_counts().head(4)
            said = f"column {str(c).strip()!r} ({', '.join(f'{v} {n}' for v, n in counts.items())})"
            if cells.str.fullmatch(r"\d+").all():  # fold numbers: medcad keeps a split, not a fold assignment
                notes.append(f"{said} looks like the dataset's own fold numbers: not used (medcad makes grouped folds)")
                continue
            notes.append(
                f"{said} looks like the dataset's own split: not used (medcad makes grouped splits); keep it with "
                f"`medcad data split DATA --split-column '{str(c).strip()}'`, then train with --splits splits.json"
            )
    return df, notes


# one-hot cells as spreadsheets write them, each vocabulary (true words, false words) apart, any case: 0/1 (empty as
# 0), Excel's booleans, yes/no, a mark beside empty cells; a table's finding columns share one (a yes/no 'reviewed'
# column beside 0/1 findings is metadata)
ONE_HOT_VOCABULARIES = (
    ({"1", "1.0"}, {"0", "0.0", ""}),
    ({"true"}, {"false", ""}),
    ({"yes", "y"}, {"no", "n", ""}),
    ({"x", "✓", "✔"}, {""}),
)


def _vocabulary(cells: pd.Series) -> int | None:
    """The first ONE_HOT_VOCABULARIES entry a column's cells (stripped, lower case) all belong to, with one true cell
    at least; None for other columns."""
    for k, (true, false) in enumerate(ONE_HOT_VOCABULARIES):
        if cells.isin(true | false).all() and cells.isin(true).any():
            return k
    return None


def _one_hot_labels(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A label column from one-hot columns (ISIC's GroundTruth.csv: `image,MEL,NV,BCC,...` of 0/1 or 0.0/1.0; also
    TRUE/FALSE as Excel writes booleans, yes/no, or a mark such as x beside empty cells: ONE_HOT_VOCABULARIES, any
    case; the columns of the vocabulary most use), and what was read; (df, "") when the table has no two such
    columns. A row with several ones gets each of them ('MEL|NV': a multi-label finding list), a row of zeros none."""
    cells = {c: df[c].astype(str).str.strip().str.lower() for c in df.columns if c not in COLUMN_ALIASES}
    kinds = {c: _vocabulary(v) for c, v in cells.items()} if len(df) else {}
    counts = Counter(k for k in kinds.values() if k is not None)
    # the vocabulary most columns use (0/1 first on a tie): its columns are the findings, any other kept as metadata
    kind = max(counts, key=lambda k: (counts[k], -k), default=None)
    binary = [c for c, k in kinds.items() if k is not None and k == kind]
    if len(binary) < 2:
        return df, ""
    true = ONE_HOT_VOCABULARIES[kind][0]
    ones = pd.DataFrame({c: cells[c].isin(true) for c in binary})
    names = [str(c).strip() for c in binary]
    written = sorted({v for c in binary for v in df[c].astype(str).str.strip().unique()}, key=str.lower)
    df = df.assign(
        label=[LABEL_JOIN.join(n for n, on in zip(names, row, strict=True) if on) for row in ones.to_numpy()]
    )
    per_row = ones.sum(axis=1)
    return df, (
        f"labels from the one-hot columns {', '.join(names)} (no label column; cells "
        f"{', '.join(repr(v) for v in written)}): "
        f"{int((per_row == 1).sum())} image(s) with one, {int((per_row > 1).sum())} with several (read as a "
        f"finding list 'a|b'), {int((per_row == 0).sum())} with none"
        + (
            " (no label: a class implied by zeros, as ISIC 2017's nevus, needs its own column, or train multilabel)"
            if (per_row == 0).any()
            else ""
        )
    )


def _text_encodings(path: Path) -> list[tuple[str, str]]:
    """The encodings to try on a text table, with the note each needs: UTF-16 / UTF-32 when the file starts with
    their byte-order mark (Excel's "Unicode text" export), else UTF-8 (with or without a mark), then Windows-1252
    (what spreadsheet programs save otherwise)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return [("utf-32", f"{path.name} is UTF-32 (by its byte-order mark): read as such")]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return [("utf-16", f"{path.name} is UTF-16 (by its byte-order mark, as Excel's Unicode text): read as such")]
    return [("utf-8-sig", ""), ("cp1252", f"{path.name} is not UTF-8: read as Windows-1252")]


def _read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A CSV/TSV as strings: delimiter sniffed (or given by Excel's `sep=;` first line), quoting honoured, encoding
    by `_text_encodings`, said in a note unless UTF-8; rows with every cell empty (a spreadsheet's trailing `;;;`
    lines, blank lines, cells of spaces) dropped, with a note. The index is each row's line number in the file (a
    quoted cell that spans lines shifts the later ones). An .xlsx file: the sheet `read_sheet` chooses, as strings,
    indexed from 2 among its rows as read."""
    if path.suffix.lower() == ".xlsx":
        df, notes = read_sheet(path)
        return df.set_axis(range(2, len(df) + 2)), notes
    for encoding, note in _text_encodings(path):
        try:
            with open(path, encoding=encoding) as f:
                first = f.readline().rstrip("\r\n").strip('"')
            hint = re.fullmatch(r"sep=(.)", first)
            sep = hint.group(1) if hint else None
            df = pd.read_csv(
                path,
                sep=sep,
                engine="python",
                dtype=str,
                keep_default_na=False,
                encoding=encoding,
                skiprows=int(bool(hint)),
                skip_blank_lines=False,  # kept, so that a row's index gives its line in the file
            )
        except UnicodeError:
            continue
        except Exception as e:
            raise DataError(path, f"cannot parse as CSV/TSV ({e})") from e
        notes = [note] if note else []
        if hint:
            notes.append(
                f"{path.name}: its first line {first!r} (Excel's separator hint) read as such, not as a header"
            )
        df = df.fillna("").set_axis(range(2 + bool(hint), len(df) + 2 + bool(hint)))  # short rows: "" cells
        empty = df.apply(lambda c: c.str.strip()).eq("").all(axis=1) if len(df.columns) else df.index < 0
        if empty.any():
            n = int(empty.sum())
            notes.append(
                f"{path.name}: {n} row(s) with every cell empty skipped (line{'s' * (n > 1)} {_lines(df.index[empty])})"
            )
            df = df[~empty]
        return df, notes
    raise DataError(path, "cannot decode the text (neither UTF-16/32 by its byte-order mark, UTF-8 nor Windows-1252)")


# how pandas (astype(str)), spreadsheets and SQL exports write a missing value: never a name
MISSING_MARKERS = frozenset({"nan", "NaN", "<NA>", "NULL", "null", "#N/A", "#NA", "N/A", "n/a"})
# R's NA, Python's None and a dash also mark missing values, but are names too (a severity `None`, a site `NA`):
# missing only in patient ids, and said where they are kept
AMBIGUOUS_MARKERS = frozenset({"NA", "None", "-"})


def _missing_markers(df: pd.DataFrame, path: Path) -> list[str]:
    """Label, patient, domain and subgroup cells holding a missing-value marker (`MISSING_MARKERS`; in patient ids
    `AMBIGUOUS_MARKERS` too) are emptied in place, as an empty cell is read; a note names them, and names the
    ambiguous markers kept as values elsewhere. (Kept, `nan` had been a class and every image whose patient was
    `NA` one patient.)"""
    said, kept = [], []
    for col in ("label", "patient", "domain", "subgroup"):
        if col not in df:
            continue
        cells = df[col].str.strip()
        markers = MISSING_MARKERS | (AMBIGUOUS_MARKERS if col == "patient" else frozenset())
        found = cells.isin(markers)
        if found.any():
            lines = _lines(df.index[found][:3]) + ("..." if found.sum() > 3 else "")
            said.append(f"{int(found.sum())} {col} cell(s) ({', '.join(sorted(set(cells[found])))}; line {lines})")
            df.loc[found, col] = ""
        ambiguous = sorted(set(cells[cells.isin(AMBIGUOUS_MARKERS) & ~found]))
        kept += [f"{col} {v!r}" for v in ambiguous]
    notes = [f"{path.name}: missing-value markers read as empty cells: {'; '.join(said)}"] if said else []
    if kept:
        notes.append(f"{path.name}: {', '.join(kept)} kept as value(s); if they mark missing values, empty those cells")
    return notes


def _lines(numbers) -> str:
    """Line numbers as ranges: 12-14, 20."""
    out, numbers = [], list(numbers)
    for k, n in enumerate(numbers):
        if k == 0 or n != numbers[k - 1] + 1:
            out.append([n, n])
        else:
            out[-1][1] = n
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


TABLE_SUFFIXES_READ = (".csv", ".tsv", ".xlsx")


def lone_table(path: Path) -> Path | None:
    """The one table (CSV, TSV or .xlsx) at the top of a dataset folder, when its image column names files under the
    folder (at least half of its first 20 paths) and it has a label, mask or box column, else None: a manifest by
    another name (`labels_cp1252.csv`), which had been left unread beside a folder read whose only class was the
    images' folder name. A table of image and clinical columns alone (age, sex) is no manifest: the folders keep
    their labels."""
    if not path.is_dir():
        return None
    found = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES_READ]
    if len(found) != 1:
        return None
    return found[0] if _names_its_images(found[0]) else None


@per_file_version(maxsize=64)  # judged once per version of the file: layout detection and the reader both ask
def _names_its_images(path: Path) -> bool:
    """`lone_table`'s judgement of one table file."""
    try:
        df, _ = _read_table(path)
        df, _ = _rename_columns(df, path)
    except (DataError, OSError, ValueError, UnicodeDecodeError):
        return False
    if not ({"label", "mask", "boxes"} & set(df.columns) or corner_columns(df, _norm)):
        return False
    cells = [str(v) for v in df["image"] if str(v).strip()][:20]
    resolve = PathResolver(path.parent).resolve
    there = sum((path.parent / p).is_file() for p in map(resolve, cells) if p)
    return bool(cells) and there >= len(cells) / 2


def split_tables(path: Path) -> list[Path]:
    """Roboflow's TensorFlow CSV export: an `_annotations.csv` in each split folder (`train/`, `valid/`, `test/`)
    beside its images; [] when the folder's sub-folders hold none."""
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [d / SPLIT_TABLE for d in subs if (d / SPLIT_TABLE).is_file()]


def _read_split_tables(path: Path, files: list[Path], options: DataOptions) -> Manifest:
    """The tables of `split_tables` read together as one set, paths relative to `path`; the export's split into
    them is column `split` (`--split-column split`), as YOLO's and COCO's split folders are, said in a note."""
    tables, problems, notes = [], [], []
    for file in files:
        part = read_csv(file, options)
        prefix = file.parent.relative_to(path).as_posix()

        def rebase(p: str, prefix: str = prefix) -> str:
            return MASK_SEP.join(f"{prefix}/{x}" for x in p.split(MASK_SEP)) if p else ""

        table = part.table.copy()
        table["image"], table["mask"] = table["image"].map(rebase), table["mask"].map(rebase)
        tables.append(table)
        problems += [(f"{prefix}/{p}", why) for p, why in part.problems]
        notes += [f"{prefix}/{file.name}: {n}" for n in part.notes]
    names = ", ".join(f.relative_to(path).as_posix() for f in files)
    table = pd.concat(tables, ignore_index=True)
    rows = table.to_dict("records")
    kept = split_from_folders(rows)
    notes.insert(0, f"{len(files)} tables read together as one set ({names}); {split_said(kept)}")
    sources = [f.relative_to(path).as_posix() for f in files]
    return Manifest(path, pd.DataFrame(rows) if kept else table, "csv", problems, notes, sources=sources)


def read_csv(path: Path, options: DataOptions) -> Manifest:
    """A CSV/TSV manifest: one row per image, paths relative to the file; columns by name. A table with box corner
    columns (`xmin, ymin, xmax, ymax`: TensorFlow Object Detection's CSV) has one row per box (`annotations.boxcsv`)."""
    if path.is_dir():
        found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
        tables = [] if found else split_tables(path)
        if tables:
            return _read_split_tables(path, tables, options)
        found = found or [t for t in [lone_table(path)] if t is not None]
        if not found:
            raise DataError(
                path, f"no {' or '.join(MANIFEST_NAMES)} in this folder (--layout csv); give the file's path"
            )
        path = found[0]
    df, notes = _read_table(path)
    df, more = _rename_columns(df, path)
    return table_manifest(df, path, notes + more + _missing_markers(df, path), "csv")


def table_manifest(df: pd.DataFrame, path: Path, notes: list[str], layout: str) -> Manifest:
    """The manifest of a table of strings (`df`: a column per field, `image` and optionally `mask`, `label`, ... or
    box corners) read from the file `path` (its paths relative to the file's folder, however written): rows whose
    image or mask is not there, or whose boxes are not JSON, left out by name. Raises DataError as `read_csv`."""
    corners = corner_columns(df, _norm)
    root = path.parent
    rows, problems = [], []
    paths = PathResolver(root)
    sizes: dict = {}  # each image's size check, once per image (a box table has a row per box)
    for line, row in zip(df.index, df.to_dict("records"), strict=True):
        img = paths.resolve(str(row["image"]))
        where = f"{path.name} {line}" if isinstance(line, str) else f"{path.name} line {line}"  # a datalist: its item
        if not img:
            problems.append((where, "empty image path"))
            continue
        if not (root / img).is_file():
            problems.append((img, f"file not found ({where})"))
            continue
        row["image"] = img
        masks = [paths.resolve(m) for m in str(row.get("mask", "")).split(MASK_SEP) if m.strip()]
        missing = [m for m in masks if not (root / m).is_file()]
        if missing:
            problems.append((img, f"mask file not found: {missing[0]} ({where})"))
            continue
        row["mask"] = MASK_SEP.join(masks)
        if corners and not row_box(row, corners, root, where, problems, sizes):
            continue
        boxes = str(row.get("boxes", "")).strip()
        if boxes:
            try:
                json.loads(boxes)
            except json.JSONDecodeError:
                problems.append((img, f"boxes column is not valid JSON ({where})"))
                continue
        rows.append(row)
    if corners:
        rows, said = box_rows(rows, corners, problems)
        notes += said
    rows = expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), layout, problems, notes + paths.notes(path.name), sources=[path.name])


def _cell_text(v: object) -> str:
    """A cell as the text a CSV export of the sheet would hold."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    return str(v)


def read_sheet(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The worksheet of an .xlsx workbook that holds the manifest, as a table of strings as `_read_table` gives a
    CSV: the first sheet with an image column (a README sheet before it is passed over, said in a note), else the
    first; its first non-empty row is the header, empty rows are skipped, formulas give their saved values.

    Raises:
        DataError: the file is no workbook, or its sheets are all empty.
    """
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, InvalidFileException ... for files it cannot open
        raise DataError(path, f"cannot open as an Excel .xlsx workbook ({type(e).__name__}: {e})") from e
    try:
        names = [ws.title for ws in wb.worksheets]  # worksheets only: a chart sheet holds no table
        tables = {}
        for name, sheet in zip(names, wb.worksheets, strict=True):
            tables[name] = _sheet_table([[_cell_text(v) for v in r] for r in sheet.iter_rows(values_only=True)])
            if tables[name] is not None and any(_norm(c) in COLUMN_ALIASES["image"] for c in tables[name].columns):
                break
    finally:
        wb.close()
    read = next((n for n, t in reversed(tables.items()) if t is not None), None)
    if read is None:
        raise DataError(path, f"the sheets {', '.join(map(repr, names))} are empty: no manifest to read")
    found = [n for n, t in tables.items() if t is not None]
    if len(found) > 1 and not any(_norm(c) in COLUMN_ALIASES["image"] for c in tables[read].columns):
        heads = "; ".join(f"sheet {n!r}: {', '.join(map(repr, list(tables[n].columns)[:4]))}" for n in found)
        raise DataError(
            path,
            f"no sheet has an image column (one headed {', '.join(COLUMN_ALIASES['image'])}; case, spaces and '_' "
            f"ignored): {heads}",
        )
    others = [repr(n) for n in names if n != read]
    return tables[read], [f"{path.name}: sheet {read!r} read; sheets {', '.join(others)} not"] if others else []


def _sheet_table(rows: list[list[str]]) -> pd.DataFrame | None:
    """A worksheet's rows as a table of strings (the first non-empty row the header), None when it is empty."""
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return None
    width = max(i + 1 for r in rows for i, c in enumerate(r) if c.strip())
    buf = io.StringIO()
    csv.writer(buf).writerows(r[:width] + [""] * (width - len(r)) for r in rows)
    buf.seek(0)
    return pd.read_csv(buf, dtype=str, keep_default_na=False)


def read_xlsx(path: Path, options: DataOptions) -> Manifest:
    """An Excel .xlsx manifest (a file, or `manifest.xlsx` in a folder), read like a CSV manifest (`read_csv`: same
    column names, path checks and notes)."""
    if path.is_dir():
        path = (
            path / "manifest.xlsx" if (path / "manifest.xlsx").is_file() else lone_table(path) or path / "manifest.xlsx"
        )
    if path.suffix.lower() != ".xlsx":
        raise DataError(path, "not an .xlsx file (older .xls workbooks: save as .xlsx or CSV)")
    manifest = read_csv(path, options)
    manifest.layout = "xlsx"
    return manifest
