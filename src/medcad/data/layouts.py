"""Readers that turn a dataset layout into a Manifest; `detect_layout` picks one from what is on disk."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from medcad.config import DataOptions
from medcad.data.annotations import (
    find_cvat,
    find_dicom_seg,
    find_labelme,
    read_coco,
    read_cvat,
    read_dicom_seg,
    read_labelme,
    read_sheet,
    read_xlsx,
)
from medcad.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, has_dicom_preamble, is_dicom
from medcad.data.ledger import walk_files
from medcad.data.manifest import MASK_SEP, Manifest, make_table
from medcad.errors import DataError

MEDIA_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".json", ".xml", ".md", ".yaml", ".yml", ".py", ".zip", ".html"})
# Header names are compared with case, spaces, '_' and '-' removed: "Patient ID", "PatientID", "patient_id" match.
COLUMN_ALIASES = {
    "image": ("image", "path", "file", "filename", "imagepath", "imagefile", "imagename", "img"),
    "label": ("label", "class", "target", "diagnosis", "classname", "category"),
    "patient": ("patient", "patientid", "group", "subject", "subjectid", "case", "caseid", "video", "videoid"),
    "domain": ("domain", "modality"),
    "subgroup": ("subgroup", "subtype"),
    "mask": ("mask", "maskpath", "masks", "maskfile"),
    "boxes": ("boxes", "bbox", "bboxes"),
    "frame": ("frame", "frameindex"),
}
ID_WORDS = ("patient", "subject", "case", "study", "mrn", "participant", "person", "exam", "series", "pid")
PATTERN_FIELDS = {
    "label": "label",
    "domain": "domain",
    "subgroup": "subgroup",
    "patient": "patient",
    "group": "patient",
}


def _is_media(path: Path) -> bool:
    """An image or DICOM file: by suffix, or by the DICOM preamble for other names (`IM00001`, `1.2.840...`)."""
    suffix = path.suffix.lower()
    if suffix in MEDIA_SUFFIXES:
        return True
    if suffix in TEXT_SUFFIXES or path.name.upper() == "DICOMDIR":  # DICOMDIR: an index of the files, no image
        return False
    return has_dicom_preamble(path)


def _walk(root: Path) -> list[Path]:
    """The images and DICOM files under `root` (symbolic links to folders followed, link loops cut)."""
    return [f for f in walk_files(root) if _is_media(f)]


def _coco_json(path: Path) -> Path | None:
    for js in sorted(path.glob("*.json")):
        try:
            with open(js, encoding="utf-8") as f:
                head = f.read(4096)
        except OSError:
            continue
        if '"images"' in head or '"annotations"' in head:
            return js
    return None


# Annotation files that decide a folder's layout, in the order they are looked for: (layout, finder, why)
ANNOTATION_FINDERS = (
    ("coco", _coco_json, "{} holds COCO 'images'/'annotations'"),
    ("cvat", find_cvat, "{} holds CVAT-for-images <annotations>"),
    ("labelme", find_labelme, "labelme JSON files beside the images (e.g. {})"),
    ("dicom-seg", find_dicom_seg, "DICOM SEG objects beside DICOM images (e.g. {})"),
)


def detect_layout(path: Path, options: DataOptions | None = None) -> tuple[str, str]:
    """Guess the layout of a dataset path: (layout, why). Raises DataError with advice when nothing fits."""
    options = options or DataOptions()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt"):
            return "csv", f"a {suffix} manifest file"
        if suffix == ".json":
            return "coco", "a JSON file (COCO)"
        if suffix in (".xlsx", ".xml"):
            return ("xlsx", "an Excel .xlsx manifest") if suffix == ".xlsx" else ("cvat", "an XML file (CVAT)")
        if is_dicom(path) or suffix in IMAGE_SUFFIXES:
            return "folders", "a single image file"
        raise DataError(
            path, "not a dataset: give a folder, a CSV/TSV/XLSX manifest, a COCO JSON, a CVAT XML or a DICOM file"
        )
    if options.images or options.masks:
        return "images-masks", "--images/--masks given"
    manifest = next((n for n in ("manifest.csv", "manifest.tsv") if (path / n).is_file()), None)
    if manifest:
        return "csv", f"{manifest} in the folder (an explicit manifest wins over what the folders suggest)"
    if (path / "manifest.xlsx").is_file():
        return "xlsx", "manifest.xlsx in the folder (an explicit manifest wins over what the folders suggest)"
    from medcad.data.pairing import find_pair_groups, find_paired_folders

    pair = find_paired_folders(path, options.mask_suffix)
    if pair is not None:
        return "images-masks", pair.reason
    groups = find_pair_groups(path, options.mask_suffix)
    if len(groups) >= 2:
        names = ", ".join(f"{label}/" for label, _ in groups)
        return "images-masks", f"an image/mask folder pair in each of {names} (read together; label = the folder)"
    for layout, find, why in ANNOTATION_FINDERS:
        found = find(path)
        if found is not None:
            return layout, why.format(found.relative_to(path).as_posix())
    return "folders", "no manifest, paired image/mask folders or COCO JSON: folders of images"


def _dicom_frames(path: Path) -> int:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise DataError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if "Rows" not in ds:
        raise DataError(path, "DICOM file holds no image (no Rows/Columns)")
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _expand_frames(rows: list[dict], root: Path, problems: list[tuple[str, str]]) -> list[dict]:
    """One row per frame for multi-frame DICOM files; unreadable DICOM files become problems."""
    out = []
    for row in rows:
        p = root / row["image"]
        if not is_dicom(p) or row.get("frame") not in (None, ""):
            out.append(row)
            continue
        try:
            n = _dicom_frames(p)
        except DataError as e:
            problems.append((row["image"], e.problem))
            continue
        out += [dict(row, frame=k) for k in range(n)] if n > 1 else [row]
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for part in pattern.strip("/").split("/"):
        rx = re.escape(part).replace(r"\*", "[^/]*")
        for name, column in PATTERN_FIELDS.items():
            rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{column}>[^/]+)", 1)
        if "\\{" in rx:
            raise DataError(
                pattern,
                f"unknown field in pattern part {part!r}; use {{label}}, {{domain}}, "
                "{subgroup}, {patient} or {group}",
            )
        parts.append(rx)
    return re.compile("^" + "/".join(parts) + "$")


def read_folders(path: Path, options: DataOptions) -> Manifest:
    """Class-per-folder (`root/<label>/*`) or nested folders mapped by a pattern such as `{domain}/{label}`.

    Files named `<stem><mask_suffix>.*` or `<stem><mask_suffix>_<n>.*` beside an image are its masks.
    """
    pattern, mask_suffix = options.pattern, options.mask_suffix
    if path.is_file():
        rows, problems = [{"image": path.name}], []
        return Manifest(path.parent, make_table(_expand_frames(rows, path.parent, problems)), "folders", problems)
    files = _walk(path)
    if not files:
        raise DataError(path, f"no images found (looked for {', '.join(sorted(MEDIA_SUFFIXES))})")
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for f in files:
        by_dir[f.parent].append(f)
    mask_rx = re.compile(r"^(?P<base>.+?)" + re.escape(mask_suffix) + r"(?:_\d+)?$") if mask_suffix else None
    depth = Counter(len(f.relative_to(path).parts) - 1 for f in files)
    if pattern is None:
        pattern = "{label}" if depth.get(1) else ("" if depth.get(0) else "*/" * (max(depth) - 1) + "{label}")
    regex = _pattern_regex(pattern) if pattern else None
    rows, problems = [], []
    for folder, group in by_dir.items():
        stems = {f.stem for f in group}
        masks: dict[str, list[str]] = defaultdict(list)
        images = []
        for f in group:
            m = mask_rx.match(f.stem) if mask_rx else None
            if m and m.group("base") in stems and m.group("base") != f.stem:
                masks[m.group("base")].append(f.relative_to(path).as_posix())
            else:
                images.append(f)
        rel_dir = folder.relative_to(path).as_posix()
        fields: dict[str, str] = {}
        if regex is not None:
            match = regex.match(rel_dir) if rel_dir != "." else None
            if match is None:
                problems += [
                    (f.relative_to(path).as_posix(), f"folder does not fit the pattern {pattern!r}") for f in images
                ]
                continue
            fields = {k: v for k, v in match.groupdict().items() if v is not None}
        for f in images:
            row = {"image": f.relative_to(path).as_posix(), **fields}
            if f.stem in masks:
                row["mask"] = MASK_SEP.join(sorted(masks[f.stem], key=lambda s: (len(s), s)))
            rows.append(row)
    rows = _expand_frames(rows, path, problems)
    if not rows:
        raise DataError(
            path, f"no images fit the folder pattern {pattern!r}; set --pattern, e.g. '{{domain}}/{{label}}'"
        )
    notes = [f"folder pattern {pattern!r}" + (" (detected)" if options.pattern is None else "")] if pattern else []
    notes += _shared_stem_note(path, by_dir)
    return Manifest(path, make_table(rows), "folders", problems, notes)


def _shared_stem_note(root: Path, by_dir: dict[Path, list[Path]]) -> list[str]:
    """A warning when two folders hold mostly the same file names and one of them looks like masks (masks read as
    a class?); class folders numbered alike (`benign/1.png`, `malignant/1.png`) get none."""
    from medcad.data.pairing import mask_likeness

    dirs = list(by_dir)
    for i, a in enumerate(dirs):
        for b in dirs[i + 1 :]:
            sa, sb = {f.stem for f in by_dir[a]}, {f.stem for f in by_dir[b]}
            shared = len(sa & sb)
            masky = [mask_likeness(by_dir[d][0]) >= 0.95 for d in (a, b)]
            if shared >= max(2, 0.5 * min(len(sa), len(sb))) and masky[0] != masky[1]:
                ra, rb = a.relative_to(root).as_posix(), b.relative_to(root).as_posix()
                return [
                    f"'{ra}/' and '{rb}/' share {shared} file names; if one of them holds masks, read the set "
                    f"with --images {ra} --masks {rb} (or the other way round)"
                ]
    return []


def _norm(name: str) -> str:
    """A header name compared without case, spaces, punctuation or a byte-order mark."""
    return re.sub(r"[^0-9a-z]", "", str(name).replace("\ufeff", "").lower())


def _rename_columns(df: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, list[str]]:
    """Standard column names from the headers people write; notes on what was matched and what was not."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), c)
    mapping, notes = {}, []
    for col, aliases in COLUMN_ALIASES.items():
        for a in aliases:
            if a in by_norm and by_norm[a] not in mapping:
                mapping[by_norm[a]] = col
                if str(by_norm[a]) != col:
                    notes.append(f"column {str(by_norm[a]).strip()!r} read as {col!r}")
                break
    df = df.rename(columns=mapping)
    if "image" not in df:
        found = ", ".join(repr(str(c)) for c in df.columns)
        raise DataError(
            source,
            f"no image column; a column headed one of {', '.join(COLUMN_ALIASES['image'])} (case, spaces and "
            f"'_' ignored) is needed, found {found}",
        )
    for c in df.columns:
        if c not in COLUMN_ALIASES and any(w in _norm(c) for w in ID_WORDS):
            used = next((k for k, v in mapping.items() if v == "patient"), None)
            notes.append(
                f"column {str(c).strip()!r} looks like a patient/study id but is kept as metadata"
                + (f" (the patient column is {str(used).strip()!r})" if used else "; splits do NOT group by it")
                + ": rename it to 'patient' to group the splits by it"
            )
    return df, notes


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
    """A CSV/TSV as strings: delimiter sniffed, quoting honoured, encoding by `_text_encodings`, said in a note
    unless UTF-8. An .xlsx file: its first sheet, as strings."""
    if path.suffix.lower() == ".xlsx":
        return read_sheet(path)
    for encoding, note in _text_encodings(path):
        try:
            df = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False, encoding=encoding)
            return df, [note] if note else []
        except UnicodeError:
            continue
        except Exception as e:
            raise DataError(path, f"cannot parse as CSV/TSV ({e})") from e
    raise DataError(path, "cannot decode the text (neither UTF-16/32 by its byte-order mark, UTF-8 nor Windows-1252)")


