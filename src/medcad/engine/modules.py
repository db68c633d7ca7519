"""Lightning modules for classification: the head on cached features (stage 1) and the whole network (stage 2)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from medcad.config import OPTIMIZERS, SCHEDULES, TrainConfig, run_stages
from medcad.data.transforms import Normalize
from medcad.engine.common import FrozenBatchNormFit, TrainingThroughput, gather_lists
from medcad.errors import ConfigError
from medcad.models.backbones import batchnorms, learned_bn_statistics, restart_bn_statistics
from medcad.models.classifier import Classifier
from medcad.tasks import freeze_stride, get_task


def make_optimizer(kind: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam or AdamW (`kind`); raises ConfigError for another name."""
    if kind not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {kind!r}; choose {' or '.join(OPTIMIZERS)}")
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def optimizer_and_schedule(
    kind: str,
    groups: list[dict],
    lr: float,
    weight_decay: float,
    schedule: str,
    max_epochs: int,
):
    """What `configure_optimizers` returns: the optimizer over `groups` (each with its own "lr"; empty groups
    dropped), with a cosine decay over `max_epochs` (stepped per epoch) or a constant learning rate."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose {' or '.join(SCHEDULES)}")
    opt = make_optimizer(kind, [g for g in groups if g["params"]], lr, weight_decay)
    if schedule == "constant":
        return opt
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    return {"optimizer": opt, "lr_scheduler": sched}


def val_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Model-selection score on a validation part: macro one-vs-rest AUC over the classes present, each class's on
    its `class_score` among the present classes (as the run's metrics; for two classes the binary AUC; for more,
    scikit-learn's roc_auc_score(multi_class="ovr") on the probabilities renormalised over the present classes,
    saturated ties apart), or accuracy when AUC is undefined (a single class); 0 for probabilities with nan (a
    diverged epoch is never selected: argmax of nan rows is class 0, whose accuracy could have won)."""
    from medcad.metrics.roc import class_score, weighted_auc

    y = np.asarray(y)
    p = np.asarray(probs, dtype=np.float64)
    present = np.unique(y)
    if np.isnan(p).any():
        return 0.0
    if len(present) > 1:
        sub = p[:, present]
        total = sub.sum(axis=1, keepdims=True)
        sub = np.divide(sub, total, out=np.zeros_like(sub), where=total > 0)  # class_score ranks p_c as given
        return float(np.mean([weighted_auc(y == c, class_score(sub, i))[0] for i, c in enumerate(present)]))
    return float((p.argmax(1) == y).mean())


