"""Segmentation and multitask benchmarks on the real datasets, 5-fold CV grouped by near-duplicate groups.

    .venv/bin/python benchmarks/segmentation.py kvasir_unet256            # Kvasir-SEG, U-Net lite0, 256 px
    .venv/bin/python benchmarks/segmentation.py busi_mt_unet128 busi_mt_attention128 ...

Each named setting trains one run (resumable: rerun the same command after an interruption) and adds its figures
to benchmarks/results/segmentation.json: Dice and IoU with cluster-bootstrap 95 % CIs (all images, and lesion
images only), accuracy and macro AUC for multitask, per-fold mean ± sd, wall time, the settings and the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from common import write_result

from medcad.config import TrainConfig
from medcad.engine.train import train_run
from medcad.models.card import machine_info

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
KVASIR = SHARED / "kvasir-seg"
BUSI = SHARED / "busi" / "Dataset_BUSI_with_GT"

SEG = TrainConfig(task="segment", augment="kvasir", batch_size=16, lr=3e-4, patience=4, threads=2)
BUSI_MT = SEG.replace(task="multitask", augment="light", missing_masks="empty", image_size=128, epochs=10)
SETTINGS: dict[str, tuple[Path, TrainConfig]] = {
    "kvasir_unet256": (KVASIR, SEG.replace(arch="unet", image_size=256, epochs=8, patience=3)),
    "busi_mt_unet128": (BUSI, BUSI_MT.replace(arch="unet")),
    "busi_mt_unetpp128": (BUSI, BUSI_MT.replace(arch="unetpp")),
    "busi_mt_attention128": (BUSI, BUSI_MT.replace(arch="attention-unetpp")),
    "busi_mt_vgg11_128": (BUSI, BUSI_MT.replace(arch="unet-vgg11")),
    "busi_mt_unet64": (BUSI, BUSI_MT.replace(arch="unet", image_size=64)),
    "busi_mt_unet256": (BUSI, BUSI_MT.replace(arch="unet", image_size=256)),
}
KEYS = ("dice", "iou", "accuracy", "macro_f1", "macro_auc")
SEG_KEYS = ("dice_lesion", "iou_lesion", "dice_pooled", "precision", "recall", "empty_images")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+", choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "bench")
    args = ap.parse_args()
    result_path = HERE / "results" / "segmentation.json"
    for name in args.names:
        data, cfg = SETTINGS[name]
        t0 = time.perf_counter()
        m = train_run(data, args.out / name, cfg, progress=False)
        seg = m["segmentation"]
        results = json.loads(result_path.read_text()) if result_path.is_file() else {}
        results[name] = {
            "data": str(data),
            "wall_seconds_this_session": time.perf_counter() - t0,
            "train_seconds": sum(f["speed"].get("train_seconds", 0) for f in _fold_results(args.out / name)),
            **{k: m[k] for k in KEYS if k in m},
            **{k: seg[k] for k in SEG_KEYS if k in seg},
            "fold_summary": {**seg["fold_summary"], **m.get("fold_summary", {})},
            "settings": cfg.to_dict(),
            "machine": machine_info(),
            "date": datetime.now().isoformat(timespec="minutes"),
        }
        result_path.parent.mkdir(parents=True, exist_ok=True)
        write_result(result_path, results)
        print(name, json.dumps({k: results[name].get(k) for k in KEYS}), flush=True)


def _fold_results(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("fold_*/result.json"))]


if __name__ == "__main__":
    main()
