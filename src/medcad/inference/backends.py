"""`--backend auto`: the fastest prediction backend that agrees with PyTorch fp32 for this model on this machine.

Measured once per model files, CPU kind and thread count on the run's own images (up to N_IMAGES of fold k's test images
for fold k's model, held out; of fold 0's for the ensemble: `medcad.inference.export.check_images`; a fold's few test
images topped up with its validation images, which its own model did not train on), then cached in RUN/backends.json;
later calls read the choice. Each backend's speed is its fastest repeat (timeit's advice: what it does with the cores to
itself); where the repeats of the chosen backend, or of one close enough to it to have been the faster, varied as when
another job shares the cores (`unsteady`), the next call measures again, up to MAX_ATTEMPTS times in all. A backend is
eligible when its agreement with torch-fp32, by the task's measure (top-1 for classes, Dice for masks, matched-box IoU
for boxes), is at least `MIN_AGREEMENT`: on 128 images top-1 may differ on one (with 32, as before 2026-12-04, one
difference in 32 failed and none passed a backend that differs on 1.3 % of images two times in three). Speeds come first
(a few batches); agreement is then checked fastest first and stops at the first that agrees, so the slower ones cost
nothing. A job too small for measuring to pay (fewer than MEASURE_FROM images, the caller's count:
`registry.load_predictor(images=...)`) with nothing measured before runs on torch-fp32 unmeasured (and keeps nothing).
Candidates follow the machine (`medcad.devices.machine`): torch-bf16 and openvino-bf16 only where the CPU has bf16 in
hardware (elsewhere bf16 is emulated, ~10x slower than fp32), int8 only where the user exported it (`medcad export
--int8`: calibration is a step of its own) and the CPU has int8 dot products (VNNI). On a GPU (`device` cuda), torch
fp32 and torch with reduced-precision autocast are measured there, keyed by the GPU: on an H200, lite0's bf16 autocast
ran at 0.83x fp32 at batch 32 and agreed on 31 of 32 images (docs/results.md), so it is not assumed faster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from medcad.atomic import atomic_write_text
from medcad.checkpoint import fold_model_files
from medcad.devices import machine, runtime_threads, torch_device
from medcad.errors import MedcadError
from medcad.inference.export import check_images, ensure_export
from medcad.inference.predictor import MIN_AGREEMENT, Predictor
from medcad.runfolder import RunFolder

log = logging.getLogger(__name__)

N_IMAGES, BATCH, REPEATS = 128, 8, 3
# One disagreement in 100 images is agreement 0.99: on fewer, a reduced-precision backend (bf16, int8) cannot be shown
# to agree (26 images all agreeing passed an openvino-bf16 that changed 9 of 321 labels of a small BUSI run; a new
# user's check, 2026-12-06), so it is not a candidate there; fp32 graphs agree with torch-fp32 to ~1e-6 on any number.
MIN_INEXACT_IMAGES = 100
INEXACT = ("bf16", "int8")
# a timing is unsteady when its slowest repeat is more than UNSTEADY_RATIO x its fastest and more than UNSTEADY_S
# seconds slower (below that, scheduler noise on a tiny model): another job on the cores. torch's OpenMP threads stall
# then (2026-12-05, a helper's tests on the 2 cores: batches of 8 at 2.3 s, then one at 0.3 s; torch-fp32 timed at 3
# images/s by the median, not 54). A choice whose backend was unsteady is measured again, MAX_ATTEMPTS times at most.
UNSTEADY_RATIO, UNSTEADY_S, MAX_ATTEMPTS = 2.0, 0.05, 3


RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}  # backend prefix -> the package that runs it


def missing_runtimes() -> list[str]:
    """The packages of `RUNTIMES` not installed here (their backends are not candidates)."""
    return [pkg for pkg in RUNTIMES.values() if importlib.util.find_spec(pkg) is None]


def generic_candidates(device: str = "cpu") -> list[str]:
    """The backends `auto` may measure on this machine for a run folder (int8 only once exported; ONNX Runtime and
    OpenVINO only where installed); on a GPU the torch ones (ONNX Runtime and OpenVINO run on the CPU)."""
    if torch_device(device).type == "cuda":
        return ["torch-fp32", "torch-bf16"]
    m = machine()
    out = ["torch-fp32"] + (["torch-bf16"] if m.native_bf16 else []) + ["onnx-fp32", "openvino-fp32"]
    out += ["openvino-bf16"] if m.native_bf16 else []
    out += ["onnx-int8", "openvino-int8"] if m.vnni else []
    missing = missing_runtimes()
    return [b for b in out if RUNTIMES.get(b.split("-")[0]) not in missing]


def candidates(run: Path, fold: int | None, allowed: tuple[str, ...], device: str = "cpu") -> list[str]:
    """The backends `auto` measures for a run folder (or model file: torch only) on this machine, torch-fp32
    first; int8 only where the run has an int8 export."""
    has_int8 = (RunFolder(run).export(fold) / "model.int8.onnx").is_file()
    out = [
        b
        for b in generic_candidates(device)
        if (b.startswith("torch") or run.is_dir()) and (has_int8 or "int8" not in b)
    ]
    return [b for b in out if b in allowed]


# Measuring runs torch-fp32 on N_IMAGES images for its reference alone, and the fastest backend can at best save
# torch-fp32's time on each image predicted: for fewer than MEASURE_FROM images it cannot pay (a backend 3x faster
# breaks even at N_IMAGES x (1 + 1/3) / (1 - 1/3) = 256 images, before the ONNX export and the timings; the demo's
# U-Nets: 12 s measuring against 10 ms saved per image by the fastest, ~1,200 images). Such a job runs on torch-fp32.
MEASURE_FROM = 2 * N_IMAGES


def unmeasured_choice(images: int) -> dict:
    """The `auto` choice of a job of `images` images (fewer than MEASURE_FROM) where nothing was measured before:
    torch-fp32, the reference every backend is compared with; nothing is kept, so a larger job measures."""
    return {
        "backend": "torch-fp32",
        "reason": (
            f"{images} image(s) to predict, fewer than {MEASURE_FROM}: measuring the backends would likely cost more "
            f"than the fastest could save, so the reference, torch-fp32, runs them (no steady measurement kept for "
            f"this model here; serve, or a job of {MEASURE_FROM} images or more, measures once)"
        ),
    }


def static_choice() -> str:
    """The backend when nothing can be measured (a model file outside a run folder, a run whose images cannot be
    read): torch-fp32, the reference every other backend must be shown to agree with (bf16 autocast had been chosen
    there on CPUs with bf16, unchecked, while a measured run needs 100 images to take it)."""
    return "torch-fp32"


def _cache_key(run: Path, fold: int | None, threads: int | None, device: str = "cpu") -> str:
    """The key of a choice in RUN/backends.json: the device (GPU name, or CPU model, kind and threads), the fold and
    the model files by their paths within the run, sizes and modification times, so that a run moved or copied with
    its times (`mv`, `cp -a`, `rsync -a`) keeps its choices (keyed by absolute paths, they had been measured again)."""
    files = "|".join(
        f"{os.path.relpath(f, run)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in fold_model_files(run, fold)
    )
    digest = hashlib.sha1(files.encode()).hexdigest()[:12]
    dev = torch_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} [cuda] fold={fold} models={digest}"
    m = machine()
    return f"{m.cpu} [{m.kind}] threads={runtime_threads(threads)} fold={fold} models={digest}"


def unsteady(times: list[float] | np.ndarray) -> bool:
    """Whether repeats of one timing (seconds) vary as they do when another job shares the cores (`UNSTEADY_RATIO`,
    `UNSTEADY_S`)."""
    t = np.asarray(times, dtype=float)
    return bool(len(t) > 1 and t.max() > UNSTEADY_RATIO * t.min() and t.max() - t.min() > UNSTEADY_S)


def _speed(p: Predictor, x: np.ndarray) -> dict:
    """{images_per_s at batch BATCH (the fastest of REPEATS after one warm-up), and "unsteady": its repeats' seconds
    where they vary as on shared cores (`unsteady`)}."""
    p.infer(x[:BATCH], BATCH)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        p.infer(x[:BATCH], BATCH)
        times.append(time.perf_counter() - t0)
    out = {"images_per_s": round(len(x[:BATCH]) / min(times), 2)}
    return out | ({"unsteady": [round(t, 3) for t in times]} if unsteady(times) else {})


def _sibling(ref: Predictor, backend: str, threads: int | None) -> Predictor:
    """A predictor of `ref`'s run and fold on `backend`: a torch one on `ref`'s device and networks (not built
    again), a graph one on the CPU."""
    if backend.startswith("torch"):
        return type(ref)(ref.run, ref.fold, backend, threads, ref.threshold, str(ref.device), networks=ref.models)
    return type(ref)(ref.run, ref.fold, backend, threads, ref.threshold, "cpu")


def measure(
    ref: Predictor,
    backends: list[str],
    images: np.ndarray,
    threads: int | None,
    distinct: int | None = None,
    tuned: int = 0,
) -> tuple[dict[str, dict], dict[str, Predictor]]:
    """images/s of each backend (at batch BATCH) and, fastest first until one agrees, its agreement with `ref`
    (torch-fp32, which agrees with itself) on `images` (N, S, S, 3) uint8, `distinct` of them different (default N),
    the last `tuned` of them images an int8 export may have been calibrated on (a fold's validation images): an int8
    backend's agreement is measured without them; and the predictors that loaded (the torch ones on `ref`'s
    networks). A backend that cannot load (an export that fails, a runtime missing) gets its error; one slower than a
    backend that agrees is not checked (`not_checked`), nor a reduced-precision one on fewer than MIN_INEXACT_IMAGES
    distinct images (`ineligible`: not a candidate)."""
    out: dict[str, dict] = {}
    loaded: dict[str, Predictor] = {}
    distinct = len(images) if distinct is None else distinct
    for name in backends:
        usable = distinct - tuned if "int8" in name else distinct
        if name != ref.backend and any(t in name for t in INEXACT) and usable < MIN_INEXACT_IMAGES:
            outside = " outside its calibration" if usable < distinct else ""
            out[name] = {  # known before anything loads: not exported, compiled or timed
                "ineligible": f"reduced precision, and {usable} images{outside} cannot show agreement >= "
                f"{MIN_AGREEMENT} (at least {MIN_INEXACT_IMAGES} needed: one disagreement in {MIN_INEXACT_IMAGES} is "
                f"{MIN_AGREEMENT})"
            }
            continue
        try:
            if name != ref.backend:
                ensure_export(type(ref), ref.run, ref.fold, name, threads, reference=ref)
            p = ref if name == ref.backend else _sibling(ref, name, threads)
            out[name] = _speed(p, images)
            loaded[name] = p
        except (MedcadError, RuntimeError, ImportError, OSError) as e:
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    cut = len(images) - tuned
    # the test images' outputs within `measure_choice` are those the export's check computed (remembered)
    untuned = ref.infer_once(images[:cut], BATCH)
    reference = _joined([untuned, ref.infer_once(images[cut:], BATCH)]) if tuned else untuned
    for name in sorted(loaded, key=lambda k: -out[k]["images_per_s"]):
        p = loaded[name]
        own, expected = (images[:cut], untuned) if "int8" in name else (images, reference)
        agreement = 1.0 if p is ref else float(ref.agreement(expected, p.infer(own, BATCH))[ref.agreement_measure])
        out[name]["agreement"] = round(agreement, 4)
        if len(own) < len(images):  # int8: without the images its calibration may have used
            out[name]["agreement_images"] = len(own)
        if agreement >= MIN_AGREEMENT:
            for slower in (k for k in loaded if "agreement" not in out[k]):
                out[slower]["not_checked"] = f"slower than {name}, which agrees"
            break
    return out, loaded


def doubtful(measured: dict[str, dict], best: str) -> str | None:
    """The first backend whose unsteady timing could have decided the pick `best`, or None: `best` itself, or one
    that may be picked (not failing agreement) whose speed, though lower, is within UNSTEADY_RATIO of it (another
    job only slows a backend down, so one slowed in every repeat may be the faster)."""
    speed = measured[best]["images_per_s"]
    for name, m in measured.items():
        eligible = "error" not in m and "ineligible" not in m and m.get("agreement", 1.0) >= MIN_AGREEMENT
        if "unsteady" in m and eligible and (name == best or m["images_per_s"] * UNSTEADY_RATIO >= speed):
            return name
    return None


def _joined(outputs: list[dict]) -> dict:
    """A predictor's outputs (`Predictor.infer`) on consecutive image sets, as one: arrays (N, ...) concatenated,
    per-image lists (boxes) chained; None stays None."""
    first = outputs[0]
    return {
        k: None if v is None else sum((o[k] for o in outputs), []) if isinstance(v, list)
        else np.concatenate([o[k] for o in outputs])
        for k, v in first.items()
    }  # fmt: skip


def pick(measured: dict[str, dict]) -> str:
    """The fastest backend whose agreement is at least MIN_AGREEMENT (torch-fp32 agrees with itself)."""
    ok = {k: v for k, v in measured.items() if v.get("agreement", 0) >= MIN_AGREEMENT}
    return max(ok, key=lambda k: ok[k]["images_per_s"])


def known_choice(run: Path, fold: int | None, device: str = "cpu", threads: int | None = None) -> dict | None:
    """The `auto` choice where no model needs loading to know it: for a model file outside a run folder (torch, by
    torch-fp32: `static_choice`), or as measured before for these model files on this GPU, or this CPU kind and
    thread count (RUN/backends.json); None when it has to be measured (`measure_choice`): never before, or before
    with the chosen backend's timing unsteady fewer than MAX_ATTEMPTS times."""
    if not run.is_dir():
        return {"backend": static_choice(), "reason": "a model file, not a run folder: torch-fp32, not measured"}
    cache = RunFolder(run).backends
    known = _read_cache(cache).get(_cache_key(run, fold, threads, device))
    if known is None or 0 < known.get("unsteady_attempts", 0) < MAX_ATTEMPTS:
        return None
    where = "GPU" if torch_device(device).type == "cuda" else "CPU"
    reason = f"measured before on this {where} ({cache.name})"
    if known.get("unsteady_attempts"):
        reason += (
            f"; its timing varied in each of {MAX_ATTEMPTS} measurements, as when another job shares the cores: "
            f"delete {cache} to measure again on an idle machine"
        )
    return {**known, "reason": reason}


