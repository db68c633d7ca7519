"""What kind of file a path is, by its name and first bytes: images, DICOM, videos, volume formats (NIfTI,
MetaImage...), masks by their stem, the stem images and masks are paired by; the checks every reader makes before it
opens a file (errors name the file)."""

from __future__ import annotations

import functools
import json
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
NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net image files: <case>_0000, <case>_0001
NNUNET_IMAGE_FOLDERS = ("imagesTr", "imagesTs", "imagesVal")  # nnU-Net's raw image folders
NNUNET_LABELS = "dataset.json"  # beside an nnU-Net dataset's image folders: its channels and classes
_RGB_NAMES = ({"r", "red"}, {"g", "green"}, {"b", "blue"})  # a channel named so, in this order, is that colour
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
# the first 4 bytes of an Analyze / NIfTI-1 (348) or NIfTI-2 (540) header, in either byte order
_NIFTI_SIZES = (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
# what a volume's voxel data file can end with, where a header beside it names it (Analyze's .img, MetaImage's .raw /
# .zraw, NRRD's detached .raw / .raw.gz)
_DATA_SUFFIXES = frozenset({".img", ".raw", ".zraw", ".gz", ".bin", ".dat"})
_DATA_FIELD = re.compile(r"^(?:ElementDataFile\s*=|data ?file\s*:)\s*(?P<name>\S[^\r\n]*?)\s*$", re.I | re.M)


def file_suffix(path: str | Path) -> str:
    """A file's suffix in lower case, a compressed NIfTI's two together (`case_0000.nii.gz` -> `.nii.gz`)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") and len(name) > 7 else Path(name).suffix


def file_stem(path: str | Path) -> str:
    """A file's name without `file_suffix` (`case_0000.nii.gz` -> `case_0000`, where `Path.stem` keeps `.nii`): the
    name images and masks are paired by."""
    name = Path(path).name
    return name[: len(name) - len(suffix)] if (suffix := file_suffix(name)) else name


def without_suffix(path: Path) -> Path:
    """`path` with `file_stem` for its name (a relative path's folders kept)."""
    return path.with_name(file_stem(path))


def volume_format(path: Path) -> str | None:
    """The name of a volume format (NIfTI, MetaImage, NRRD, MINC, an Analyze / NIfTI pair's header) that `path` is,
    else None (`medcad.data.volumes` reads them): nnU-Net, MONAI and the Medical Segmentation Decathlon keep images and
    label maps so, 2-D ones too (a slice of depth 1, as nnU-Net converts PNGs). By its name, but a file whose first
    bytes say DICOM or TIFF is not one, and a `.hdr` is one when its header starts with 348 (its size, in either byte
    order; 540, a NIfTI-2 pair's). A header's voxel data file (`volume_header`) is not one: it is read with its
    header."""
    name = path.name.lower()
    kind = next((kind for end, kind in VOLUME_SUFFIXES.items() if name.endswith(end)), None)
    if kind is None or has_dicom_preamble(path) or is_tiff(path):  # DICOM or TIFF whatever its name
        return None
    if name.endswith(".hdr"):
        try:
            with open(path, "rb") as f:
                if f.read(4) not in _NIFTI_SIZES:
                    return None
        except OSError:
            pass  # said by its name: a file that cannot be opened fails as itself when read
    return kind


def volume_data(header: Path) -> Path | None:
    """The voxel data file of a volume header, where it is a file of its own beside it: an Analyze / NIfTI pair's
    `x.img` beside `x.hdr`, the file a MetaImage `.mhd` names in `ElementDataFile` or a detached NRRD `.nhdr` in
    `data file` (None for LOCAL data, lists and patterns of files, for a file named but not there, and for every
    other file)."""
    found = named_volume_data(header)
    return found if found is not None and found.is_file() else None


def named_volume_data(header: Path) -> Path | None:
    """The voxel data file a volume header names or implies (`volume_data`), whether or not it is there."""
    suffix = header.suffix.lower()
    if suffix == ".hdr":
        if not volume_format(header):
            return None
        packed = header.with_suffix(".img.gz")  # a compressed pair, as ITK reads it
        return packed if packed.is_file() and not header.with_suffix(".img").is_file() else header.with_suffix(".img")
    if suffix not in (".mhd", ".nhdr"):
        return None
    try:
        with open(header, "rb") as f:
            text = f.read(8192).decode("latin-1")
    except OSError:
        return None
    m = _DATA_FIELD.search(text)
    name = m["name"] if m else ""
    name = name.replace("\\", "/")
    if not name or name.upper().startswith(("LOCAL", "LIST")) or "%" in name or Path(name).is_absolute():
        return None  # inline data, a list or pattern of files, or a path elsewhere
    return header.parent / name


def volume_header(path: Path) -> Path | None:
    """The volume header beside `path` whose voxel data `path` is (`volume_data`), else None: a header of the same
    stem first, else the headers of its folder, read once per version of the folder (the ledger asks of each file
    it names: globbing the folder per file had cost 83 s for 2000 unread `.raw` files)."""
    if path.suffix.lower() not in _DATA_SUFFIXES or volume_format(path):
        return None
    packed = next((end for end in (".raw.gz", ".img.gz") if path.name.lower().endswith(end)), None)
    stem = path.name[: -len(packed)] if packed else path.stem
    for header in (path.with_name(stem + end) for end in (".hdr", ".mhd", ".nhdr")):
        if header.is_file() and volume_data(header) == path:
            return header
    try:
        st = path.parent.stat()
    except OSError:
        return None
    found = _data_files_in(str(path.parent), st.st_mtime_ns, st.st_ctime_ns).get(path.name)
    return path.parent / found if found else None


@functools.lru_cache(maxsize=8)
def _data_files_in(folder: str, *version: int) -> dict[str, str]:
    """{voxel data file name: its header's name} of the MetaImage and detached NRRD headers in `folder`."""
    out = {}
    for header in sorted(Path(folder).glob("*.mhd")) + sorted(Path(folder).glob("*.nhdr")):
        data = volume_data(header)
        if data is not None and data.parent == header.parent:
            out[data.name] = header.name
    return out


def _channel_names(dataset_json: Path) -> tuple[str, ...]:
    """The channel names of an nnU-Net dataset.json in channel order (v2's "channel_names", v1's and the Decathlon's
    "modality": {"0": "Red", ...}), () when it has none or cannot be read; parsed once per version of the file (a v1
    dataset.json lists every case: it is asked for each image's version). By its stat here, not
    `versions.per_file_version`: `versions.file_version` asks this module for a file's parts, and the project's
    import contract (import-linter, lazy imports counted) forbids the circle."""
    try:
        st = dataset_json.stat()
    except OSError:
        return ()
    return _parsed_channel_names(str(dataset_json), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=16)
def _parsed_channel_names(path: str, *version: int) -> tuple[str, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        names = (data.get("channel_names") or data.get("modality")) if isinstance(data, dict) else None
        ordered = sorted((int(k), str(v)) for k, v in names.items()) if isinstance(names, dict) else []
    except (OSError, ValueError, TypeError):
        return ()
    return tuple(v for _, v in ordered) if [k for k, _ in ordered] == list(range(len(ordered))) else ()


def colour_channels(path: Path) -> tuple[Path, Path] | None:
    """The green and blue files of an RGB image that nnU-Net v1 keeps as three (`<case>_0000`, `_0001`, `_0002` in its
    image folders, as its `convert_2d_image_to_nifti` splits a PNG's colours, with the dataset.json beside them
    naming the channels Red, Green, Blue or R, G, B) for the red one, `<case>_0000`, there or not (a missing one is
    an error where the image is read, not a grey image); None for every other file. They are read together as one
    RGB image (`medcad.data.volumes`); channel 0000 alone had been read as a grey image."""
    m = NNUNET_CHANNEL.match(file_stem(path))
    if not m or m["channel"] != "0000" or path.parent.name not in NNUNET_IMAGE_FOLDERS:
        return None
    names = _channel_names(path.parent.parent / NNUNET_LABELS)
    if len(names) != 3 or any(n.strip().lower() not in want for n, want in zip(names, _RGB_NAMES, strict=True)):
        return None
    suffix = path.name[len(m["case"]) + len("_0000") :]  # as written (`.nii.gz`, `.NII.GZ`)
    green, blue = (path.with_name(f"{m['case']}_{k:04d}{suffix}") for k in (1, 2))
    return (green, blue) if volume_format(path) else None


def image_parts(path: Path) -> tuple[Path, ...]:
    """The files besides `path` that its image is read from: a volume header's voxel data file (`volume_data`), the
    green and blue files of an RGB image nnU-Net split in three (`colour_channels`); () for most files."""
    parts = (volume_data(path), *(colour_channels(path) or ()))
    return tuple(p for p in parts if p is not None and p.is_file())


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
