"""Which files under a dataset folder are media (images, DICOM), the frames of multi-frame DICOM files, COCO JSON
files, and the path patterns (`--pattern`) the folder readers and annotation readers share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from medcad.data.filekinds import DICOM_SUFFIXES, IMAGE_SUFFIXES, has_dicom_preamble, is_dicom, volume_format
from medcad.data.io import image_pages
from medcad.data.ledger import walk_files
from medcad.data.versions import per_file_version
from medcad.errors import DataError

FRAME_SEP = "#"  # `<path>#<frame>`: the key of a frame of a multi-frame file (a DICOM cine, a TIFF page)

MEDIA_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".json", ".xml", ".md", ".yaml", ".yml", ".py", ".zip", ".html"})
PATTERN_FIELDS = {
    "label": "label",
    "domain": "domain",
    "subgroup": "subgroup",
    "patient": "patient",
    "group": "patient",
    "split": "split",  # a release's own split (train / val / test folders): `data split --split-column split`
}


def is_media(path: Path) -> bool:
    """An image, DICOM or volume file (NIfTI, MetaImage...: `filekinds.volume_format`; a header's voxel data file is
    read with its header, not as one): by suffix, or by the DICOM preamble for other names (`IM00001`,
    `1.2.840...`)."""
    suffix = path.suffix.lower()
    if suffix in MEDIA_SUFFIXES or volume_format(path):
        return True
    if suffix in TEXT_SUFFIXES or path.name.upper() == "DICOMDIR":  # DICOMDIR: an index of the files, no image
        return False
    return has_dicom_preamble(path)


def walk_media(root: Path) -> list[Path]:
    """The images and DICOM files under `root` (symbolic links to folders followed, link loops cut)."""
    return [f for f in walk_files(root) if is_media(f)]


COCO_HEAD = re.compile(r'"(?:images|annotations|categories)"\s*:\s*\[')


def is_coco_json(path: Path) -> bool:
    """Whether a JSON file looks like COCO by its first 64 KiB: an object with an `images`, `annotations` or
    `categories` list (a Label Studio export is a list; a metadata file's `"images": 7` is no list)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("{") and COCO_HEAD.search(head) is not None


def find_coco_jsons(path: Path) -> list[Path]:
    """The COCO JSON files of a dataset folder, where the tools that write COCO put them: in the folder itself;
    else in its `annotations/` folder (the COCO release, CVAT's "COCO 1.0": images in `images/` beside it); else one
    in each sub-folder (Roboflow's `train/`, `valid/`, `test/` with `_annotations.coco.json`). [] when none."""
    for where in (path, path / "annotations"):
        found = [js for js in sorted(where.glob("*.json")) if is_coco_json(js)]
        if found:
            return found
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")) if path.is_dir() else []
    # a split folder holds one COCO file among its images; the first few JSONs of each are enough to look at (a
    # folder of labelme JSONs, thousands with their images inlined, is not read through to decide the layout)
    return [js for d in subs for js in sorted(d.glob("*.json"))[:3] if is_coco_json(js)]


def find_coco_json(path: Path) -> Path | None:
    """The first COCO JSON of a dataset folder (`find_coco_jsons`), or None: what layout detection names."""
    found = find_coco_jsons(path)
    return found[0] if found else None


def dicom_frames(path: Path) -> int:
    from medcad.data.dicom import read_header

    ds = read_header(path)
    if "Rows" not in ds:
        raise DataError(path, "DICOM file holds no image (no Rows/Columns)")
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


@per_file_version(maxsize=4096)
def file_frames(path: Path) -> tuple[Sequence[int], tuple[int, ...]]:
    """(the frames or pages of a file that are images, its thumbnail pages): a multi-frame DICOM's frames, a TIFF's
    pages (`medcad.data.io.image_pages`), an animation's frames; ((0,), ()) for a file of one image. Counted once per
    file version in a process (loading a manifest and pairing its mask pages ask alike).

    Raises:
        DataError: a DICOM file that holds no image.
    """
    if is_dicom(path):
        return range(dicom_frames(path)), ()
    frames, thumbnails = image_pages(path)
    return tuple(frames), tuple(thumbnails)


def dicom_patient_ids(root: Path, images: list[str]) -> dict[str, str]:
    """The PatientID (0010,0020) of each DICOM file among `images` (relative to `root`) that has one."""
    from medcad.data.dicom import read_header

    out = {}
    for rel in dict.fromkeys(images):
        p = root / rel
        if not is_dicom(p):
            continue
        try:
            pid = str(read_header(p).get("PatientID", ""))  # read for its frames already (expand_frames)
        except DataError:  # unreadable files are named by the reader; no id is no id
            continue
        if pid.strip():
            out[rel] = pid.strip()
    return out


def expand_frames(rows: list[dict], root: Path, problems: list[tuple[str, str]]) -> list[dict]:
    """One row per frame for multi-frame DICOM files, multi-page TIFFs and animated GIF / WebP (`frame`: the
    frame or page index); unreadable DICOM files become problems. A row that names its frame stays as it is when the
    file has that frame; else it is a problem (a frame number of another kind, e.g. a video's, in a frame column)."""
    out = []
    # a file's frames, what they are called and its thumbnail pages, read once (rows may repeat a file)
    counted: dict[Path, tuple[Sequence[int], str, tuple[int, ...]] | DataError] = {}
    for row in rows:
        p = root / row["image"]
        named = row.get("frame")
        if p not in counted:
            try:
                frames, thumbnails = file_frames(p)  # a DICOM's in a range: `in` without a scan per row
                counted[p] = (frames, "frame" if is_dicom(p) else "page", thumbnails)
                problems += [
                    (f"{row['image']}{FRAME_SEP}{k}", "a thumbnail page (reduced resolution): not an image of the set")
                    for k in thumbnails
                ]
            except DataError as e:
                counted[p] = e
        if isinstance(counted[p], DataError):
            problems.append((row["image"], counted[p].problem))
            continue
        frames, what, thumbnails = counted[p]
        n = len(frames)
        if named in (None, ""):
            out += [dict(row, frame=k) for k in frames] if n != 1 or frames[0] != 0 else [row]
            continue
        text = str(named).strip()
        k = int(float(text)) if text.replace(".", "", 1).isdigit() and float(text).is_integer() else None
        if k is not None and k in thumbnails:
            problems.append((row["image"], f"the frame column names page {k}, a thumbnail (reduced resolution)"))
            continue
        if k is None or k not in frames:
            has = f"has {n} {what}(s), numbered from 0" if n > 1 else f"is a single {what}"
            problems.append((row["image"], f"the frame column names {what} {text!r}, but the file {has}"))
            continue
        out.append(row)
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
                "{subgroup}, {patient}, {group} or {split}",
            )
        parts.append(rx)
    return re.compile("^" + "/".join(parts) + "$")
