"""Image fingerprints for duplicate checks: size, a digest of the pixels, a 64-bit perceptual hash and two grey
thumbnails of each image, cached per file (path, size, mtime) so that audits, duplicate-aware splits and external
evaluations of the same dataset decode each image once (`medcad.data.duplicates` compares them)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcad.atomic import atomic_write_text
from medcad.data.cache import cache_dir, filling
from medcad.data.io import read_image
from medcad.data.manifest import Manifest
from medcad.data.versions import file_stamp
from medcad.errors import DataError

THUMB = 32
STATIC_GRID = 64
HASH_VERSION = 7  # 3: images decoded with their orientation tag applied; 4: a 64x64 thumbnail for static regions;
# 5: TIFFs read by tifffile (`medcad.data.tiff`; the image cache's version 6); 6: floats of whole numbers as integers
# (the image cache's version 9); 7: a volume stack's pages scaled alike (version 10)


@dataclass(frozen=True)
class ImageFingerprint:
    """What the audit needs of one image: its size, a digest of its pixels, a 64-bit perceptual hash and two
    grey thumbnails."""

    width: int
    height: int
    digest: str
    phash: int
    thumb: bytes  # (THUMB, THUMB) uint8 grey thumbnail
    grid: bytes = b""  # (STATIC_GRID, STATIC_GRID) uint8 grey thumbnail (box filter), for static regions


def fingerprint(path: Path, frame: int | None = None) -> ImageFingerprint:
    """Decode one image fully (which finds corrupt files) and hash it. Raises DataError."""
    import imagehash
    from PIL import Image

    rgb = read_image(path, frame=frame)
    gray = Image.fromarray(rgb).convert("L")
    digest = hashlib.sha1(rgb.tobytes() + bytes(str(rgb.shape), "ascii")).hexdigest()
    ph = int(str(imagehash.phash(gray)), 16)
    thumb = np.asarray(gray.resize((THUMB, THUMB), Image.BILINEAR), np.uint8).tobytes()
    grid = np.asarray(gray.resize((STATIC_GRID, STATIC_GRID), Image.BOX), np.uint8).tobytes()
    return ImageFingerprint(rgb.shape[1], rgb.shape[0], digest, ph, thumb, grid)


class FileCache:
    """A JSON cache of one value (a JSON list) per sample of a dataset root's files, keyed by the sample's key and
    its file's version (`versions.file_stamp`: size, modification and change times): a changed or replaced file is
    computed again.
    `kind` names what is kept (a folder of the cache), `version` its form: a new version starts a new cache file.
    Puts from several threads are safe (one dict item each); `save` writes the file atomically, and not at all where
    the cache folder is read-only."""

    def __init__(self, root: Path, kind: str, version: str | int) -> None:
        tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir() / kind / f"{tag}-v{version}.json"
        try:
            self.data: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    @staticmethod
    def key(path: Path, key: str) -> str:
        """The cache key of sample `key` in file `path` as it is now (`versions.file_stamp`): taken once, before the
        file is read, so a fingerprint is never filed under a later version of its file."""
        return f"{key}|{file_stamp(path)}"

    def get(self, cache_key: str) -> list | None:
        return self.data.get(cache_key) or None

    def put(self, cache_key: str, value: list) -> None:
        self.data[cache_key] = value
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            try:
                atomic_write_text(self.path, json.dumps(self.data))
            except OSError:  # a read-only home must not stop an audit
                pass


def _encoded(fp: ImageFingerprint) -> list:
    return [
        fp.width,
        fp.height,
        fp.digest,
        fp.phash,
        base64.b64encode(fp.thumb).decode(),
        base64.b64encode(fp.grid).decode(),
    ]


def _decoded(v: list) -> ImageFingerprint:
    return ImageFingerprint(v[0], v[1], v[2], v[3], base64.b64decode(v[4]), base64.b64decode(v[5]))


def per_sample(
    manifest: Manifest, cache: FileCache, compute: Callable[[int], list], workers: int = 4, progress: str | None = None
) -> list[list | str]:
    """`compute(i)` (a JSON list) for every sample i of `manifest`, taken from `cache` where its file is unchanged and
    kept there otherwise; a sample whose file cannot be read (DataError, OSError) gives its problem as a string.

    Args:
        progress: a progress bar's title (None: no bar).
    """
    keys = manifest.keys

    def one(i: int) -> list | str:
        try:
            cache_key = cache.key(manifest.image_path(i), keys[i])  # one stat, before the read
            hit = cache.get(cache_key)
            if hit is not None:
                return hit
            value = compute(i)
        except (DataError, OSError) as e:
            return getattr(e, "problem", str(e))
        cache.put(cache_key, value)
        return value

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL and OpenCV work without holding the GIL
        it = pool.map(one, range(len(manifest)))
        if progress:
            it = filling(it, len(manifest), progress)
        out = list(it)
    cache.save()
    return out


def fingerprints(manifest: Manifest, workers: int = 4, progress: bool = False) -> list[ImageFingerprint | str]:
    """Fingerprint every sample (cached); an unreadable one gives its problem as a string instead."""
    cache = FileCache(manifest.root, "fingerprints", HASH_VERSION)
    found = per_sample(
        manifest,
        cache,
        lambda i: _encoded(fingerprint(manifest.image_path(i), manifest.frame(i))),
        workers,
        "Hashing images" if progress else None,
    )
    return [v if isinstance(v, str) else _decoded(v) for v in found]
