"""Videos: frame extraction with sharpness, frame-by-frame prediction with smoothing, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from medcad.cli import app

runner = CliRunner()


def make_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_frames_and_video_prediction(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    images = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))]
    blurred = [cv2.GaussianBlur(im, (9, 9), 5) for im in images[:4]]
    video = make_video(tmp_path / "clip.mp4", (images + blurred) * 2)

    res = runner.invoke(
        app, ["data", "frames", str(video), "--every", "4", "--out", str(tmp_path / "frames"), "--blur-threshold", "50"]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "frames" / "manifest.csv")))
    assert len(rows) == 8 and all(float(r["sharpness"]) >= 0 for r in rows)
    assert (tmp_path / "frames" / rows[0]["image"]).is_file()

    res = runner.invoke(app, ["predict", str(tiny_run), str(video), "--out", str(tmp_path / "pred"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)[0]
    assert summary["frames_predicted"] == 32 and summary["frames_per_s"] > 0
    per_frame = list(csv.DictReader(open(summary["csv"])))
    assert [int(r["frame"]) for r in per_frame] == list(range(32))
    assert {r["smoothed"] for r in per_frame} <= {"lesion", "normal"}
    cap = cv2.VideoCapture(summary["annotated"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 32


def test_undecodable_video_is_named(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2000)
    res = runner.invoke(app, ["predict", str(tiny_run), str(bad)])
    assert res.exit_code == 2 and "broken.mp4: cannot decode this video" in res.output
    res = runner.invoke(app, ["data", "frames", str(bad)])
    assert res.exit_code == 2 and "cannot decode" in res.output
