"""The precision of a fit, chosen for the model on this CPU: bf16 autocast or fp32, whichever trains faster.

On a CPU with bf16 in hardware (AVX-512 BF16, AMX) bf16 autocast does not pay for every network: measured on an AMD
EPYC with AVX-512 BF16 and no AMX, a tf_efficientnet_lite0 classifier trains faster in fp32 (28.8 against 22.3
images/s at 224 px; depthwise convolutions gain nothing from bf16 and pay for the casts), a U-Net faster in bf16
(8.3 against 5.6 images/s at 256 px) and the SSDlite detector the same in both (docs/results.md). So with
`precision: auto` on such a CPU, one process, a fit first times a few training steps of its own module on its own
training images in both precisions and trains in the faster one (fp32 unless bf16 is `MARGIN` faster); the choice is
cached per model, image size, batch, CPU and thread count in the cache folder (`training_precision.json`), so a
model is timed once per machine. Cached features and fold (validation and test) predictions run in fp32 whatever
the fit's precision (`engine.fold.FoldHooks`). Without bf16 in hardware (emulated, ~10x slower), on GPUs, and with
an explicit precision, nothing is timed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import time
import warnings

import numpy as np
import torch

from medcad.allocator import keep_freed_memory
from medcad.atomic import atomic_write_text
from medcad.data.cache import cache_dir
from medcad.devices import machine
from medcad.run import Run

log = logging.getLogger(__name__)

FP32, BF16 = "32-true", "bf16-mixed"
MARGIN = 1.05  # bf16 must train this much faster than fp32 to be chosen: at equal speed, fp32's exact arithmetic
PROBE_ROWS, WARMUP, STEPS = 16, 1, 3  # at most 16 training images a step; per precision 1 untimed, best of 3 timed
PROBE = 2  # 2: the steps run as the fit's (BatchNorm folds, depthwise weight gradients); 1 (no tag): unfolded


def cache_file():
    """Where measured choices are kept (`medcad.data.cache.cache_dir`)."""
    return cache_dir() / "training_precision.json"


def fit_precision(run: Run, module, train_loader) -> str:
    """The Lightning precision of one fit of `module` ("32-true" or "bf16-mixed", or the run's own where nothing is
    timed: see the module docstring). Leaves the module, its model and the random number generators as it found
    them (the steps run on a copy, inside saved generator states)."""
    compute = run.compute
    timed = run.cfg.precision == "auto" and compute.accelerator == "cpu" and compute.world_size == 1
    if not (timed and machine().native_bf16):
        return compute.precision
    from filelock import FileLock

    key = _key(run, module, train_loader)
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # workers training the same model side by side: one times it, the others read
        known = _read(path)
        if key in known:
            return known[key]["precision"]
        return _choose(key, path, module, train_loader)


def _choose(key: str, path, module, train_loader) -> str:
    """Time the module in both precisions, say and keep the faster one (under the lock)."""
    speeds = _measure(module, train_loader)
    choice = BF16 if speeds[BF16] >= MARGIN * speeds[FP32] else FP32
    log.warning(
        "note: training %s in %s: %.1f images/s in fp32, %.1f in bf16 autocast, measured on this CPU on %d of its "
        "training images (kept in %s; precision bf16-mixed or 32-true sets it)",
        type(module).__name__,
        "fp32" if choice == FP32 else "bf16 autocast",
        speeds[FP32],
        speeds[BF16],
        min(PROBE_ROWS, train_loader.batch_size or PROBE_ROWS, len(train_loader.dataset)),
        path,
    )
    entry = {"precision": choice, "images_per_s": {k: round(v, 2) for k, v in speeds.items()}}
    atomic_write_text(path, json.dumps({**_read(path), key: entry}, indent=1))
    return choice


def _read(path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def _key(run: Run, module, loader) -> str:
    """What the speed of a step depends on: the module's class, its parameters (shapes, which train), the batch and
    image size, the CPU, its flags and the threads, torch's version, and how the probe times a step (PROBE: figures
    from an earlier probe are not reused)."""
    m = machine()
    params = "|".join(f"{n}:{tuple(p.shape)}:{int(p.requires_grad)}" for n, p in module.named_parameters())
    digest = hashlib.sha1(params.encode()).hexdigest()[:12]
    rows = min(PROBE_ROWS, loader.batch_size or PROBE_ROWS)
    return (
        f"{type(module).__name__} params={digest} size={run.cfg.image_size} rows={rows} {m.cpu} [{m.kind}] "
        f"flags={','.join(sorted(m.flags))} threads={torch.get_num_threads()} torch={torch.__version__} probe={PROBE}"
    )


@contextlib.contextmanager
def _saved_generators():
    """Restores Python's, NumPy's and torch's random number generators on exit: timing steps must not change what
    the fit draws (its shuffles and augmentations stay as without the timing)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _measure(module, loader) -> dict[str, float]:
    """Training images/s of `module` in fp32 and in bf16 autocast: forward, loss and backward of a batch of the
    loader's first images (the optimizer step, the same fp32 update in both, is left out)."""
    keep_freed_memory()
    with _saved_generators(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        data = loader.dataset
        n = min(PROBE_ROWS, loader.batch_size or PROBE_ROWS, len(data))
        batch = loader.collate_fn([data[i] for i in range(n)])
        probe = copy.deepcopy(module).cpu()  # BatchNorm statistics and gradients change on the copy only
        probe.setup("fit")
        probe.on_fit_start()  # what the fit sets up for itself (BatchNorm folds: `common.FrozenBatchNormFit`)
        probe.train()
        probe.on_train_epoch_start()  # the module's frozen-BatchNorm and per-epoch settings
        times: dict[str, list[float]] = {FP32: [], BF16: []}
        for i in range(WARMUP + STEPS):  # alternating, so that a slower moment of the machine hits both
            for precision in (FP32, BF16):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == BF16):
                    out = probe.training_step(batch, 0)
                loss = out["loss"] if isinstance(out, dict) else out
                loss.backward()
                probe.zero_grad(set_to_none=True)
                if i >= WARMUP:
                    times[precision].append(time.perf_counter() - t0)
        speeds = {p: n / min(t) for p, t in times.items()}
        del probe
    return speeds
