"""Decoded-image cache (decode + resize once per dataset and size, reused across epochs, folds and models)."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medcad.data.audit import cache_dir
from medcad.data.io import read_image
from medcad.data.manifest import Manifest
from medcad.errors import DataError

CACHE_VERSION = 1


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size, 3): area averaging when shrinking, cubic when enlarging."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


def preprocess(rgb: np.ndarray, size: int, bilateral: bool = False) -> np.ndarray:
    """The deterministic part of preprocessing: optional bilateral denoising (speckle), then resize."""
    if bilateral:
        rgb = cv2.bilateralFilter(rgb, d=7, sigmaColor=40, sigmaSpace=7)
    return resize_square(rgb, size)


def image_cache_key(manifest: Manifest, size: int, bilateral: bool) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{manifest.root.resolve()}|{size}|{bilateral}".encode())
    for i, key in enumerate(manifest.keys):
        st = manifest.image_path(i).stat()
        h.update(f"|{key}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cached_images(manifest: Manifest, size: int, *, bilateral: bool = False, progress: bool = True) -> np.ndarray:
    """All images of a manifest decoded and resized to (N, size, size, 3) uint8, memory-mapped from disk.

    The file is keyed by the dataset's files (path, size, mtime), the size and the preprocessing, so a second
    run, fold or model reads it back instead of decoding again. Written atomically.

    Raises:
        DataError: listing the unreadable images (run `medcad data audit` for the whole list).
    """
    path = cache_dir() / "images" / f"{image_cache_key(manifest, size, bilateral)}-{size}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (len(manifest), size, size, 3):
                return arr
        except (OSError, ValueError):
            pass
    out = np.empty((len(manifest), size, size, 3), np.uint8)
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            out[i] = preprocess(read_image(manifest.image_path(i), manifest.frame(i), draft=size), size, bilateral)
        except DataError as e:
            errors.append(f"{manifest.keys[i]}: {e.problem}")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        it = pool.map(one, range(len(manifest)))
        if progress:
            from rich.progress import track

            it = track(it, total=len(manifest), description=f"Decoding images at {size}px", transient=True)
        for _ in it:
            pass
    if errors:
        raise DataError(
            manifest.root,
            f"{len(errors)} image(s) cannot be read, e.g. {errors[0]}; run `medcad data audit` and fix or remove them",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class ImageDataset(Dataset):
    """Rows of a cached image array as uint8 (C, H, W) tensors with an int label, optionally augmented."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, transform=None) -> None:
        self.images, self.labels, self.rows, self.transform = images, labels, np.asarray(rows), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.rows[i]
        x = torch.from_numpy(np.array(self.images[r])).permute(2, 0, 1)  # (C, H, W) uint8, a writable copy
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[r])


def manifest_fingerprint(manifest: Manifest) -> str:
    """A short id of the sample list, stored in runs to detect that the data changed."""
    return hashlib.sha1(json.dumps(manifest.keys).encode()).hexdigest()[:12]
