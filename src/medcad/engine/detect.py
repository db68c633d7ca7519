"""A detection fold: SSD/SSDlite training with paired image+box augmentation, AP50 model selection, prediction.

Fold folder:
    model.pt (format "medcad-detector-1"), result.json, checkpoints/detect/{best,last}.ckpt,
    logs/tensorboard/detect, logs/csv/detect
An interrupted fold resumes from last.ckpt. Boxes here are (m, 5) float arrays [x0, y0, x1, y1, class_index]
in pixels of the S x S cached image, class_index 0-based into `labels` (no background).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from medcad.config import TrainConfig
from medcad.engine.common import TrainingThroughput, load_init_model, make_trainer, quiet_lightning, save_model
from medcad.errors import ConfigError
from medcad.metrics.detection import average_precision
from medcad.models.detection import HEADS, anchor_scales, create_detector, detector_data_config, set_backbone_bn_eval

STAGE = "detect"  # checkpoint and log sub-folder


def box_augmentation(preset: str) -> v2.Transform:
    """Paired image + box transforms for training.

    - none: only box clean-up.
    - light: horizontal flip, brightness and contrast +-0.1.
    - kvasir: flips (horizontal, vertical), a small zoom and shift, brightness and contrast +-0.15.

    Rotation is left out (boxes would grow around rotated objects). Boxes that leave the frame are clipped; those
    left smaller than 1 px are dropped with their label. An SSD head learns slowly: on Kvasir-SEG at 256 px,
    "kvasir" needed many more epochs than a CPU budget allows (validation AP50 0.05 after 9 epochs), "light" is
    the default for detection.
    """
    clean = [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    if preset == "none":
        return v2.Compose(clean)
    if preset == "light":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.1, contrast=0.1), *clean])
    if preset != "kvasir":
        raise ConfigError(f"unknown augmentation preset {preset!r}; choose one of none, light, kvasir")
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.08, 0.08), scale=(0.85, 1.15)),
            v2.ColorJitter(brightness=0.15, contrast=0.15),
            *clean,
        ]
    )


class DetectionDataset(Dataset):
    """uint8 images (C, S, S) and SSD targets {"boxes": (m, 4) float, "labels": (m,) int64 1..n} for rows."""

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], rows: np.ndarray, transform: v2.Transform) -> None:
        self.images, self.boxes, self.rows, self.transform = images, boxes, np.asarray(rows), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i = int(self.rows[j])
        img = tv_tensors.Image(torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1))  # copy: memmap is r/o
        b = np.asarray(self.boxes[i], dtype=np.float32).reshape(-1, 5)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(b[:, :4]), format="XYXY", canvas_size=img.shape[-2:]),
            "labels": torch.from_numpy(b[:, 4]).long() + 1,  # 0 is background for torchvision
        }
        img, target = self.transform(img, target)
        return img.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in target.items()}


def _collate(batch: list) -> tuple[list, list]:
    return tuple(map(list, zip(*batch, strict=True)))


def _float_images(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.float() / 255 for x in batch]  # the model normalises with the backbone's mean/std itself


def _to_array(det: dict[str, torch.Tensor]) -> np.ndarray:
    """torchvision detections -> (m, 6) [x0, y0, x1, y1, score, class_index] float32, class_index 0-based."""
    return torch.cat(
        [det["boxes"].float(), det["scores"].float()[:, None], (det["labels"] - 1).float()[:, None]], dim=1
    ).numpy()


def mean_ap(ap: np.ndarray) -> float:
    """Mean AP over the classes with truths (0 when none has any: the fold checks that validation has boxes)."""
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


class DetectorModule(TrainingThroughput, L.LightningModule):
    """Trains a torchvision SSD on uint8 batches; logs `val_ap50` (mean AP at IoU 0.5 over classes) per epoch."""

    def __init__(self, model: torch.nn.Module, n_classes: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.n_classes = model, n_classes
        self.lr, self.weight_decay, self.optimizer_kind = cfg.lr, cfg.weight_decay, cfg.optimizer
        self.max_epochs, self.freeze_bn = cfg.epochs, cfg.weights != "none"
        self.images_per_s: list[float] = []

    def setup(self, stage: str) -> None:
        self.model.to(memory_format=torch.channels_last)  # ~8 % faster convolutions under bf16 on CPU

    def on_train_epoch_start(self) -> None:
        if self.freeze_bn:
            set_backbone_bn_eval(self.model)
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

    def validation_step(self, batch, _):
        images, targets = batch
        self._preds += [_to_array(d) for d in self.model(_float_images(images))]
        self._truths += [torch.cat([t["boxes"], t["labels"][:, None] - 1], 1).numpy() for t in targets]

    def on_validation_epoch_end(self) -> None:
        self.log("val_ap50", mean_ap(average_precision(self._preds, self._truths, self.n_classes, 0.5)), prog_bar=True)

    def configure_optimizers(self):
        from medcad.engine.modules import make_optimizer

        body = [p for p in self.model.backbone.body.parameters() if p.requires_grad]
        new = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.body.") and p.requires_grad]
        groups = [{"params": new, "lr": self.lr * 5}, {"params": body, "lr": self.lr}]  # new layers learn faster
        opt = make_optimizer(self.optimizer_kind, groups, self.lr, self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}


def build_detector(cfg: TrainConfig, n_classes: int, scales: tuple[float, float] | None = None) -> torch.nn.Module:
    """The detector a run's settings describe: cfg.model backbone with cfg.weights at cfg.image_size; the head is
    cfg.head when it names a detection head ("ssd", "ssdlite"), else SSDlite (the classifier's heads do not apply)."""
    head = cfg.head if cfg.head in HEADS else "ssdlite"
    return create_detector(
        n_classes, backbone=cfg.model, weights=cfg.weights, image_size=cfg.image_size, head=head, scales=scales
    )


def load_detector(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """A detector from its model.pt, in eval mode, and its metadata (format, config, labels, data_config).

    Raises:
        DataError: the file is missing, unreadable, or not a detector.
    """
    from medcad.inference.predictor import load_model_file, require_task

    model, blob = load_model_file(Path(path))
    require_task(blob, Path(path), "detect")
    return model, {k: v for k, v in blob.items() if k != "state_dict"}


@torch.no_grad()
def predict_detections(
    model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, batch: int = 16, bf16: bool = True
) -> list[np.ndarray]:
    """Detections for images[rows] (uint8 (N, S, S, 3)): per image (m, 6) [x0, y0, x1, y1, score, class_index]
    in S x S pixels, best first, at most 50, scores >= 0.01. bf16 autocast speeds up the network only: boxes
    and scores are decoded in float32."""
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch):
        chunk = torch.from_numpy(np.array(images[np.asarray(rows[start : start + batch])])).permute(0, 3, 1, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            dets = model(list(chunk.float() / 255))
        out += [_to_array(d) for d in dets]
    return out


def _boxes_in_part(boxes: list[np.ndarray], rows: np.ndarray) -> int:
    return int(sum(len(np.asarray(boxes[i]).reshape(-1, 5)) for i in rows))


def train_detect_fold(
    k: int,
    parts: dict[str, np.ndarray],
    images: np.ndarray,
    boxes: list[np.ndarray],
    labels: list[str],
    cfg: TrainConfig,
    fold_dir: Path,
    progress: bool = True,
    init_model: Path | None = None,
) -> dict:
    """Train one detection fold, keep the epoch with the best validation AP50, predict the test part.

    Args:
        k: fold number (also offsets the seed).
        parts: row indices {"train", "val", "test"} into `images` and `boxes`.
        images: (N, S, S, 3) uint8, S = cfg.image_size (a read-only memmap is fine).
        boxes: per image (m, 5) [x0, y0, x1, y1, class_index] in S x S pixels; (0, 5) for a frame without boxes.
        labels: class names (no background).
        cfg: run settings (model, weights, image_size, epochs, lr, batch_size, weight_decay, optimizer, patience,
            precision, seed, augment; head "ssd" or else SSDlite).
        fold_dir: the fold's folder; an existing checkpoints/detect/last.ckpt is resumed.
        progress: show Lightning's progress bar.
        init_model: a detector model.pt (same labels and architecture) to continue from.

    Returns:
        The result dict also written to fold_dir/result.json: fold, n_train, n_val, n_test, test_rows,
        test_detections (per test image a list of [x0, y0, x1, y1, score, class_index]), val_ap50, speed.
    """
    from medcad.engine.results import write_json

    if cfg.task != "detect":
        raise ConfigError(f"train_detect_fold needs a detection config (task 'detect'), got task {cfg.task!r}")
    quiet_lightning()
    L.seed_everything(cfg.seed + k, verbose=False)
    train, val, test = (np.asarray(parts[p], dtype=int) for p in ("train", "val", "test"))
    if cfg.epochs < 1:
        raise ConfigError("a detector is trained from a new head: set epochs >= 1")
    if len(train) < 2:
        raise ConfigError(f"fold {k}: {len(train)} training image(s); a detector needs at least 2 (BatchNorm)")
    if _boxes_in_part(boxes, val) == 0:
        raise ConfigError(
            f"fold {k}: the validation part ({len(val)} images) has no boxes, so AP50 cannot select the model; "
            f"use a larger --val-fraction (now {cfg.val_fraction:g}), or other splits (--splits, --seed)"
        )
    if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
        raise ConfigError(f"images have shape {images.shape[1:]}, expected ({cfg.image_size}, {cfg.image_size}, 3)")
    fold_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if init_model is not None:
        prior, meta = load_init_model(init_model, labels, "detect")
        scales = tuple(meta["data_config"]["anchor_scales"])  # the same default boxes as the model continued from
    else:
        scales = anchor_scales([boxes[i] for i in train], cfg.image_size)
    model = build_detector(cfg, len(labels), scales)
    if init_model is not None:
        try:
            model.load_state_dict(prior.state_dict())
        except RuntimeError as e:
            raise ConfigError(f"{init_model}: another detector architecture than this run's ({e})") from e
    module = DetectorModule(model, len(labels), cfg)
    train_dl = DataLoader(
        DetectionDataset(images, boxes, train, box_augmentation(cfg.augment)),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=_collate,
        drop_last=len(train) > cfg.batch_size,  # no 1-image last batch
    )
    val_dl = DataLoader(
        DetectionDataset(images, boxes, val, box_augmentation("none")), batch_size=16, collate_fn=_collate
    )
    trainer, ckpt = make_trainer(fold_dir, STAGE, cfg.epochs, cfg, "val_ap50", "max", cfg.patience, progress)
    last = fold_dir / "checkpoints" / STAGE / "last.ckpt"
    trainer.fit(module, train_dl, val_dl, ckpt_path=last if last.is_file() else None)
    best = ckpt.best_model_path or str(last)
    module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    model.to(memory_format=torch.contiguous_format)  # as a loaded model.pt: the same kernels, the same detections
    bf16 = cfg.precision.startswith("bf16")
    val_ap = average_precision(
        predict_detections(model, images, val, bf16=bf16), [boxes[i] for i in val], len(labels), 0.5
    )
    t1 = time.perf_counter()
    test_dets = predict_detections(model, images, test, bf16=bf16)
    predict_s = time.perf_counter() - t1
    save_model(fold_dir / "model.pt", model, cfg, list(labels), detector_data_config(model))
    result = {
        "fold": k,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "test_rows": test.tolist(),
        "test_detections": [d.tolist() for d in test_dets],
        "val_ap50": mean_ap(val_ap),
        "speed": {
            "train_images_per_s": float(np.median(module.images_per_s)) if module.images_per_s else None,
            "predict_images_per_s": len(test) / predict_s if len(test) and predict_s > 0 else None,
            "seconds": time.perf_counter() - t0,
        },
    }
    write_json(fold_dir / "result.json", result)
    return result
