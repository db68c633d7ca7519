"""`medcad bench`: images/s and latency of every prediction backend, side by side in one process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medcad.devices import machine, runtime_threads
from medcad.inference.backends import unsteady
from medcad.inference.onnx import GRAPH_BACKENDS
from medcad.inference.predictor import MIN_AGREEMENT, TORCH_BACKENDS
from medcad.inference.registry import load_predictor
from medcad.tasks import get_task

BACKENDS = (*TORCH_BACKENDS, *GRAPH_BACKENDS)


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
    fold: int | None = None,
    threads: int | None = None,
    n_agree: int = 200,
    device: str = "auto",
) -> dict:
    """Latency at batch 1 (p50/p95 over `repeats`), images/s at batch `batch` (its fastest repeat, as `auto` times), and
    agreement with torch-fp32 by the task's measure (top-1 for classes, Dice between masks, matched-box IoU for
    detections) of a run of any task; speed-ups are ratios to torch-fp32 in this process. `fold` None (the default)
    times the fold ensemble, what predict and serve load; `fold` k that fold's model alone. The images (`images`
    says which; up to `n_agree`): fold k's test images, held out from its training, where `accuracy` (single-label
    classes) is that fold's test accuracy; for the ensemble fold 0's test images, which the other folds' models
    trained on: agreement only, no accuracy (`held_out` False). `device` is where the torch backends run ("auto":
    the GPU if any, as predict and serve; "cpu", "cuda[:N]"); ONNX Runtime and OpenVINO run on the CPU. `threads`:
    CPU threads of every runtime (None: `medcad.devices.runtime_threads`, reported as `threads`). A backend whose
    throughput repeats vary as when another job shares the cores has them (seconds per batch) as `unsteady`. The
    result also says what this machine is (`cpu`) and which backend predict, serve and evaluate use here by default
    (`default_backend`: `--backend auto` for the fold ensemble, as they load it, with the figures it chose by,
    `default_backend_measured`: with `fold` k, agreement there is the ensemble's, so it can differ from the table).

    Raises:
        DataError: no trained model of `fold` (naming the folds the run has), or the run's images are unreadable.
    """
    from medcad.inference.export import check_images

    run = Path(run)
    first = load_predictor(run, fold, backend="torch-fp32", threads=threads, device=device)
    check = check_images(run, first)
    held, y = check.images[:n_agree], check.labels[:n_agree]
    timed = held  # tiny test sets: images repeated so that one full batch can be timed (agreement: each image once)
    if len(held) < batch:
        timed = np.concatenate([held] * (batch // max(len(held), 1) + 1))[:batch]
    reference = first.infer(held, batch)
    out = {
        "run": str(run),
        "task": first.task,
        "agreement_measure": first.agreement_measure,
        "fold": fold,
        "image_size": first.config.image_size,
        "batch": batch,
        "n_agreement_images": int(len(held)),
        "images": check.described,
        "held_out": check.held_out,
        "threads": runtime_threads(threads),
        "device": str(first.device),
        "cpu": machine().to_dict(),
        "backends": {},
    }
    for name in backends:
        where = device if name.startswith("torch") else "cpu"
        p = first if name == "torch-fp32" else load_predictor(run, fold, backend=name, threads=threads, device=where)
        one = held[:1]
        lat = np.array(_time(lambda p=p, one=one: p.infer(one, 1), repeats)) * 1000
        tput = _time(lambda p=p: p.infer(timed[:batch], batch), max(3, repeats // 4))
        got = p.infer(held, batch)
        row = {
            "images_per_s": batch / min(tput),  # the fastest repeat, as `auto` times (medcad.inference.backends)
            **({"unsteady": [round(t, 3) for t in tput]} if unsteady(tput) else {}),
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            **first.agreement(reference, got),
        }
        row["agreement"] = row[first.agreement_measure]
        row["agrees"] = bool(row["agreement"] >= MIN_AGREEMENT)
        single = get_task(first.task).label_kind == "single"
        if check.held_out and got.get("probabilities") is not None and single:
            row["accuracy"] = float((got["probabilities"].argmax(1) == y).mean())
        out["backends"][name] = row
    auto = load_predictor(run, None, threads=threads, device=device).backend_choice
    out["default_backend"] = auto["backend"]
    out["default_backend_reason"] = auto["reason"]
    out["default_backend_measured"] = auto.get("measured")  # the fold ensemble's figures `auto` chose by
    base = out["backends"].get("torch-fp32", {}).get("images_per_s")
    if base:
        for v in out["backends"].values():
            v["speedup_vs_torch_fp32"] = v["images_per_s"] / base
    return out
