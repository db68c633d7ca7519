"""A detection fold: SSD/SSDlite training with paired image+box augmentation, AP50 model selection, prediction.

Per epoch the module logs train_loss and, on the validation part, val_loss (the same SSD loss, computed in eval
mode: `losses_and_detections`) and val_ap50. With frame classes (`frame_classes`, e.g. normal, unclear) their
frames carry one whole-frame box each (`medcad.data.boxes.manifest_boxes`) and are learnt like lesions.

Fold folder:
    model.pt (format "medcad-detector-1"), result.json, logs/tensorboard/detect, logs/csv/detect; while it trains,
    checkpoints/detect/{best,last}.ckpt (removed once it is finished, unless keep_checkpoints)
An interrupted fold resumes from last.ckpt. Boxes here are (m, 5) float arrays [x0, y0, x1, y1, class_index]
in pixels of the S x S cached image, class_index 0-based into `labels` (no background).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from medcad.config import TrainConfig
from medcad.data.boxes import parse_frame_classes
from medcad.data.datasets import DetectionDataset, collate_detections
from medcad.data.transforms import box_augmentation
from medcad.engine.common import FrozenBatchNormFit, TrainingThroughput, freeze_pretrained_encoder, gather_lists
from medcad.engine.fold import FoldData, FoldHooks
from medcad.errors import ConfigError
from medcad.metrics.detection import average_precision
from medcad.metrics.detection_operating import f1_threshold
from medcad.models.backbones import learned_bn_statistics
from medcad.models.detection import (
    anchor_scales,
    detector_data_config,
    detector_from_config,
    losses_and_detections,
    restart_norm_statistics,
)
from medcad.models.predict import detections_to_array, predict_detections
from medcad.runfolder import FoldFolder

STAGE = "detect"  # checkpoint and log sub-folder


def _float_images(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.float() / 255 for x in batch]  # the model normalises with the backbone's mean/std itself


def mean_ap(ap: np.ndarray) -> float:
    """Mean AP over the classes with truths (0 when none has any: the fold checks that validation has boxes)."""
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


class DetectorModule(FrozenBatchNormFit, TrainingThroughput, L.LightningModule):
    """Trains a torchvision SSD on uint8 batches; logs `val_ap50` (mean AP at IoU 0.5 over classes) and `val_loss`
    (with its parts `val_bbox_regression`, `val_classification`) per epoch."""

    def __init__(self, model: torch.nn.Module, n_classes: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.n_classes = model, n_classes
        self.lr, self.weight_decay, self.optimizer_kind = cfg.lr, cfg.weight_decay, cfg.optimizer
        self.max_epochs, self.freeze_bn = cfg.epochs, learned_bn_statistics(model.backbone.body)
        self.new_layer_lr_factor, self.schedule = cfg.new_layer_lr_factor, cfg.schedule
        self.images_per_s: list[float] = []

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=torch.channels_last)  # ~8 % faster convolutions under bf16 on CPU

    def frozen_bn_net(self) -> torch.nn.Module | None:
        return self.model.backbone.body if self.freeze_bn else None  # learned statistics kept, fresh ones trained

    def on_train_epoch_start(self) -> None:
        restart_norm_statistics(self.model)  # validation and prediction use this epoch's average statistics
        super().on_train_epoch_start()

    def training_step(self, batch, _):
        images, targets = batch
        losses = self.model(_float_images(images), targets)
        loss = losses["bbox_regression"] + losses["classification"]
        self.log_dict(
            {f"train_{k}": v for k, v in losses.items()}, on_epoch=True, on_step=False, batch_size=len(images)
        )
        self.log("train_loss", loss, on_epoch=True, on_step=False, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._preds: list[np.ndarray] = []
        self._truths: list[np.ndarray] = []
        self._losses: list[tuple[float, float, int]] = []  # per batch: loss parts x images, images

    def validation_step(self, batch, _):
        images, targets = batch
        # eval mode (Lightning's validation loop) and no_grad: BatchNorm on running statistics, nothing updated
        losses, dets = losses_and_detections(self.model, _float_images(images), targets)
        n = len(images)
        self._losses.append((float(losses["bbox_regression"]) * n, float(losses["classification"]) * n, n))
        self._preds += [detections_to_array(d) for d in dets]
        self._truths += [torch.cat([t["boxes"], t["labels"][:, None] - 1], 1).cpu().numpy() for t in targets]

    def on_validation_epoch_end(self) -> None:
        pairs = gather_lists(list(zip(self._preds, self._truths, strict=True)))  # every process's share, once
        preds, truths = [p for p, _ in pairs], [t for _, t in pairs]
        losses = gather_lists(self._losses)
        n = max(1, sum(k for _, _, k in losses))
        box, cls = sum(b for b, _, _ in losses) / n, sum(c for _, c, _ in losses) / n
        self.log_dict({"val_loss": box + cls, "val_bbox_regression": box, "val_classification": cls})
        self.log("val_ap50", mean_ap(average_precision(preds, truths, self.n_classes, 0.5)), prog_bar=True)

    def configure_optimizers(self):
        from medcad.engine.modules import optimizer_and_schedule

        body = [p for p in self.model.backbone.body.parameters() if p.requires_grad]
        new = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.body.") and p.requires_grad]
        lr_new = self.lr * self.new_layer_lr_factor  # new layers learn faster (5 x lr by default)
        groups = [{"params": new, "lr": lr_new}, {"params": body, "lr": self.lr}]
        return optimizer_and_schedule(
            self.optimizer_kind, groups, self.lr, self.weight_decay, self.schedule, self.max_epochs
        )


def _boxes_in_part(boxes: list[np.ndarray], rows: np.ndarray) -> int:
    return int(sum(len(np.asarray(boxes[i]).reshape(-1, 5)) for i in rows))


def frame_class_indices(cfg: TrainConfig, labels: list[str]) -> list[int]:
    """Indices into `labels` of the run's frame classes (whole-frame boxes).

    Raises:
        ConfigError: a frame class is not a detection class: its frames were read without whole-frame boxes.
    """
    frames = parse_frame_classes(cfg.frame_classes)
    missing = [c for c in frames if c not in labels]
    if missing:
        raise ConfigError(
            f"frame classes {missing} are not among the detection classes {labels}: their frames were read "
            "without whole-frame boxes (the boxes must be read with manifest_boxes(..., frame_classes=...))"
        )
    return [labels.index(c) for c in frames]


class DetectHooks(FoldHooks):
    """Detection: SSD/SSDlite from a new head, default boxes sized from the fold's training lesion boxes (the last
    map kept for whole frames when there are frame classes), or those of the model continued from; the epoch with
    the best validation AP50 (over every class, frame classes included) is kept."""

    stage = STAGE
    monitor = "val_ap50"
    tasks = ("detect",)

    def check(self, k: int, parts: dict, data: FoldData) -> None:
        cfg = self.cfg
        if "boxes" not in self.run.task.targets:
            raise ConfigError(f"detection folds need a task with boxes (detect), got task {cfg.task!r}")
        frame_class_indices(cfg, list(data.labels))
        if cfg.epochs < 1:
            raise ConfigError("a detector is trained from a new head: set epochs >= 1")
        if len(parts["train"]) < 2:
            raise ConfigError(
                f"fold {k}: {len(parts['train'])} training image(s); a detector needs at least 2 (BatchNorm)"
            )
        if _boxes_in_part(data.boxes, parts["val"]) == 0:
            raise ConfigError(
                f"fold {k}: the validation part ({len(parts['val'])} images) has no boxes, so AP50 cannot select the "
                f"model; use a larger --val-fraction (now {cfg.val_fraction:g}), or other splits (--splits, --seed)"
            )
        if data.images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ConfigError(
                f"images have shape {data.images.shape[1:]}, expected ({cfg.image_size}, {cfg.image_size}, 3)"
            )

    def build(self, data: FoldData, parts: dict, init, meta):
        cfg = self.cfg
        if init is not None:
            scales = tuple(meta["data_config"]["anchor_scales"])  # the same default boxes as the model continued from
        else:
            frames = frame_class_indices(cfg, list(data.labels))
            scales = anchor_scales([data.boxes[i] for i in parts["train"]], cfg.image_size, frames)
        model = detector_from_config(cfg, len(data.labels), scales)
        if init is not None:
            try:
                model.load_state_dict(init.state_dict())
            except RuntimeError as e:
                raise ConfigError(f"the model continued from is another detector architecture ({e})") from e
        return model, detector_data_config(model)

    def module(self, model, normalize, data: FoldData, parts: dict):
        freeze_pretrained_encoder(model.backbone.body, self.cfg)
        return DetectorModule(model, len(data.labels), self.cfg)

    def loaders(self, data: FoldData, parts: dict) -> tuple:
        train, val, cfg = parts["train"], parts["val"], self.cfg
        train_dl = DataLoader(
            DetectionDataset(data.images, data.boxes, train, box_augmentation(cfg.augment)),
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate_detections,
            # no 1-image last batch (BatchNorm); a larger remainder is trained on (41 images at batch 32 had left 9
            # out of every epoch)
            drop_last=len(train) > cfg.batch_size and len(train) % cfg.batch_size == 1,
        )
        val_dl = DataLoader(
            DetectionDataset(data.images, data.boxes, val, box_augmentation("none")),
            batch_size=16,
            collate_fn=collate_detections,
        )
        return train_dl, val_dl

    def predict(self, model, normalize, data: FoldData, rows: np.ndarray) -> dict:
        return {"detections": predict_detections(model, data.images, rows, bf16=False)}

    def score(self, outputs: dict, data: FoldData, rows: np.ndarray) -> float:
        truths = [data.boxes[i] for i in rows]
        return mean_ap(average_precision(outputs["detections"], truths, len(data.labels), 0.5))

    def result(self, test: dict, val: dict, data: FoldData, parts: dict, fold: FoldFolder) -> dict:
        truths = [data.boxes[i] for i in parts["val"]]
        return {
            "test_detections": [d.tolist() for d in test["detections"]],
            "val_ap50": self.score(val, data, parts["val"]),
            # the validated operating point: the score of the highest box F1 on the validation part
            "val_score_threshold": f1_threshold(val["detections"], truths, len(data.labels)),
        }
