"""What one `train` call passes through (issue 25): medcad modules entered, calls between modules, module pairs
that call each other both ways, and how often the task and the compute are resolved.

    PYTHONPATH=src .venv/bin/python benchmarks/train_call_path.py [--task segment] [--out FILE]

Trains a tiny run (synthetic frames, 32 px, 1 epoch, holdout) under `sys.setprofile` and records every call from
one medcad module into another (calls inside a module are not counted). Writes
benchmarks/results/train_call_path_<task>.json and prints the counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import write_result

from medcad.config import TrainConfig
from medcad.data.synthetic import generate_synthetic
from medcad.engine.train import train_run

HERE = Path(__file__).resolve().parent
COUNTED = ("resolve_compute", "get_task")


def module_of(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith("medcad") else None


def trace(fn) -> tuple[Counter, Counter]:
    """(direct calls from a function of module A into one of module B by (A, B), calls of the COUNTED functions by
    (name, calling module)) while fn runs. Calls that reach medcad through a library (Lightning calling a module's
    training_step) have no medcad caller and are not counted as calls between modules."""
    edges: Counter = Counter()
    named: Counter = Counter()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = module_of(frame)
        if callee is None:
            return
        caller = module_of(frame.f_back) if frame.f_back is not None else None
        if frame.f_code.co_name in COUNTED:
            named[f"{frame.f_code.co_name} from {caller}"] += 1
        if caller is not None and caller != callee:
            edges[caller, callee] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return edges, named


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="segment")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "synth", n_patients=16, frames_per_patient=2, size=64, seed=1).parent
        cfg = TrainConfig(task=args.task, image_size=32, epochs=1, holdout=0.25, batch_size=8, augment="none")
        edges, named = trace(lambda: train_run(data, Path(tmp) / "run", cfg, progress=False))
    modules = sorted({m for pair in edges for m in pair})
    both_ways = sorted({tuple(sorted(p)) for p in edges if (p[1], p[0]) in edges})
    result = {
        "task": args.task,
        "modules_entered": len(modules),
        "module_pairs_calling": len(edges),
        "module_pairs_both_ways": [list(p) for p in both_ways],
        "calls_between_modules": sum(edges.values()),
        "calls": {name: sum(n for k, n in named.items() if k.startswith(name + " ")) for name in COUNTED},
        "calls_by_caller": dict(sorted(named.items())),
        "modules": modules,
    }
    write_result(args.out or HERE / "results" / f"train_call_path_{args.task}.json", result)
    print({k: v for k, v in result.items() if k != "modules"})


if __name__ == "__main__":
    main()
