"""One run over two processes (DDP through Lightning, gloo on the CPU) against one process; bad compute settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from medcad.config import TrainConfig
from medcad.errors import ConfigError

ARGS = "--image-size 32 --epochs 1 --head-epochs 3 --batch-size 8 --unfreeze 1 --folds 2 --val-fraction 0.25"


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medcad", "train", str(data), "-o", str(out), *ARGS.split(), "--no-report", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _files(run: Path) -> list[str]:
    return sorted(
        str(p.relative_to(run).parent / ("<events>" if "tfevents" in p.name else p.name))
        for p in run.rglob("*")
        if p.is_file()
    )


@pytest.mark.heavy
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two CPU processes need two cores")
def test_two_process_ddp_matches_one_process(easy_set: Path, tmp_path: Path) -> None:
    from medcad.engine.train import train_run

    cfg = TrainConfig(image_size=32, epochs=1, head_epochs=3, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)
    one = train_run(easy_set, tmp_path / "one", cfg.replace(accelerator="cpu"), progress=False)
    res = _train(easy_set, tmp_path / "two", "--accelerator", "cpu", "--devices", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # every test image predicted exactly once, as with one process
    p1, p2 = (pd.read_csv(tmp_path / r / "predictions.csv") for r in ("one", "two"))
    assert len(p2) == len(p1) == 24 and p2["image"].is_unique and set(p2["image"]) == set(p1["image"])
    # stated tolerance: the shards change the batches and the number of steps, not what the model learns here
    assert abs(two["macro_auc"]["value"] - one["macro_auc"]["value"]) <= 0.1
    # the run folder is complete and written by rank 0 alone: the same files, one TensorBoard writer per stage
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert len(list((tmp_path / "two").rglob("*tfevents*"))) == 4  # 2 folds x (stage 1, stage 2)
    # resume: a finished DDP run trains nothing again
    stamp = (tmp_path / "two" / "fold_1" / "model.pt").stat().st_mtime_ns
    assert _train(easy_set, tmp_path / "two", "--accelerator", "cpu", "--devices", "2").returncode == 0
    assert (tmp_path / "two" / "fold_1" / "model.pt").stat().st_mtime_ns == stamp


def test_bad_compute_settings_fail_before_writing(easy_set: Path, tmp_path: Path) -> None:
    from medcad.engine.train import train_run

    too_many = (os.cpu_count() or 1) + 1
    cases = [
        (dict(accelerator="cpu", devices=too_many), rf"--devices {too_many}: this machine has \d+ CPU core"),
        (dict(accelerator="tpu"), "unknown accelerator 'tpu'"),
        (dict(strategy="mpi"), "unknown strategy 'mpi'"),
        (dict(accelerator="cpu", precision="16-mixed"), "needs a GPU"),
        (dict(logger="wandb"), "unknown logger"),
    ]
    if not torch.cuda.is_available():
        cases.append((dict(accelerator="gpu"), "--accelerator gpu: torch sees no CUDA GPU"))
    for k, (changes, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            train_run(easy_set, tmp_path / f"run{k}", TrainConfig(image_size=32).replace(**changes), progress=False)
        assert not (tmp_path / f"run{k}").exists()


def test_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from medcad import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.resolve_compute(TrainConfig(accelerator="cpu")).precision == "32-true"
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    c = devices.resolve_compute(TrainConfig(accelerator="cpu", devices=1))
    assert (c.precision, c.strategy, c.world_size) == ("bf16-mixed", "auto", 1)
    assert devices.resolve_compute(TrainConfig(accelerator="cpu", precision="32-true")).precision == "32-true"
    assert devices.torch_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda: torch sees 0 CUDA GPU"):
            devices.torch_device("cuda")


class Draws(L.LightningModule):
    """Writes each rank's random draws in its training steps (where the batch augmentation draws) to a file."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out, self.w = out, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        with open(self.out / f"rank{self.global_rank}.txt", "a") as f:
            f.write(f"{torch.rand(1).item()}\n")
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, _):
        self.log("val_loss", (self.w * batch[0]).sum(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.heavy
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two CPU processes need two cores")
def test_ranks_draw_their_own_augmentation(tmp_path: Path) -> None:
    """medcad's trainer reseeds each rank (its rank added) as a fit starts: two processes seeded alike draw
    different numbers in their training steps; one process draws what it drew before."""
    import lightning as L
    from torch.multiprocessing import ProcessExitedException
    from torch.utils.data import DataLoader, TensorDataset

    from medcad.engine.common import RankSeeds, make_trainer
    from medcad.run import Run

    data = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2)
    cfg = TrainConfig(accelerator="cpu", logger="none")
    run = Run.resolve(cfg.replace(devices=2, strategy="ddp_spawn"), tmp_path)
    for attempt in range(3):
        # a spawned rank can abort as it exits, after its fit ("terminate called without an active exception": gloo's
        # threads torn down at interpreter exit, one in ~8 suite runs with another worker beside it, 2026-12-06);
        # what this test checks is written before that, so such an exit is run again, not taken as a failure
        for r in (0, 1):
            (tmp_path / f"rank{r}.txt").unlink(missing_ok=True)
        trainer, _ = make_trainer(run, run.folder.fold(0), "stage", 1, "val_loss", "min", 1, False)
        L.seed_everything(7, verbose=False)
        try:
            trainer.fit(Draws(tmp_path), data, data)
            break
        except ProcessExitedException as e:
            if e.signal_name != "SIGABRT" or attempt == 2:
                raise
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 and not set(ranks[0]) & set(ranks[1])  # 4 batches, 2 ranks
    # one process: the stream stays as it was seeded
    run = Run.resolve(cfg, tmp_path / "one")
    trainer, _ = make_trainer(run, run.folder.fold(0), "stage", 1, "val_loss", "min", 1, False)
    seeds = next(c for c in trainer.callbacks if isinstance(c, RankSeeds))
    state = torch.get_rng_state()
    seeds.on_train_start(trainer, Draws(tmp_path))
    assert trainer.world_size == 1 and torch.equal(torch.get_rng_state(), state)
