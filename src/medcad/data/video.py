"""Video frames: decode with OpenCV, sharpness (variance of the Laplacian), frame extraction for labelling."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from medcad.data.manifest import atomic_write_text
from medcad.errors import DataError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".m4v"})


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low values mean blur (label such frames 'unclear')."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, float, int]:
    """(capture, fps, frame count); raises DataError when the file cannot be decoded."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "video file not found")
    cap = cv2.VideoCapture(str(p))
    ok, _ = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise DataError(p, "cannot decode this video (unknown codec, corrupt or not a video file)")
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    return cap, float(fps), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def iter_frames(path: str | Path, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 frame) for every `every`-th frame."""
    cap, _, _ = open_video(path)
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % every == 0:
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


def extract_frames(video: str | Path, out: str | Path, every: int = 10, blur_threshold: float | None = None) -> Path:
    """Write every N-th frame as PNG and a manifest.csv (image, frame, sharpness, video, label).

    With `blur_threshold`, frames whose sharpness is below it get the label `unclear` (others stay unlabelled).
    Returns the manifest path.
    """
    from PIL import Image

    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    stem = Path(video).stem
    rows = []
    for i, rgb in iter_frames(video, every):
        name = f"frames/{stem}_{i:06d}.png"
        Image.fromarray(rgb).save(out / name)
        s = sharpness(rgb)
        label = "unclear" if blur_threshold is not None and s < blur_threshold else ""
        rows.append({"image": name, "frame_index": i, "sharpness": round(s, 2), "patient": stem, "label": label})
    if not rows:
        raise DataError(video, "no frames could be read")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path = out / "manifest.csv"
    atomic_write_text(path, buf.getvalue())
    return path
