"""Readers that turn a dataset layout into a Manifest; `detect_layout` picks one from what is on disk."""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from medcad.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom
from medcad.data.manifest import MASK_SEP, Manifest, make_table
from medcad.errors import DataError

MEDIA_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
COLUMN_ALIASES = {
    "image": ("image", "path", "file", "filename", "file_name", "image_path"),
    "label": ("label", "class", "target", "diagnosis"),
    "patient": ("patient", "patient_id", "group", "subject", "case", "video"),
    "domain": ("domain", "modality"),
    "subgroup": ("subgroup", "subtype"),
    "mask": ("mask", "mask_path", "masks"),
    "boxes": ("boxes", "bbox", "bboxes"),
    "frame": ("frame",),
}
PATTERN_FIELDS = {
    "label": "label",
    "domain": "domain",
    "subgroup": "subgroup",
    "patient": "patient",
    "group": "patient",
}


def _is_media(name: str) -> bool:
    return Path(name).suffix.lower() in MEDIA_SUFFIXES


def _walk(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and _is_media(f)]
    return files


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


def detect_layout(path: Path) -> str:
    """Guess the layout of a dataset path; raise DataError with advice when nothing fits."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt"):
            return "csv"
        if suffix == ".json":
            return "coco"
        if is_dicom(path) or suffix in IMAGE_SUFFIXES:
            return "folders"
        raise DataError(path, "not a dataset: give a folder, a CSV/TSV manifest, a COCO JSON or a DICOM file")
    if any((path / n).is_file() for n in ("manifest.csv", "manifest.tsv")):
        return "csv"  # an explicit manifest wins over what the folders suggest
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "images-masks"
    if _coco_json(path) is not None:
        return "coco"
    return "folders"


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


def read_folders(path: Path, *, pattern: str | None = None, mask_suffix: str = "_mask") -> Manifest:
    """Class-per-folder (`root/<label>/*`) or nested folders mapped by a pattern such as `{domain}/{label}`.

    Files named `<stem><mask_suffix>.*` or `<stem><mask_suffix>_<n>.*` beside an image are its masks.
    """
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
    return Manifest(path, make_table(rows), "folders", problems)


def _rename_columns(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    lower = {c.lower().strip(): c for c in df.columns}
    mapping = {}
    for col, aliases in COLUMN_ALIASES.items():
        for a in aliases:
            if a in lower and lower[a] not in mapping:
                mapping[lower[a]] = col
                break
    df = df.rename(columns=mapping)
    if "image" not in df:
        raise DataError(
            source,
            f"no image column; expected one of {', '.join(COLUMN_ALIASES['image'])}, "
            f"found {', '.join(map(str, df.columns))}",
        )
    return df


def read_csv(path: Path, *, pattern: str | None = None, mask_suffix: str = "_mask") -> Manifest:
    """A CSV/TSV manifest: one row per image, paths relative to the file; columns by name."""
    if path.is_dir():
        path = next(p for p in (path / "manifest.csv", path / "manifest.tsv") if p.is_file())
    try:
        df = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(path, f"cannot parse as CSV/TSV ({e})") from e
    df = _rename_columns(df, path)
    root = path.parent
    rows, problems = [], []
    for line, row in enumerate(df.to_dict("records"), start=2):
        img = str(row["image"]).strip()
        where = f"{path.name} line {line}"
        if not img:
            problems.append((where, "empty image path"))
            continue
        if not (root / img).is_file():
            problems.append((img, f"file not found ({where})"))
            continue
        missing = [m for m in str(row.get("mask", "")).split(MASK_SEP) if m and not (root / m).is_file()]
        if missing:
            problems.append((img, f"mask file not found: {missing[0]} ({where})"))
            continue
        boxes = str(row.get("boxes", "")).strip()
        if boxes:
            try:
                json.loads(boxes)
            except json.JSONDecodeError:
                problems.append((img, f"boxes column is not valid JSON ({where})"))
                continue
        rows.append(row)
    rows = _expand_frames(rows, root, problems)
    return Manifest(root, make_table(rows), "csv", problems)


def _kvasir_boxes(root: Path, stems: set[str]) -> dict[str, list[list]]:
    """Boxes from a `{id: {"bbox": [{label, xmin, ...}]}}` JSON (Kvasir-SEG) in the dataset folder."""
    for js in sorted(root.glob("*.json")):
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(js, f"cannot parse box JSON ({e})") from e
        if not isinstance(data, dict) or not stems & set(data):
            continue
        return {
            k: [[b["xmin"], b["ymin"], b["xmax"], b["ymax"], b.get("label", "lesion")] for b in v.get("bbox", [])]
            for k, v in data.items()
        }
    return {}


def read_images_masks(path: Path, *, pattern: str | None = None, mask_suffix: str = "_mask") -> Manifest:
    """`images/` and `masks/` with the same file names (Kvasir-SEG), plus its bounding-box JSON when present."""
    images = _walk(path / "images")
    masks = {f.relative_to(path / "masks").with_suffix("").as_posix(): f for f in _walk(path / "masks")}
    boxes = _kvasir_boxes(path, {f.stem for f in images})
    rows, problems = [], []
    for f in images:
        key = f.relative_to(path / "images").with_suffix("").as_posix()
        row = {"image": f.relative_to(path).as_posix()}
        if key in masks:
            row["mask"] = masks[key].relative_to(path).as_posix()
        if f.stem in boxes:
            b = boxes[f.stem]
            row["boxes"] = json.dumps(b)
            names = {x[4] for x in b}
            row["label"] = names.pop() if len(names) == 1 else ""
        rows.append(row)
    for key in sorted(set(masks) - {f.relative_to(path / "images").with_suffix("").as_posix() for f in images}):
        problems.append((masks[key].relative_to(path).as_posix(), "mask without an image of the same name"))
    return Manifest(path, make_table(_expand_frames(rows, path, problems)), "images-masks", problems)


def read_coco(path: Path, *, pattern: str | None = None, mask_suffix: str = "_mask") -> Manifest:
    """COCO detection JSON: boxes per image; an image's label is its most frequent box class, else background."""
    js = path if path.is_file() else _coco_json(path)
    if js is None:
        raise DataError(path, "no COCO JSON (with 'images' and 'annotations') found")
    try:
        coco = json.loads(js.read_text(encoding="utf-8"))
        cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
        images = {im["id"]: im["file_name"] for im in coco["images"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(js, f"not a valid COCO JSON ({e})") from e
    boxes: dict[int, list[list]] = defaultdict(list)
    for ann in coco.get("annotations", []):
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h, cats.get(ann["category_id"], str(ann["category_id"]))])
    root = js.parent
    rows, problems = [], []
    for image_id, name in images.items():
        rel = next((c for c in (name, f"images/{name}") if (root / c).is_file()), None)
        if rel is None:
            problems.append((name, f"file not found next to {js.name} or in images/"))
            continue
        b = boxes.get(image_id, [])
        label = Counter(x[4] for x in b).most_common(1)[0][0] if b else "background"
        rows.append({"image": rel, "label": label, "boxes": json.dumps(b)})
    return Manifest(root, make_table(_expand_frames(rows, root, problems)), "coco", problems)


READERS = {"folders": read_folders, "csv": read_csv, "images-masks": read_images_masks, "coco": read_coco}
