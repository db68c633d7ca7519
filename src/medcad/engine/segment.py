"""Segmentation (one lesion, or several lesion classes in label maps) and multitask (mask + class) training of one
fold, and mask prediction.

A fold folder gets model.pt, result.json (test rows, class probabilities for multitask, speed) and
test_masks.npz (the test images' lesion probabilities as uint8 0..255 at the training size; for label maps also
each lesion class's probabilities).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcad.atomic import atomic_path
from medcad.data.datasets import MaskedImageDataset
from medcad.data.transforms import Normalize, augmentation
from medcad.engine.common import (
    TrainingThroughput,
    class_weights,
    freeze_pretrained_encoder,
    gather_lists,
    make_loader,
)
from medcad.engine.fold import FoldData, FoldHooks
from medcad.engine.modules import optimizer_and_schedule, val_score
from medcad.metrics.label_maps import class_counts, class_index_map
from medcad.metrics.segmentation import dice_iou, frame_scores, frame_threshold, mask_counts
from medcad.models.backbones import set_bn_eval
from medcad.models.predict import predict_masks
from medcad.models.segmentation import pretrained_encoder
from medcad.runfolder import FoldFolder
from medcad.tasks import flip_tta, reference_label


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (per image, averaged); logits and target (B, 1, H, W)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return bce + (1 - dice).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Cross-entropy over background and lesion classes plus the soft Dice of each lesion class (per image, averaged
    over classes and images), as nnU-Net trains label maps; logits (B, 1 + K, H, W), target (B, 1, H, W) class
    indices."""
    logits = logits.float()
    index = target[:, 0].long()
    ce = F.cross_entropy(logits, index)
    p = logits.softmax(1)[:, 1:].flatten(2)  # (B, K, HW)
    t = F.one_hot(index, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].flatten(2).float()
    dice = (2 * (p * t).sum(2) + smooth) / (p.sum(2) + t.sum(2) + smooth)
    return ce + (1 - dice).mean()


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of a mask output: BCE + Dice for one lesion channel, CE + Dice for label maps."""
    return bce_dice_loss(logits, target) if logits.shape[1] == 1 else ce_dice_loss(logits, target)


def batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per image (one lesion channel: at probability 0.5; label maps: of each lesion class at the most
    probable class, averaged over classes); 1 where both masks are empty."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p, t = (logits > 0).flatten(1).float()[:, None], target.flatten(1)[:, None]
    else:
        n = logits.shape[1]
        p = F.one_hot(logits.argmax(1), n).permute(0, 3, 1, 2)[:, 1:].flatten(2).float()
        t = F.one_hot(target[:, 0].long(), n).permute(0, 3, 1, 2)[:, 1:].flatten(2).float()
    inter, total = (p * t).sum(2), p.sum(2) + t.sum(2)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).mean(1)


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
        new_layer_lr_factor: float = 5.0,
        schedule: str = "cosine",
        augment=None,
    ) -> None:
        super().__init__()
        self.model, self.normalize, self.augment = model, normalize, augment
        self.lr, self.weight_decay, self.optimizer_kind, self.max_epochs = lr, weight_decay, optimizer, max_epochs
        self.new_layer_lr_factor, self.schedule = new_layer_lr_factor, schedule
        self.class_loss = nn.CrossEntropyLoss(weight=class_weights)
        self.class_loss_weight, self.multitask = class_loss_weight, multitask
        self.images_per_s: list[float] = []

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        set_bn_eval(self.model, frozen_only=True)  # frozen encoder stages keep their ImageNet statistics
        super().on_train_epoch_start()

    def forward(self, x_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(self.normalize(x_uint8).contiguous(memory_format=torch.channels_last))

    def _losses(self, out: dict, m: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {}
        if "mask" in out:
            seg = mask_loss(out["mask"], m)
            aux = out.get("aux") or []
            if aux:  # deep supervision: the final output and every auxiliary one weigh the same
                seg = (seg + sum(mask_loss(a, m) for a in aux)) / (1 + len(aux))
            losses["seg_loss"] = seg
        if self.multitask:
            losses["class_loss"] = self.class_loss(out["class"].float(), y)
        losses["loss"] = losses.get("seg_loss", 0) + self.class_loss_weight * losses.get("class_loss", 0)
        return losses

    def training_step(self, batch, _):
        x, m, y = batch
        if self.augment is not None:  # the masks follow their images' geometry
            x, m = self.augment(x, m)
        losses = self._losses(self(x), m, y)
        self.log_dict(
            {f"train_{k}" if k != "loss" else "train_loss": v for k, v in losses.items()},
            on_epoch=True,
            on_step=False,
            prog_bar=True,
        )
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val: list[dict[str, torch.Tensor | float]] = []

    def validation_step(self, batch, _):
        x, m, y = batch
        out = self(x)
        step: dict = {"loss": float(self._losses(out, m, y)["loss"]) * len(x), "n": len(x)}
        if "mask" in out:
            step["dice"] = batch_dice(out["mask"], m).cpu()
        if self.multitask:
            step["probs"], step["y"] = out["class"].float().softmax(-1).cpu(), y.cpu()
        self._val.append(step)

    def on_validation_epoch_end(self) -> None:
        val = gather_lists(self._val)  # the shares of every process: the whole validation part, once
        if not val:
            return
        scores = {}
        if "dice" in val[0]:
            scores["val_dice"] = float(torch.cat([v["dice"] for v in val]).mean())
        if "probs" in val[0]:
            y, probs = torch.cat([v["y"] for v in val]).numpy(), torch.cat([v["probs"] for v in val]).numpy()
            scores["val_auc"] = val_score(y, probs)
        scores["val_score"] = float(np.mean(list(scores.values())))
        scores["val_loss"] = sum(v["loss"] for v in val) / sum(v["n"] for v in val)
        self.log_dict(scores, prog_bar=True)

    def configure_optimizers(self):
        # A pretrained encoder fine-tunes at lr; decoder, heads and from-scratch models learn at
        # new_layer_lr_factor x lr (5 by default).
        enc = [p for n, p in self.model.named_parameters() if p.requires_grad and ".encoder." in f".{n}"]
        ids = {id(p) for p in enc}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.lr * self.new_layer_lr_factor}, {"params": enc, "lr": self.lr}]
        return optimizer_and_schedule(
            self.optimizer_kind, groups, self.lr, self.weight_decay, self.schedule, self.max_epochs
        )


def frame_score_kind(labels: list[str], class_head: bool) -> tuple[str, int | None]:
    """What the frame-level decision of a mask model scores, and the lesion-free class's column: a class head with
    a lesion-free class ("normal") gives its probability that the frame shows a lesion ("p_lesion", 1 - p[normal]),
    else the predicted lesion area ("lesion_area"). The threshold (`frame_threshold`) is the smallest score that
    maximises mean Dice on validation; frames below it get an empty mask.

    Measured on BUSI (multitask U-Net, 5 grouped folds; thresholds chosen out of fold): the class head cuts
    lesion-free frames shown with lesion pixels from 48 % to 22 % (mean Dice 0.660 -> 0.683), the area rule only to
    43 % (0.661): a small predicted lesion is no evidence of a lesion-free frame, the class head is."""
    ref = reference_label(labels)
    if class_head and ref is not None:
        return "p_lesion", labels.index(ref)
    return "lesion_area", None


class SegmentHooks(FoldHooks):
    """Segment, segment-multiclass and multitask: one stage, all layers; validation score Dice (label maps: mean
    Dice over lesion classes; averaged with macro AUC for multitask). A fold folder gets test_masks.npz: the test
    images' lesion probabilities as uint8 0..255 (label maps: and "lesion_classes", (n, K, S, S))."""

    stage = "train"
    monitor = "val_score"
    tasks = ("segment", "segment-multiclass", "multitask")

    def build(self, data: FoldData, parts: dict, init, meta):
        task = self.run.task
        model = task.build(self.cfg, len(data.labels), None)
        if init is not None:
            model.load_state_dict(init.state_dict())
        return model, task.data_config(model)

    def module(self, model, normalize: Normalize, data: FoldData, parts: dict):
        cfg = self.cfg
        multitask = "labels" in self.run.task.targets  # a class head beside the mask
        weights = class_weights(data.y[parts["train"]], len(data.labels)) if cfg.class_weights and multitask else None
        freeze_pretrained_encoder(pretrained_encoder(model), cfg)
        return SegmentationModule(
            model,
            normalize,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            max_epochs=cfg.epochs,
            class_weights=weights,
            class_loss_weight=cfg.class_loss_weight,
            multitask=multitask,
            new_layer_lr_factor=cfg.new_layer_lr_factor,
            schedule=cfg.schedule,
            augment=augmentation(cfg.augment),
        )

    def loaders(self, data: FoldData, parts: dict) -> tuple:
        cfg = self.cfg
        train, val, y = parts["train"], parts["val"], data.y
        return (
            make_loader(
                MaskedImageDataset(data.images, data.masks, y, train),
                cfg,
                y[train],
                True,
                world=self.run.compute.world_size,
            ),
            make_loader(MaskedImageDataset(data.images, data.masks, y, val), cfg, None, False, 32),
        )

    def predict(self, model, normalize, data: FoldData, rows: np.ndarray) -> dict:
        hflip = flip_tta(self.cfg.tta, self.cfg.task)
        out = predict_masks(model, normalize, data.images, rows, bf16=False, hflip=hflip)
        keys = {"masks": "mask", "probs": "class", "lesion_classes": "lesion_classes", "nonfinite": "nonfinite"}
        return {k: out[v] for k, v in keys.items()}

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        scores = []
        true = np.asarray(data.masks[rows]) if outputs["masks"] is not None else None
        if outputs.get("lesion_classes") is not None:  # label maps: the mean Dice over lesion classes
            pred = class_index_map(outputs["masks"], outputs["lesion_classes"], 128)
            counts = class_counts(pred, true, outputs["lesion_classes"].shape[1])
            scores.append(float(np.mean([dice_iou(c)[0].mean() for c in counts])))
        elif outputs["masks"] is not None:
            counts = mask_counts(outputs["masks"] >= 128, true)  # the 0.5 threshold
            scores.append(float(dice_iou(counts)[0].mean()))
        if outputs["probs"] is not None:
            scores.append(val_score(data.y[rows], outputs["probs"]))
        return float(np.mean(scores))

    def decision(self, val: dict, data: FoldData, rows: np.ndarray, temperature: float | None) -> dict:
        """The frame-level decision (see `frame_decision`), chosen on the validation part."""
        if val["masks"] is None:
            return {}
        counts = mask_counts(val["masks"] >= 128, np.asarray(data.masks[rows]))
        kind, normal = frame_score_kind(data.labels, val["probs"] is not None)
        score = frame_scores(kind, val["masks"], val["probs"], normal, temperature=temperature or 1.0)
        return {"frame_score": kind, "min_frame_score": frame_threshold(score, counts)}

    def result(self, test: dict, val: dict, data: FoldData, parts: dict, fold: FoldFolder) -> dict:
        if test["masks"] is not None:
            classes = {} if test.get("lesion_classes") is None else {"lesion_classes": test["lesion_classes"]}
            with atomic_path(fold.masks) as tmp:
                np.savez_compressed(tmp, rows=parts["test"], probs=test["masks"], **classes)
        return {}
