"""Augmentation presets (torchvision transforms.v2) for images (a mask follows its image's geometric transforms) and
for images with boxes (`box_augmentation`), and the normalisation of a backbone's data config.

Transforms run on uint8 (C, H, W) tensors taken from the decoded-image cache; only training folds are augmented.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from medcad.errors import ConfigError

PRESETS = ("kvasir", "light", "none")


def augmentation(preset: str, size: int) -> v2.Transform:
    """Random transforms of a training image; `kvasir` is the GI-endoscopy study's recipe.

    - kvasir: rotation +-30 deg, horizontal and vertical flips, brightness/contrast +-0.2, random resized crop.
    - light: flips, rotation +-10 deg, brightness/contrast +-0.1, mild crop (ultrasound-friendly).
    - none: identity.
    """
    if preset == "kvasir":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomRotation(30),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )
    if preset == "light":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.9, 1.11), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomRotation(10),
                v2.ColorJitter(brightness=0.1, contrast=0.1),
            ]
        )
    if preset == "none":
        return v2.Identity()
    raise ConfigError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")


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


class Normalize(torch.nn.Module):
    """uint8 (B, C, H, W) or (C, H, W) -> float, scaled to [0, 1], minus mean, over std."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(std).view(-1, 1, 1) * 255))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std
