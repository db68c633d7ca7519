"""Kvasir-SEG polyp detection (SSDlite on tf_efficientnet_lite0), one grouped 80/20 holdout split shared by
repeated runs with different seeds: AP50, mAP@[.5:.95], precision/recall/F1 at IoU 0.45/0.5/0.55, the frame-level
decision, wall time, and mean ± sd over the seeds.

    .venv/bin/python benchmarks/detection.py [--repeats 3] [--data PATH]

Resumable (finished runs are read back). Writes benchmarks/results/detection.json and runs/bench/kvasir_det/.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from common import write_result

from medcad.config import TrainConfig
from medcad.engine.train import train_repeats
from medcad.models.card import machine_info

HERE = Path(__file__).resolve().parent
KVASIR = HERE.parent.parent / "shared" / "data" / "kvasir-seg"
CFG = TrainConfig(
    task="detect",
    image_size=256,
    epochs=12,
    batch_size=16,
    lr=5e-4,
    patience=6,
    augment="light",
    holdout=0.2,
    folds=None,
    threads=2,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=KVASIR)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "bench" / "kvasir_det_repeats")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rep = train_repeats(args.data, args.out, CFG, args.repeats)
    runs = {}
    for run in rep["runs"]:
        m = json.loads((Path(run) / "metrics.json").read_text())
        keep = ("ap50", "map", "iou_thresholds", "frame_level", "ap50_per_class", "n_images", "n_boxes")
        runs[Path(run).name] = {**{k: m[k] for k in keep}, "speed": m["per_fold"][0]["speed"]}
    result = {
        "command": "medcad train ../shared/data/kvasir-seg --task detect --image-size 256 --epochs 12 "
        f"--batch-size 16 --lr 5e-4 --patience 6 --augment light --holdout 0.2 --repeats {args.repeats}",
        "wall_seconds_this_session": time.perf_counter() - t0,
        "runs": runs,
        "summary": rep["summary"],
        "settings": CFG.to_dict(),
        "machine": machine_info(),
        "date": datetime.now().isoformat(timespec="minutes"),
    }
    result_path = HERE / "results" / "detection.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    write_result(result_path, result)
    print(json.dumps(rep["summary"], indent=1))


if __name__ == "__main__":
    main()
