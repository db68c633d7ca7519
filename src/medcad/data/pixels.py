"""From stored sample values to 8-bit RGB: the bit-depth policy of `medcad.data.io` (its module docstring). 8-bit data
is kept; integers scale from their range (16-bit files: `stored_bits` decides which); floats in [0, 1] by 255, floats
of whole numbers as those integers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np


def scale_to_uint8(arr: np.ndarray, full_scale: float | None = None, low: float = 0.0) -> np.ndarray:
    """uint8 from any array: 8-bit as is; integers from low..low + full_scale (`integer_scale` gives the range of
    16-bit and wider data; default: the dtype's range, 0..65535 for wider types; signed data below 0 from its own
    min..max), values outside it clipped; floats in [0, 1] times 255, floats that are whole numbers within 0..65535
    as the integers they hold (`whole_number_bits`), other floats from their own min..max, all over the finite
    values (NaN is taken as the lowest, -inf and +inf as the ends: a few no-data pixels had made the whole image one
    grey value)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if low and np.issubdtype(arr.dtype, np.integer):
        a = (arr.astype(np.int64) - int(low)).astype(np.float32)  # exact: float32 holds 24 bits, these values 32
    else:
        a = arr.astype(np.float32) - np.float32(low)
    if full_scale is None:
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            # PIL gives 16-bit PNG/TIFF as uint16 or as int32 ("I" mode) holding 0..65535
            full_scale = 65535.0 if arr.dtype.itemsize >= 2 and info.min <= 0 < 65535 <= info.max else info.max
            if arr.size and arr.min() < 0:  # signed data below 0 (int8: wider types go through `integer_scale`)
                lo = float(a.min())
                a -= lo
                full_scale = max(float(a.max()), 1.0)
        else:
            finite = np.isfinite(a)
            if not finite.all():  # no-data markers: NaN at the lowest value, +-inf at the ends of the range
                if not finite.any():
                    return np.zeros(arr.shape, np.uint8)
                values = a[finite]
                lo, hi = float(values.min()), float(values.max())
                a = np.clip(np.where(np.isnan(a), lo, a), lo, hi)
            decided = float_range(a)
            if decided is None:  # one value, neither in [0, 1] nor a whole number
                return np.zeros(arr.shape, np.uint8)
            lo, full_scale, _ = decided
            if lo:
                a = a - lo
    elif np.issubdtype(arr.dtype, np.floating) and not np.isfinite(a).all():  # a range given (a stack's): NaN at
        a = np.nan_to_num(a, nan=0.0, posinf=full_scale, neginf=0.0)  # its lowest, +-inf at its ends
    return np.clip(a * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)


def float_range(a: np.ndarray) -> tuple[float, float, str] | None:
    """How finite float values scale to 8 bits: (low, full scale, in words): values in [0, 1] times 255, whole
    numbers within 0..65535 as those integers (`whole_number_bits`), else from their own min..max; None for values
    all one, which none of these reads (`scale_to_uint8` gives 0)."""
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0, "floats in 0..1 times 255"
    if bits := whole_number_bits(a):
        return 0.0, 2.0**bits - 1, f"floats of whole numbers read as {bits}-bit values"
    if hi <= lo:
        return None
    return lo, hi - lo, f"floats from their own min..max ({lo:g}..{hi:g})"


def stack_scale(values: np.ndarray, path: Path, pages: int) -> tuple[float, float, str] | None:
    """How a stack's values, all its pages' at once, scale to 8 bits, for every page alike: (low, full scale, in
    words), by the rule one image's values follow (`integer_scale`, `float_range`); None for 8-bit values. Decided
    page by page, one acquisition's frames had come out at other brightnesses (a 16-bit page whose values fit 8 bits
    kept them, the next, reaching 300, was read as 10-bit: 250 -> 62; a float page of 0 / 1 as 0 / 255 beside dark
    pages).

    Args:
        values: every page's values, flattened (any shape: only the values count).
        path: the file, named in the words.
        pages: how many pages they come from, said in the words.
    """
    if values.dtype in (np.uint8, np.int8, bool) or not values.size:
        return None
    if np.issubdtype(values.dtype, np.integer):
        decided = integer_scale(values, path, "")
    else:
        finite = values[np.isfinite(values)].astype(np.float32)
        decided = float_range(finite) if finite.size else None
    if decided is None:
        return None
    return decided[0], decided[1], "; ".join([f"{decided[2]}, over all {pages} pages", *nonfinite_notes(values)])


