"""`medcad bench`: images/s and latency of every prediction backend, side by side in one process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medcad.inference.classes import BACKENDS, ClassPredictor


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up (first-call allocation, oneDNN kernel choice)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench(
    run: str | Path,
    *,
    backends: tuple[str, ...] = BACKENDS,
    batch: int = 32,
    repeats: int = 20,
    fold: int | None = 0,
    threads: int | None = None,
    n_agree: int = 200,
) -> dict:
    """Latency at batch 1 (p50/p95 over `repeats`), images/s at batch `batch`, top-1 agreement with torch-fp32
    and accuracy, on the fold-0 test images of the run (held out from that fold's training)."""
    from medcad.inference.export import fold0_images

    run = Path(run)
    first = ClassPredictor(run, fold=fold, backend="torch-fp32", threads=threads)
    _, held, y = fold0_images(run, first)
    held, y = held[:n_agree], y[:n_agree]
    n_real = len(held)
    if len(held) < batch:  # tiny test sets: repeat images so that one full batch can be timed
        held = np.concatenate([held] * (batch // max(len(held), 1) + 1))[: max(batch, len(held))]
    reference = first.infer(held, batch)["probabilities"]
    out = {
        "run": str(run),
        "fold": fold,
        "image_size": first.config.image_size,
        "batch": batch,
        "n_agreement_images": int(len(held)),
        "threads": threads,
        "backends": {},
    }
    for name in backends:
        p = first if name == "torch-fp32" else ClassPredictor(run, fold=fold, backend=name, threads=threads)
        one = held[:1]
        lat = np.array(_time(lambda p=p, one=one: p.infer(one, 1), repeats)) * 1000
        tput = _time(lambda p=p: p.infer(held[:batch], batch), max(3, repeats // 4))
        probs = p.infer(held, batch)["probabilities"]
        out["backends"][name] = {
            "images_per_s": batch / float(np.median(tput)),
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "accuracy": float((probs[:n_real].argmax(1) == y).mean()),
            "max_prob_diff": float(np.abs(probs - reference).max()),
        }
    base = out["backends"].get("torch-fp32", {}).get("images_per_s")
    if base:
        for v in out["backends"].values():
            v["speedup_vs_torch_fp32"] = v["images_per_s"] / base
    return out
