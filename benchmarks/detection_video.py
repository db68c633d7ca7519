"""A procedure-like video through `medcad data frames` and `medcad predict` with a Kvasir run of any task (the
detector, or the segmenter: the same predictor contract).

The clip is made from the detector's held-out Kvasir-SEG test images (never seen in training): each image is shown
for a few frames with a slow pan, and every third image is motion-blurred, as frames of a real withdrawal are.
Then: frames are extracted with a sharpness score (blurred ones labelled "unclear"), and the detector runs on
every frame of the video with boxes drawn, as `medcad predict RUN clip.mp4` does.

    .venv/bin/python benchmarks/detection_video.py [--run runs/bench/kvasir_det_anchors]
    .venv/bin/python benchmarks/detection_video.py --run runs/bench/kvasir_seg_quick

Writes benchmarks/results/detection_video.json (segment_video.json for a segmentation run) and runs/bench/video/.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from common import write_result

from medcad.data.frame_extraction import extract_frames
from medcad.data.io import read_image
from medcad.data.layouts import load_manifest
from medcad.data.splits import load_splits
from medcad.inference.outputs import BACKGROUND, NO_LESION
from medcad.inference.registry import load_predictor
from medcad.inference.video import predict_video
from medcad.models.card import machine_info

HERE = Path(__file__).resolve().parent
SIZE = (640, 512)  # a 5:4 endoscopy frame
FPS = 25


def make_clip(images: list[Path], path: Path, frames_per_image: int = 8) -> dict:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    blurred = 0
    for k, image in enumerate(images):
        rgb = cv2.resize(read_image(image), (SIZE[0] + 64, SIZE[1] + 64), interpolation=cv2.INTER_AREA)
        for f in range(frames_per_image):
            dx = 8 * f  # slow pan across the frame
            frame = rgb[32 : 32 + SIZE[1], dx : dx + SIZE[0]]
            if k % 3 == 2:  # motion blur: the frames a labeller would call "unclear"
                frame = cv2.filter2D(frame, -1, np.full((1, 21), 1 / 21))
                blurred += 1
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return {"frames": len(images) * frames_per_image, "blurred_frames": blurred, "fps": FPS, "size": list(SIZE)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=HERE.parent / "runs" / "bench" / "kvasir_det_anchors")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--backend", default="torch-bf16")
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "bench" / "video")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((args.run / "config.json").read_text())
    manifest = load_manifest(meta["data"])
    test = load_splits(args.run / "splits.json", manifest)["folds"][0]["test"][: args.images]
    clip = args.out / "kvasir_clip.mp4"
    made = make_clip([manifest.root / k for k in test], clip)

    frames_csv = extract_frames(clip, args.out / "frames", every=4, blur_threshold=100.0)
    frames = pd.read_csv(frames_csv, keep_default_na=False)
    blurred = (frames["video_frame"] // 8) % 3 == 2  # the frames make_clip blurred
    predictor = load_predictor(args.run, threshold=0.5, backend=args.backend)
    summary = predict_video(predictor, clip, args.out, batch=8, smooth=5)
    per_frame = pd.read_csv(summary["csv"])
    result = {
        "commands": [
            f"medcad data frames {clip} --every 4 --blur-threshold 100 --out {args.out / 'frames'}",
            f"medcad predict {args.run} {clip} --out {args.out} --backend {args.backend}",
        ],
        "clip": made,
        "frames_extracted": len(frames),
        "labelled_unclear": int((frames["label"] == "unclear").sum()),
        "sharpness_median_sharp_frames": float(frames["sharpness"][~blurred].median()),
        "sharpness_median_blurred_frames": float(frames["sharpness"][blurred].median()),
        "unclear_that_were_blurred": int(((frames["label"] == "unclear") & blurred).sum()),
        "blurred_extracted": int(blurred.sum()),
        "video": summary,
        "task": predictor.task,
        "frames_with_a_polyp": float((~per_frame["label"].isin([BACKGROUND, NO_LESION])).mean()),
        "machine": machine_info(),
        "date": datetime.now().isoformat(timespec="minutes"),
    }
    name = "detection_video.json" if predictor.task == "detect" else f"{predictor.task}_video.json"
    name = name if args.backend == "torch-bf16" else name.replace(".json", f"_{args.backend}.json")
    write_result((HERE / "results" / name), result)
    print(json.dumps({k: result[k] for k in ("frames_extracted", "labelled_unclear", "frames_with_a_polyp")}))
    print(json.dumps({k: summary[k] for k in ("frames_predicted", "frames_per_s", "latency_ms_per_frame")}))


if __name__ == "__main__":
    main()
