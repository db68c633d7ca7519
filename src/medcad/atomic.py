"""Atomic writes: the files medcad writes whole (results, manifests, model files, checkpoints, caches, masks,
exports) are written to a temporary file beside each, in the same folder, and renamed over it only once complete.
A run stopped or killed mid-write leaves the file as it was, never a truncated one; and a rewritten file is a new
file (a new inode), so a hard link to the old one (`engine.resume`'s snapshot of best.ckpt) keeps the old bytes.

The same folder matters: a temporary file in $TMPDIR (fsspec's, which Lightning's checkpoint writer uses: Lightning
issue #21253) is copied into place when $TMPDIR is on another filesystem than the run folder (a mounted data disk,
a container's volume), which truncates and rewrites the existing file in place: neither atomic nor a new file.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)  # read once, at import: setting it back and forth later would race with other threads
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the file at; renamed over `path` when the block ends, removed when it
    raises. The temporary name ends in `path`'s suffix (writers that pick a format by it, numpy's and PIL's, write
    the same format), and the file gets the permissions any new file gets (0666 less the umask, as `open` gives).

    Not flushed to disk (no fsync): a killed process never leaves a partial file; a power cut may lose the newest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError:  # a file system that refuses chmod (some network and FUSE mounts): mkstemp's 0600 stays
        pass
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def leftovers(path: str | Path) -> list[Path]:
    """The temporary files `atomic_path` left beside `path` when a kill stopped it mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*{glob.escape(path.suffix)}"))


_NAME_MAX = 255  # bytes in a file name: ext4, XFS, Btrfs, NTFS (in UTF-16 units), APFS


def _temp_prefix(path: Path) -> str:
    """'.<stem>.' with the stem cut so that the temporary name (prefix, mkstemp's 8 characters, suffix) fits in a
    file name wherever `path`'s own does: a 250-byte name must not fail for its temporary one."""
    room, stem = _NAME_MAX - len(os.fsencode(path.suffix)) - 8 - 2, path.stem
    while len(os.fsencode(stem)) > room and stem:
        stem = stem[:-1]  # whole characters: a name stays valid UTF-8
    return f".{stem}."


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
