"""The classifier's part of the fold loop: stage 1 trains the head on cached backbone features, stage 2 fine-tunes
the last `unfreeze` parameter groups with augmentation (kept only when validation improves: see engine.fold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medcad.config import TrainConfig
from medcad.data.datasets import ImageDataset
from medcad.data.transforms import Normalize, augmentation
from medcad.devices import rank_zero_first
from medcad.engine.common import (
    class_weights,
    fit,
    freeze_pretrained_encoder,
    make_loader,
    make_trainer,
    reduced_precision,
)
from medcad.engine.features import backbone_features
from medcad.engine.fold import FoldData, FoldHooks
from medcad.engine.modules import ClassifierModule, HeadModule, multilabel_val_score, val_score
from medcad.errors import ConfigError
from medcad.models.classifier import freeze_backbone
from medcad.models.predict import run_batched
from medcad.tasks import get_task


class _Probabilities(torch.nn.Module):
    """A classifier's probabilities: softmax over classes, or one sigmoid per label (multi-label)."""

    def __init__(self, model: torch.nn.Module, multilabel: bool = False) -> None:
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)


class ClassifyHooks(FoldHooks):
    stage = "stage2"
    before_stage = "stage1"
    monitor = "val_auc"
    tasks = ("classify",)
    multilabel = False

    def build(self, cfg: TrainConfig, data: FoldData, parts: dict, init, meta):
        task = get_task(self.tasks[0])
        model = task.build(cfg, len(data.labels), None)
        if init is not None:
            model.load_state_dict(init.state_dict())
        return model, task.data_config(model)

    def _weights(self, data: FoldData, parts: dict, cfg: TrainConfig) -> torch.Tensor | None:
        return class_weights(data.y[parts["train"]], len(data.labels)) if cfg.class_weights else None

    def before_fit(self, model, normalize, data, parts, cfg, fold_dir: Path, speed: dict, continued: bool) -> bool:
        """Stage 1 (unless continuing from an earlier model): the frozen backbone runs once over every image
        (features cached across folds and runs), then the head trains on the features alone."""
        if continued:
            return True
        from torch.utils.data import TensorDataset

        train, val, y = parts["train"], parts["val"], data.y
        with rank_zero_first():  # rank 0 writes the feature cache, the other processes read it
            feats, speed["feature_images_per_s"] = backbone_features(
                model.backbone, normalize, data.images, data.feature_key, bf16=reduced_precision(cfg)
            )
        f = torch.from_numpy(feats)
        yt = torch.from_numpy(y).float() if self.multilabel else torch.from_numpy(y).long()
        w = self._weights(data, parts, cfg)
        head = HeadModule(
            model.head, cfg.head_lr, cfg.weight_decay, cfg.optimizer, w, cfg.label_smoothing, self.multilabel
        )
        trainer, ckpt = make_trainer(fold_dir, "stage1", cfg.head_epochs, cfg, "val_loss", "min", 10, False)
        fit(
            trainer,
            head,
            make_loader(TensorDataset(f[train], yt[train]), cfg, y[train], True, 64),
            make_loader(TensorDataset(f[val], yt[val]), cfg, None, False, 256),
        )
        if ckpt.best_model_path:
            head.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])
        return True

    def module(self, model, normalize: Normalize, data: FoldData, parts: dict, cfg: TrainConfig):
        freeze_backbone(model, cfg.unfreeze)
        freeze_pretrained_encoder(model.backbone, cfg)
        return ClassifierModule(
            model,
            normalize,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            class_weights=self._weights(data, parts, cfg),
            label_smoothing=cfg.label_smoothing,
            max_epochs=cfg.epochs,
            multilabel=self.multilabel,
        )

    def loaders(self, data: FoldData, parts: dict, cfg: TrainConfig) -> tuple:
        aug = augmentation(cfg.augment, cfg.image_size)
        train, val, y = parts["train"], parts["val"], data.y
        return (
            make_loader(ImageDataset(data.images, y, train, aug), cfg, y[train], True),
            make_loader(ImageDataset(data.images, y, val), cfg, None, False, 64),
        )

    def predict(self, model, normalize, data: FoldData, rows: np.ndarray, cfg: TrainConfig) -> dict:
        net = _Probabilities(model, self.multilabel)
        return {"probs": run_batched(net, normalize, data.images, rows, bf16=reduced_precision(cfg))[0]}

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        return val_score(data.y[rows], outputs["probs"])


class MultilabelHooks(ClassifyHooks):
    """Multi-label: the same two-stage transfer, one sigmoid per label and binary cross-entropy (positive weights
    from the training part's label frequencies); selection by the mean per-label validation AUC; no temperature."""

    tasks = ("multilabel",)
    multilabel = True

    def check(self, k: int, parts: dict, data: FoldData, cfg: TrainConfig) -> None:
        if cfg.oversample:
            raise ConfigError("--oversample balances single classes; for multilabel runs use --class-weights")

    def _weights(self, data: FoldData, parts: dict, cfg: TrainConfig) -> torch.Tensor | None:
        if not cfg.class_weights:
            return None
        y = data.y[parts["train"]]
        pos = y.sum(0)
        return torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1.0, 100.0), dtype=torch.float32)

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        return multilabel_val_score(data.y[rows], outputs["probs"])

    def temperature(self, val: dict, data: FoldData, rows: np.ndarray) -> float | None:
        return None
