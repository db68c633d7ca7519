"""Fast batched inference on cached uint8 images, and the frozen-backbone feature cache of stage 1."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import torch
from torch import nn

from medcad.data.cache import cache_dir
from medcad.data.transforms import Normalize


def run_batched(
    net: nn.Module,
    normalize: Normalize,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    bf16: bool = True,
    channels_last: bool = True,
) -> tuple[np.ndarray, float]:
    """Apply `net` to uint8 images (N, H, W, 3) in batches (channels_last and bf16 autocast on CPU by default;
    both off is plain eager fp32).

    Returns:
        outputs as float32 numpy (N, ...), and images per second.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    was_training = net.training
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.eval().to(memory_format=fmt)  # outside inference mode: parameters stay trainable
    outs = []
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(images[idx]))  # (B, H, W, 3) uint8
        x = normalize(x.permute(0, 3, 1, 2)).contiguous(memory_format=fmt)  # (B, 3, H, W)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outs.append(net(x).float())
    ips = len(rows) / max(time.perf_counter() - t0, 1e-9)
    net.train(was_training)
    return (torch.cat(outs).numpy() if outs else np.zeros((0,), np.float32)), ips


def backbone_features(
    backbone: nn.Module, normalize: Normalize, images: np.ndarray, key: str, bf16: bool = True
) -> tuple[np.ndarray, float | None]:
    """Pooled features (N, F) of every cached image under the frozen backbone, cached on disk by `key`.

    `key` must identify the images (their cache key) and the backbone weights. Returns features and the
    extraction speed in images/s (None when read from the cache).
    """
    tag = hashlib.sha1(f"{key}|bf16={bf16}".encode()).hexdigest()[:20]
    path = cache_dir() / "features" / f"{tag}.npy"
    if path.is_file():
        feats = np.load(path)
        if len(feats) == len(images):
            return feats, None
    feats, ips = run_batched(backbone, normalize, images, bf16=bf16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats, ips