def read_csv(path: Path, options: DataOptions) -> Manifest:
    """A CSV/TSV manifest: one row per image, paths relative to the file; columns by name."""
    if path.is_dir():
        path = next(p for p in (path / "manifest.csv", path / "manifest.tsv") if p.is_file())
    df, notes = _read_table(path)
    df, more = _rename_columns(df, path)
    notes += more
    root = path.parent
    rows, problems = [], []
    paths = _PathResolver(root)
    for line, row in enumerate(df.to_dict("records"), start=2):
        img = paths.resolve(str(row["image"]))
        where = f"{path.name} line {line}"
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
        boxes = str(row.get("boxes", "")).strip()
        if boxes:
            try:
                json.loads(boxes)
            except json.JSONDecodeError:
                problems.append((img, f"boxes column is not valid JSON ({where})"))
                continue
        rows.append(row)
    rows = _expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "csv", problems, notes + paths.notes(path.name), sources=[path.name])


class _PathResolver:
    """Image paths of a manifest as people write them, resolved under its folder: Windows separators (`a\\b.png`),
    and paths that exist only as a tail under the folder (another machine's absolute path, a prefix folder that is
    not there: `C:/data/release/benign/b1.png` -> `benign/b1.png`). Each kind of rewrite is counted for a note."""

    def __init__(self, root: Path) -> None:
        self.root, self.windows, self.tails = root, 0, Counter()

    def resolve(self, raw: str) -> str:
        text = raw.strip()
        if "\\" in text:
            text, self.windows = text.replace("\\", "/"), self.windows + 1
        if Path(text).is_absolute() and Path(text).is_file():  # this machine's own absolute path
            try:
                return Path(text).resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                return text  # outside the manifest's folder: kept as it is
        if not text or (self.root / text).is_file():
            return text
        parts = [p for p in text.split("/") if p not in ("", ".")]
        for k in range(1, len(parts)):
            tail = "/".join(parts[k:])
            if (self.root / tail).is_file():
                self.tails["/".join(parts[:k])] += 1
                return tail
        return text

    def notes(self, name: str) -> list[str]:
        out = [f"{self.windows} path(s) in {name} use Windows separators '\\': read with '/'"] if self.windows else []
        for prefix, n in self.tails.most_common():
            out.append(
                f"{n} path(s) in {name} start with {prefix!r}, which is not under {self.root.name}/: "
                "resolved by their remaining path under the manifest's folder"
            )
        return out


