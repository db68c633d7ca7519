"""The classifier's part of the fold loop.

Built-in order: stage 1 trains the head on cached backbone features, stage 2 fine-tunes the last `unfreeze` parameter
groups with augmentation (kept only when validation improves: see engine.fold).

With a stage list (`TrainConfig.stages`), its stages replace that order, at every step of a sequential transfer
too: all but the last run before the fold's fit (each keeps its best validation epoch; checkpoints/stage<i>, a
finished stage is not trained again when the fold resumes), the last is the fold's fit (checkpoints/stage<n>, kept
only when validation improves on stage n-1). A last stage on cached features runs before the fit too, and the fold
then has no fit of its own.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medcad.config import Stage, run_stages
from medcad.data.datasets import ImageDataset
from medcad.data.transforms import Normalize, augmentation
from medcad.devices import is_primary, rank_zero_first
from medcad.engine.common import (
    class_weights,
    fit,
    freeze_pretrained_encoder,
    make_loader,
    make_trainer,
    train_stage,
)
from medcad.engine.features import backbone_features
from medcad.engine.fold import FoldData, FoldHooks
from medcad.engine.modules import (
    ClassifierModule,
    HeadModule,
    multilabel_val_score,
    val_score,
)
from medcad.engine.resume import BEST
from medcad.errors import ConfigError
from medcad.models.classifier import freeze_backbone
from medcad.models.predict import run_batched
from medcad.runfolder import FoldFolder
from medcad.tasks import freeze_stride

log = logging.getLogger(__name__)


class _Probabilities(torch.nn.Module):
    """A classifier's probabilities: softmax over classes, or one sigmoid per label (multi-label)."""

    def __init__(self, model: torch.nn.Module, multilabel: bool = False) -> None:
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)


def weight_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that hold weights of their own (Conv, Linear, BatchNorm, ...), from the input to the output (the
    backbone's in registration order, then the head's): the "layers" a stage's "lastN" counts, as Keras counts a
    model's weight layers."""
    return [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]


def train_layers(model: torch.nn.Module, stage: Stage) -> int:
    """Make only the layers `stage` trains trainable ("all", "head" or the last N weight layers); returns the number
    of trainable tensors."""
    if stage.layers == "all":
        params = list(model.parameters())
    elif stage.layers == "head":
        params = list(model.head.parameters())
    else:
        params = [p for m in weight_layers(model)[-stage.last :] for p in m.parameters(recurse=False)]
    for p in model.parameters():
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
    return len(params)


def one_class_validation(k: int, y_val: np.ndarray, labels: list[str]) -> str | None:
    """What to say of fold k whose validation part (its labels `y_val`, indices into `labels`) holds one class: the
    AUC that selects stages and epochs is undefined there, and accuracy on it selects them; None otherwise."""
    present = np.unique(np.asarray(y_val))
    if len(y_val) == 0 or len(present) > 1:
        return None
    return (
        f"fold {k}: its validation part ({len(y_val)} image(s)) holds one class ({labels[int(present[0])]!r}): the "
        "AUC that selects the model is undefined there, so its stages and epochs are chosen by accuracy on that "
        "class alone; a larger --val-fraction, or more patients per class, gives it both"
    )


