"""Reading images, DICOM frames and masks into numpy arrays, with errors that name the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medcad.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
MASK_THRESHOLD = 127  # JPEG masks are not strictly binary: a pixel is lesion above this value


def is_dicom(path: str | Path) -> bool:
    """True when the path looks like a DICOM file (by suffix, or a `DICM` preamble for suffix-less files)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    if p.suffix == "" and p.is_file():
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:] == b"DICM"
    return False


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any integer or float array to uint8; 8-bit input is returned as is."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # drop alpha


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")


def _read_pil(path: Path, draft: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB" if im.mode != "L" else "L", (draft, draft))  # fast DCT-domain downscale
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im)
            elif im.mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif im.mode == "LA":
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from e
    except OSError as e:  # truncated or corrupt data
        raise DataError(path, f"corrupt image data ({e})") from e
    return arr


def read_dicom_frames(path: str | Path) -> np.ndarray:
    """All frames of a DICOM file as uint8, shape (F, H, W, 3)."""
    import pydicom
    from pydicom.pixels import apply_voi_lut, convert_color_space

    p = Path(path)
    _check_file(p)
    try:
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files
        raise DataError(p, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if n_frames == 1:
        arr = arr[None]
    if photometric.startswith("YBR") and samples == 3:
        arr = convert_color_space(arr, photometric, "RGB", per_frame=True)
    if samples == 1:
        try:
            arr = apply_voi_lut(arr, ds)
        except Exception:  # no usable VOI LUT: keep raw values
            pass
        if photometric == "MONOCHROME1":
            arr = arr.max() - arr
    arr = _to_uint8(np.asarray(arr))
    if samples == 1:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def read_image(path: str | Path, frame: int | None = None, draft: int | None = None) -> np.ndarray:
    """Read one image as RGB uint8 (H, W, 3).

    Args:
        path: PNG/JPEG/TIFF/BMP (8 or 16 bit; grey, RGB or RGBA) or DICOM.
        frame: frame index for multi-frame DICOM.
        draft: if given, JPEGs may be decoded at a reduced scale whose sides stay >= draft (fast).

    Raises:
        DataError: naming the file and the problem.
    """
    p = Path(path)
    _check_file(p)
    if is_dicom(p):
        frames = read_dicom_frames(p)
        idx = 0 if frame is None else int(frame)
        if not 0 <= idx < len(frames):
            raise DataError(p, f"has {len(frames)} frame(s); frame {idx} does not exist")
        return frames[idx]
    return _to_rgb(_read_pil(p, draft))


def read_mask(paths: str | Path | Sequence[str | Path]) -> np.ndarray:
    """Read one or more mask files and return their union as bool (H, W); > 127 counts as lesion.

    Raises:
        DataError: a file is unreadable, or the masks of one image differ in size.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    union: np.ndarray | None = None
    for path in paths:
        p = Path(path)
        _check_file(p)
        arr = _read_pil(p, None)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        m = _to_uint8(arr) > MASK_THRESHOLD if arr.dtype != np.uint8 else arr > MASK_THRESHOLD
        if union is None:
            union = m
        elif union.shape != m.shape:
            raise DataError(
                p, f"mask size {m.shape[1]}x{m.shape[0]} differs from {paths[0]} ({union.shape[1]}x{union.shape[0]})"
            )
        else:
            union |= m
    if union is None:
        raise ValueError("read_mask needs at least one path")
    return union


def image_size(path: str | Path, frame: int | None = None) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    p = Path(path)
    _check_file(p)
    if is_dicom(p):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as e:
            raise DataError(p, f"unreadable DICOM header ({type(e).__name__}: {e})") from e
    try:
        with Image.open(p) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(p, "not a readable image (unknown or corrupt format)") from e


def mask_is_binary(path: str | Path) -> bool:
    """True when a mask file holds only two values (0 and one other)."""
    arr = _read_pil(Path(path), None)
    return len(np.unique(arr)) <= 2
