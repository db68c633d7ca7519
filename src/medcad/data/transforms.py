"""Augmentation presets for training batches of images (a mask follows its image's geometric transforms:
`BatchAugmentation`, run in the training step on the loader's uint8 batch) and for images with boxes
(`box_augmentation`, torchvision transforms.v2 per image in the loader), and the normalisation of a backbone's data
config. Only training folds are augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from medcad.errors import ConfigError

if TYPE_CHECKING:  # torchvision is imported where boxes are augmented: its import takes ~1 s (torch._dynamo)
    from torchvision.transforms import v2

PRESETS = ("kvasir", "light", "none")


def augmentation(preset: str) -> BatchAugmentation | None:
    """Random transforms of training batches (`BatchAugmentation`, run in the training step); `kvasir` is the
    GI-endoscopy study's recipe.

    - kvasir: random resized crop (area 0.7-1, ratio 0.85-1.18), horizontal and vertical flips, rotation +-30 deg,
      brightness/contrast +-0.2.
    - light: mild crop (area 0.85-1, ratio 0.9-1.11), horizontal flip, rotation +-10 deg, brightness/contrast +-0.1
      (ultrasound-friendly).
    - none: None (no augmentation).

    Raises:
        ConfigError: an unknown preset.
    """
    if preset == "kvasir":
        return BatchAugmentation(
            (0.7, 1.0), (0.85, 1.18), hflip=0.5, vflip=0.5, degrees=30, brightness=0.2, contrast=0.2
        )
    if preset == "light":
        return BatchAugmentation((0.85, 1.0), (0.9, 1.11), hflip=0.5, degrees=10, brightness=0.1, contrast=0.1)
    if preset == "none":
        return None
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
    from torchvision.transforms import v2

    clean = [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    if preset == "none":
        return v2.Compose(clean)
    if preset == "light":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.1, contrast=0.1), *clean])
    if preset != "kvasir":
        raise ConfigError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.08, 0.08), scale=(0.85, 1.15)),
            v2.ColorJitter(brightness=0.15, contrast=0.15),
            *clean,
        ]
    )


@dataclass(frozen=True)
class BatchAugmentation:
    """Random crop-and-resize, flips, rotation and brightness / contrast of a whole training batch at once, with
    each image's own random draw: the geometric part is one affine resampling of the batch (`F.affine_grid` +
    `F.grid_sample`), which a mask follows with nearest-neighbour sampling; the photometric part is two per-image
    factors. It runs in the training step on the batch of uint8 images the loader gives, so that no per-image
    transform runs in the loader (at 96 px on one AVX2 core: ~2 ms an image with torchvision's per-image
    transforms; docs/results.md, "Batched augmentation").

    The draws follow torchvision's transforms.v2 (`RandomResizedCrop`, `RandomHorizontalFlip`,
    `RandomVerticalFlip`, `RandomRotation`, `ColorJitter`, in that order): the crop's area fraction uniform in `scale`,
    its aspect ratio log-uniform in `ratio` (the first of ten draws that fits in the image, else the whole image),
    its corner uniform over the whole pixels where it fits; each flip with probability `hflip` / `vflip`; a rotation
    uniform in +-`degrees` about the centre, the corners filled with 0; brightness and contrast factors uniform in
    [1 - b, 1 + b] (contrast blends with the image's mean grey level, ITU-R 601 luma), clipped to [0, 255].
    Differences: bilinear resampling throughout (torchvision rotates with nearest-neighbour resampling and resizes
    the crop with an antialiasing filter, which changes nothing here since the crop is never larger than the
    output: it is only enlarged), reading the pixels just beyond a crop's edge where torchvision repeats its edge
    pixel; a crop that falls back (no draw fits) is the whole image, not a centre crop at the nearest allowed ratio
    (the same on the square images of the image cache); brightness and contrast are one affine map clipped once
    (torchvision applies them in a drawn order and clips after each: they commute but for that clipping), and the
    grey level is the mean of the unclipped image.
    """

    scale: tuple[float, float] | None = None  # None: no crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    vflip: float = 0.0
    degrees: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """x: (B, C, H, W) uint8 (or float in [0, 255]); mask: (B, 1, H, W) of class indices, or None.

        Returns:
            the augmented images (B, C, H, W) float32 in [0, 255]; with a mask, (images, mask float32 (B, 1, H, W)).
        """
        b, _, h, w = x.shape
        grid = _on_edge_pixels(_affine_grid(self.geometry(b, h, w).to(x.device), h, w))  # float32 under bf16 too
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = self._colour(out)
        if mask is None:
            return out
        return out, F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def geometry(self, b: int, h: int, w: int) -> torch.Tensor:
        """(B, 2, 3) affine maps from output to input coordinates (normalised to [-1, 1], `F.affine_grid`'s)."""
        f32 = {"dtype": torch.float32}  # whatever the default dtype (Lightning's bf16-true sets bfloat16)
        cw, ch = self._crop_size(b, h, w) if self.scale else (torch.full((b,), w, **f32), torch.full((b,), h, **f32))
        x0 = (torch.rand(b, **f32) * (w - cw + 1)).floor()
        y0 = (torch.rand(b, **f32) * (h - ch + 1)).floor()
        sx, sy = cw / w, ch / h  # the crop's half-extent in normalised coordinates
        cx, cy = (2 * x0 + cw) / w - 1, (2 * y0 + ch) / h - 1
        fx = torch.where(torch.rand(b, **f32) < self.hflip, -1.0, 1.0)
        fy = torch.where(torch.rand(b, **f32) < self.vflip, -1.0, 1.0)
        angle = torch.empty(b, **f32).uniform_(-self.degrees, self.degrees) * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        # output -> crop frame: rotation in pixel units (h / w keep it a rotation on a non-square image), flips, then
        # the crop's scale and centre
        theta = torch.empty(b, 2, 3, **f32)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = sx * fx * cos, -sx * fx * sin * (h / w), cx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sy * fy * sin * (w / h), sy * fy * cos, cy
        return theta

    def _crop_size(self, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's crop width and height in whole pixels: the first of ten draws that fits (torchvision's
        `RandomResizedCrop.get_params`), else the whole image."""
        area = torch.empty(b, 10, dtype=torch.float32).uniform_(*self.scale) * (h * w)
        log_ratio = torch.empty(b, 10, dtype=torch.float32).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        cw, ch = torch.sqrt(area * log_ratio.exp()).round(), torch.sqrt(area / log_ratio.exp()).round()
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.int().argmax(1, keepdim=True)
        any_fit = fits.any(1)
        return (
            torch.where(any_fit, cw.gather(1, first)[:, 0], float(w)),
            torch.where(any_fit, ch.gather(1, first)[:, 0], float(h)),
        )

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness then contrast as one affine map per image, clipped once (torchvision clips between the two)."""
        if not (self.brightness or self.contrast):
            return x
        b = len(x)
        bright = torch.empty(b, dtype=torch.float32).uniform_(max(0.0, 1 - self.brightness), 1 + self.brightness)
        contrast = torch.empty(b, dtype=torch.float32).uniform_(max(0.0, 1 - self.contrast), 1 + self.contrast)
        channel_means = x.mean((2, 3))  # (B, C)
        luma = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float32, device=x.device) if x.shape[1] == 3 else None
        # (B,) mean grey level; a product and a sum, not a matmul, so that autocast keeps it in float32
        grey = (channel_means * luma).sum(1) if luma is not None else channel_means.mean(1)
        bright, contrast = bright.to(x.device), contrast.to(x.device)
        scale, shift = bright * contrast, bright * grey * (1 - contrast)
        return torch.addcmul(shift.view(b, 1, 1, 1), x, scale.view(b, 1, 1, 1)).clamp_(0, 255)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, (B, 1, h, w), align_corners=False)` by broadcasting (the same (B, h, w, 2) sampling
    grid; torch's builds a (B, h * w, 3) base grid and multiplies it: 10x slower on a CPU at 224 px)."""
    u = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1  # pixel centres, normalised
    v = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    grid = t[:, :, 0] * u.view(1, 1, 1, w) + t[:, :, 1] * v.view(1, 1, h, 1) + t[:, :, 2]  # (B, 2, h, w)
    return grid.permute(0, 2, 3, 1)


def _on_edge_pixels(grid: torch.Tensor) -> torch.Tensor:
    """A (B, h, w, 2) sampling grid (of an h x w image) with the points inside the image but beyond its outermost
    pixel centres moved onto them, so that bilinear sampling there repeats the edge pixel (as a resize does) instead
    of blending in the zero fill; points outside the image keep it."""
    h, w = grid.shape[1:3]
    half_pixel = torch.tensor([1 / w, 1 / h], dtype=grid.dtype, device=grid.device)
    return torch.where(grid.abs() <= 1, grid.clamp(-1 + half_pixel, 1 - half_pixel), grid)


class Normalize(torch.nn.Module):
    """uint8 (B, C, H, W) or (C, H, W) -> float, scaled to [0, 1], minus mean, over std."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(std).view(-1, 1, 1) * 255))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std