def _kvasir_boxes(root: Path, stems: set[str]) -> tuple[dict[str, list[list]], list[str]]:
    """Boxes from a `{id: {"bbox": [{label, xmin, ...}]}}` JSON (Kvasir-SEG) in the dataset folder, and the file
    read ([] when none)."""
    for js in sorted(root.glob("*.json")):
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(js, f"cannot parse box JSON ({e})") from e
        if not isinstance(data, dict) or not stems & set(data):
            continue
        boxes = {
            k: [[b["xmin"], b["ymin"], b["xmax"], b["ymax"], b.get("label", "lesion")] for b in v.get("bbox", [])]
            for k, v in data.items()
        }
        return boxes, [js.name]
    return {}, []


def _paired_dirs(path: Path, options: DataOptions) -> list[tuple[str, Path, Path]]:
    """(label, image folder, mask folder) of each pair: from --images/--masks (no label), else the one pair found by
    `find_paired_folders`, else one pair in each of several sub-folders (their names are the labels)."""
    from medcad.data.pairing import find_pair_groups, find_paired_folders

    if options.images or options.masks:
        if not (options.images and options.masks):
            raise DataError(path, "give both --images DIR and --masks DIR (folders relative to the dataset folder)")
        dirs = (path / options.images, path / options.masks)
        for d in dirs:
            if not d.is_dir():
                raise DataError(d, "folder not found (--images and --masks are relative to the dataset folder)")
        return [("", dirs[0], dirs[1])]
    pair = find_paired_folders(path, options.mask_suffix)
    if pair is not None:
        return [("", pair.images, pair.masks)]
    groups = find_pair_groups(path, options.mask_suffix)
    if len(groups) < 2:
        raise DataError(path, "no image and mask folders with matching file names; name them with --images/--masks")
    return [(label, p.images, p.masks) for label, p in groups]


