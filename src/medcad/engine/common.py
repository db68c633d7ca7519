"""Training plumbing shared by every task: Lightning trainer and loaders, class weights, model files."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar

from medcad.allocator import keep_freed_memory
from medcad.atomic import leftovers
from medcad.config import TrainConfig
from medcad.devices import is_primary
from medcad.engine.resume import (
    BEST,
    LAST,
    CheckpointFiles,
    Resume,
    ResumePoint,
    StopAtStep,
    clear_fit,
    restore_best,
)
from medcad.errors import ConfigError
from medcad.models.backbones import set_bn_eval
from medcad.models.bnfold import fold_eval_batchnorm
from medcad.models.depthwise import fast_depthwise_grads
from medcad.run import Run
from medcad.runfolder import FoldFolder
from medcad.stopping import Stopped, deferred, requested

log = logging.getLogger(__name__)


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
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")  # validation scores: gathered, equal on every rank
    # a fit that resumes keeps its checkpoints on purpose; one that starts afresh finds them cleared (`make_trainer`)
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def logger_names(cfg: TrainConfig) -> list[str]:
    """The loggers a run asks for (`cfg.logger`, comma-separated), checked.

    Raises:
        ConfigError: an unknown logger, or mlflow where it is not installed.
    """
    names = [n.strip() for n in cfg.logger.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - {"tensorboard", "csv", "mlflow"})
    if unknown:
        raise ConfigError(f"unknown logger(s) {', '.join(unknown)}; use tensorboard, csv, mlflow (comma-separated)")
    if "mlflow" in names:
        try:
            import mlflow  # noqa: F401
        except ImportError as e:
            raise ConfigError("--logger mlflow needs MLflow: pip install 'medcad[mlflow]'") from e
    return names


def make_loggers(fold: FoldFolder, stage: str, cfg: TrainConfig, resumed: Resume | None = None) -> list:
    """Lightning loggers named by `cfg.logger` (comma-separated tensorboard, csv, mlflow; or none): TensorBoard and
    CSV logs in the fold's logs folder; MLflow runs in cfg.tracking_uri (a server or store), else
    $MLFLOW_TRACKING_URI, else a local SQLite store `mlflow.db` beside the run folder (for a study: one store for all
    its runs), in the experiment "medcad". Runs spread over a cluster belong on a tracking server (`mlflow server`,
    then its http:// address). A fit `resumed` from its last checkpoint continues the TensorBoard and CSV logs of the
    fit it resumes (what was logged after that checkpoint is dropped).

    Raises:
        ConfigError: see `logger_names`.
    """
    import os

    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    names = logger_names(cfg)
    out = []
    if "tensorboard" in names:
        # TensorBoard hides the events of earlier files from purge_step on: the resumed steps are logged again
        purge = {"purge_step": resumed.global_step} if resumed else {}
        out.append(TensorBoardLogger(fold.logs / "tensorboard", name=stage, version="", **purge))
    if "csv" in names:
        csv = CSVLogger(fold.logs / "csv", name=stage, version="")
        if resumed and is_primary():
            _continue_csv(csv, resumed.epoch)
        out.append(csv)
    if "mlflow" in names:
        run_dir = fold.path.resolve().parent
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.parent / 'mlflow.db'}"
        out.append(
            MLFlowLogger(
                experiment_name="medcad", run_name=f"{run_dir.name}/{fold.path.name}/{stage}", tracking_uri=uri
            )
        )
    return out


def _continue_csv(logger, epoch: int) -> None:
    """A resumed fit's CSV log (metrics.csv) keeps its rows of epochs up to `epoch` (the resumed checkpoint's; those
    of the epoch that was stopped are logged again) and the fit appends its own to them. Lightning would otherwise
    delete the file, with a warning, when its writer finds it."""
    import csv
    import io

    from medcad.atomic import atomic_write_text

    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if _number(r.get("epoch")) is not None and _number(r["epoch"]) <= epoch]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with deferred():  # not stopped between removing the file and writing it back
        path.unlink()
        log_writer = logger.experiment  # made now, in an empty folder: nothing to warn of or delete
        atomic_write_text(path, text.getvalue())
        log_writer.metrics_keys = header  # appends under this header (Lightning rewrites it for new columns)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


class RankSeeds(L.Callback):
    """With several processes, each reseeds torch's generator with its rank added as the fit starts (after the model
    was built alike everywhere), so the ranks draw their own augmentation and dropout instead of the same draws at
    each batch position; one process keeps its stream as it is."""

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + trainer.global_rank)


class FitBar(RichProgressBar):
    """Lightning's progress bar, its epochs counted from 1 and the fit named ("fold_0 stage2: epoch 1/2"): "Epoch
    1/1" had been shown for --epochs 2 (Lightning counts from 0), and a log did not say which fold it was."""

    def __init__(self, fit: str) -> None:
        super().__init__()
        self.fit = fit

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning 2.x's own, overridden
        of = f"/{self.trainer.max_epochs}" if self.trainer.max_epochs is not None else ""
        return f"{self.fit}: epoch {current_epoch + 1}{of}"