def multilabel_val_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Model-selection score of multi-label predictions (N, K): the mean AUC over the labels with both outcomes in
    the part, or 1 - Hamming loss when no label has both; 0 for probabilities with nan (a diverged epoch is never
    selected, as in `val_score`)."""
    from sklearn.metrics import roc_auc_score

    if np.isnan(probs).any():
        return 0.0
    y = np.asarray(y).astype(bool)
    both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    if both:
        return float(np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in both]))
    return float(1 - ((probs >= 0.5) != y).mean())


def classification_loss(class_weights, label_smoothing: float, multilabel: bool) -> nn.Module:
    """Cross-entropy (one class per image), or per-label binary cross-entropy with `class_weights` as each label's
    positive weight (several labels per image)."""
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=class_weights)
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


class _ValidationAUC:
    """Collects validation probabilities; logs loss, accuracy and the model-selection AUC (`val_auc`) at epoch end
    over the whole validation part (the shares of every process gathered): macro one-vs-rest AUC, or for
    multi-label models the mean per-label AUC."""

    multilabel = False

    def on_validation_epoch_start(self) -> None:
        self._val: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def _collect(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        probs = logits.float().sigmoid() if self.multilabel else logits.float().softmax(-1)
        self._val.append((probs.cpu(), y.cpu(), float(loss) * len(y)))

    def on_validation_epoch_end(self) -> None:
        val = gather_lists(self._val)
        if not val:
            return
        probs = torch.cat([p for p, _, _ in val]).numpy()
        y = torch.cat([t for _, t, _ in val]).numpy()
        loss = sum(s for _, _, s in val) / len(y)
        if self.multilabel:
            scores = {"val_acc": float(((probs >= 0.5) == y).mean()), "val_auc": multilabel_val_score(y, probs)}
        else:
            scores = {"val_acc": float((probs.argmax(1) == y).mean()), "val_auc": val_score(y, probs)}
        self.log_dict({"val_loss": loss, **scores}, prog_bar=True)


class HeadModule(_ValidationAUC, L.LightningModule):
    """Stage 1: train the head alone on backbone features (B, F)."""

    def __init__(
        self,
        head: nn.Module,
        lr: float,
        weight_decay: float,
        optimizer: str,
        class_weights: torch.Tensor | None,
        label_smoothing: float = 0.0,
        multilabel: bool = False,
        schedule: str = "constant",
        max_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.head = head
        self.lr, self.weight_decay, self.optimizer_kind = lr, weight_decay, optimizer
        self.schedule, self.max_epochs = schedule, max_epochs
        self.multilabel = multilabel
        self.loss = classification_loss(class_weights, label_smoothing, multilabel)

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss(self.head(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.head(x)
        self._collect(logits, y, self.loss(logits, y))

    def configure_optimizers(self):
        params = [p for p in self.head.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": self.lr}]
        return optimizer_and_schedule(
            self.optimizer_kind, groups, self.lr, self.weight_decay, self.schedule, self.max_epochs
        )


class ClassifierModule(FrozenBatchNormFit, TrainingThroughput, _ValidationAUC, L.LightningModule):
    """Stage 2: fine-tune the unfrozen backbone groups and the head on uint8 image batches, augmented by `augment`
    (`transforms.BatchAugmentation`, or None)."""

    def __init__(
        self,
        model: Classifier,
        normalize: Normalize,
        *,
        lr: float,
        weight_decay: float,
        optimizer: str,
        class_weights: torch.Tensor | None,
        label_smoothing: float = 0.0,
        max_epochs: int = 10,
        augment=None,
        multilabel: bool = False,
        new_layer_lr_factor: float = 5.0,
        schedule: str = "cosine",
    ) -> None:
        super().__init__()
        self.model, self.normalize, self.augment = model, normalize, augment
        self.lr, self.weight_decay, self.optimizer_kind, self.max_epochs = lr, weight_decay, optimizer, max_epochs
        self.new_layer_lr_factor, self.schedule = new_layer_lr_factor, schedule
        self.multilabel = multilabel
        self.loss = classification_loss(class_weights, label_smoothing, multilabel)
        self.images_per_s: list[float] = []
        # learned statistics (pretrained, continued) are kept; a randomly initialised backbone's are trained
        self.keep_bn_statistics = learned_bn_statistics(model.backbone)

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=torch.channels_last)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x_uint8).contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def frozen_bn_net(self) -> nn.Module | None:
        return self.model.backbone if self.keep_bn_statistics else None

    def on_train_epoch_start(self) -> None:
        """Statistics that train (a fresh backbone's) become each epoch's average over its batches, as the
        detector's own layers do (`backbones.restart_bn_statistics`)."""
        if not self.keep_bn_statistics:
            restart_bn_statistics(batchnorms(self.model.backbone))
        super().on_train_epoch_start()

    def training_step(self, batch, _):
        x, y = batch
        logits = self(self.augment(x) if self.augment is not None else x)
        loss = self.loss(logits, y)
        self.log("train_loss", loss, on_epoch=True, on_step=False, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self._collect(logits, y, self.loss(logits, y))

    def configure_optimizers(self):
        # the new head learns at new_layer_lr_factor x lr, the backbone's trained layers at lr
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.lr * self.new_layer_lr_factor}, {"params": body, "lr": self.lr}]
        return optimizer_and_schedule(
            self.optimizer_kind, groups, self.lr, self.weight_decay, self.schedule, self.max_epochs
        )


