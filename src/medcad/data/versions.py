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
    """A file's version in a cache kept on disk (fingerprints, decoded images and masks), as text: its size and
    modification and change times, and those of the other files its image is read from (`filekinds.image_parts`).
    It had been the size and modification time alone, so that a same-size copy with its modification time kept
    (`cp -p`, `rsync -t`) was served what the cache held for the file it replaced: the change time is set by the
    system, never copied. No device or inode: NFS, Lustre and FUSE mounts renumber them, and a cache shared by a
    cluster's nodes would never hit.

    Raises:
        OSError: a file cannot be stat'ed.
    """
    from medcad.data.filekinds import image_parts

    stats = [Path(f).stat() for f in (path, *image_parts(Path(path)))]
    return "|".join(f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}" for st in stats)


_KEPT: list[tuple[OrderedDict, threading.Lock]] = []  # every `per_file_version` cache, for `forget`


def forget(path: str | Path) -> None:
    """Free what every `per_file_version` cache keeps of a file as it is now, before deleting it (a server's upload
    had stayed in memory until later files pushed it out)."""
    try:
        key = file_version(path)
    except OSError:
        return
    for kept, lock in _KEPT:
        with lock:
            kept.pop(key, None)


def per_file_version(maxsize: int) -> Callable[[Callable[[Path], T]], Callable[[str | Path], T]]:
    """Memoise `fn(path)` by `file_version(path)`, keeping the last `maxsize` versions (`fn` is called with the path
    as given, so its messages name it so); a file that cannot be stat'ed is read uncached (`fn` names its problem).
    Threads asking for one version at once wait for one call (the pages of a stack are decoded side by side: each
    thread had decompressed the whole file). Exceptions are not kept. What `fn` returns is shared: return values not
    to be changed (tuples, ranges, read-only arrays). `forget(path)` frees what every such cache keeps of a file,
    `fn.cache_clear()` all `fn` keeps, `fn.cache_len()` counts it."""

    def wrap(fn: Callable[[Path], T]) -> Callable[[str | Path], T]:
        kept: OrderedDict[tuple, T] = OrderedDict()
        lock = threading.Lock()
        working: dict[tuple, threading.RLock] = {}  # a lock per version being computed (re-entrant: `fn` may ask again)

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
                own = working.setdefault(key, threading.RLock())
            with own:
                with lock:
                    if key in kept:  # computed while this thread waited
                        kept.move_to_end(key)
                        return kept[key]
                try:
                    value = fn(Path(path))
                except BaseException:
                    with lock:
                        working.pop(key, None)
                    raise
                with lock:
                    kept[key] = value
                    while len(kept) > maxsize:
                        kept.popitem(last=False)
                    working.pop(key, None)
            return value

        call.cache_clear = kept.clear  # type: ignore[attr-defined]
        call.cache_len = kept.__len__  # type: ignore[attr-defined]
        _KEPT.append((kept, lock))
        return call

    return wrap
