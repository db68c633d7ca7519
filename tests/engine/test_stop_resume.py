"""A run stopped by SIGTERM (what schedulers send) or SIGINT exits 128 + the signal, says what it keeps, and the same
command resumes it: finished folds kept, a stopped fit continued from its last checkpoint with its logs."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from medcad.config import TrainConfig

ARGS = "--image-size 32 --epochs 1 --head-epochs 2 --batch-size 8 --unfreeze 1 --folds 3 --val-fraction 0.25"


def _train(data: Path, out: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medcad", "train", str(data), "-o", str(out), *ARGS.split(), "--no-report"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.heavy
def test_sigterm_stops_train_with_status_143_and_the_same_command_resumes(easy_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _train(easy_set, run)
    deadline = time.monotonic() + 300
    while not (run / "fold_0" / "result.json").is_file():  # the first fold finished: stop the run in the second
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "fold 0 did not finish"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # 143: a scheduler sees a stopped job, not a success
    assert re.search(rf"stopped by SIGTERM: {re.escape(str(run))} keeps folds? 0(, 1)? \(finished\)", err), err
    assert "The same command resumes" in err
    assert not (run / "metrics.json").exists()
    kept = sorted(int(p.parent.name[5:]) for p in run.glob("fold_*/result.json"))
    assert kept in ([0], [0, 1])

    proc = _train(easy_set, run)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    finished = ", ".join(map(str, kept))
    assert f"note: resuming {run}: fold{'s' * (len(kept) > 1)} {finished} finished, kept; training fold" in err, err
    assert "exists and is not empty" not in err  # Lightning's warnings of leftover checkpoints and logs
    assert sorted(p.parent.name for p in run.glob("fold_*/result.json")) == ["fold_0", "fold_1", "fold_2"]
    assert len(pd.read_csv(run / "predictions.csv")) == 24  # every image tested once, by one of the 3 folds
    for k in range(3):  # every fold's log: its epochs once each, from 0
        epochs = pd.read_csv(run / f"fold_{k}" / "logs" / "csv" / "stage2" / "metrics.csv")["epoch"]
        assert list(epochs.drop_duplicates()) == list(range(epochs.max() + 1)) and epochs.is_monotonic_increasing


class _SignalAt(L.Callback):
    """Sends a signal to this process as the fit starts epoch `epoch`."""

    def __init__(self, epoch: int, signum: int) -> None:
        self.epoch, self.signum = epoch, signum

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


def test_a_signal_stops_a_fit_at_its_next_step_and_the_resumed_fit_continues_its_logs(
    easy_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, one_thread
) -> None:
    from medcad.engine import common
    from medcad.engine.train import train_run
    from medcad.stopping import Stopped, stoppable

    cfg = TrainConfig(image_size=32, epochs=4, patience=10, head_epochs=2, batch_size=8, unfreeze=1, folds=2)
    cfg = cfg.replace(val_fraction=0.25)
    make_trainer = common.make_trainer

    def signalled_in_fold_1(run, fold, stage, *args, **kwargs):
        trainer, ckpt = make_trainer(run, fold, stage, *args, **kwargs)
        if fold.number == 1 and stage == "stage2":
            trainer.callbacks.append(_SignalAt(2, signal.SIGINT))
        return trainer, ckpt

    monkeypatch.setattr(common, "make_trainer", signalled_in_fold_1)
    run, before = tmp_path / "run", signal.getsignal(signal.SIGINT)
    with pytest.raises(Stopped) as stop, stoppable():
        train_run(easy_set, run, cfg, progress=False)
    assert stop.value.code == 130 and stop.value.name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before  # the handlers before, restored
    fold = run / "fold_1"
    assert not (fold / "result.json").exists()
    history = fold / "logs" / "csv" / "stage2" / "metrics.csv"
    assert set(pd.read_csv(history)["epoch"]) == {0, 1}  # stopped at epoch 2's first step, epochs 0 and 1 logged

    monkeypatch.setattr(common, "make_trainer", make_trainer)
    with caplog.at_level(logging.WARNING):
        train_run(easy_set, run, cfg, progress=False)
    said = caplog.text
    assert f"resuming {run}: fold 0 finished, kept; training fold 1" in said
    assert "fold_1 stage2 continues after epoch 2 of 4 (its last checkpoint)" in said
    assert "fold_1 stage1 starts again" in said  # the head's fit of seconds: fitted again in cleared folders
    epochs = pd.read_csv(history)["epoch"]
    assert list(epochs) == [0, 0, 1, 1, 2, 2, 3, 3]  # one training and one validation row an epoch, none lost
    assert json.loads((fold / "result.json").read_text())["fold"] == 1


def test_a_second_ctrl_c_stops_at_once() -> None:
    """During a fit a signal waits for the next step; Ctrl-C pressed again stops at once (it had been ignored, so a
    long step could only be ended by SIGKILL); a second SIGTERM changes nothing."""
    import signal

    from medcad import stopping

    with pytest.raises(stopping.Stopped) as stop, stopping.stoppable(), stopping.deferred():
        signal.raise_signal(signal.SIGTERM)  # waits for the next step
        signal.raise_signal(signal.SIGTERM)  # changes nothing
        assert stopping.requested() == signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # at once
        raise AssertionError("not stopped by the second Ctrl-C")
    assert stop.value.signum == signal.SIGINT and stop.value.code == 130


def test_the_progress_bar_counts_epochs_from_one_and_names_the_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A fit of 2 epochs shows "fold_0 stage2: epoch 2/2" at its end (Lightning's "Epoch 1/1" had read as one epoch of
    one, and a log did not say which fold)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from medcad.engine.common import make_trainer
    from medcad.run import Run

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, _):
            return (self.w * batch[0]).sum()

        def validation_step(self, batch, _):
            self.log("val_loss", (self.w * batch[0]).sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    run = Run.resolve(TrainConfig(accelerator="cpu", logger="none"), tmp_path)
    data = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)
    trainer, _ = make_trainer(run, run.folder.fold(0), "stage2", 2, "val_loss", "min", 5, True)
    trainer.fit(Tiny(), data, data)
    assert "fold_0 stage2: epoch 2/2" in capsys.readouterr().out
