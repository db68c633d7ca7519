"""What resume points (last.ckpt) cost a fit: the same run trained in one process writing its resume point after every
epoch (the policy before 2026-12-05) and as `engine.resume` decides (after the first and final epochs, and whenever the
training since took ten times as long as writing one; every epoch where a write takes under a second).

    .venv/bin/python benchmarks/resume_points.py DATA [--arch unet-scratch] [--image-size 64] [--epochs 8]
        [--repeats 2] [--out benchmarks/results/resume_points.json]

DATA: any segmentation dataset medcad reads (the demo's synthetic one: runs/demo/data). One holdout fold (20 %), the
given architecture from random weights. After a one-epoch warm-up, the two policies alternate `--repeats` times.
Records each fit's wall time, the epochs it wrote and each write's seconds, and the validation Dice of the kept model.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from common import write_result

from medcad.config import TrainConfig
from medcad.engine import resume
from medcad.engine.train import train_run

HERE = Path(__file__).resolve().parent


def _fit(data: Path, cfg: TrainConfig, every_epoch: bool) -> dict:
    writes: list[dict] = []
    write = resume.ResumePoint.on_train_epoch_end

    def recorded(self, trainer, module) -> None:
        before = len(self.epochs)
        write(self, trainer, module)
        if len(self.epochs) > before:
            writes.append({"epoch": self.epochs[-1], "seconds": round(self.write_s, 3)})

    cheap = resume.CHEAP_WRITE_S
    resume.ResumePoint.on_train_epoch_end = recorded
    resume.CHEAP_WRITE_S = math.inf if every_epoch else cheap
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            train_run(data, Path(out) / "run", cfg, progress=False, notes=False)
            wall = time.perf_counter() - start
            metrics = json.loads((Path(out) / "run" / "metrics.json").read_text())
    finally:
        resume.ResumePoint.on_train_epoch_end = write
        resume.CHEAP_WRITE_S = cheap
    dice = metrics.get("dice") or metrics.get("segmentation", {}).get("dice")
    return {
        "wall_s": round(wall, 1),
        "writes": writes,
        "write_s": round(sum(w["seconds"] for w in writes), 2),
        "dice": dice,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--arch", default="unet-scratch")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "resume_points.json")
    a = ap.parse_args()
    cfg = TrainConfig(
        task="segment",
        arch=a.arch,
        weights="none",
        image_size=a.image_size,
        epochs=a.epochs,
        patience=a.epochs,
        holdout=0.2,
        batch_size=16,
        missing_masks="empty",
        logger="none",
        seed=0,
    )
    _fit(a.data, cfg.replace(epochs=1), True)  # warm-up: the precision probe, caches, page cache
    fits = {"every_epoch": [], "engine_resume": []}
    for _ in range(a.repeats):  # alternated, so that a machine's drift falls on both alike
        fits["every_epoch"].append(_fit(a.data, cfg, True))
        fits["engine_resume"].append(_fit(a.data, cfg, False))
    result = {
        "command": f"benchmarks/resume_points.py {a.data} --arch {a.arch} --image-size {a.image_size} "
        f"--epochs {a.epochs} --repeats {a.repeats}",
        **fits,
    }
    print(json.dumps(result, indent=1))
    write_result(a.out, result)


if __name__ == "__main__":
    main()
