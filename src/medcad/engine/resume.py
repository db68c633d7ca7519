"""Where an interrupted fit resumes: its resume point (last.ckpt), written when it is worth its cost; what an
unfinished fit left; a signal that stops a fit at its next step.

A resume point holds the whole state of a fit (weights, optimizer, scheduler, the other callbacks' records, the
loops' progress). For a large model it costs seconds to write: the 31 M-parameter scratch U-Net's, with Adam's two
moments, is 372 MB, 3-5 s a write on 2026-12-05's machine, a quarter of a 64 px fit written after every epoch
(`benchmarks/resume_points.py`). So it is written after an epoch
only when the fit has run at least `1 / WRITE_SHARE` times as long as the last write took since that write (writing
then costs at most `WRITE_SHARE` of the fit, and a stopped fit loses at most that long plus an epoch), always when a
write takes less than `CHEAP_WRITE_S`, and always after the fit's final epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medcad.atomic import atomic_path
from medcad.runfolder import FoldFolder
from medcad.stopping import raise_if_stopped, requested

WRITE_SHARE = 0.1  # at most this share of a fit's time goes to its resume points (beyond its first and final ones)
CHEAP_WRITE_S = 1.0  # a resume point written this fast is written after every epoch


def resume_point_due(since_write_s: float, write_s: float | None, final: bool) -> bool:
    """Whether a fit writes its resume point after the epoch that just ended.

    Args:
        since_write_s: seconds since its last resume point was written (or since the fit started).
        write_s: seconds the last write took; None before the first.
        final: the epoch is the fit's last (max_epochs reached, or early stopping ends it here).
    """
    return final or write_s is None or write_s < CHEAP_WRITE_S or since_write_s * WRITE_SHARE >= write_s


class ResumePoint(Checkpoint):
    """Writes a fit's resume point (`path`, last.ckpt) at the end of a training epoch when `resume_point_due` says
    so, with Lightning's atomic `trainer.save_checkpoint`. A `Checkpoint`, so Lightning runs it after the other
    callbacks: the best-checkpoint and early-stopping records it holds are this epoch's. With several processes,
    all follow the first one's decision (each write waits for every process).

    Beside it, the best weights as of the resume point (`BEST_AT_RESUME`, a hard link to best.ckpt: no bytes
    copied): a fit resumed from an earlier epoch than best.ckpt's gets them back (`restore_best`), so that the
    weights it keeps are never those of the epochs it trains again (its records would name another score)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.write_s: float | None = None
        self.written = time.monotonic()
        self.epochs: list[int] = []  # the epochs (0-based) whose end it wrote, in this fit

    def on_train_start(self, trainer, pl_module) -> None:
        self.written = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        final = trainer.should_stop or trainer.current_epoch + 1 >= trainer.max_epochs
        due = resume_point_due(time.monotonic() - self.written, self.write_s, final)
        if not trainer.strategy.broadcast(due):
            return
        start = time.monotonic()
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            _link_best(self.path.parent)
        self.written = time.monotonic()
        self.write_s = self.written - start
        self.epochs.append(trainer.current_epoch)


BEST, BEST_AT_RESUME, LAST = "best.ckpt", "best.at-resume.ckpt", "last.ckpt"  # a fit's checkpoint files


class CheckpointFiles(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each checkpoint beside its path and renaming it into place
    (`medcad.atomic`). Lightning's own stages it in $TMPDIR and, where that is another filesystem than the run
    folder, copies it over the old file in place: a kill mid-copy left a truncated last.ckpt, and best.ckpt's
    hard-linked snapshot (`BEST_AT_RESUME`) was overwritten with the newer weights it is there to keep apart."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("medcad's checkpoint files take no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _link_best(folder: Path) -> None:
    """Keep best.ckpt as it is at this resume point under `BEST_AT_RESUME` (a hard link; best.ckpt is replaced, not
    rewritten, when a better epoch comes). Where links cannot be made, no snapshot is kept (a stale one is removed)."""
    best, kept = folder / BEST, folder / BEST_AT_RESUME
    try:
        if best.is_file():
            _link(best, kept)
        else:
            kept.unlink(missing_ok=True)
    except OSError:
        kept.unlink(missing_ok=True)


def restore_best(folder: Path) -> bool:
    """Put back the best weights as of the resume point a fit resumes from (`ResumePoint`); whether there were any.
    The snapshot stays (linked again), so a fit stopped again before its next resume point is restored alike."""
    kept = folder / BEST_AT_RESUME
    if not kept.is_file():
        return False
    _link(kept, folder / BEST)
    return True


def _link(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (the same bytes, none copied), replacing it atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, target)
    tmp.unlink(missing_ok=True)  # renaming over a link to the same file does nothing (rename(2)): tmp stayed


@dataclass(frozen=True)
class Resume:
    """Where a fit resumes: after `epoch` (0-based, the last one its last.ckpt holds), at `global_step`."""

    epoch: int
    global_step: int

    @classmethod
    def read(cls, last: Path) -> Resume | None:
        if not last.is_file():
            return None
        ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        return cls(int(ckpt["epoch"]), int(ckpt["global_step"]))


def clear_fit(fold: FoldFolder, stage: str) -> bool:
    """Remove what an earlier, unfinished fit of the stage left (checkpoints, TensorBoard and CSV logs), so that this
    fit starts afresh in empty folders. Returns whether there was anything."""
    import shutil

    found = False
    for folder in (fold.checkpoints(stage), fold.logs / "tensorboard" / stage, fold.logs / "csv" / stage):
        if folder.is_dir():
            found = found or any(folder.iterdir())
            shutil.rmtree(folder)
    return found


class StopAtStep(L.Callback):
    """A signal that arrives during a fit (`medcad.stopping`) stops it at its next training or validation step, never
    in the middle of writing a checkpoint or a log. With several processes, all must stop at the same step (one that
    left would leave the others waiting in a collective): Lightning's SIGTERM flag, which rank 0 broadcasts at every
    step, stops them together instead (a SIGINT included; `fit` says which signal it was)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer)

    @staticmethod
    def _stop(trainer) -> None:
        if requested() is None:
            return
        if trainer.world_size > 1:
            trainer._signal_connector.received_sigterm = True  # what Lightning's own SIGTERM handler sets
            return
        raise_if_stopped()
