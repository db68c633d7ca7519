"""Caches by file version (`medcad.data.versions`): a file is read anew when it changes, and by the name it is given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from medcad.data.media import expand_frames, file_frames


def test_a_link_is_read_by_its_own_name_and_a_replaced_file_anew(tmp_path: Path) -> None:
    """A `.tif` link to a blob without a suffix (a Hugging Face or DVC cache) is a 3-page TIFF by its name (the cache
    had read the resolved blob: one image, two pages dropped unsaid); a file replaced by one of the same size with its
    modification time kept (`cp -p`, `rsync -t`) is counted again."""
    blob = tmp_path / "blobs" / "3f9a1c"
    blob.parent.mkdir()
    tifffile.imwrite(blob, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    link = tmp_path / "ds" / "img.tif"
    link.parent.mkdir()
    link.symlink_to(blob)
    assert file_frames(blob) == ((0,), ())  # no suffix: not read as pages
    assert file_frames(link) == ((0, 1, 2), ())
    problems: list = []
    assert [r["frame"] for r in expand_frames([{"image": "img.tif"}], link.parent, problems)] == [0, 1, 2]
    assert not problems

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    assert file_frames(stack) == ((0, 1), ())
    before = stack.stat()
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.zeros((16, 32), np.uint8), photometric="minisblack")  # one page, twice as wide
    with open(other, "ab") as f:  # padded to the same size (readers ignore bytes after the last page)
        f.write(b"\0" * (before.st_size - other.stat().st_size))
    assert other.stat().st_size == before.st_size
    os.replace(other, stack)
    os.utime(stack, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert file_frames(stack) == ((0,), ())
