"""Training speed on this machine: images/s of each task's default training step in medcad, side by side in one run
with a plain PyTorch + timm loop (eager fp32, the same model, data, augmentation and batch).

    .venv/bin/python benchmarks/train_speed.py [--tasks classify,segment,detect] [--steps 20] [--warmup 3]
        [--freeze-stride N]

medcad's step is measured through its own code: the task's fold hooks build the model (offline ImageNet weights), make
the training loader and the Lightning module (engine.classify / segment / detect), and engine.common's `train_stage`
trains it in the precision medcad chooses for the fit (on a CPU with bf16 in hardware, the faster of fp32 and bf16
autocast, timed once per model: `engine.precision`), channels_last and its loggers. A callback times the training
batches after `warmup` of them (each step: loading and augmenting the batch, forward, backward, optimizer, logging), so
validation and checkpointing, once per epoch, are left out. The plain loop trains a fresh copy of the same model on the
same loader: normalise, forward, loss, backward, AdamW, with the C library's allocator as it comes (every plain loop
runs before medcad's first fit, which keeps freed memory in the process: `medcad.allocator`).

medcad's recipes differ from the plain loop's model in two ways: the classifier (in stage 2) and the detector keep the
pretrained backbone's stem and stages up to output stride 8 at their ImageNet weights (`tasks.freeze_stride`; no
backward pass through them), and the U-Net's decoder is narrower than smp's (`models.segmentation.decoder_widths`).
The plain loop trains the model a user writes by hand: every layer, smp's decoder widths. So medcad's step is also
measured on that model (`images_per_s_plain_model`): that separates what the engine gains from what the recipe gains.

- classify: stage 2 (BatchNorm of the backbone frozen, as medcad does) at 224 px.
- segment: U-Net with the tf_efficientnet_lite0 encoder at 256 px, BCE + Dice.
- detect: SSDlite on tf_efficientnet_lite0 at 320 px.

Images are synthetic (a textured background with a bright ellipse: its mask and box are the targets); the speed of
these steps does not depend on image content. Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import write_result
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from medcad.allocator import keep_freed_memory
from medcad.config import TrainConfig
from medcad.data.transforms import Normalize, augmentation
from medcad.engine.common import quiet_lightning, train_stage
from medcad.engine.fold import FoldData
from medcad.engine.train import fold_hooks
from medcad.models.card import machine_info
from medcad.run import Run
from medcad.tasks import decoder_setting, freeze_stride

HERE = Path(__file__).resolve().parent
SIZES = {"classify": 224, "segment": 256, "detect": 320}


def synthetic(n: int, size: int, seed: int = 0) -> FoldData:
    """n images (S, S, 3) uint8 with one bright ellipse each (its mask, its box), labels alternating 0/1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.integers(40, 90, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    boxes = []
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        rx, ry = rng.uniform(0.08, 0.2, 2) * size
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        masks[i] = m
        images[i][m] = np.uint8(150 + 40 * (i % 2))
        boxes.append(np.array([[cx - rx, cy - ry, cx + rx, cy + ry, i % 2]], np.float32).clip(0, size - 1))
    y = np.arange(n) % 2
    return FoldData(images, y, ["benign", "malignant"], masks, boxes, feature_key="")


class PerImage(Dataset):
    """A plain loop's training data: medcad's rows, each image augmented on its own by torchvision's transforms.v2
    with the draws of medcad's preset (`augmentation(preset)`; a mask follows its image), where medcad augments the
    whole batch in its training step."""

    def __init__(self, rows: Dataset, size: int, preset: str) -> None:
        self.rows, self.transform, aug = rows, v2.Identity(), augmentation(preset)
        if aug is not None:
            crop = [v2.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, antialias=True)] if aug.scale else []
            self.transform = v2.Compose(
                [
                    *crop,
                    v2.RandomHorizontalFlip(aug.hflip),
                    v2.RandomVerticalFlip(aug.vflip),
                    v2.RandomRotation(aug.degrees),
                    v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast),
                ]
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        item = self.rows[i]
        if len(item) == 3:  # image, mask, label
            x, m = self.transform(item[0], tv_tensors.Mask(item[1]))
            return x, m.as_subclass(torch.Tensor), item[2]
        return self.transform(item[0]), item[1]