def _read_cache(cache: Path) -> dict:
    return json.loads(cache.read_text()) if cache.is_file() else {}


def remember(cache: Path, key: str, choice: dict, unsteady: bool = False) -> dict:
    """Keep `choice` under `key` in `cache` (RUN/backends.json), under an inter-process lock so that processes serving
    or predicting with one run's folds side by side each keep theirs (a plain read-modify-write drops another's). An
    `unsteady` choice counts its attempts (`unsteady_attempts`: `known_choice` has it measured again, MAX_ATTEMPTS at
    most). Where the lock cannot be had (medcad's cache folder not writable, or held LOCK_SECONDS by another process)
    the file is written without it, and where the run folder is read-only the choice is not kept (measured again
    next time); both are said. Returns the choice as kept."""
    with _cache_lock(cache):
        known = _read_cache(cache)
        if unsteady:  # the pick may be another job's doing
            choice = {**choice, "unsteady_attempts": (known.get(key) or {}).get("unsteady_attempts", 0) + 1}
        try:
            atomic_write_text(cache, json.dumps({**known, key: choice}, indent=1))
        except OSError as e:
            log.warning("note: the backend choice is not kept in %s (%s): the next call measures again", cache, e)
    return choice


LOCK_SECONDS = 120  # longest wait for another process's write of RUN/backends.json (a write takes milliseconds)


@contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """An inter-process lock on `cache`, its lock file in medcad's cache folder (not in the run folder); none, said,
    where that folder cannot be written or the lock is held longer than LOCK_SECONDS."""
    from filelock import FileLock, Timeout

    from medcad.data.cache import cache_dir

    try:
        locks = cache_dir() / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(locks / f"{hashlib.sha1(str(cache.resolve()).encode()).hexdigest()[:16]}.lock")
        lock.acquire(timeout=LOCK_SECONDS)
    except (OSError, Timeout) as e:
        log.warning("note: %s is written without a lock (%s)", cache, e)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def measure_choice(ref: Predictor, threads: int | None = None) -> tuple[dict, Predictor | None]:
    """Measure the `auto` choice for the run of `ref` (a torch-fp32 predictor on the CPU or a GPU) on its test
    images (`check_images`), keep it in RUN/backends.json (with `unsteady_attempts` where the chosen backend's timing
    was unsteady: `known_choice` then has it measured again), and return it with the chosen predictor (None when not
    measured: the run's images not found, then `static_choice`)."""
    run, device = ref.run, str(ref.device)
    try:
        check = check_images(run, ref)
        held = check.images[:N_IMAGES]
    except (MedcadError, OSError, KeyError, ValueError) as e:
        reason = f"the run's images could not be read ({e}); not measured"
        return {"backend": static_choice(), "reason": reason}, None
    if len(held) == 0:
        return {"backend": static_choice(), "reason": "the run has no test images to measure on"}, None
    # a fold's few test images topped up with its validation images (its own model did not train on them): 60 test
    # images had kept bf16 out of every small study's choice (MIN_INEXACT_IMAGES)
    extra = check.validation[: N_IMAGES - len(held)] if check.validation is not None else held[:0]
    held = np.concatenate([held, extra])
    distinct = len(held)
    described = check.described + f", and {len(extra)} of its validation images (chose its epoch)" * bool(len(extra))
    if len(held) < BATCH:
        held = np.concatenate([held] * (BATCH // len(held) + 1))
    with ref.remembering():  # the torch-fp32 outputs an export's check and the measurement compare with: once
        backends = candidates(run, ref.fold, type(ref).backends, device)
        measured, loaded = measure(ref, backends, held, threads, distinct, tuned=len(extra))
    best = pick(measured)
    choice = {
        "backend": best,
        "measured": measured,
        "device": device,
        "cpu": machine().to_dict(),
        "n_images": distinct,
        "images": described,
        "min_agreement": MIN_AGREEMENT,
    }
    reason = (
        f"the fastest of {sum('images_per_s' in m for m in measured.values())} backends measured whose agreement "
        f"with torch-fp32 on {distinct} images "
        f"({described}) is >= {MIN_AGREEMENT} (measured now)"
    )
    if any("ineligible" in m for m in measured.values()):
        reason += f"; reduced-precision backends not candidates: {distinct} images cannot show they agree"
    cache, key = RunFolder(run).backends, _cache_key(run, ref.fold, threads, device)
    shaky = doubtful(measured, best)
    choice = remember(cache, key, choice, unsteady=bool(shaky))
    if shaky:
        t = measured[shaky]["unsteady"]
        reason += (
            f"; {shaky}'s repeats took {min(t):.2f}-{max(t):.2f} s per batch of {BATCH}, as when another job shares "
            + (
                "the cores: the next call measures again"
                if choice["unsteady_attempts"] < MAX_ATTEMPTS
                else f"the cores, in each of {MAX_ATTEMPTS} measurements: kept"
            )
        )
    return {**choice, "reason": reason}, loaded[best]