def _read_pair(path: Path, image_dir: Path, mask_dir: Path, options: DataOptions, problems: list) -> list[dict]:
    """Rows of one image/mask folder pair (paths relative to `path`); masks without an image become problems."""
    from medcad.data.pairing import mask_base

    images = _walk(image_dir)
    stems_in: dict[Path, set[str]] = defaultdict(set)  # image stems per sub-folder of the image folder
    for f in images:
        rel = f.relative_to(image_dir).with_suffix("")
        stems_in[rel.parent].add(rel.name)
    masks: dict[str, list[Path]] = defaultdict(list)
    for f in _walk(mask_dir):
        rel = f.relative_to(mask_dir).with_suffix("")
        base = mask_base(rel.name, stems_in.get(rel.parent, set()), options.mask_suffix)
        if base is None:
            problems.append(
                (f.relative_to(path).as_posix(), f"mask without an image of the same name in {image_dir.name}/")
            )
        else:
            masks[(rel.parent / base).as_posix()].append(f)
    rows = []
    for f in images:
        key = f.relative_to(image_dir).with_suffix("").as_posix()
        row = {"image": f.relative_to(path).as_posix()}
        if key in masks:
            files = sorted(m.relative_to(path).as_posix() for m in masks[key])
            row["mask"] = MASK_SEP.join(sorted(files, key=lambda s: (len(s), s)))
        rows.append(row)
    return rows


