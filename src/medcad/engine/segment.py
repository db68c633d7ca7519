"""Segmentation and multitask (mask + class) training of one fold, and mask prediction.

A fold folder gets model.pt, result.json (test rows, class probabilities for multitask, speed) and
test_masks.npz (the test images' lesion probabilities as uint8 0..255 at the training size).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcad.config import TrainConfig
from medcad.data.datasets import MaskedImageDataset
from medcad.data.transforms import Normalize, augmentation
from medcad.engine.common import (
    TrainingThroughput,
    class_weights,
    load_init_model,
    make_loader,
    make_trainer,
    save_model,
)
from medcad.engine.modules import make_optimizer, val_score
from medcad.engine.results import write_json
from medcad.errors import ConfigError
from medcad.metrics.calibration import fit_temperature


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (per image, averaged); logits and target (B, 1, H, W)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return bce + (1 - dice).mean()


def batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per image at probability 0.5; 1 when both masks are empty."""
    p = (logits.float() > 0).flatten(1).float()
    t = target.flatten(1)
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


class SegmentationModule(TrainingThroughput, L.LightningModule):
    """Trains a segmenter (output dict with "mask", optional "aux" deep-supervision masks and "class")."""

    def __init__(
        self,
        model: nn.Module,
        normalize: Normalize,
        *,
        lr: float,
        weight_decay: float,
        optimizer: str,
        max_epochs: int,
        class_weights: torch.Tensor | None = None,
        class_loss_weight: float = 1.0,
        multitask: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.normalize = model, normalize
        self.lr, self.weight_decay, self.optimizer_kind, self.max_epochs = lr, weight_decay, optimizer, max_epochs
        self.class_loss = nn.CrossEntropyLoss(weight=class_weights)
        self.class_loss_weight, self.multitask = class_loss_weight, multitask
        self.images_per_s: list[float] = []

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=torch.channels_last)

    def forward(self, x_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(self.normalize(x_uint8).contiguous(memory_format=torch.channels_last))

    def _losses(self, out: dict, m: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {}
        if "mask" in out:
            seg = bce_dice_loss(out["mask"], m)
            aux = out.get("aux") or []
            if aux:  # deep supervision: the final output and every auxiliary one weigh the same
                seg = (seg + sum(bce_dice_loss(a, m) for a in aux)) / (1 + len(aux))
            losses["seg_loss"] = seg
        if self.multitask:
            losses["class_loss"] = self.class_loss(out["class"].float(), y)
        losses["loss"] = losses.get("seg_loss", 0) + self.class_loss_weight * losses.get("class_loss", 0)
        return losses

    def training_step(self, batch, _):
        x, m, y = batch
        losses = self._losses(self(x), m, y)
        self.log_dict(
            {f"train_{k}" if k != "loss" else "train_loss": v for k, v in losses.items()},
            on_epoch=True,
            on_step=False,
            prog_bar=True,
        )
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._dice: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []

    def validation_step(self, batch, _):
        x, m, y = batch
        out = self(x)
        self.log("val_loss", self._losses(out, m, y)["loss"], prog_bar=True)
        if "mask" in out:
            self._dice.append(batch_dice(out["mask"], m).cpu())
        if self.multitask:
            self._probs.append(out["class"].float().softmax(-1).cpu())
            self._y.append(y.cpu())

    def on_validation_epoch_end(self) -> None:
        scores = {}
        if self._dice:
            scores["val_dice"] = float(torch.cat(self._dice).mean())
        if self._probs:
            scores["val_auc"] = val_score(torch.cat(self._y).numpy(), torch.cat(self._probs).numpy())
        scores["val_score"] = float(np.mean(list(scores.values())))
        self.log_dict(scores, prog_bar=True)

    def configure_optimizers(self):
        # A pretrained encoder fine-tunes at lr; decoder, heads and from-scratch models learn at 5 x lr.
        enc = [p for n, p in self.model.named_parameters() if p.requires_grad and ".encoder." in f".{n}"]
        ids = {id(p) for p in enc}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.lr * 5}] + ([{"params": enc, "lr": self.lr}] if enc else [])
        opt = make_optimizer(self.optimizer_kind, groups, self.lr, self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}


def build_segmenter(cfg: TrainConfig, n_classes: int) -> nn.Module:
    """The segmentation or multitask model a run's settings describe."""
    from medcad.models.segmentation import create_segmenter

    multitask = cfg.task == "multitask" or cfg.arch == "dsconv-resnet"
    if cfg.arch == "dsconv-resnet" and cfg.task != "multitask":
        raise ConfigError("dsconv-resnet only classifies: use it with --task multitask (or classify)")
    return create_segmenter(
        cfg.arch,
        n_classes=n_classes if multitask else None,
        encoder=cfg.model,
        weights=cfg.weights,
        dropout=cfg.dropout,
    )


