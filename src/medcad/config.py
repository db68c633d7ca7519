"""Run settings as a frozen dataclass: defaults, then a YAML/JSON file, then command-line overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from medcad.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Stored as config.json in the run folder."""

    task: str = "classify"  # classify | segment | multitask | detect
    model: str = "tf_efficientnet_lite0"  # timm backbone (the encoder of segmentation and detection models)
    arch: str = "unet"  # segment/multitask: attention-unetpp | unet | unetpp | unet-vgg11 | dsconv-resnet
    weights: str = "auto"  # auto | hub | none | path to a state dict
    head: str = "linear"  # linear | mlp
    dropout: float = 0.2
    image_size: int = 224
    augment: str = "light"  # kvasir | light | none
    bilateral: bool = False
    # stage 1: frozen backbone, head trained on cached features
    head_epochs: int = 60
    head_lr: float = 1e-3
    # stage 2: last `unfreeze` parameter groups (timm's coarse groups; 99 = all) trained with the head, at `lr`
    epochs: int = 12
    unfreeze: int = 99
    lr: float = 2e-4
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weights: bool = True
    oversample: bool = False
    patience: int = 5
    precision: str = "bf16-mixed"  # bf16-mixed | 32-true
    seed: int = 0
    # segment / multitask
    missing_masks: str = "error"  # error | empty (images without a mask are lesion-free)
    class_loss_weight: float = 1.0  # multitask loss = BCE + Dice (mask) + this x cross-entropy (class)
    # splits
    folds: int | None = 5
    holdout: float | None = None
    val_fraction: float = 0.15
    group_by: str = "auto"
    # data layout
    layout: str | None = None
    pattern: str | None = None
    mask_suffix: str = "_mask"
    threads: int | None = None

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed; unknown names raise ConfigError naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls().replace(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a run's config.json (its other keys, such as data and labels, are run metadata)."""
        try:
            d = json.loads(Path(path).read_text())
            return cls.from_dict({f.name: d[f.name] for f in fields(cls) if f.name in d})
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read run config ({e})") from e
