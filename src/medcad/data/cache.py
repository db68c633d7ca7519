"""Where medcad keeps its caches (decoded images, backbone features, image fingerprints)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Folder for medcad's caches: $MEDCAD_CACHE_DIR or ~/.cache/medcad (safe to delete at any time)."""
    return Path(os.environ.get("MEDCAD_CACHE_DIR") or Path.home() / ".cache" / "medcad")
