"""Exact and near-duplicate images: fingerprints (cached), the links that join images, groups and diagnosis.

Perceptual hashes are cached per file (path, size, mtime) so that audits and duplicate-aware splits of the
same dataset decode each image once.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcad.data.cache import cache_dir
from medcad.data.io import read_image
from medcad.data.manifest import Manifest, atomic_write_text
from medcad.errors import DataError

# Near duplicates: perceptual hashes (64 bits) within PHASH_SURE bits, or within PHASH_MAX bits and a 32x32
# thumbnail that correlates >= CORR_MIN with the other once the dataset's mean thumbnail is subtracted (so that
# black borders and text overlays shared by every frame of a device do not make unrelated frames look alike).
# Tuned by eye on BUSI (true pairs up to 14 bits apart) and Kvasir-SEG (unrelated frames from 6 bits apart).
PHASH_SURE = 4
PHASH_MAX = 14
CORR_MIN = 0.9
THUMB = 32
LOW_CONTENT_STD = 4.0  # grey levels (of 255) in the 32x32 thumbnail
HASH_VERSION = 3  # 3: images decoded with their orientation tag applied


@dataclass(frozen=True)
class ImageFingerprint:
    """What the audit needs of one image: its size, a digest of its pixels and two 64-bit perceptual hashes."""

    width: int
    height: int
    digest: str
    phash: int
    thumb: bytes  # (THUMB, THUMB) uint8 grey thumbnail


def fingerprint(path: Path, frame: int | None = None) -> ImageFingerprint:
    """Decode one image fully (which finds corrupt files) and hash it. Raises DataError."""
    import imagehash
    from PIL import Image

    rgb = read_image(path, frame=frame)
    gray = Image.fromarray(rgb).convert("L")
    digest = hashlib.sha1(rgb.tobytes() + bytes(str(rgb.shape), "ascii")).hexdigest()
    ph = int(str(imagehash.phash(gray)), 16)
    thumb = np.asarray(gray.resize((THUMB, THUMB), Image.BILINEAR), np.uint8).tobytes()
    return ImageFingerprint(rgb.shape[1], rgb.shape[0], digest, ph, thumb)


class FingerprintCache:
    """JSON cache of fingerprints for the files of one dataset root, keyed by relative path + size + mtime."""

    def __init__(self, root: Path) -> None:
        tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir() / "fingerprints" / f"{tag}-v{HASH_VERSION}.json"
        try:
            self.data: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    @staticmethod
    def _key(path: Path, key: str) -> str:
        st = path.stat()
        return f"{key}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, path: Path, key: str) -> ImageFingerprint | None:
        v = self.data.get(self._key(path, key))
        return ImageFingerprint(v[0], v[1], v[2], v[3], base64.b64decode(v[4])) if v else None

    def put(self, path: Path, key: str, fp: ImageFingerprint) -> None:
        self.data[self._key(path, key)] = [
            fp.width,
            fp.height,
            fp.digest,
            fp.phash,
            base64.b64encode(fp.thumb).decode(),
        ]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            try:
                atomic_write_text(self.path, json.dumps(self.data))
            except OSError:  # a read-only home must not stop an audit
                pass


def fingerprints(manifest: Manifest, workers: int = 4, progress: bool = False) -> list[ImageFingerprint | str]:
    """Fingerprint every sample (cached); an unreadable one gives its problem as a string instead."""
    cache = FingerprintCache(manifest.root)
    keys = manifest.keys

    def one(i: int) -> ImageFingerprint | str:
        path = manifest.image_path(i)
        try:
            hit = cache.get(path, keys[i])
            if hit is not None:
                return hit
            fp = fingerprint(path, manifest.frame(i))
        except (DataError, OSError) as e:
            return getattr(e, "problem", str(e))
        cache.put(path, keys[i], fp)
        return fp

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
        it = pool.map(one, range(len(manifest)))
        if progress:
            from rich.progress import track

            it = track(it, total=len(manifest), description="Hashing images", transient=True)
        out = list(it)
    cache.save()
    return out


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _bits(values: list[int]) -> np.ndarray:
    return np.unpackbits(np.array(values, dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(bool)


@dataclass(frozen=True)
class Link:
    """Two images judged near duplicates: positions i < j, perceptual-hash distance (bits of 64) and the
    correlation of their thumbnails after the dataset's mean thumbnail is subtracted (exact copies: 0 and 1.0)."""

    i: int
    j: int
    distance: int
    correlation: float