class ClassifyHooks(FoldHooks):
    stage = "stage2"
    before_stage = "stage1"
    monitor = "val_auc"
    tasks = ("classify",)
    multilabel = False

    def _plan(self) -> tuple[tuple[Stage, ...], Stage | None] | None:
        """With a stage list: (the stages before the fold's fit, the fit's stage or None); None for the built-in
        order."""
        stages = run_stages(self.cfg)
        if stages is None:
            return None
        if stages[-1].cached:  # trained on features: every stage runs before the fit, and there is no fit
            return stages, None
        return stages[:-1], stages[-1]

    def build(self, data: FoldData, parts: dict, init, meta):
        plan = self._plan()
        if plan is not None:  # checkpoint folders and result names stage1 .. stage<n>
            before, last = plan
            n = len(before) + (last is not None)
            self.stage = f"stage{n}"
            self.before_stage = f"stage{len(before)}" if before else "stage1"
        task = self.run.task
        model = task.build(self.cfg, len(data.labels), None)
        if init is not None:
            model.load_state_dict(init.state_dict())
        return model, task.data_config(model)

    def _weights(self, data: FoldData, parts: dict) -> torch.Tensor | None:
        return class_weights(data.y[parts["train"]], len(data.labels)) if self.cfg.class_weights else None

    def before_fit(self, model, normalize, data, parts, fold: FoldFolder, speed: dict, continued: bool) -> bool:
        """Built-in order: stage 1 (unless continuing from an earlier model): the frozen backbone runs once over
        every image (features cached across folds and runs), then the head trains on the features alone. With a
        stage list: every stage before the fold's fit, whether continuing or not."""
        plan, cfg = self._plan(), self.cfg
        if plan is not None:
            for i, stage in enumerate(plan[0], 1):
                self._run_stage(i, stage, model, normalize, data, parts, fold, speed)
            return continued or bool(plan[0])
        if continued:
            return True
        head = self._head_module(model, data, parts, cfg.head_lr, cfg.optimizer, "constant", cfg.head_epochs)
        self._fit_head(head, model, normalize, data, parts, fold, speed, "stage1", ("val_loss", "min", 10))
        return True

    def check(self, k: int, parts: dict, data: FoldData) -> None:
        said = one_class_validation(k, data.y[parts["val"]], list(data.labels))
        if said and is_primary():
            log.warning("note: %s", said)  # as the run's other notes: one line on stderr

    def before_name(self, continued: bool) -> str:
        """A stage list's stages before the fit train the continued model too: it is then the last of them (a
        sequential step 2's fold had said "stage kept: init" of a model its stage 1 had trained on the new domain)."""
        plan = self._plan()
        trained = plan is not None and any(stage.epochs > 0 for stage in plan[0])  # a stage of 0 epochs is skipped
        return self.before_stage if trained else super().before_name(continued)

    def _head_module(self, model, data, parts, lr: float, optimizer: str, schedule: str, epochs: int):
        cfg, w = self.cfg, self._weights(data, parts)
        return HeadModule(
            model.head, lr, cfg.weight_decay, optimizer, w, cfg.label_smoothing, self.multilabel, schedule, epochs
        )

    def _fit_head(self, head: HeadModule, model, normalize, data, parts, fold: FoldFolder, speed, name: str, monitor):
        """Train the head alone on cached backbone features (the built-in stage 1, or a stage list's cached head
        stage); the best epoch by `monitor` (name, mode, patience) is loaded into it."""
        from torch.utils.data import TensorDataset

        train, val, y, cfg = parts["train"], parts["val"], data.y, self.cfg
        with rank_zero_first():  # rank 0 writes the feature cache, the other processes read it
            # in fp32 as the folds are scored and predict runs: the head is fitted and its epoch chosen on what the
            # deployed model computes (bf16 features had moved stage 1's validation AUC by up to 0.06)
            feats, speed["feature_images_per_s"] = backbone_features(
                model.backbone, normalize, data.images, data.feature_key
            )
        f = torch.from_numpy(feats)
        yt = torch.from_numpy(y).float() if self.multilabel else torch.from_numpy(y).long()
        # the head's fit takes a second or two: fitted again, not resumed, when the fold resumes (no last.ckpt)
        trainer, ckpt = make_trainer(self.run, fold, name, head.max_epochs, *monitor, False, resumable=False)
        fit(
            trainer,
            head,
            make_loader(TensorDataset(f[train], yt[train]), cfg, y[train], True, 64),
            make_loader(TensorDataset(f[val], yt[val]), cfg, None, False, 256),
        )
        if ckpt.best_model_path:
            head.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])

    def _run_stage(self, i: int, stage: Stage, model, normalize, data, parts, fold: FoldFolder, speed) -> None:
        """Stage i of a stage list, before the fold's fit: its layers trainable, its optimiser and learning rate, the
        run's schedule; the best validation epoch (by AUC, early stopping after `patience`) kept. A stage finished
        earlier (checkpoints/stage<i>/done) is loaded, not trained again."""
        if stage.epochs == 0:
            return
        name, cfg = f"stage{i}", self.cfg
        folder = fold.checkpoints(name)
        optimizer = stage.optimizer or cfg.optimizer
        if stage.cached:
            lr = stage.lr * cfg.new_layer_lr_factor  # the head is a new layer
            module = self._head_module(model, data, parts, lr, optimizer, cfg.schedule, stage.epochs)
        else:
            model.train()
            module = self._stage_module(stage, model, normalize, data, parts)
        best = folder / BEST
        if (folder / "done").is_file() and best.is_file():
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
            return
        monitor = (self.monitor, "max", cfg.patience)
        if stage.cached:
            self._fit_head(module, model, normalize, data, parts, fold, speed, name, monitor)
        else:
            loaders = self.loaders(data, parts)
            train_stage(self.run, fold, name, module, loaders, stage.epochs, self.monitor, cfg.patience, False)
        if is_primary():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "done").write_text(f"{stage.text()}\n")

    def _stage_module(self, stage: Stage, model, normalize, data: FoldData, parts: dict):
        train_layers(model, stage)
        if freeze_stride(self.cfg):
            freeze_pretrained_encoder(model.backbone, self.cfg)
        return self._classifier_module(
            model, normalize, data, parts, stage.lr, stage.optimizer or self.cfg.optimizer, stage.epochs
        )

    def _classifier_module(self, model, normalize, data, parts, lr: float, optimizer: str, epochs):
        """The fine-tuning module at a learning rate, optimiser and length; the rest from the run's settings."""
        cfg = self.cfg
        return ClassifierModule(
            model,
            normalize,
            lr=lr,
            weight_decay=cfg.weight_decay,
            optimizer=optimizer,
            class_weights=self._weights(data, parts),
            label_smoothing=cfg.label_smoothing,
            max_epochs=epochs,
            augment=augmentation(cfg.augment),
            multilabel=self.multilabel,
            new_layer_lr_factor=cfg.new_layer_lr_factor,
            schedule=cfg.schedule,
        )

    def epochs(self) -> int:
        plan = self._plan()
        if plan is None:
            return self.cfg.epochs
        return plan[1].epochs if plan[1] is not None else 0

    def module(self, model, normalize: Normalize, data: FoldData, parts: dict):
        plan, cfg = self._plan(), self.cfg
        if plan is not None:
            return self._stage_module(plan[1], model, normalize, data, parts)
        freeze_backbone(model, cfg.unfreeze)
        freeze_pretrained_encoder(model.backbone, cfg)
        return self._classifier_module(model, normalize, data, parts, cfg.lr, cfg.optimizer, cfg.epochs)

    def loaders(self, data: FoldData, parts: dict) -> tuple:
        cfg = self.cfg
        train, val, y = parts["train"], parts["val"], data.y
        return (
            make_loader(ImageDataset(data.images, y, train), cfg, y[train], True, world=self.run.compute.world_size),
            make_loader(ImageDataset(data.images, y, val), cfg, None, False, 64),
        )

    def predict(self, model, normalize, data: FoldData, rows: np.ndarray) -> dict:
        net = _Probabilities(model, self.multilabel)
        return {"probs": run_batched(net, normalize, data.images, rows, bf16=False)[0]}

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        return val_score(data.y[rows], outputs["probs"])


class MultilabelHooks(ClassifyHooks):
    """Multi-label: the same two-stage transfer, one sigmoid per label and binary cross-entropy (positive weights
    from the training part's label frequencies); selection by the mean per-label validation AUC; no temperature."""

    tasks = ("multilabel",)
    multilabel = True

    def check(self, k: int, parts: dict, data: FoldData) -> None:
        if self.cfg.oversample:
            raise ConfigError("--oversample balances single classes; for multilabel runs use --class-weights")

    def _weights(self, data: FoldData, parts: dict) -> torch.Tensor | None:
        if not self.cfg.class_weights:
            return None
        y = data.y[parts["train"]]
        pos = y.sum(0)
        return torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1.0, 100.0), dtype=torch.float32)

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        return multilabel_val_score(data.y[rows], outputs["probs"])

    def temperature(self, val: dict, data: FoldData, rows: np.ndarray) -> float | None:
        return None
