"""DICOM grey values as PS3.3 C.11 displays them (rescale, window or VOI LUT, MONOCHROME1), checked against the
standard's formulas written out here, not against pydicom; frames of a cine read one at a time; truncated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from conftest import write_dicom
from medcad.data.io import describe_image, read_image
from medcad.errors import DataError

RAMP = np.arange(0, 4096, 8, dtype=np.uint16).reshape(16, 32)  # 12-bit stored values


def window_display(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255: below c - 0.5 - (w-1)/2 black, above c - 0.5 + (w-1)/2 white."""
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    slope=st.sampled_from([1.0, 0.5, 2.0]),
    intercept=st.sampled_from([0.0, -1024.0, 100.0]),
    centre=st.floats(-500, 3000),
    width=st.floats(16, 4000),
    monochrome1=st.booleans(),
)
def test_rescale_then_window(tmp_path: Path, slope, intercept, centre, width, monochrome1) -> None:
    """The window is in rescaled units (as CT's HU windows are): the rescale applies first."""
    path = write_dicom(
        tmp_path / "w.dcm",
        RAMP[None],
        BitsStored=12,
        HighBit=11,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=round(centre, 2),
        WindowWidth=round(width, 2),
        PhotometricInterpretation="MONOCHROME1" if monochrome1 else "MONOCHROME2",
    )
    want = window_display(RAMP * slope + intercept, round(centre, 2), round(width, 2))
    want = 255 - want if monochrome1 else want
    got = read_image(path)[..., 0].astype(float)
    assert np.abs(got - want).max() <= 1.0  # rounding only
    said = describe_image(path)
    assert any("window applied" in n for n in said)
    assert any("rescale applied" in n for n in said) is (slope != 1 or intercept != 0)


def test_a_voi_lut_scales_from_its_entries_range(tmp_path: Path) -> None:
    """A VOI LUT Sequence with 8-bit entries over 12-bit data: the LUT's output 0..255 is the display range (it had
    been scaled from the 12-bit stored range: all but black)."""
    lut = (np.sqrt(np.arange(1024) / 1023) * 255).astype(np.uint16)  # 1024 entries from stored value 1000
    item = Dataset()
    item.LUTDescriptor = [1024, 1000, 8]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data, as US values
    path = write_dicom(tmp_path / "lut.dcm", RAMP[None], BitsStored=12, HighBit=11, VOILUTSequence=[item])
    want = lut[np.clip(RAMP.astype(int) - 1000, 0, 1023)]
    np.testing.assert_array_equal(read_image(path)[..., 0], want)
    assert any("VOI LUT applied" in n for n in describe_image(path))


def test_each_frame_of_a_cine_and_a_truncated_one(tmp_path: Path) -> None:
    """Frame k of a cine is its k-th frame; a file cut short gives its whole frames and names the others."""
    frames = np.stack([np.full((8, 10), 4000 * k, np.uint16) for k in range(1, 6)])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    for k in range(5):
        assert read_image(path, frame=k)[0, 0, 0] == round(4000 * (k + 1) * 255 / 65535)
    with pytest.raises(DataError, match="has 5 frame"):
        read_image(path, frame=5)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 8 * 10 * 2 - 20])  # frames 0-2 whole, frame 3 partly, frame 4 gone
    assert read_image(cut, frame=2)[0, 0, 0] == read_image(path, frame=2)[0, 0, 0]
    with pytest.raises(DataError, match=r"truncated DICOM: .* frames 0-2 are whole, frame 3 is not"):
        read_image(cut, frame=3)


@pytest.mark.parametrize("said", ["RGB", "MONOCHROME2"])
def test_a_jpeg_whose_header_says_another_colour_space_is_read_as_its_data_say_and_said(
    tmp_path: Path, said: str
) -> None:
    """A JPEG Baseline DICOM in YCbCr (a JFIF marker) whose header says RGB or MONOCHROME2, as some exporters write:
    read as YCbCr, as pydicom decides from the data; `data inspect` says so (pydicom's warning had reached stderr
    raw on every frame read, and inspect said nothing)."""
    import io
    import os
    import subprocess
    import sys

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    import medcad

    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[8:24, 8:24, 2] = 150
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", np.zeros((1, 32, 32), np.uint16)))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, said, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "x.dcm")
    got = read_image(tmp_path / "x.dcm")
    read = f"from medcad.data.io import read_image; read_image({str(tmp_path / 'x.dcm')!r})"
    env = {**os.environ, "PYTHONPATH": str(Path(medcad.__file__).parents[1])}  # this tree's medcad, from any cwd
    done = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True)
    assert "Photometric" not in done.stderr  # a user's stderr, as a command leaves it
    for y, x in ((2, 2), (16, 16)):  # the colours away from the square's edge (chroma is subsampled), not YCbCr
        assert np.abs(got[y, x].astype(int) - rgb[y, x]).max() <= 8, (y, x, got[y, x])
    (note,) = [n for n in describe_image(tmp_path / "x.dcm") if "contradicts" in n]
    assert note == (
        f"DICOM Photometric Interpretation '{said}' contradicts its JPEG data (a JFIF marker: YCbCr): decoded as "
        "YBR_FULL_422, as they say"
    )
