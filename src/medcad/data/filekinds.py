"""What kind of file a path is, by its name and first bytes: images, DICOM, videos, masks by their stem, and volume
formats medcad does not read; the checks every reader makes before it opens a file (errors name the file)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from medcad.data.tiff import is_tiff
from medcad.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".avif"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# a mask's file stem: an image's stem, then a mask word (x_mask, x_mask_1, x-seg, x_gt): pairing, layouts, ledger
MASK_STEM = re.compile(
    r"^(?P<base>.+?)[ _\-.]?(?:mask|masks|seg|segmentation|label|labels|gt|groundtruth|annotation|anno)"
    r"(?:[_\-]?\d+)?$",
    re.IGNORECASE,
)
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".m4v", ".webm", ".ts", ".m2ts", ".mts", ".3gp", ".ogv"}
    | {".flv", ".vob"}
)
VOLUME_SUFFIXES = {  # research formats of image volumes, by what their files end with (lower case)
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mnc": "MINC",
    ".hdr": "Analyze / NIfTI pair",  # only with the 348 of their header first: ENVI and Radiance write .hdr too
}
# data files of a header beside them of the same stem: Analyze's .img, MetaImage's .raw / .zraw
_DATA_OF_HEADER = {
    ".img": (".hdr", "Analyze / NIfTI pair"),
    ".raw": (".mhd", "MetaImage"),
    ".zraw": (".mhd", "MetaImage"),
}


def volume_format(path: Path) -> str | None:
    """The name of a volume format (NIfTI, MetaImage, NRRD, MINC, an Analyze / NIfTI pair) that `path` is, else None:
    nnU-Net, MONAI and the Medical Segmentation Decathlon keep images and label maps so, 2-D ones too (a slice of
    depth 1, as nnU-Net converts PNGs). By its name, but a file whose first bytes say DICOM or TIFF is not one; a
    `.hdr` is one when its header starts with 348 (its size, in either byte order), a `.img` / `.raw` / `.zraw` when
    its header (`.hdr`, `.mhd`) lies beside it."""
    name = path.name.lower()
    kind = next((kind for end, kind in VOLUME_SUFFIXES.items() if name.endswith(end)), None)
    data = _DATA_OF_HEADER.get(path.suffix.lower())
    if data is not None and path.with_suffix(data[0]).is_file():
        kind = data[1]
    if kind is None or has_dicom_preamble(path) or is_tiff(path):  # DICOM or TIFF whatever its name
        return None
    if name.endswith(".hdr"):
        try:
            with open(path, "rb") as f:
                if f.read(4) not in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
                    return None
        except OSError:
            pass  # said by its name: a file that cannot be opened is not read either way
    return kind


def volume_reason(path: Path) -> str | None:
    """Why a file of a volume format (`volume_format`) is not read, None for other files."""
    if kind := volume_format(path):
        article = "an" if kind[0] in "AEIOU" else "a"
        return (
            f"{article} {kind} file, which medcad does not read: it reads 2-D images (PNG, JPEG, TIFF, DICOM); write "
            "each slice or frame as a PNG (a label map with its class values as they are)"
        )
    return None


def is_video(path: str | Path) -> bool:
    """A video file by its suffix (`medcad.data.video` reads it)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def has_dicom_preamble(path: str | Path) -> bool:
    """True when the file starts with a 128-byte preamble and `DICM` (how DICOM Part 10 files begin)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """True when the file is DICOM: a .dcm/.dicom suffix, or the `DICM` preamble whatever its name (scanner CD
    exports name files `IM00001` or by UID)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    if p.suffix.lower() in IMAGE_SUFFIXES or not p.is_file():
        return False
    return has_dicom_preamble(p)


def not_found(path: Path) -> str:
    """Why `path` cannot be read when it does not exist: "file not found", or a link whose target has gone."""
    return f"a link to a missing file ({os.readlink(path)})" if os.path.islink(path) else "file not found"


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, not_found(path))
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
