"""Batched inference of every model family on prepared uint8 images (N, S, S, 3), used by training (validation
and test predictions of a fold) and by the predictors alike: one implementation of each."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn

from medcad.data.transforms import Normalize
from medcad.devices import autocast_dtype, fast_autocast
from medcad.models.bnfold import fold_eval_batchnorm


def device_of(net: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any): where its inputs go."""
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device, enabled: bool | None):
    """Reduced-precision autocast on `device`; `enabled=None` decides by the hardware (`fast_autocast`: GPUs and
    CPUs with native bf16; never emulated bf16, ~10x slower than fp32)."""
    on = fast_autocast(device) if enabled is None else enabled
    return torch.autocast(device.type, dtype=autocast_dtype(device), enabled=on)


def run_batched(
    net: nn.Module,
    normalize: Normalize,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    bf16: bool | None = None,
    channels_last: bool = True,
    fold_batchnorm: bool = False,
) -> tuple[np.ndarray, float]:
    """Apply `net` to uint8 images (N, H, W, 3) in batches on the net's device (channels_last and reduced-precision
    autocast where the hardware runs it fast (`bf16=None`: GPUs and CPUs with native bf16); both off is plain
    eager fp32). With `fold_batchnorm`, each convolution runs with the BatchNorm after it folded in for the call
    (`models.bnfold`: the same outputs; lite0 1.2-1.35x at 96-224 px on an AVX2 CPU, but ~54 ms to set up: worth it
    for a call over a whole dataset, such as feature caching, not for a fold's few test images or one request).

    Returns:
        outputs as float32 numpy (N, ...), and images per second.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    was_training = net.training
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.eval().to(memory_format=fmt)  # outside inference mode: parameters stay trainable
    t0 = time.perf_counter()
    dev = device_of(net)
    normalize = normalize.to(dev)
    outs = []
    with fold_eval_batchnorm(net) if fold_batchnorm and len(rows) else contextlib.nullcontext():
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(images[idx])).to(dev)  # (B, H, W, 3) uint8
            x = normalize(x.permute(0, 3, 1, 2)).contiguous(memory_format=fmt)  # (B, 3, H, W)
            with torch.inference_mode(), _autocast(dev, bf16):
                outs.append(net(x).float().cpu())
    ips = len(rows) / max(time.perf_counter() - t0, 1e-9)
    net.train(was_training)
    return (torch.cat(outs).numpy() if outs else np.zeros((0,), np.float32)), ips


def mask_outputs(model: nn.Module, x: torch.Tensor, hflip: bool = False) -> dict[str, torch.Tensor]:
    """A mask model's probabilities for normalised images x (B, 3, S, S): "mask" (B, S, S) lesion probability
    (1 - P(background) for label-map models), "lesion_classes" (B, K, S, S) the lesion classes' probabilities of a
    label-map model, and "class" (B, K) class probabilities, each present when the model has it; with `hflip`, the
    mean over the image and its horizontal mirror (the mirror's maps flipped back)."""
    views = [x, x.flip(-1)] if hflip else [x]
    outs: dict[str, list[torch.Tensor]] = {"mask": [], "lesion_classes": [], "class": []}
    for i, v in enumerate(views):
        out = model(v)
        if "mask" in out:
            logits = out["mask"].float()
            if logits.shape[1] == 1:
                maps = {"mask": logits.sigmoid()[:, 0]}
            else:  # background + lesion classes: P(lesion) = 1 - P(background)
                p = logits.softmax(1)
                maps = {"mask": 1 - p[:, 0], "lesion_classes": p[:, 1:]}
            for k, m in maps.items():
                outs[k].append(m.flip(-1) if i else m)
        if "class" in out:
            outs["class"].append(out["class"].float().softmax(-1))
    return {k: torch.stack(v).mean(0) for k, v in outs.items() if v}


def to_uint8(p: torch.Tensor) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0..255 (how predicted masks are stored)."""
    return (p * 255).round().to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def predict_masks(
    model: nn.Module,
    normalize: Normalize,
    images: np.ndarray,
    rows: np.ndarray,
    batch: int = 16,
    bf16: bool | None = None,
    hflip: bool = False,
) -> dict:
    """A mask model's outputs for images[rows], averaged over each image and its mirror with `hflip`
    (`mask_outputs`): {"mask": lesion probabilities (n, S, S) uint8 0..255 (None for a class-only model),
    "lesion_classes": (n, K, S, S) uint8 0..255 or None, "class": class probabilities (n, K) float32 or None,
    "nonfinite": (n,) bool, the images with a NaN or infinite output (uint8 masks cannot show one),
    "images_per_s": float}."""
    model.eval()
    dev = device_of(model)
    normalize = normalize.to(dev)
    parts: dict[str, list[np.ndarray]] = {"mask": [], "lesion_classes": [], "class": []}
    nonfinite = []
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[i : i + batch]])).to(dev).permute(0, 3, 1, 2)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        with _autocast(dev, bf16):
            out = mask_outputs(model, x, hflip)
        nonfinite.append(np.any([~torch.isfinite(v).flatten(1).all(1).cpu().numpy() for v in out.values()], axis=0))
        for k, v in out.items():
            parts[k].append(v.cpu().numpy() if k == "class" else to_uint8(v))
    ips = len(rows) / max(time.perf_counter() - t0, 1e-9)
    flags = np.concatenate(nonfinite) if nonfinite else np.zeros(0, bool)
    return {k: np.concatenate(v) if v else None for k, v in parts.items()} | {"nonfinite": flags, "images_per_s": ips}


def detections_to_array(det: dict[str, torch.Tensor]) -> np.ndarray:
    """torchvision detections -> (m, 6) [x0, y0, x1, y1, score, class_index] float32, class_index 0-based. A box
    with no area (SSD clips boxes to the image: one beyond an edge becomes a line) is no lesion and is dropped, as a
    true box with no area is (`medcad.data.boxes`)."""
    boxes = det["boxes"].float()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    rows = torch.cat([boxes, det["scores"].float()[:, None], (det["labels"] - 1).float()[:, None]], dim=1)
    return rows[keep].cpu().numpy()


@torch.no_grad()
def predict_detections(
    model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, batch: int = 16, bf16: bool | None = None
) -> list[np.ndarray]:
    """Detections for images[rows] (uint8 (N, S, S, 3)): per image (m, 6) [x0, y0, x1, y1, score, class_index]
    in S x S pixels, best first, at most 50, scores >= 0.01. bf16 autocast speeds up the network only: boxes
    and scores are decoded in float32."""
    model.eval()
    dev = device_of(model)
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch):
        chunk = torch.from_numpy(np.array(images[np.asarray(rows[start : start + batch])])).to(dev).permute(0, 3, 1, 2)
        with _autocast(dev, bf16):
            dets = model(list(chunk.float() / 255))
        out += [detections_to_array(d) for d in dets]
    return out
