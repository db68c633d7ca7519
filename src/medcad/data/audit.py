"""Dataset audit: unreadable files, mask problems, empty labels, exact and near-duplicate images, leakage.

Perceptual hashes are cached per file (path, size, mtime) so that audits and duplicate-aware splits of the
same dataset decode each image once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcad.data.io import image_size, mask_is_binary, read_image
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
HASH_VERSION = 2


def cache_dir() -> Path:
    """Folder for medcad's caches: $MEDCAD_CACHE_DIR or ~/.cache/medcad."""
    return Path(os.environ.get("MEDCAD_CACHE_DIR") or Path.home() / ".cache" / "medcad")


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


def near_duplicate_pairs(fps: list[ImageFingerprint | None]) -> list[tuple[int, int]]:
    """Pairs (i < j) of near-duplicate images (see PHASH_SURE / PHASH_MAX / CORR_MIN); blockwise, small memory."""
    idx = [i for i, f in enumerate(fps) if f is not None]
    if len(idx) < 2:
        return []
    ph = _bits([fps[i].phash for i in idx]).astype(np.float32)  # (N, 64)
    ph_n = ph.sum(1)
    thumbs = np.stack([np.frombuffer(fps[i].thumb, np.uint8) for i in idx]).astype(np.float32)  # (N, THUMB*THUMB)
    res = thumbs - thumbs.mean(0)
    res -= res.mean(1, keepdims=True)
    res /= np.linalg.norm(res, axis=1, keepdims=True) + 1e-6
    pairs = []
    block = 2048
    for start in range(0, len(idx), block):
        sl = slice(start, start + block)
        dist = ph_n[sl, None] + ph_n[None, :] - 2 * ph[sl] @ ph.T  # Hamming distance via dot products
        corr = res[sl] @ res.T
        ii, jj = np.nonzero((dist <= PHASH_SURE) | ((dist <= PHASH_MAX) & (corr >= CORR_MIN)))
        ii = ii + start
        keep = ii < jj
        pairs += [(idx[a], idx[b]) for a, b in zip(ii[keep], jj[keep], strict=True)]
    return pairs


def duplicate_groups(fps: list[ImageFingerprint | str], near: bool = True) -> list[list[int]]:
    """Groups of sample indices that are exact duplicates (identical pixels) or, with `near`, near duplicates."""
    clean = [f if isinstance(f, ImageFingerprint) else None for f in fps]
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(clean):
        if f is not None:
            by_digest[f.digest].append(i)
    pairs = [(g[0], j) for g in by_digest.values() for j in g[1:]]
    if near:
        pairs += near_duplicate_pairs(clean)
    return sorted(_components(len(fps), pairs), key=lambda g: g[0])


def _check_masks(manifest: Manifest, i: int, fp: ImageFingerprint | str) -> list[tuple[str, str, str]]:
    """Problems of one sample's masks: (kind, mask path, detail)."""
    out = []
    root = manifest.root
    for mp in manifest.mask_paths(i):
        rel = mp.relative_to(root).as_posix()
        try:
            w, h = image_size(mp)
            if isinstance(fp, ImageFingerprint) and (w, h) != (fp.width, fp.height):
                out.append(("size", rel, f"mask {w}x{h} but image {fp.width}x{fp.height}"))
            if not mask_is_binary(mp):
                out.append(("non_binary", rel, "more than two values: thresholded at 127"))
        except DataError as e:
            out.append(("unreadable", rel, e.problem))
    return out


def audit(manifest: Manifest, splits: dict | None = None, progress: bool = False) -> dict:
    """Audit a dataset; returns a JSON-ready dict of findings (paths relative to the manifest root)."""
    keys = manifest.keys
    fps = fingerprints(manifest, progress=progress)
    unreadable = [[keys[i], f] for i, f in enumerate(fps) if isinstance(f, str)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        mask_findings = list(pool.map(lambda i: _check_masks(manifest, i, fps[i]), range(len(manifest))))
    masks = defaultdict(list)
    for i, found in enumerate(mask_findings):
        for kind, rel, detail in found:
            masks[kind].append([keys[i], rel, detail])
    labels = manifest.table["label"].tolist()
    exact = duplicate_groups(fps, near=False)
    near = duplicate_groups(fps, near=True)
    cross = [g for g in near if len({labels[i] for i in g}) > 1]
    result = {
        "n_images": len(manifest),
        "manifest_problems": [list(p) for p in manifest.problems],
        "unreadable": unreadable,
        "unreadable_masks": masks["unreadable"],
        "mask_size_mismatch": masks["size"],
        "non_binary_masks": masks["non_binary"],
        "empty_labels": [keys[i] for i, lab in enumerate(labels) if not lab],
        "exact_duplicates": [[keys[i] for i in g] for g in exact],
        "near_duplicates": [[keys[i] for i in g] for g in near],
        "cross_label_duplicates": [[keys[i] for i in g] for g in cross],
        "cross_label_duplicate_labels": [sorted({labels[i] for i in g}) for g in cross],
        "n_images_in_duplicate_groups": sum(len(g) for g in near),
    }
    if splits is not None:
        result["leakage"] = split_leakage(manifest, splits, [[keys[i] for i in g] for g in near])
    return result


def split_leakage(manifest: Manifest, splits: dict, dup_groups: list[list[str]]) -> list[dict]:
    """For each fold, the duplicate groups and patients that have members both in training and in test."""
    patients = dict(zip(manifest.keys, manifest.table["patient"], strict=True))
    out = []
    for fold in splits["folds"]:
        train = set(fold["train"]) | set(fold.get("val", []))
        test = set(fold["test"])
        straddle = [g for g in dup_groups if set(g) & train and set(g) & test]
        p_train = {patients[k] for k in train if patients.get(k)}
        p_test = {patients[k] for k in test if patients.get(k)}
        out.append(
            {"fold": fold["fold"], "duplicate_groups_across": straddle, "patients_across": sorted(p_train & p_test)}
        )
    return out