UNSCALED_BITS = (8, 10, 12)  # data of these depths is often written unscaled in 16-bit files


def whole_number_bits(a: np.ndarray) -> int:
    """For floating-point data (finite) that holds whole numbers within 0..65535, above 1: the bits its values are
    read from, as integer data's (`stored_bits`: 8 for 0..255); else 0. An 8-bit image kept as float32 (as
    `sitk.GetImageFromArray(img.astype(np.float32))` keeps it) had been stretched from its own min..max, up to 25
    grey levels off the same pixels as a PNG."""
    if not a.size or not np.issubdtype(a.dtype, np.floating):
        return 0
    a = a.astype(np.float32, copy=False)  # as `scale_to_uint8` decodes: float64 data is read in float32
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi <= 1 or hi > 65535 or not np.array_equal(a, np.floor(a)):
        return 0
    return 8 if hi <= 255 else stored_bits(a.astype(np.uint16))[0]


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


OUTLIER_SHARE = 0.001  # integer data this sparse beyond 0..65535 is outliers (clipped), not the data's range


def integer_scale(arr: np.ndarray, path: Path, fmt: str) -> tuple[float, float, str] | None:
    """How integer data of 16 bits or more (PIL gives 16-bit TIFFs as int32) scales to 8 bits: (low, full scale,
    what was decided), for `scale_to_uint8(arr, full, low)`; None for other data.

    - values all in 0..65535: `stored_bits` (16-bit data, or 8/10/12-bit data written unscaled);
    - beyond it, values at the type's limits (no-data markers such as 0xFFFFFFFF) and up to `OUTLIER_SHARE` of the
      pixels outside 0..65535 are outliers, clipped: the rest decides as above (one stray value had made the image
      black);
    - else the data's own min..max (signed data, 32-bit data), without the type's-limit values.
    """
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize >= 2 and arr.size):
        return None
    significant = png_significant_bits(path) if fmt == "PNG" else None
    inside = (arr >= 0) & (arr <= 65535)
    if inside.all():
        bits, why = stored_bits(arr, significant)
        return 0.0, 2.0**bits - 1, f"16-bit {why}"
    info = np.iinfo(arr.dtype)
    limit = ((arr == info.min) | (arr == info.max)) & ~inside
    rest = arr[~limit]
    clipped = f"{int(limit.sum())} pixel(s) at the type's limit (no-data) clipped" if limit.any() else ""
    outside = int((~inside & ~limit).sum())
    if inside.any() and outside <= OUTLIER_SHARE * arr.size:
        bits, why = stored_bits(arr[inside], significant)
        extra = [clipped] + ([f"{outside} outlier pixel(s) beyond 0..65535 clipped"] if outside else [])
        return 0.0, 2.0**bits - 1, "; ".join([f"16-bit {why}", *filter(None, extra)])
    lo, hi = (int(rest.min()), int(rest.max())) if rest.size else (int(arr.min()), int(arr.max()))
    said = f"integers {lo}..{hi} (beyond 0..65535) scaled from their own min..max"
    return float(lo), float(max(hi - lo, 1)), "; ".join(filter(None, [said, clipped]))


def to_rgb(arr: np.ndarray, full_scale: float | None = None, low: float = 0.0) -> np.ndarray:
    arr = scale_to_uint8(arr, full_scale, low)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # drop alpha


def scaling_notes(arr: np.ndarray, path: Path, fmt: str) -> list[str]:
    """How decoded samples other than 8-bit unsigned ones scale to 8 bits, in words (`io.describe_image`)."""
    scale = integer_scale(arr, path, fmt)
    if scale is not None:
        return [scale[2]]
    if arr.dtype == np.int8:
        return ["signed 8-bit values scaled from 0..127, or from their own min..max where below 0"]
    if not np.issubdtype(arr.dtype, np.floating):
        return []
    finite = arr[np.isfinite(arr)]
    if bits := whole_number_bits(finite):
        notes = [f"floating-point ({arr.dtype.itemsize * 8}-bit) pixels of whole numbers read as {bits}-bit values"]
    else:
        notes = [f"floating-point ({arr.dtype.itemsize * 8}-bit) pixels scaled (0..1, else own range)"]
    return notes + nonfinite_notes(arr)


def nonfinite_notes(arr: np.ndarray) -> list[str]:
    """How NaN and infinite floats decode, in words, where `arr` holds any; else []."""
    bad = int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.floating) else 0
    return [f"{bad} pixels NaN or infinite: NaN read as the lowest value, -inf/+inf as the ends"] if bad else []