def low_content(fp: ImageFingerprint) -> bool:
    """A nearly uniform frame (probe lifted, black frame): its thumbnail's grey values vary by < LOW_CONTENT_STD.

    Such frames look alike whatever the patient, so they are never linked as duplicates (else one blank frame
    per video would chain every video of a dataset into one group); the audit lists them.
    """
    return float(np.frombuffer(fp.thumb, np.uint8).std()) < LOW_CONTENT_STD


def near_duplicate_links(fps: list[ImageFingerprint | None]) -> list[Link]:
    """Links (i < j) between near-duplicate images (see PHASH_SURE / PHASH_MAX / CORR_MIN); low-content frames
    are left out; blockwise, small memory."""
    idx = [i for i, f in enumerate(fps) if f is not None and not low_content(f)]
    if len(idx) < 2:
        return []
    ph = _bits([fps[i].phash for i in idx]).astype(np.float32)  # (N, 64)
    ph_n = ph.sum(1)
    thumbs = np.stack([np.frombuffer(fps[i].thumb, np.uint8) for i in idx]).astype(np.float32)  # (N, THUMB*THUMB)
    res = thumbs - thumbs.mean(0)
    res -= res.mean(1, keepdims=True)
    res /= np.linalg.norm(res, axis=1, keepdims=True) + 1e-6
    links = []
    block = 2048
    for start in range(0, len(idx), block):
        sl = slice(start, start + block)
        dist = ph_n[sl, None] + ph_n[None, :] - 2 * ph[sl] @ ph.T  # Hamming distance via dot products
        corr = res[sl] @ res.T
        ii, jj = np.nonzero((dist <= PHASH_SURE) | ((dist <= PHASH_MAX) & (corr >= CORR_MIN)))
        for a, b in zip(ii, jj, strict=True):
            if a + start < b:
                links.append(Link(idx[a + start], idx[b], int(round(dist[a, b])), round(float(corr[a, b]), 3)))
    return links


def duplicate_links(fps: list[ImageFingerprint | str], near: bool = True) -> list[Link]:
    """Links between exact duplicates (identical pixels) and, with `near`, near duplicates; nearly uniform frames
    (`low_content`) are linked to nothing: a black frame says nothing about whose it is."""
    clean = [f if isinstance(f, ImageFingerprint) else None for f in fps]
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(clean):
        if f is not None and not low_content(f):
            by_digest[f.digest].append(i)
    links = [Link(g[0], j, 0, 1.0) for g in by_digest.values() for j in g[1:]]
    if near:
        links += near_duplicate_links(clean)
    return links


def duplicate_groups(fps: list[ImageFingerprint | str], near: bool = True) -> list[list[int]]:
    """Groups of sample indices that are exact duplicates (identical pixels) or, with `near`, near duplicates."""
    pairs = [(x.i, x.j) for x in duplicate_links(fps, near)]
    return sorted(_components(len(fps), pairs), key=lambda g: g[0])


def large_groups(
    manifest: Manifest, groups: list[list[int]], links: list[Link], min_fraction: float = 0.2, shown: int = 8
) -> list[dict]:
    """Duplicate groups holding at least `min_fraction` of the images and spanning several patients (or, without
    patient ids, top folders): a collapsed grouping. With them, the links that join different patients (folders),
    weakest first.

    Returns:
        [{"size", "fraction", "spans": {"patients" or "folders": n}, "joining_links": [{"a", "b", "distance",
        "correlation"}], "n_joining_links"}], largest first.
    """
    n = len(manifest)
    keys = manifest.keys
    if manifest.has("patient"):
        unit, owner = "patients", manifest.table["patient"].tolist()
    else:
        unit, owner = "folders", [k.split("/")[0] if "/" in k else "." for k in keys]
    out = []
    for g in sorted(groups, key=len, reverse=True):
        if len(g) < max(3, min_fraction * n):
            break
        members = set(g)
        joining = [x for x in links if x.i in members and owner[x.i] != owner[x.j]]
        if not joining:  # one patient's (or folder's) own frames: grouping them is right
            continue
        joining.sort(key=lambda x: (-x.distance, x.correlation))
        out.append(
            {
                "size": len(g),
                "fraction": round(len(g) / n, 3),
                "spans": {unit: len({owner[i] for i in g})},
                "n_joining_links": len(joining),
                "joining_links": [
                    {"a": keys[x.i], "b": keys[x.j], "distance": x.distance, "correlation": x.correlation}
                    for x in joining[:shown]
                ],
            }
        )
    return out
