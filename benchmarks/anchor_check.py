"""How well a detector's default boxes fit a dataset's boxes: default-box widths, and per true box the number of
default boxes at IoU >= 0.5 and the best IoU (SSD trains a box from those matches).

    .venv/bin/python benchmarks/anchor_check.py [--data ../shared/data/kvasir-seg] [--size 256] [--data-scales]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from medcad.config import TrainConfig
from medcad.data.boxes import manifest_boxes
from medcad.data.layouts import load_manifest
from medcad.models.detection import anchor_scales, detector_from_config

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "kvasir-seg")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data-scales", action="store_true", help="scales from the boxes (what training uses)")
    args = ap.parse_args()
    manifest = load_manifest(args.data)
    labels, boxes, _, _ = manifest_boxes(manifest, args.size)
    scales = anchor_scales(boxes, args.size) if args.data_scales else None
    model = detector_from_config(
        TrainConfig(task="detect", image_size=args.size, weights="none"), len(labels), scales
    ).eval()
    print("default-box scales", model.medcad_config["anchor_scales"])
    x = torch.zeros(1, 3, args.size, args.size)
    feats = list(model.backbone(x).values())
    anchors = model.anchor_generator(ImageList(x, [(args.size, args.size)]), feats)[0]
    widths = (anchors[:, 2] - anchors[:, 0]).numpy()
    true = np.concatenate([b[:, :4] for b in boxes[: args.n] if len(b)])
    iou = box_iou(torch.from_numpy(true).float(), anchors)
    matches = (iou >= 0.5).sum(1).numpy()
    q = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1]
    print("feature maps", [tuple(f.shape[-2:]) for f in feats], "default boxes", len(anchors))
    print("default-box widths, quantiles", dict(zip(q, np.quantile(widths, q).round(1), strict=True)))
    print("true-box widths, quantiles", dict(zip(q, np.quantile(true[:, 2] - true[:, 0], q).round(1), strict=True)))
    print("default boxes at IoU >= 0.5 per true box", dict(zip(q, np.quantile(matches, q), strict=True)))
    print("true boxes without any match", float((matches == 0).mean()))


if __name__ == "__main__":
    main()
