"""Per-process caches keyed by a file's version, so that a file rewritten in place is read anew."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def file_version(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, size in bytes, modification time in ns) of a file: its identity for a cache.

    Raises:
        OSError: the file cannot be stat'ed (not there, no permission).
    """
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def per_file_version(maxsize: int) -> Callable[[Callable[[Path], T]], Callable[[str | Path], T]]:
    """Memoise `fn(path)` by `file_version(path)`, keeping the last `maxsize` versions; a file that cannot be stat'ed
    is read uncached (`fn` names its problem). Exceptions are not kept. What `fn` returns is shared: return values not
    to be changed (tuples, ranges)."""

    def wrap(fn: Callable[[Path], T]) -> Callable[[str | Path], T]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(path: str, size: int, mtime_ns: int) -> T:
            return fn(Path(path))

        @functools.wraps(fn)
        def call(path: str | Path) -> T:
            try:
                version = file_version(path)
            except OSError:
                return fn(Path(path))
            return cached(*version)

        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return call

    return wrap
