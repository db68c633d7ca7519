"""Where medcad keeps its caches (decoded images, backbone features, image fingerprints), and the progress bar of
filling them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cache_dir() -> Path:
    """Folder for medcad's caches: $MEDCAD_CACHE_DIR or ~/.cache/medcad (safe to delete at any time)."""
    return Path(os.environ.get("MEDCAD_CACHE_DIR") or Path.home() / ".cache" / "medcad")


def filling(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """`items`, with a progress bar that is gone when done, on a terminal only: elsewhere (a log file, CI) Rich's
    transient bar had left an empty line in the output for each cache filled."""
    from rich.console import Console

    if not Console().is_terminal:
        return iter(items)
    from rich.progress import track

    return iter(track(items, total=total, description=description, transient=True))
