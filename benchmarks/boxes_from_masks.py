"""Polyp boxes from a segmentation run's out-of-fold masks, scored with the detection metrics.

Each connected component of a predicted mask becomes a box, scored by the component's mean lesion probability;
the truth is Kvasir-SEG's box JSON. This needs no extra training and shows what the segmentation model gives as
a detector, next to the SSD runs.

    .venv/bin/python benchmarks/boxes_from_masks.py [--run runs/bench/kvasir_unet256]

Writes benchmarks/results/boxes_from_masks.json.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from common import write_result

from medcad.data.boxes import manifest_boxes
from medcad.data.layouts import load_manifest
from medcad.data.splits import load_splits
from medcad.engine.mask_results import fold_test_masks
from medcad.metrics.detection import detection_metrics

HERE = Path(__file__).resolve().parent


def mask_detections(prob: np.ndarray, min_area: int = 16) -> np.ndarray:
    """(m, 6) [x0, y0, x1, y1, score, 0]: one box per component of prob >= 0.5, scored by its mean probability."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats((prob >= 0.5).astype(np.uint8), connectivity=8)
    out = [
        [x, y, x + w, y + h, float(prob[lab == k].mean()), 0]
        for k, (x, y, w, h, area) in enumerate(stats[1:n], start=1)
        if area >= min_area
    ]
    return np.array(out, dtype=np.float64).reshape(-1, 6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=HERE.parent / "runs" / "bench" / "kvasir_unet256")
    args = ap.parse_args()
    meta = json.loads((args.run / "config.json").read_text())
    manifest = load_manifest(meta["data"])
    size = meta["image_size"]
    labels, boxes, _, _ = manifest_boxes(manifest, size)
    splits = load_splits(args.run / "splits.json", manifest)
    keys = manifest.keys
    groups_of = splits.get("groups") or {}
    dets, truths, groups = [], [], []
    for fold in splits["folds"]:
        rows, probs = fold_test_masks(args.run / f"fold_{fold['fold']}")
        for i, p in zip(rows, probs, strict=True):
            dets.append(mask_detections(p.astype(np.float32) / 255))
            truths.append(boxes[i])
            groups.append(groups_of.get(keys[i], i))
    m = detection_metrics(dets, truths, labels, groups=np.array(groups))
    result = {
        "command": ".venv/bin/python benchmarks/boxes_from_masks.py",
        "run": str(args.run),
        **{k: m[k] for k in ("ap50", "map", "iou_thresholds", "frame_level", "n_images", "n_boxes")},
        "date": datetime.now().isoformat(timespec="minutes"),
    }
    write_result((HERE / "results" / "boxes_from_masks.json"), result)
    print(json.dumps({k: m[k]["value"] for k in ("ap50", "map")}))
    print(
        json.dumps(
            {t: {k: round(v[k], 3) for k in ("precision", "recall", "f1")} for t, v in m["iou_thresholds"].items()}
        )
    )


if __name__ == "__main__":
    main()