def make_trainer(
    run: Run,
    fold: FoldFolder,
    stage: str,
    max_epochs: int,
    monitor: str,
    mode: str,
    patience: int,
    progress: bool,
    precision: str | None = None,
    resumable: bool = True,
):
    """A Lightning trainer on the run's compute (accelerator, devices, nodes, strategy, and its precision unless
    `precision` is given: `engine.precision.fit_precision` chooses one per fit), with best/last
    checkpoints in the fold's checkpoints/<stage> (best only when not `resumable`: a fit of seconds, such as a head
    on cached features, is fitted again rather than resumed), early stopping on `monitor`, and the run's loggers.
    Returns (trainer, checkpoint callback). With several processes, Lightning shards the training data with a
    distributed sampler and writes checkpoints and logs from rank 0 only.

    A resumable fit with a last.ckpt resumes (see `train_stage`) and continues its logs; any other fit starts in empty
    folders: what an unfinished earlier fit of the stage left is removed first. Either is said (a `note:`).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    keep_freed_memory()  # a step's activations are not unmapped and page-faulted in again every step
    compute = run.compute
    # best.ckpt: the weights only (what the fold loads), a third of the bytes per improvement; last.ckpt: the
    # resume point (`engine.resume`), written after an epoch when it is worth its cost and after the final epoch
    folder = fold.checkpoints(stage)
    resumed = Resume.read(folder / LAST) if resumable else None
    if is_primary():
        where = f"{fold.path.name} {stage}"  # fold_<k> stage2
        if resumed:
            for stale in (*leftovers(folder / LAST), *leftovers(folder / BEST)):  # a kill stopped them mid-write
                stale.unlink(missing_ok=True)
            restore_best(folder)  # the best weights as of that epoch, not those of epochs trained again
            log.warning(
                "note: %s continues after epoch %d of %d (its last checkpoint)", where, resumed.epoch + 1, max_epochs
            )
        elif clear_fit(fold, stage):
            log.warning("note: %s starts again (what its unfinished earlier fit left is cleared)", where)
    ckpt = ModelCheckpoint(dirpath=folder, filename=Path(BEST).stem, monitor=monitor, mode=mode, save_weights_only=True)
    early = EarlyStopping(monitor=monitor, mode=mode, patience=patience)
    trainer = L.Trainer(
        accelerator=compute.accelerator,
        devices=compute.devices,
        num_nodes=compute.num_nodes,
        strategy=compute.strategy,
        max_epochs=max_epochs,
        precision=precision or compute.precision,
        callbacks=[
            ckpt,
            *([ResumePoint(folder / LAST)] if resumable else []),
            early,
            RankSeeds(),
            StopAtStep(),
            *([FitBar(f"{fold.path.name} {stage}")] if progress and is_primary() else []),
        ],
        plugins=[CheckpointFiles()],
        logger=make_loggers(fold, stage, run.cfg, resumed) or False,
        enable_model_summary=False,
        enable_progress_bar=progress and is_primary(),
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    return trainer, ckpt


def fit(trainer, module, train_loader, val_loader, ckpt_path: Path | None = None) -> None:
    """`trainer.fit` with the loaders handed over when Lightning asks for them, after the processes have joined:
    with several processes, each validates a disjoint share of the validation part (no sample repeated, none
    dropped) and the modules gather the shares (`gather_lists`), so every process scores the whole part once.

    A SIGTERM or SIGINT stops the fit at its next step (`StopAtStep`, or Lightning's own SIGTERMException, a
    SystemExit of status 0) with `medcad.stopping.Stopped` (status 128 + the signal)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with deferred():
        try:
            trainer.fit(module, datamodule=_FoldLoaders(train_loader, val_loader), ckpt_path=ckpt_path)
        except SIGTERMException:
            raise Stopped(requested() or signal.SIGTERM) from None


def train_stage(
    run: Run,
    fold: FoldFolder,
    stage: str,
    module,
    loaders: tuple,
    max_epochs: int,
    monitor: str,
    patience: int,
    progress: bool,
    load_best: bool = True,
    callbacks: tuple = (),
) -> str:
    """Fit `module` on images for one stage of a fold: in the precision chosen for it on this machine
    (`engine.precision.fit_precision`), resuming from the stage's last.ckpt when there is one, early stopping on
    `monitor` (higher is better); then, with `load_best`, load the best epoch's weights (the last epoch's when no best
    was recorded) into it. Returns the precision it trained in. Depthwise convolutions on maps smaller than their
    kernel get their weight gradient from `models.depthwise` for the fit (the precision probe included)."""
    from medcad.engine.precision import fit_precision

    with fast_depthwise_grads(module):
        precision = fit_precision(run, module, loaders[0])
        trainer, ckpt = make_trainer(run, fold, stage, max_epochs, monitor, "max", patience, progress, precision)
        trainer.callbacks.extend(callbacks)
        last = fold.checkpoints(stage) / LAST
        fit(trainer, module, *loaders, ckpt_path=last if last.is_file() else None)
    best = ckpt.best_model_path or (str(last) if last.is_file() else "")
    if load_best and best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    return precision


