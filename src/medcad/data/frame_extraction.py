"""Frames of a video written out for labelling (`medcad data frames`): every N-th frame as PNG with a manifest and
the decode report; sharpness (variance of the Laplacian) to mark blurred frames `unclear`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np

from medcad.atomic import atomic_write_text
from medcad.data.filekinds import volume_format
from medcad.data.video import open_video
from medcad.errors import ConfigError, DataError


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low values mean blur (label such frames 'unclear')."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def extract_frames(video: str | Path, out: str | Path, every: int = 10, blur_threshold: float | None = None) -> Path:
    """Write every N-th frame as PNG, a manifest.csv (image, video_frame, time_s, sharpness, patient, label) and
    decode.json (frames dropped as undecodable, truncation, rotation: `DecodeReport.as_dict`).

    With `blur_threshold`, frames whose sharpness is below it get the label `unclear` (others stay unlabelled).
    Returns the manifest path.

    Raises:
        ConfigError: `every` below 1.
    """
    from PIL import Image

    if every < 1:
        raise ConfigError(f"every {every}: keep every N-th frame with N >= 1 (1: every frame)")
    if kind := volume_format(Path(video)):
        raise DataError(
            video,
            f"a {kind} file: every command reads its slices or frames as pages, each an image (`<file>#k`); `data "
            "frames` extracts a video's",
        )
    out = Path(out)
    stem = Path(video).stem
    rows = []
    with open_video(video) as reader:
        (out / "frames").mkdir(parents=True, exist_ok=True)  # once the video opens: no empty folder for a bad one
        for f in reader.frames(every):
            name = f"frames/{stem}_{f.index:06d}.png"
            Image.fromarray(f.rgb).save(out / name)
            s = sharpness(f.rgb)
            label = "unclear" if blur_threshold is not None and s < blur_threshold else ""
            rows.append(
                {
                    "image": name,
                    "video_frame": f.index,  # not "frame" (a page of a multi-page file), nor an alias of it
                    "time_s": f.time_s,
                    "sharpness": round(s, 2),
                    "patient": stem,
                    "label": label,
                }
            )
        if not rows:
            raise reader.nothing_decoded()
        report = reader.report
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path = out / "manifest.csv"
    atomic_write_text(path, buf.getvalue())
    atomic_write_text(out / "decode.json", json.dumps({"video": str(video), **report.as_dict()}, indent=1))
    return path