def _lr(x: float) -> str:
    return f"{x:g}"


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _new_and_pretrained(cfg: TrainConfig, lr: float, new: str, pretrained: str) -> str:
    f = cfg.new_layer_lr_factor
    return f"{new} lr {_lr(lr * f)} ({_lr(f)} x {_lr(lr)}, new_layer_lr_factor), {pretrained} lr {_lr(lr)}"


def schedule_lines(cfg: TrainConfig) -> list[str]:
    """How a run optimises, one line per fit: the optimiser, the learning rate of each parameter group and the
    schedule, as the Lightning modules will apply them (for the `note:` at the start of a run and `study --plan`).

    Raises:
        ConfigError: an unknown optimiser or schedule, or stages for a task that has none.
    """
    stages = run_stages(cfg)
    for kind in [cfg.optimizer] + [s.optimizer for s in stages or () if s.optimizer]:
        if kind not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {kind!r}; choose {' or '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose {' or '.join(SCHEDULES)}")
    wd = f"weight decay {_lr(cfg.weight_decay)}"
    sched = f"{cfg.schedule} schedule"
    stride = freeze_stride(cfg)
    if stride:
        sched += f"; a pretrained encoder keeps its stem and stages to stride {stride} (freeze_stride)"
    if "mask" in get_task(cfg.task).outputs:
        groups = _new_and_pretrained(cfg, cfg.lr, "decoder, heads and from-scratch models", "pretrained encoder")
        return [f"{_epochs(cfg.epochs)} of every layer: {cfg.optimizer} ({wd}), {groups}, {sched}"]
    if "boxes" in get_task(cfg.task).outputs:
        groups = _new_and_pretrained(cfg, cfg.lr, "SSD heads and extra layers", "backbone")
        return [f"{_epochs(cfg.epochs)} of every layer: {cfg.optimizer} ({wd}), {groups}, {sched}"]
    if stages is None:
        head = f"stage 1: {_epochs(cfg.head_epochs)} of the head on cached features, {cfg.optimizer} ({wd}), lr "
        head += f"{_lr(cfg.head_lr)}, constant"
        layers = "every backbone group" if cfg.unfreeze >= 99 else f"the last {cfg.unfreeze} backbone groups"
        body = _new_and_pretrained(cfg, cfg.lr, "head", "backbone")
        tune = f"stage 2: {_epochs(cfg.epochs)} of the head and {layers}, {cfg.optimizer} ({wd}), {body}, {sched}"
        return [head, tune]
    out = []
    for i, s in enumerate(stages, 1):
        what = {"all": "every layer", "head": "the head"}.get(s.layers, f"the last {s.last} weight layers")
        opt = f"{s.optimizer or cfg.optimizer} ({wd})"
        if s.layers == "head":
            lrs = f"head lr {_lr(s.lr * cfg.new_layer_lr_factor)} ({_lr(cfg.new_layer_lr_factor)} x {_lr(s.lr)})"
        else:
            lrs = _new_and_pretrained(cfg, s.lr, "head", "backbone")
        where = " on cached features" if s.cached else ""
        out.append(f"stage {i}: {_epochs(s.epochs)} of {what}{where}, {opt}, {lrs}, {sched}")
    return out


def schedule_note(cfg: TrainConfig) -> str:
    """`schedule_lines` as the one `note:` line printed at the start of a run; it says where class weights and
    oversampling both balance the classes (each alone makes the training set count as balanced; together they favour
    the rare classes twice over, and the calibration intercept shows it: the report's calibration section)."""
    lines = schedule_lines(cfg)
    extra = " (the stage list replaces head_epochs, head_lr, epochs, lr and unfreeze)" if run_stages(cfg) else ""
    task = get_task(cfg.task)  # tasks of one class per image, whose classes both settings balance
    if cfg.class_weights and cfg.oversample and "labels" in task.targets and task.label_kind == "single":
        lines.append(
            "class weights and oversampling both balance the classes, so the rare ones count twice over "
            "(--no-class-weights or --no-oversample keeps one)"
        )
    return f"training{extra}: " + "; ".join(lines)
