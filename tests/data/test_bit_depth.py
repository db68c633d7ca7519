"""16-bit PNG and TIFF images as tools write them: full-range 16-bit, 8-, 10- or 12-bit data written unscaled
(OpenCV, scanner exports), PNG's sBIT, 16-bit colour (which Pillow cuts to its high byte), EXIF orientation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from medcad.data.io import describe_image, read_image


def expected(arr: np.ndarray, bits: int) -> np.ndarray:
    """What a 16-bit array holding `bits`-bit data decodes to: its range scaled to 0..255, rounded."""
    out = np.floor(arr.astype(np.float64) * (255 / (2**bits - 1)) + 0.5).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bits=st.sampled_from([8, 10, 12, 16]),
    colour=st.booleans(),
    suffix=st.sampled_from([".png", ".tif"]),
    seed=st.integers(0, 2**16),
)
def test_unscaled_data_reads_from_its_own_range(tmp_path: Path, bits: int, colour: bool, suffix: str, seed: int):
    """However many bits the data has, as OpenCV writes a uint16 array (no sBIT), the decoded image is the data's
    own range scaled to 0..255: not near-black, and full-range 16-bit data as before."""
    rng = np.random.default_rng(seed)
    low = 2 ** (bits - 1) if bits < 16 else 4096  # the data reaches the upper half of its range
    arr = rng.integers(0, 2**bits, (6, 7, 3) if colour else (6, 7)).astype(np.uint16)
    arr.flat[0] = rng.integers(low, 2**bits)
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), arr[..., ::-1] if colour else arr)  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(path), expected(arr, bits))
    said = " ".join(describe_image(path))
    assert (f"read as {bits}-bit data" in said) if bits < 16 else ("scaled from 0..65535" in said), said


def _png_with_sbit(path: Path, arr: np.ndarray, significant: int) -> None:
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([significant]))
    Image.fromarray(arr).save(path, pnginfo=info)


def test_png_sbit_says_the_significant_bits(tmp_path: Path) -> None:
    """sBIT 12: values shifted to 16 bits (as the PNG standard asks) scale from 0..65535; unshifted values, even all
    below 256, from 0..4095."""
    data = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    _png_with_sbit(tmp_path / "shifted.png", data * 16, 12)
    np.testing.assert_array_equal(read_image(tmp_path / "shifted.png"), expected(data * 16, 16))
    dark = data // 32  # 0..126: would read as 8-bit data without sBIT
    _png_with_sbit(tmp_path / "dark.png", dark, 12)
    np.testing.assert_array_equal(read_image(tmp_path / "dark.png"), expected(dark, 12))
    assert any("sBIT says 12 significant bits, values unshifted" in n for n in describe_image(tmp_path / "dark.png"))


def _with_orientation(path: Path, orientation: int) -> None:
    """Put an eXIf chunk with this orientation before the PNG's image data, as a camera app writes it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    chunk = b"eXIf" + exif.tobytes().removeprefix(b"Exif\x00\x00")
    record = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = path.read_bytes()
    at = data.index(b"IDAT") - 4
    path.write_bytes(data[:at] + record + data[at:])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_colour_is_oriented_as_displayed(tmp_path: Path, orientation: int) -> None:
    """A 16-bit colour PNG (read by OpenCV, not Pillow) gets its EXIF orientation as Pillow applies it to the same
    image in 8 bits."""
    rgb8 = np.random.default_rng(orientation).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x16.png"), rgb8[..., ::-1].astype(np.uint16) * 257)  # full range: decodes to rgb8
    cv2.imwrite(str(tmp_path / "x8.png"), rgb8[..., ::-1])
    for name in ("x16.png", "x8.png"):
        _with_orientation(tmp_path / name, orientation)
        with Image.open(tmp_path / name) as im:
            assert im.getexif().get(0x0112, 1) == orientation
    shown = read_image(tmp_path / "x8.png")
    assert shown.shape == ((9, 5, 3) if orientation >= 5 else (5, 9, 3))
    np.testing.assert_array_equal(read_image(tmp_path / "x16.png"), shown)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from([np.int8, np.int16, np.int32, np.uint32]),
    lo=st.integers(-(2**31), 2**32 - 1),
    span=st.integers(1, 2**32 - 1),
    orientation=st.sampled_from([1, 6]),
)
def test_wide_integer_data_keeps_the_order_of_its_values(
    tmp_path: Path, dtype, lo: int, span: int, orientation
) -> None:
    """Signed, 8-bit signed and 32-bit TIFFs (a scanner's, a processing tool's export), with or without an
    orientation tag: the 8-bit image keeps the order of the values, and data that leaves 0..65535 by more than a few
    outliers spans 0..255 from its own min..max and says so. Signed -1000..1000 had been shifted to 0..2000 of 65535
    (nearly black), values above 65535 had all been white, and Pillow had read unsigned 32-bit values from 2**31 on
    as negative and signed 8-bit ones below 0 as above 127 (a gradient wrapped around)."""
    import tifffile

    info = np.iinfo(dtype)
    lo = min(max(lo, int(info.min)), int(info.max) - 1)
    hi = min(lo + span, int(info.max))
    ramp = np.linspace(lo, hi, 32 * 64).round().astype(np.int64).clip(info.min, info.max).astype(dtype)
    arr = ramp.reshape(32, 64)
    tifffile.imwrite(tmp_path / "wide.tif", arr, extratags=[(274, "H", 1, orientation, True)])
    got = read_image(tmp_path / "wide.tif")[..., 0]
    if orientation == 6:  # shown turned 90 degrees clockwise
        got = np.rot90(got, 1)
    assert (np.diff(got.ravel().astype(int)) >= 0).all()
    notes = " ".join(describe_image(tmp_path / "wide.tif"))
    a = arr.astype(np.float64)
    if "scaled from their own min..max" in notes and dtype is not np.int8:  # the ends are not the type's limits
        limit = ((a == info.min) | (a == info.max)) & ((a < 0) | (a > 65535))  # no-data markers: clipped
        ends = a[~limit]
        want = np.floor((a - ends.min()) * (255 / max(ends.max() - ends.min(), 1)) + 0.5).clip(0, 255)
        assert np.abs(got.astype(int) - want).max() <= 1
        assert f"integers {int(ends.min())}..{int(ends.max())} (beyond 0..65535)" in notes
    if dtype is np.int8:
        assert "signed 8-bit" in notes