@torch.inference_mode()
def predict_masks(
    model: nn.Module, normalize: Normalize, images: np.ndarray, rows: np.ndarray, batch: int = 16, bf16: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """Lesion probabilities (n, S, S) uint8 0..255 (None for a class-only model), class probabilities (n, K) or None,
    and images per second."""
    model.eval()
    masks, probs = [], []
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[i : i + batch]])).permute(0, 3, 1, 2)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        if "mask" in out:
            masks.append((out["mask"].float().sigmoid()[:, 0] * 255).round().to(torch.uint8).numpy())
        if "class" in out:
            probs.append(out["class"].float().softmax(-1).numpy())
    ips = len(rows) / max(time.perf_counter() - t0, 1e-9)
    return (np.concatenate(masks) if masks else None), (np.concatenate(probs) if probs else None), ips


def train_segment_fold(
    k: int,
    parts: dict[str, np.ndarray],
    images: np.ndarray,
    masks: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    cfg: TrainConfig,
    fold_dir: Path,
    progress: bool = True,
    init_model: Path | None = None,
) -> dict:
    """Train one fold of a segmentation or multitask run (one stage, all layers, early stopping on validation
    Dice, or Dice and macro AUC averaged for multitask); returns its result dict.

    Args:
        masks: (N, S, S) uint8 {0, 1} at the training size.
        y: label index per sample (the class target of multitask; used for oversampling in both tasks).
        init_model: a model.pt of an earlier step to continue from (sequential transfer).
    """
    L.seed_everything(cfg.seed + k, verbose=False)
    fold_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = parts["train"], parts["val"], parts["test"]
    if len(val) == 0:
        raise ConfigError("each fold needs a validation part for early stopping: set val_fraction > 0")
    multitask = cfg.task == "multitask"
    model = build_segmenter(cfg, len(labels))
    if init_model is not None:
        prior, _ = load_init_model(init_model, labels, "segment", "multitask")
        model.load_state_dict(prior.state_dict())
    from medcad.models.segmentation import segmenter_data_config

    dc = segmenter_data_config(model)
    normalize = Normalize(dc["mean"], dc["std"])
    module = SegmentationModule(
        model,
        normalize,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        max_epochs=cfg.epochs,
        class_weights=class_weights(y[train], len(labels)) if cfg.class_weights and multitask else None,
        class_loss_weight=cfg.class_loss_weight,
        multitask=multitask,
    )
    t0 = time.perf_counter()
    trainer, ckpt = make_trainer(fold_dir, "train", cfg.epochs, cfg, "val_score", "max", cfg.patience, progress)
    last = fold_dir / "checkpoints" / "train" / "last.ckpt"
    aug = augmentation(cfg.augment, cfg.image_size)
    trainer.fit(
        module,
        make_loader(MaskedImageDataset(images, masks, y, train, aug), cfg, y[train], True),
        make_loader(MaskedImageDataset(images, masks, y, val), cfg, None, False, 32),
        ckpt_path=last if last.is_file() else None,
    )
    if ckpt.best_model_path:
        module.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])
    train_s = time.perf_counter() - t0
    test_masks, probs, predict_ips = predict_masks(model, normalize, images, test)
    val_probs, temperature = None, None
    if probs is not None:  # multitask: validation class probabilities for operating points and temperature
        val_probs = predict_masks(model, normalize, images, val)[1]
        temperature = fit_temperature(y[val], val_probs)
    save_model(fold_dir / "model.pt", model, cfg, labels, dc, temperature)
    if test_masks is not None:
        tmp = fold_dir / "test_masks.tmp.npz"
        np.savez_compressed(tmp, rows=test, probs=test_masks)
        tmp.replace(fold_dir / "test_masks.npz")
    result = {
        "fold": k,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "val_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "speed": {
            "train_seconds": train_s,
            "train_images_per_s": float(np.median(module.images_per_s)) if module.images_per_s else None,
            "predict_images_per_s": predict_ips,
        },
        "test_rows": test.tolist(),
    }
    if probs is not None:
        result["test_probs"] = probs.tolist()
        result.update(val_rows=val.tolist(), val_probs=val_probs.tolist(), temperature=temperature)
    write_json(fold_dir / "result.json", result)
    return result
