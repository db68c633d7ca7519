"""A tiny real detection run end to end on synthetic frames: bad boxes, train, metrics, evaluate, predict images
and a video, report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest
from typer.testing import CliRunner

from medcad.cli import app
from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.engine.train import train_run

runner = CliRunner()
FAST = TrainConfig(task="detect", image_size=64, epochs=2, batch_size=8, lr=1e-3, folds=2, val_fraction=0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_detect_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = generate_synthetic(tmp_path / "synth", n_patients=8, frames_per_patient=3, size=64, seed=2)
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    with_box = [i for i, b in enumerate(table["boxes"]) if b not in ("", "[]")]
    label = table.at[with_box[0], "label"]
    table.at[with_box[0], "boxes"] = json.dumps([[50, 50, 90, 80, label]])  # runs off the 64 x 64 frame
    table.at[with_box[1], "boxes"] = json.dumps([[10, 10, 10, 30, label], *json.loads(table.at[with_box[1], "boxes"])])
    table.to_csv(csv, index=False)

    run = tmp_path / "det"
    m = train_run(csv.parent, run, FAST, progress=False)
    problems = (run / "box_problems.txt").read_text()
    assert "outside the 64x64 image, clipped" in problems and "has no area" in problems
    assert set(m["ap50"]) == {"value", "ci95"} and 0 <= m["ap50"]["value"] <= 1
    assert m["map"]["value"] <= m["ap50"]["value"]
    assert set(m["iou_thresholds"]) == {"0.45", "0.5", "0.55"}
    assert m["frame_level"]["labels"] == ["benign", "malignant", "background"]
    assert len(m["per_fold"]) == 2 and m["evaluation"] == "out-of-fold"
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 24 and {"true_frame", "predicted_frame", "top_score", "detections"} <= set(pred)

    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ap50"]["value"] == pytest.approx(m["ap50"]["value"])
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(csv.parent), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_images"] == 24

    image = csv.parent / table.at[with_box[2], "image"]
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(out), "--threshold", "0.2", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["label"] in ("benign", "malignant", "background") and (out / f"{image.stem}_overlay.png").is_file()
    assert all(b[5] in ("benign", "malignant") and b[4] >= 0.2 for b in rows[0]["boxes"])

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for p in sorted((csv.parent / "images").glob("*.png"))[:12]:
        writer.write(cv2.imread(str(p)))
    writer.release()
    res = runner.invoke(app, ["predict", str(run), str(video), "--out", str(out)])
    assert res.exit_code == 0, res.output
    frames = pd.read_csv(out / "clip_frames.csv")
    assert len(frames) == 12 and {"label", "score", "n_boxes", "smoothed", "smoothed_score"} <= set(frames)
    assert "frames/s" in res.output and (out / "clip_annotated.mp4").stat().st_size > 0

    # export: raw head outputs in ONNX, boxes decoded in PyTorch; the boxes agree with the eager model's
    res = runner.invoke(app, ["export", str(run), "--json"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout)
    assert exported["agreement"]["model.onnx"]["box_iou_agreement"] >= 0.99 and "PyTorch" in exported["box_decoding"]
    res = runner.invoke(app, ["bench", str(run), "--backends", "torch-fp32,onnx-fp32", "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backends"]["onnx-fp32"]["agreement"] >= 0.99
    res = runner.invoke(app, ["explain", str(run), str(image), "-o", str(tmp_path / "cam.png")])
    assert res.exit_code == 0 and "EigenCAM" in res.output

    from medcad.report.html import write_report

    html = write_report(run).read_text()
    for needle in ("Lesion boxes", "AP50", "frame confusion matrix", 'alt="detections"'):
        assert needle in html, needle


def test_repeats_summarise_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    csv = generate_synthetic(tmp_path / "synth", n_patients=8, frames_per_patient=3, size=64, seed=2)
    args = ["train", str(csv.parent), "--task", "detect", "--image-size", "64", "--epochs", "1", "--folds", "2"]
    res = runner.invoke(app, [*args, "--batch-size", "8", "--repeats", "2", "--no-report", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "repeats.json").read_text())
    assert rep["seeds"] == [0, 1] and rep["summary"]["ap50"]["n"] == 2 and "0.5" in rep["summary"]["f1"]
    assert (tmp_path / "r" / "seed_1" / "splits.json").read_text() == (
        tmp_path / "r" / "seed_0" / "splits.json"
    ).read_text()


def test_undecodable_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    res = runner.invoke(app, ["data", "frames", str(bad), "--out", str(tmp_path / "frames")])
    assert res.exit_code == 2 and "broken.mp4" in res.output and "cannot" in res.output.lower()