class StepTimer(L.Callback):
    """Seconds and images of the training batches after the first `warmup` (end of batch to end of batch)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t: float | None = None
        self.seconds, self.images = 0.0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if batch_idx >= self.warmup and self.t is not None:
            self.seconds += now - self.t
            self.images += len(batch[0])
        if batch_idx >= self.warmup - 1:
            self.t = now


def medcad_speed(task: str, cfg: TrainConfig, data: FoldData, parts: dict, warmup: int) -> tuple[float, str]:
    """(images/s, precision) of medcad's training step: the task's hooks, module and loaders, in the precision
    medcad chooses for the fit (`engine.precision.fit_precision`), trained by `engine.common.train_stage`."""
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.resolve(cfg, tmp)
        hooks = fold_hooks(task)(run)
        model, dc = hooks.build(data, parts, None, None)
        model.train()
        module = hooks.module(model, Normalize(dc["mean"], dc["std"]), data, parts)
        loaders = hooks.loaders(data, parts)
        fold = run.folder.fold(0)
        precision = train_stage(
            run, fold, hooks.stage, module, loaders, 1, hooks.monitor, cfg.patience, False, callbacks=(timer,)
        )
    return timer.images / timer.seconds, precision


def plain_speed(task: str, cfg: TrainConfig, data: FoldData, parts: dict, warmup: int) -> float:
    """images/s of a plain eager fp32 loop on a fresh copy of the same model and the same training loader."""
    from torch import nn

    from medcad.engine.segment import bce_dice_loss
    from medcad.models.backbones import set_bn_eval

    hooks = fold_hooks(task)(Run.resolve(cfg, tempfile.gettempdir()))  # nothing is written
    model, dc = hooks.build(data, parts, None, None)
    model.train()
    if task == "classify":
        set_bn_eval(model.backbone)  # medcad's stage 2 keeps the pretrained BatchNorm statistics: so does this loop
    elif task == "detect":
        set_bn_eval(model.backbone.body)
    mean = torch.tensor(dc["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(dc["std"]).view(1, -1, 1, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-4)
    loader = hooks.loaders(data, parts)[0]
    if task != "detect":  # a plain loop augments each image in its loader, with torchvision's transforms
        loader = DataLoader(
            PerImage(loader.dataset, cfg.image_size, cfg.augment), batch_size=loader.batch_size, shuffle=True
        )
    ce = nn.CrossEntropyLoss()
    t = seconds = 0.0
    images = 0
    for i, batch in enumerate(loader):
        if task == "detect":
            x, targets = batch
            losses = model([im.float() / 255 for im in x], targets)
            loss = losses["bbox_regression"] + losses["classification"]
        else:
            x = (batch[0].float() / 255 - mean) / std
            out = model(x)
            loss = ce(out, batch[1]) if task == "classify" else bce_dice_loss(out["mask"], batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i >= warmup:
            seconds += now - t
            images += len(x)
        t = now
    return images / seconds


def plain_model(cfg: TrainConfig) -> TrainConfig:
    """The settings of the model a plain loop trains: every layer, smp's decoder widths."""
    return cfg.replace(freeze_stride=0, decoder_channels=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="classify,segment,detect")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per loop (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--freeze-stride",
        type=int,
        default=None,
        help="medcad's freeze stride for every task measured (default: each task's; the plain loop trains all layers)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.json")
    args = ap.parse_args()
    quiet_lightning()
    torch.manual_seed(0)
    results: dict = {
        "machine": machine_info(),
        "date": datetime.now().isoformat(timespec="minutes"),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "tasks": {},
    }
    setups = {}
    for task in args.tasks.split(","):
        size = SIZES[task]
        cfg = TrainConfig(
            task=task,
            image_size=size,
            batch_size=args.batch_size,
            epochs=1,
            logger="tensorboard,csv",
            freeze_stride=args.freeze_stride,
        )
        n_train = (args.steps + args.warmup) * args.batch_size
        data = synthetic(n_train + 16, size)
        parts = {"train": np.arange(n_train), "val": np.arange(n_train, n_train + 16), "test": np.arange(0)}
        setups[task] = (cfg, data, parts)
    # every plain loop first: medcad's first fit sets the C library's allocator for the rest of the process
    # (medcad.allocator), which a plain loop does not have
    plain = {
        task: plain_speed(task, plain_model(cfg), data, parts, args.warmup)
        for task, (cfg, data, parts) in setups.items()
    }
    for task, (cfg, data, parts) in setups.items():
        t0 = time.perf_counter()
        ours, precision = medcad_speed(task, cfg, data, parts, args.warmup)
        stride = freeze_stride(cfg)
        widths = decoder_setting(cfg)
        recipe = bool(stride) or widths is not None  # medcad's model differs from the plain loop's
        plain_model_speed = medcad_speed(task, plain_model(cfg), data, parts, args.warmup)[0] if recipe else ours
        results["tasks"][task] = {
            "model": "SSDlite / tf_efficientnet_lite0"
            if task == "detect"
            else ("U-Net / tf_efficientnet_lite0" if task == "segment" else "tf_efficientnet_lite0 (stage 2)"),
            "image_size": cfg.image_size,
            "precision": precision,  # of the timed fit (the stage-2 one for classify)
            "freeze_stride": stride,
            "decoder_channels": widths,  # None: smp's (or no such decoder)
            "allocator_kept": keep_freed_memory(),
            "images_per_s": round(ours, 2),
            "images_per_s_plain_model": round(plain_model_speed, 2),
            "plain_images_per_s": round(plain[task], 2),
            "ratio_vs_plain": round(ours / plain[task], 2),
            "ratio_vs_plain_same_model": round(plain_model_speed / plain[task], 2),
            "medcad_seconds": round(time.perf_counter() - t0, 1),
        }
        print(task, json.dumps(results["tasks"][task]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
