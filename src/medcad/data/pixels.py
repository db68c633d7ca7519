"""From stored sample values to 8-bit RGB: the bit-depth policy of `medcad.data.io` (its module docstring). 8-bit data
is kept; integers scale from their range (16-bit files: `stored_bits` decides which); floats in [0, 1] by 255."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np


def scale_to_uint8(arr: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    """uint8 from any array: 8-bit as is; integers from 0..full_scale (default: the dtype's range, 0..65535 for
    wider types; data with values below 0 or above 65535 from its own min..max, as floats outside [0, 1]); floats in
    [0, 1] times 255, other floats from their own min..max. (Signed values -1000..1000 had been shifted to 0..2000 of
    65535: nearly black; 32-bit values above 65535 had all been white.)"""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float32)
    if full_scale is None:
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            # PIL gives 16-bit PNG/TIFF as uint16 or as int32 ("I" mode) holding 0..65535
            full_scale = 65535.0 if arr.dtype.itemsize >= 2 and info.min <= 0 < 65535 <= info.max else info.max
            if arr.size and (arr.min() < 0 or arr.max() > 65535):  # beyond 16 bits: its own range, as floats are
                lo = int(arr.min())  # subtracted exactly: float32 holds 24 bits, these values up to 32
                a = (arr.astype(np.int64) - lo).astype(np.float32)
                full_scale = max(float(int(arr.max()) - lo), 1.0)
        else:
            lo, hi = float(a.min()), float(a.max())
            if lo >= 0 and hi <= 1:
                full_scale = 1.0
            else:
                if hi <= lo:
                    return np.zeros(arr.shape, np.uint8)
                a = a - lo
                full_scale = hi - lo
    return np.clip(a * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)


UNSCALED_BITS = (8, 10, 12)  # data of these depths is often written unscaled in 16-bit files


def stored_bits(arr: np.ndarray, significant: int | None = None) -> tuple[int, str]:
    """The bits a 16-bit image's values are scaled from, and why. `significant`: a PNG's sBIT (its significant
    bits): values below 2**significant were written unscaled, else shifted to 16 bits as the PNG standard asks.
    Without it, the fewest of `UNSCALED_BITS` that hold every value (a full-range 16-bit image reaching less than
    4096 of 65535 would be all but black), else 16.

    Returns:
        (bits, reason): e.g. (12, "values all below 4096 (max 4001): read as 12-bit data").
    """
    top = int(arr.max()) if arr.size else 0
    if significant and significant < 16:
        if top < 2**significant:
            return significant, f"sBIT says {significant} significant bits, values unshifted (max {top})"
        return 16, f"sBIT says {significant} significant bits, shifted to 16"
    for bits in UNSCALED_BITS:
        if top < 2**bits:
            return bits, f"values all below {2**bits} (max {top}): read as {bits}-bit data"
    return 16, "scaled from 0..65535"


def png_significant_bits(path: str | Path) -> int | None:
    """The largest colour entry of a PNG's sBIT chunk (before its image data), or None without one."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"sBIT":
                entries = f.read(length)
                colour = entries[:3] if length >= 3 else entries[:1]  # RGB(A): 3 colours; grey(+alpha): 1
                return max(colour) if colour else None
            f.seek(length + 4, os.SEEK_CUR)
    return None


def sixteen_bit_range(arr: np.ndarray, path: Path, fmt: str) -> tuple[int, str] | None:
    """`stored_bits` of a 16-bit decoded array: integers of 16 bits or more, all in 0..65535 (PIL gives 16-bit
    TIFFs as int32); None for other data."""
    wide = np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize >= 2
    if not (wide and arr.size and 0 <= arr.min() and arr.max() < 65536):
        return None
    return stored_bits(arr, png_significant_bits(path) if fmt == "PNG" else None)


def to_rgb(arr: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    arr = scale_to_uint8(arr, full_scale)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # drop alpha
