"""Prediction speed on this CPU: every backend side by side (medcad bench) for the default classifier and
ResNet50, plus end-to-end video prediction (decode + predict + draw + write) of a clip made from BUSI images.

    .venv/bin/python benchmarks/predict_speed.py [--run RUN]

RUN defaults to the two-stage BUSI run of benchmarks/busi_classification.py (runs/bench/busi_two_stage).
A ResNet50 run (head only, random-init backbone: no offline ImageNet weights exist for it here; speed does not
depend on the weights) is trained on BUSI once for the comparison. Writes benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import cv2
from common import write_result

from medcad.config import TrainConfig
from medcad.engine.train import train_run
from medcad.inference.bench import bench
from medcad.inference.predictor import Predictor
from medcad.inference.video import predict_video
from medcad.models.card import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"


def make_clip(path: Path, n: int = 300, size: tuple[int, int] = (560, 460)) -> Path:
    """A video of `n` frames: BUSI images shown 10 frames each (slight zoom so consecutive frames differ)."""
    files = sorted(DATA.glob("*/*).jpg"))[: n // 10 + 1]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    k = 0
    for f in files:
        img = cv2.resize(cv2.imread(str(f)), size)
        for z in range(10):
            if k == n:
                break
            m = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), 0, 1 + 0.01 * z)
            writer.write(cv2.warpAffine(img, m, size))
            k += 1
    writer.release()
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench" / "busi_two_stage")
    args = ap.parse_args()
    resnet = ROOT / "runs" / "bench" / "busi_resnet50_probe"
    if not (resnet / "metrics.json").is_file():
        train_run(DATA, resnet, TrainConfig(model="resnet50", weights="none", epochs=0, folds=5), progress=False)
    results = {
        "machine": machine_info(),
        "date": datetime.now().isoformat(timespec="minutes"),
    }
    for name, run in (("tf_efficientnet_lite0", args.run), ("resnet50", resnet)):
        results[name] = bench(run, batch=32, fold=0)
        print(
            name, json.dumps({b: round(v["images_per_s"], 1) for b, v in results[name]["backends"].items()}), flush=True
        )
    clip = make_clip(ROOT / "runs" / "bench" / "busi_clip.mp4")
    results["video"] = {}
    for backend in ("torch-bf16", "onnx-fp32"):
        p = Predictor(args.run, fold=0, backend=backend)
        results["video"][backend] = predict_video(p, clip, ROOT / "runs" / "bench" / f"video_{backend}", batch=8)
        print("video", backend, round(results["video"][backend]["frames_per_s"], 1), flush=True)
    out = HERE / "results" / "predict_speed.json"
    write_result(out, results)
    print(out)


if __name__ == "__main__":
    main()
