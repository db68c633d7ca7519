"""Per-process caches keyed by a file's version, so that a file rewritten in place is read anew."""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def file_version(path: str | Path) -> tuple:
    """(absolute path as given, size in bytes, modification and change times in ns, device, inode) of a file: its
    identity for a cache; followed by the size, times, device and inode of each other file its image is read from
    (`filekinds.image_parts`: a MetaImage's or Analyze / NIfTI pair's voxel data file, nnU-Net's colour channels).
    The path is not resolved: two links to one file with other suffixes are read by their own names (a `.tif` link
    to a blob without one). The change time and inode catch a file replaced by one of the same size with its
    modification time kept (`cp -p`, `rsync -t`, `tar x`).

    Raises:
        OSError: the file cannot be stat'ed (not there, no permission).
    """
    p = Path(path)
    st = p.stat()
    version = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
    from medcad.data.filekinds import image_parts

    for part in image_parts(p):
        version += file_version(part)[1:]
    return version


def file_stamp(path: str | Path) -> str:
    """`file_version` without the path, as text: a file's version in a cache kept on disk (fingerprints, decoded
    images and masks), which had been its size and modification time alone, so that a same-size copy with its
    modification time kept was served what the cache held for the file it replaced.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    return "|".join(str(v) for v in file_version(path)[1:])


def per_file_version(maxsize: int) -> Callable[[Callable[[Path], T]], Callable[[str | Path], T]]:
    """Memoise `fn(path)` by `file_version(path)`, keeping the last `maxsize` versions (`fn` is called with the path
    as given, so its messages name it so); a file that cannot be stat'ed is read uncached (`fn` names its problem).
    Exceptions are not kept. What `fn` returns is shared: return values not to be changed (tuples, ranges)."""

    def wrap(fn: Callable[[Path], T]) -> Callable[[str | Path], T]:
        kept: OrderedDict[tuple, T] = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(fn)
        def call(path: str | Path) -> T:
            try:
                key = file_version(path)
            except OSError:
                return fn(Path(path))
            with lock:
                if key in kept:
                    kept.move_to_end(key)
                    return kept[key]
            value = fn(Path(path))
            with lock:
                kept[key] = value
                while len(kept) > maxsize:
                    kept.popitem(last=False)
            return value

        call.cache_clear = kept.clear  # type: ignore[attr-defined]
        return call

    return wrap
