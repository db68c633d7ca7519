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


def _replace_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """`path` replaced by `data` (of its size) with its modification time kept, as `cp -p` and `rsync -t` leave it."""
    before = path.stat()
    assert len(data) == before.st_size
    other = path.with_name(path.name + ".new")
    other.write_bytes(data)
    os.replace(other, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_caches_on_disk_and_a_volumes_voxel_file_follow_a_replaced_file(tmp_path: Path, monkeypatch) -> None:
    """The caches kept on disk (fingerprints, decoded images) key a file by its version, not its size and modification
    time alone: a same-size copy with its modification time kept is computed again (it had been served what the cache
    held for the file it replaced: the old image's fingerprint, its decoded pixels). A MetaImage whose `.raw` is
    rewritten, its `.mhd` untouched, is read anew."""
    import SimpleITK as sitk

    from medcad.data.datasets import image_cache_key
    from medcad.data.fingerprints import FileCache
    from medcad.data.io import read_image
    from medcad.data.layouts import load_manifest

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds" / "benign"
    root.mkdir(parents=True)
    image = root / "a.png"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(image)
    manifest = load_manifest(tmp_path / "ds")
    keys = FileCache.key(image, "benign/a.png"), image_cache_key(manifest, 16, False)
    first = image.read_bytes()
    data = bytearray(first)
    data[-20] ^= 0xFF  # another file of the same size (a byte of the IEND / IDAT tail: the key, not the decode, counts)
    _replace_keeping_size_and_mtime(image, bytes(data))
    assert FileCache.key(image, "benign/a.png") != keys[0]
    assert image_cache_key(manifest, 16, False) != keys[1]

    header = tmp_path / "vol.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8), 7, np.uint8)), str(header))
    assert read_image(header)[0, 0, 0] == 7
    _replace_keeping_size_and_mtime(tmp_path / "vol.raw", bytes([9]) * 64)
    assert read_image(header)[0, 0, 0] == 9  # read anew, though its header is as it was


def test_threads_asking_for_one_version_at_once_wait_for_one_read(tmp_path: Path) -> None:
    """Eight threads asking for one file's value at once (the pages of a stack decoded side by side) get it from one
    call, not eight (each had decompressed the whole volume); a changed file is read anew."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from medcad.data.versions import per_file_version

    calls: list[str] = []
    guard = threading.Lock()

    @per_file_version(maxsize=2)
    def slow(path: Path) -> bytes:
        with guard:
            calls.append(path.name)
        time.sleep(0.05)
        return path.read_bytes()

    f = tmp_path / "v.bin"
    f.write_bytes(b"one")
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: slow(f), range(8))) == {b"one"}
    assert calls == ["v.bin"]
    f.write_bytes(b"two!")
    assert slow(f) == b"two!" and len(calls) == 2
