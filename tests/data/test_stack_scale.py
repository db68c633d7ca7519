"""A stack's pages (a TIFF's, a volume file's) decode with one scale to 8 bits: a stored value shows as one grey level
on every page, whatever range each page reaches."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcad.data.io import describe_image, image_pages, read_image
from medcad.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))


def _write(path: Path, stack: np.ndarray) -> Path:
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, stack, photometric="minisblack")  # one page per frame
    else:
        sitk.WriteImage(sitk.GetImageFromArray(stack), str(path))
    return path


# the top value a page reaches: 8-, 10-, 12-bit data written unscaled, full 16-bit data
TOPS = (200, 900, 3000, 60000)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.sampled_from([".tif", ".nii.gz", ".mha"]),
    floats=st.booleans(),
    tops=st.lists(st.sampled_from(TOPS), min_size=2, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_one_stored_value_is_one_grey_level_on_every_page(
    suffix: str, floats: bool, tops: list[int], seed: int
) -> None:
    """Each page reaches its own top; every page also holds the values 0 and 150 (and the float pages hold whole
    numbers, as an 8/16-bit image kept as float32 holds them). Decided page by page, a page reaching 200 kept its
    values while one reaching 3000 was read as 12-bit, so 150 was grey 150 on one page and 9 on the next."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(0, 150, (len(tops), 6, 7)).astype(np.uint16)
    for k, top in enumerate(tops):
        stack[k, 0, :3] = (0, 150, top)
    if floats:
        stack = stack.astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / f"stack{suffix}", stack)
        assert image_pages(path)[0] == list(range(len(tops)))
        grey = [read_image(path, k)[..., 0] for k in range(len(tops))]
        shown: dict[float, set[int]] = {}
        for k in range(len(tops)):
            for stored, g in zip(stack[k].ravel(), grey[k].ravel(), strict=True):
                shown.setdefault(float(stored), set()).add(int(g))
        assert all(len(greys) == 1 for greys in shown.values()), {v: g for v, g in shown.items() if len(g) > 1}
        assert shown[0.0] == {0}
        top = max(tops)
        assert shown[float(top)] == {round(top * 255 / _full(top))}
        notes = describe_image(path)
        assert any(f"over all {len(tops)} pages" in n for n in notes), notes


def _full(top: int) -> float:
    """The full scale the stack's top value implies: the fewest of 8, 10 and 12 bits that hold it, else 16."""
    return next((2.0**b - 1 for b in (8, 10, 12) if top < 2**b), 65535.0)


def test_an_8_bit_tiff_stack_is_not_rescaled(tmp_path: Path) -> None:
    """8-bit pages keep their values, each page as stored, and nothing is said of a scale."""
    stack = np.stack([np.full((5, 5), v, np.uint8) for v in (3, 90, 250)])
    path = _write(tmp_path / "cine.tif", stack)
    assert [int(read_image(path, k)[0, 0, 0]) for k in range(3)] == [3, 90, 250]
    assert not any("pages" in n for n in describe_image(path))


def test_a_page_that_cannot_be_decoded_fails_alone_and_the_rest_keep_one_scale(tmp_path: Path) -> None:
    """A 16-bit cine whose last page's data are damaged: that page fails as itself, the others decode with the scale
    of the pages that decode, which the notes name (the stack's scale had failed every page); a NaN pixel of a float
    stack is said as on one page; a thumbnail page keeps its own scaling."""
    stack = np.zeros((3, 8, 8), np.uint16)
    stack[:, 0, :2] = [(150, 200), (150, 900), (150, 3000)]
    path = tmp_path / "cine.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)  # page 2's compressed data zeroed
    path.write_bytes(bytes(data))
    assert [int(read_image(path, k)[0, 0, 0]) for k in range(2)] == [round(150 * 255 / 1023)] * 2  # 10-bit: 0..900
    with pytest.raises(DataError, match="cine.tif"):
        read_image(path, 2)
    assert any("over all 2 pages" in n and "page(s) 2 left out" in n for n in describe_image(path))

    floats = np.full((2, 4, 4), 100.0, np.float32)
    floats[1, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "floats.tif", floats, photometric="minisblack")
    assert any("1 pixels NaN or infinite" in n for n in describe_image(tmp_path / "floats.tif"))

    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(np.full((16, 16), 300, np.uint16), photometric="minisblack")
        tif.write(np.full((16, 16), 900, np.uint16), photometric="minisblack")
        tif.write(np.full((4, 4), 60000, np.uint16), photometric="minisblack", subfiletype=1)  # a reduced copy
    assert image_pages(tmp_path / "thumb.tif") == ([0, 1], [2])
    assert int(read_image(tmp_path / "thumb.tif", 2)[0, 0, 0]) == round(60000 * 255 / 65535)  # its own 16 bits
