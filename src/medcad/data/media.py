"""Which files under a dataset folder are media (images, DICOM), the frames of multi-frame DICOM files, COCO JSON
files, and the path patterns (`--pattern`) the folder readers and annotation readers share."""

from __future__ import annotations

import re
from pathlib import Path

from medcad.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, has_dicom_preamble, is_dicom
from medcad.data.ledger import walk_files
from medcad.errors import DataError

MEDIA_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".json", ".xml", ".md", ".yaml", ".yml", ".py", ".zip", ".html"})
PATTERN_FIELDS = {
    "label": "label",
    "domain": "domain",
    "subgroup": "subgroup",
    "patient": "patient",
    "group": "patient",
}


def is_media(path: Path) -> bool:
    """An image or DICOM file: by suffix, or by the DICOM preamble for other names (`IM00001`, `1.2.840...`)."""
    suffix = path.suffix.lower()
    if suffix in MEDIA_SUFFIXES:
        return True
    if suffix in TEXT_SUFFIXES or path.name.upper() == "DICOMDIR":  # DICOMDIR: an index of the files, no image
        return False
    return has_dicom_preamble(path)


def walk_media(root: Path) -> list[Path]:
    """The images and DICOM files under `root` (symbolic links to folders followed, link loops cut)."""
    return [f for f in walk_files(root) if is_media(f)]


def find_coco_json(path: Path) -> Path | None:
    for js in sorted(path.glob("*.json")):
        try:
            with open(js, encoding="utf-8") as f:
                head = f.read(4096)
        except OSError:
            continue
        if '"images"' in head or '"annotations"' in head:
            return js
    return None


def dicom_frames(path: Path) -> int:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise DataError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if "Rows" not in ds:
        raise DataError(path, "DICOM file holds no image (no Rows/Columns)")
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def expand_frames(rows: list[dict], root: Path, problems: list[tuple[str, str]]) -> list[dict]:
    """One row per frame for multi-frame DICOM files; unreadable DICOM files become problems."""
    out = []
    for row in rows:
        p = root / row["image"]
        if not is_dicom(p) or row.get("frame") not in (None, ""):
            out.append(row)
            continue
        try:
            n = dicom_frames(p)
        except DataError as e:
            problems.append((row["image"], e.problem))
            continue
        out += [dict(row, frame=k) for k in range(n)] if n > 1 else [row]
    return out


def pattern_regex(pattern: str) -> re.Pattern[str]:
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