def read_images_masks(path: Path, options: DataOptions) -> Manifest:
    """Images in one folder and masks with the same file stems in another (Kvasir-SEG's `images/` + `masks/`, or
    any names: see `medcad.data.pairing`), plus a Kvasir-style bounding-box JSON when present. A release with one
    such pair in each of several sub-folders (`polyp/images` + `polyp/masks`, `normal/images` + `normal/masks`)
    is read whole, each sub-folder's name being its images' label.

    A mask stem may add a mask word (`_mask`, `_seg`, `_gt`, ...) and `_<n>` for one of several masks (unioned).
    """
    problems: list[tuple[str, str]] = []
    rows, notes = [], []
    for label, image_dir, mask_dir in _paired_dirs(path, options):
        pair_rows = _read_pair(path, image_dir, mask_dir, options, problems)
        n_masked = sum(1 for r in pair_rows if "mask" in r)
        where = f"{image_dir.relative_to(path).as_posix()}/"
        notes.append(f"{n_masked} of {len(pair_rows)} images in {where} have a mask in {mask_dir.name}/")
        if label:
            notes[-1] += f" (label {label!r}, the pair's folder)"
            pair_rows = [dict(r, label=label) for r in pair_rows]
        rows += pair_rows
    boxes, sources = _kvasir_boxes(path, {Path(r["image"]).stem for r in rows})
    for row in rows:
        b = boxes.get(Path(row["image"]).stem)
        if b is not None:
            row["boxes"] = json.dumps(b)
            names = {x[4] for x in b}
            row.setdefault("label", names.pop() if len(names) == 1 else "")
    table = make_table(_expand_frames(rows, path, problems))
    return Manifest(path, table, "images-masks", problems, notes, sources=sources)


READERS = {
    "folders": read_folders,
    "csv": read_csv,
    "images-masks": read_images_masks,
    "coco": read_coco,
    "labelme": read_labelme,
    "dicom-seg": read_dicom_seg,
    "cvat": read_cvat,
    "xlsx": read_xlsx,
}