@pytest.mark.parametrize(
    ("dtype", "top", "odd", "said"),
    [
        (np.int32, 65535, 1_000_000, "1 outlier pixel(s) beyond 0..65535 clipped"),  # 16-bit data, one stray value
        (np.uint32, 4095, 0xFFFFFFFF, "read as 12-bit data; 1 pixel(s) at the type's limit (no-data) clipped"),
        (np.uint32, 65535, 0xFFFFFFFF, "1 pixel(s) at the type's limit (no-data) clipped"),
        (np.int32, 65535, -(2**31), "1 pixel(s) at the type's limit (no-data) clipped"),
    ],
)
def test_a_no_data_value_or_outlier_does_not_decide_the_range(tmp_path: Path, dtype, top, odd, said) -> None:
    """16-bit (or 12-bit) data with one no-data marker or stray value beyond 0..65535 reads as that data, the odd
    pixel clipped and counted; it had been scaled by the odd value (the image black)."""
    import tifffile

    arr = np.linspace(0, top, 32 * 64).round().astype(dtype).reshape(32, 64)
    arr[0, 0] = odd
    tifffile.imwrite(tmp_path / "odd.tif", arr)
    got = read_image(tmp_path / "odd.tif")[..., 0]
    bits = 12 if top == 4095 else 16
    want = np.floor(arr.ravel()[1:].astype(np.float64) * (255 / (2**bits - 1)) + 0.5)
    np.testing.assert_array_equal(got.ravel()[1:], want)
    assert said in " ".join(describe_image(tmp_path / "odd.tif"))


def test_a_signed_mask_marks_its_lesion_with_any_non_zero_value(tmp_path: Path) -> None:
    """A signed 8-bit TIFF mask holding -1 on the lesion (read as such since TIFFs keep their sample type) is a
    label map whose non-zero values are lesion, as its rule says (-1 had fallen below `> 0`: an empty mask)."""
    import tifffile

    from medcad.data.masks import decode_mask

    mask = np.zeros((16, 16), np.int8)
    mask[4:8, 4:8] = -1
    tifffile.imwrite(tmp_path / "m8.tif", mask)
    lesion, how = decode_mask(tmp_path / "m8.tif")
    assert lesion.sum() == 16 and lesion[4:8, 4:8].all() and "non-zero is lesion" in how.rule
