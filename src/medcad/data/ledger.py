"""The ledger of a dataset read: every file under the dataset's folder and every manifest row is either used or
listed with the reason it was not.

A reader returns the rows it could use (`Manifest.table`), the rows or files it saw and could not use
(`Manifest.problems`: missing file, unknown label, ...) and the files it read for their content (`Manifest.sources`:
a CSV, a COCO or box JSON). Every other file under the root is *unread*: an image in a folder the layout does not
cover, a second image/mask folder pair, a CSV nobody read. Hidden files and folders (names starting with '.') are
not listed, as every reader skips them.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medcad.data.cache import cache_dir
from medcad.data.filekinds import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    MASK_STEM,
    VIDEO_SUFFIXES,
    file_stem,
    volume_format,
    volume_header,
)
from medcad.data.nnunet import further_channel

BROKEN_LINK = "a link to a missing file"  # what the ledger says of one
TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".xlsx", ".json", ".xml"})


def walk_files(root: Path, outputs: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every non-hidden file under `root`, sorted by folder then name, following symbolic links to folders (a link
    back to a folder already walked is not followed again, so link loops end). A link to a missing file is no file:
    left out (a reader had listed it as an image and stopped with a traceback on reading it). With `outputs`, folders
    medcad wrote (`medcad_output`) are not walked into but added there with what they are, and so are such links."""
    files: list[Path] = []
    seen: set[str] = set()
    cache = os.path.realpath(cache_dir()) if outputs is not None else ""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if outputs is not None:
            found = [(d, medcad_output(Path(dirpath) / d, cache)) for d in dirnames]
            outputs += [(Path(dirpath) / d, why) for d, why in found if why]
            dirnames[:] = [d for d, why in found if not why]
        for f in sorted(filenames):
            path = Path(dirpath) / f
            if f.startswith("."):
                continue
            if os.path.exists(path):
                files.append(path)
            elif outputs is not None:
                target = os.readlink(path) if os.path.islink(path) else "gone"
                outputs.append((path, f"{BROKEN_LINK}: nothing to read ({target})"))
    return files


def medcad_output(folder: Path, cache: str) -> str | None:
    """What a folder medcad wrote is (a run folder: its config.json beside its data_ledger.csv, both written as a run
    starts; medcad's cache folder), or None for any other folder (config.json beside splits.json is also how other
    tools leave a dataset's folder: such a folder is listed file by file); `cache`: medcad's cache folder, resolved."""
    from medcad.runfolder import RunFolder

    run = RunFolder(folder)
    if run.config.is_file() and run.ledger.is_file():
        return "a medcad run folder (its outputs, not data)"
    if os.path.realpath(folder) == cache:
        return "medcad's cache folder"
    return None


def reason_kind(reason: str) -> str:
    """A reason without its particulars, to count reasons alike together: quoted file names and paths ('C:\\x.jpg',
    which had cut the kind at its drive's colon), numbers, and parenthesised asides (nested too) go, then what follows
    a colon. E.g. "a further nnU-Net channel (channel 0001 of case 'p_7'): only channel 0000 is read" -> "a further
    nnU-Net channel"; "an image the 'csv' layout did not read" stays."""
    quoted = r"'[^']*(?:[/\\:]|\.\w{2,4})[^']*'|\"[^\"]*(?:[/\\:]|\.\w{2,4})[^\"]*\""
    text = re.sub(r"\d+", "#", re.sub(quoted, "…", reason))
    while (shorter := re.sub(r"\s*\([^()]*\)", "", text)) != text:
        text = shorter
    return text.split(":")[0].strip()


def in_voc_mask_folder(path: Path) -> bool:
    """Whether a file lies in one of Pascal VOC's segmentation folders (SegmentationClass/, SegmentationObject/,
    SegmentationClassAug/; CVAT's VOC exports keep the names)."""
    return path.parent.name.lower().startswith("segmentation")