class _FoldLoaders(L.LightningDataModule):
    def __init__(self, train_loader, val_loader) -> None:
        super().__init__()
        self.train_loader, self.val_loader = train_loader, val_loader

    def train_dataloader(self):
        return self.train_loader  # Lightning shards it (distributed sampler) when several processes run

    def val_dataloader(self):
        world = self.trainer.world_size
        if world == 1:
            return self.val_loader
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
        from torch.utils.data import DataLoader

        dl = self.val_loader
        rank = self.trainer.global_rank
        sampler = UnrepeatedDistributedSampler(dl.dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dl.dataset, dl.batch_size, sampler=sampler, collate_fn=dl.collate_fn)


def gather_lists(items: list) -> list:
    """Every process's items concatenated in rank order (the same list in every process); `items` itself when one
    process runs. For validation outputs: each process holds its disjoint share of the part."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def class_weights(y: np.ndarray, n: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present classes), 0 for absent classes."""
    counts = np.bincount(y, minlength=n).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n, 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_loader(
    dataset, cfg: TrainConfig, y_rows: np.ndarray | None, shuffle: bool, batch_size: int | None = None, world: int = 0
):
    """A DataLoader; with cfg.oversample and labels, training batches are drawn class-balanced. With `world` (the
    processes the fit runs in), a training batch that would hold one image is left out (a different one each
    epoch): BatchNorm layers that train their statistics cannot normalise one sample on a 1 x 1 map, and one image's
    statistics are noise."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    bs = batch_size or cfg.batch_size
    per_process = -(-len(dataset) // max(world, 1))  # what each process's shard holds under DDP
    drop_last = bool(shuffle and world and per_process % bs == 1 and per_process > bs)
    if shuffle and cfg.oversample and y_rows is not None:
        counts = np.bincount(y_rows)
        weights = 1.0 / counts[y_rows]
        sampler = WeightedRandomSampler(torch.tensor(weights, dtype=torch.double), len(y_rows), replacement=True)
        return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=drop_last)
    return DataLoader(dataset, batch_size=bs, shuffle=shuffle, drop_last=drop_last)


def freeze_pretrained_encoder(encoder: torch.nn.Module | None, cfg: TrainConfig) -> int:
    """Keep a pretrained encoder's stem and stages up to the run's freeze stride (`tasks.freeze_stride`) at their
    ImageNet weights (see `medcad.models.backbones.freeze_early_stages`). Only when pretrained weights were really
    loaded into it (`backbones.pretrained_source`: a file, an offline package, the hub): a randomly initialised
    encoder (`--weights none`, or `auto` for a backbone with no offline weights, e.g. resnet50, vgg16) trains every
    layer, and a note says so. Nothing for models without a timm encoder (None) or a stride of 0. Returns the number
    of tensors frozen."""
    from medcad.models.backbones import freeze_early_stages, pretrained_source
    from medcad.tasks import freeze_stride

    stride = freeze_stride(cfg)
    if encoder is None or stride == 0:
        return 0
    if pretrained_source(encoder, cfg.weights) is None:
        logging.getLogger(__name__).warning(
            "note: the %s encoder starts from random init (--weights %s: no pretrained weights loaded), so its stem "
            "and early stages are trained, not frozen (freeze stride %d applies to pretrained encoders only)",
            (getattr(encoder, "pretrained_cfg", None) or {}).get("architecture") or type(encoder).__name__,
            cfg.weights,
            stride,
        )
        return 0
    return len(freeze_early_stages(encoder, stride))


class FrozenBatchNormFit:
    """Lightning-module mixin for fine-tuning with the pretrained BatchNorm statistics kept: the BatchNorms of
    `frozen_bn_net()` (None: no network) are put in eval mode at the start of every training epoch
    (`backbones.set_bn_eval`: small CPU batches would spoil them), and for the fit each convolution that feeds one of
    them runs with it folded in (`medcad.models.bnfold`; exact, the model and its state_dict unchanged). A fit that
    fails leaves the folds in place, which compute the same (they read the live parameters and check the mode).
    Modules that override the epoch hooks call super()."""

    _folds = None

    def frozen_bn_net(self) -> torch.nn.Module | None:
        return None

    def on_fit_start(self) -> None:
        net = self.frozen_bn_net()
        self._folds = fold_eval_batchnorm(net) if net is not None else None
        super().on_fit_start()

    def on_fit_end(self) -> None:
        if self._folds is not None:
            self._folds.remove()
            self._folds = None
        super().on_fit_end()

    def on_train_epoch_start(self) -> None:
        net = self.frozen_bn_net()
        if net is not None:
            set_bn_eval(net)
        super().on_train_epoch_start()


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
