"""Training plumbing shared by every task: Lightning trainer and loaders, class weights, model files."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from medcad.config import TrainConfig


def quiet_lightning() -> None:
    import lightning  # noqa: F401  (it configures its loggers on import: quiet them afterwards)

    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # frozen BatchNorm, on purpose


def make_trainer(
    fold_dir: Path,
    stage: str,
    max_epochs: int,
    cfg: TrainConfig,
    monitor: str,
    mode: str,
    patience: int,
    progress: bool,
):
    """A CPU Lightning trainer with best/last checkpoints in fold_dir/checkpoints/<stage>, early stopping on
    `monitor`, and TensorBoard + CSV logs. Returns (trainer, checkpoint callback)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    ckpt = ModelCheckpoint(
        dirpath=fold_dir / "checkpoints" / stage,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_weights_only=False,
    )
    loggers = [
        TensorBoardLogger(fold_dir / "logs" / "tensorboard", name=stage, version=""),
        CSVLogger(fold_dir / "logs" / "csv", name=stage, version=""),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        precision=cfg.precision,
        callbacks=[ckpt, EarlyStopping(monitor=monitor, mode=mode, patience=patience)],
        logger=loggers,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    return trainer, ckpt


def class_weights(y: np.ndarray, n: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present classes), 0 for absent classes."""
    counts = np.bincount(y, minlength=n).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n, 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_loader(dataset, cfg: TrainConfig, y_rows: np.ndarray | None, shuffle: bool, batch_size: int | None = None):
    """A DataLoader; with cfg.oversample and labels, training batches are drawn class-balanced."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    bs = batch_size or cfg.batch_size
    if shuffle and cfg.oversample and y_rows is not None:
        counts = np.bincount(y_rows)
        weights = 1.0 / counts[y_rows]
        sampler = WeightedRandomSampler(torch.tensor(weights, dtype=torch.double), len(y_rows), replacement=True)
        return DataLoader(dataset, batch_size=bs, sampler=sampler)
    return DataLoader(dataset, batch_size=bs, shuffle=shuffle)


class TrainingThroughput:
    """Lightning-module mixin: images per second of each training epoch, kept in `images_per_s` and logged as
    train_images_per_s. Modules that override the epoch hooks call super()."""

    def on_train_epoch_start(self) -> None:
        self._t0, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._n += len(batch[0])

    def on_train_epoch_end(self) -> None:
        ips = self._n / max(time.perf_counter() - self._t0, 1e-9)
        self.images_per_s.append(ips)
        self.log("train_images_per_s", ips)
