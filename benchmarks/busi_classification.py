"""BUSI 3-class classification, 5-fold CV grouped by near-duplicate groups: accuracy, macro F1, macro AUC (95 % CI)
and wall time, for the frozen-feature linear probe and the full two-stage schedule of the default backbone.

    .venv/bin/python benchmarks/busi_classification.py [--only probe|two_stage] [--data PATH]

Writes benchmarks/results/busi_classification.json (and the run folders under runs/bench/).
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
DATA = HERE.parent.parent / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
SETTINGS = {
    "probe": TrainConfig(epochs=0),
    "two_stage": TrainConfig(),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--only", choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "bench")
    args = ap.parse_args()
    result_path = HERE / "results" / "busi_classification.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {}
    for name, cfg in SETTINGS.items():
        if args.only and name != args.only:
            continue
        t0 = time.perf_counter()
        m = train_run(args.data, args.out / f"busi_{name}", cfg, progress=False)
        results[name] = {
            "command": f"medcad train {args.data} --folds 5" + (" --epochs 0" if cfg.epochs == 0 else ""),
            "wall_seconds": time.perf_counter() - t0,
            **{k: m[k] for k in ("accuracy", "macro_f1", "macro_auc", "balanced_accuracy", "ece")},
            "fold_summary": m["fold_summary"],
            "per_class": m["per_class"],
            "settings": cfg.to_dict(),
            "machine": machine_info(),
            "date": datetime.now().isoformat(timespec="minutes"),
        }
        result_path.parent.mkdir(parents=True, exist_ok=True)
        write_result(result_path, results)
        print(name, json.dumps({k: results[name][k] for k in ("accuracy", "macro_auc", "wall_seconds")}), flush=True)


if __name__ == "__main__":
    main()