def _unread_reason(path: Path, layout: str) -> str:
    suffix = path.suffix.lower()
    image = suffix in IMAGE_SUFFIXES or bool(volume_format(path))  # a file medcad reads as an image (DICOM aside)
    if header := volume_header(path):
        return f"the voxel data of {header.name!r} (read with its header, which this read did not use)"
    if channel := further_channel(path):
        return channel
    if (image or suffix in DICOM_SUFFIXES) and path.parent.name == "imagesTs":
        return "an nnU-Net test image (imagesTs/: no label): `medcad predict` or `evaluate --data` with labels"
    if image and MASK_STEM.match(file_stem(path)):  # BUSI's second lesion: x_mask_1.png
        return (
            f"a mask by its name that no row of the {layout!r} layout names: an image's masks are joined by '|' in its "
            "mask cell"
        )
    if layout == "voc" and image and in_voc_mask_folder(path):
        return "a Pascal VOC segmentation mask (SegmentationClass/, SegmentationObject/): --masks reads such masks"
    if image or suffix in DICOM_SUFFIXES:
        return f"an image the {layout!r} layout did not read"
    if path.name.upper() == "DICOMDIR":
        return "a DICOMDIR: the file set's index (its images are read from their own files)"
    if suffix == ".json" and _is_label_studio(path):
        return "a Label Studio export (a list of tasks), which medcad does not read: export COCO or YOLO from it"
    if suffix in TABLE_SUFFIXES:
        return f"a {suffix[1:].upper()} file no reader used"
    if suffix in VIDEO_SUFFIXES:
        return "a video: `medcad predict` predicts its frames, `medcad data frames` extracts them to label"
    return "not an image or an annotation file"


def _is_label_studio(path: Path) -> bool:
    """A Label Studio JSON / JSON-min export: a list of tasks, each with its `data` and `annotations`."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(4096).lstrip()
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("[") and '"data"' in head and ('"annotations"' in head or '"label"' in head)


@dataclass(frozen=True)
class Ledger:
    """What a read of a dataset used and what it did not.

    Attributes:
        root: the dataset folder the paths are relative to.
        used: manifest rows used (one per image, or per DICOM frame).
        left_out: (path, reason) of rows and files the reader saw and could not use.
        unread: (path, reason) of files under the root that no reader claimed.
    """

    root: Path
    used: int
    left_out: tuple[tuple[str, str], ...]
    unread: tuple[tuple[str, str], ...]

    @property
    def total(self) -> int:
        return self.used + len(self.left_out)

    def line(self) -> str:
        """One line for the console: `used N of M; K left out (reasons); J files not read (...)`."""
        out = f"used {self.used} of {self.total}"
        if self.left_out:
            kinds = Counter(reason_kind(r) for _, r in self.left_out)
            out += f"; {len(self.left_out)} left out (" + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ")"
        if self.unread:
            kinds = Counter(reason_kind(r) for _, r in self.unread)
            shown = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            folders = sum(p.endswith("/") for p, _ in self.unread)  # folders medcad wrote, one entry each
            what = f"{len(self.unread) - folders} file(s)" + (f" and {folders} folder(s)" if folders else "")
            out += f"; {what} under {self.root.resolve().name}/ not read ({shown})"
        return out

    def table(self) -> pd.DataFrame:
        """One row per file or row that was not used: path, status (left out / not read), reason."""
        rows = [(p, "left out", r) for p, r in self.left_out] + [(p, "not read", r) for p, r in self.unread]
        return pd.DataFrame(rows, columns=["path", "status", "reason"])

    def to_dict(self) -> dict:
        return {
            "used": self.used,
            "total": self.total,
            "left_out": [{"path": p, "reason": r} for p, r in self.left_out],
            "not_read": [{"path": p, "reason": r} for p, r in self.unread],
            "summary": self.line(),
        }


def make_ledger(
    root: Path, layout: str, used_files: set[str], sources: list[str], used: int, problems, walk: bool = True
) -> Ledger:
    """The ledger of one read: `used_files` (images and masks of the rows, relative to `root`), `sources` (files
    read for their content), `used` rows, and the reader's `problems`; with `walk` (a dataset folder or manifest,
    not a single image) every other file under `root` is unread, a folder medcad wrote (a run folder, its cache
    folder: `medcad_output`) as one entry, not file by file."""
    claimed = used_files | set(sources) | {p for p, _ in problems}
    unread = []
    if walk and root.is_dir():
        outputs: list[tuple[Path, str]] = []  # medcad's run and cache folders: one line each, not every file
        for f in walk_files(root, outputs):
            rel = f.relative_to(root).as_posix()
            if rel not in claimed:
                unread.append((rel, _unread_reason(f, layout)))
        for found, why in outputs:  # a link a row names (and left out as missing) is named once, as that row
            rel = found.relative_to(root).as_posix() + "/" * found.is_dir()
            if rel not in claimed:
                unread.append((rel, why))
    return Ledger(root, used, tuple((str(p), str(r)) for p, r in problems), tuple(unread))
