"""Floating-point images with no-data pixels (NaN, inf), as GIS and scientific tools write them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medcad.data.pixels import scale_to_uint8


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float32, (12, 12), elements=st.floats(-1e4, 1e4, width=32)),
    holes=arrays(bool, (12, 12)),
    fill=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_no_data_pixels_leave_the_others_scaled_as_without_them(values, holes, fill) -> None:
    """The finite pixels come out as they would without the no-data ones (a 10 x 10 NaN block in a BUSI float TIFF
    had made the whole image one grey value); NaN is the lowest value, -inf and +inf the ends."""
    image = np.where(holes, np.float32(fill), values)
    got = scale_to_uint8(image)
    if holes.all():
        assert (got == 0).all()
        return
    finite = values[~holes]
    reference = scale_to_uint8(np.where(holes, finite.min() if fill != np.inf else finite.max(), values))
    assert np.array_equal(got, reference)


def test_float_tiffs_as_scientific_tools_write_them(tmp_path) -> None:
    """float32 TIFFs written by tifffile and by Pillow, with NaN and +-inf no-data pixels, read to the values the
    finite pixels give; a float64 TIFF, which Pillow cannot decode, is read by tifffile (it had been named
    'unknown or corrupt', then 'a TIFF Pillow cannot read')."""
    import tifffile
    from PIL import Image

    from medcad.data.io import describe_image, read_image

    base = np.linspace(100.0, 1043.5, 40 * 50, dtype=np.float32).reshape(40, 50)
    image = base.copy()
    image[5:10, 5:10], image[0:2, 0:2], image[20, 30] = np.nan, np.inf, -np.inf
    finite = image[np.isfinite(image)]
    lo, hi = float(finite.min()), float(finite.max())  # the range of the finite pixels alone
    filled = np.nan_to_num(image, nan=lo, posinf=hi, neginf=lo)  # float32, scaled as the reader does, in float32
    expect = np.clip((filled - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + np.float32(0.5), 0, 255)
    tifffile.imwrite(tmp_path / "tifffile.tif", image)
    tifffile.imwrite(tmp_path / "deflate.tif", image, compression="zlib")
    Image.fromarray(image, mode="F").save(tmp_path / "pillow.tif")
    for name in ("tifffile.tif", "deflate.tif", "pillow.tif"):
        got = read_image(tmp_path / name)
        assert np.array_equal(got[..., 0], expect.astype(np.uint8)) and (got[..., 0] == got[..., 2]).all(), name
        assert "30 pixels NaN or infinite" in " ".join(describe_image(tmp_path / name))
    tifffile.imwrite(tmp_path / "float64.tif", image.astype(np.float64))  # Pillow cannot: read by tifffile
    assert np.array_equal(read_image(tmp_path / "float64.tif")[..., 0], expect.astype(np.uint8))
    assert "floating-point (64-bit) pixels scaled (0..1, else own range)" in describe_image(tmp_path / "float64.tif")


@settings(max_examples=40, deadline=None)
@given(
    image=arrays(np.uint8, (9, 7)),
    as_type=st.sampled_from([np.float32, np.float64]),
    wide=st.booleans(),
)
def test_floats_holding_whole_numbers_read_as_those_integers(image, as_type, wide) -> None:
    """An 8-bit image kept as float32 (`sitk.GetImageFromArray(img.astype(np.float32))`, a float TIFF) decodes to its
    own pixels, not stretched from its min..max (up to 25 grey levels off the PNG of the same pixels); 16-bit values
    in floats as 16-bit data decode; fractional floats keep their own range."""
    from medcad.data.pixels import stored_bits, whole_number_bits

    if image.max() <= 1:
        image = image.copy()
        image[0, 0] = 200  # above 1: not a [0, 1] float image
    if wide:
        sixteen = image.astype(np.uint16) * 257  # as the integer data of a 16-bit file decode (`stored_bits`)
        expect = scale_to_uint8(sixteen, 2.0 ** stored_bits(sixteen)[0] - 1)
        assert np.array_equal(scale_to_uint8(sixteen.astype(as_type)), expect)
        return
    assert whole_number_bits(image.astype(as_type)) == 8
    assert np.array_equal(scale_to_uint8(image.astype(as_type)), image)
    half = image.astype(as_type) + as_type(0.5)
    assert whole_number_bits(half) == 0  # not whole: its own min..max, as before


def test_the_decoding_note_says_what_float64_whole_numbers_decode_as(tmp_path) -> None:
    """float64 values that are whole numbers once read in float32 (as the decoder reads them) are said to be read as
    8-bit values, as they are (the note had tested the float64 values and said "own range")."""
    import tifffile

    from medcad.data.io import describe_image, read_image

    tifffile.imwrite(tmp_path / "f64.tif", np.array([[0, 100.000000001, 200]] * 2, np.float64))
    assert list(read_image(tmp_path / "f64.tif")[0, :, 0]) == [0, 100, 200]
    assert any("whole numbers read as 8-bit values" in n for n in describe_image(tmp_path / "f64.tif"))
