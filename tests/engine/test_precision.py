"""The precision of a fit, timed per model on a CPU with bf16 in hardware (MEDCAD_CPU_FLAGS stands in for one)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medcad import devices
from medcad.config import TrainConfig
from medcad.data.transforms import Normalize
from medcad.engine import precision as fp
from medcad.engine.fold import FoldData
from medcad.engine.train import fold_hooks
from medcad.run import Run

pytestmark = pytest.mark.precision_cache  # the tests read and write the cache in their own folder


def _fit_parts(tmp_path: Path, task: str = "segment", **settings):
    """(run, module, train loader) of a tiny fit on the CPU: 16 images of 32 px, batch 8."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    masks = (images[..., 0] > 128).astype(np.uint8)
    data = FoldData(images, np.arange(24) % 2, ["benign", "malignant"], masks)
    parts = {"train": np.arange(16), "val": np.arange(16, 24), "test": np.arange(0)}
    cfg = TrainConfig(task=task, image_size=32, batch_size=8, epochs=1, **{"accelerator": "cpu", **settings})
    run = Run.resolve(cfg, tmp_path / "run")
    hooks = fold_hooks(task)(run)
    model, dc = hooks.build(data, parts, None, None)
    module = hooks.module(model, Normalize(dc["mean"], dc["std"]), data, parts)
    return run, module, hooks.loaders(data, parts)[0]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "training_precision.json"


def _flags(monkeypatch: pytest.MonkeyPatch, flags: str) -> None:
    monkeypatch.setenv(devices.CPU_FLAGS_ENV, flags)
    devices.machine.cache_clear()


def test_native_bf16_times_both_once_and_leaves_model_and_generators_alone(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    _flags(monkeypatch, "avx2,fma,avx512f,avx512_bf16")
    run, module, loader = _fit_parts(tmp_path)
    assert run.compute.precision == "bf16-mixed"  # the run's: its predictions autocast on this CPU
    before = {k: v.clone() for k, v in module.state_dict().items()}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    choice = fp.fit_precision(run, module, loader)
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())  # the fit draws what it would have
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in module.parameters())
    (entry,) = json.loads(cache.read_text()).values()
    speeds = entry["images_per_s"]
    assert choice == entry["precision"] and set(speeds) == {"32-true", "bf16-mixed"}
    assert all(v > 0 for v in speeds.values())
    assert choice == ("bf16-mixed" if speeds["bf16-mixed"] >= fp.MARGIN * speeds["32-true"] else "32-true")
    # the next fit of the same model on this machine reads the choice: here made the other one by hand
    other = "32-true" if choice == "bf16-mixed" else "bf16-mixed"
    cache.write_text(json.dumps({k: {**v, "precision": other} for k, v in json.loads(cache.read_text()).items()}))
    assert fp.fit_precision(run, module, loader) == other
    # another model (other trainable layers) is timed anew
    for p in module.model.parameters():
        p.requires_grad_(False)
        break
    fp.fit_precision(run, module, loader)
    assert len(json.loads(cache.read_text())) == 2


@pytest.mark.parametrize(
    ("flags", "settings", "expected"),
    [
        ("avx2,fma", {}, "32-true"),  # bf16 emulated: never timed
        ("avx2,fma,avx512f,avx512_bf16", {"precision": "bf16-mixed"}, "bf16-mixed"),  # the user's choice stands
        ("avx2,fma,avx512f,avx512_bf16", {"precision": "32-true"}, "32-true"),
    ],
)
def test_nothing_is_timed_without_bf16_in_hardware_or_with_a_set_precision(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, flags: str, settings: dict, expected: str
) -> None:
    _flags(monkeypatch, flags)
    run, module, loader = _fit_parts(tmp_path, "classify", **settings)
    assert fp.fit_precision(run, module, loader) == expected
    assert not cache.exists()


def test_the_probe_times_steps_as_the_fit_runs_them(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    from medcad.engine import common

    _flags(monkeypatch, "avx2,fma,avx512f,avx512_bf16")
    run, module, loader = _fit_parts(tmp_path, "classify")
    folded = []
    fold = common.fold_eval_batchnorm
    monkeypatch.setattr(common, "fold_eval_batchnorm", lambda net: folded.append(net) or fold(net))
    fp.fit_precision(run, module, loader)
    assert len(folded) == 1 and folded[0] is not module.model.backbone  # the copy's backbone, folded as in the fit
    assert not any("forward" in m.__dict__ for m in module.modules())  # the module itself is left as it was
    assert "probe=2" in next(iter(json.loads(cache.read_text())))
