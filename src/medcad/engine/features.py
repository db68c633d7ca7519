"""Fast batched inference on cached uint8 images, and the frozen-backbone feature cache of stage 1."""

from __future__ import annotations

import hashlib

import numpy as np
from torch import nn

from medcad.atomic import atomic_path
from medcad.data.cache import cache_dir
from medcad.data.transforms import Normalize
from medcad.models.predict import run_batched


def backbone_features(
    backbone: nn.Module, normalize: Normalize, images: np.ndarray, key: str
) -> tuple[np.ndarray, float | None]:
    """Pooled features (N, F) of every cached image under the frozen backbone, in fp32 (as the folds are scored and
    predict runs), cached on disk by `key`.

    `key` must identify the images (their cache key) and the backbone weights. Returns features and the
    extraction speed in images/s (None when read from the cache).
    """
    # v2: VGG's pooled features were 4096-wide (fc6/fc7) before the head moved onto its 512 conv channels
    tag = hashlib.sha1(f"v2|{key}|bf16=False".encode()).hexdigest()[:20]  # the fp32 caches made before kept
    path = cache_dir() / "features" / f"{tag}.npy"
    if path.is_file():
        feats = np.load(path)
        if len(feats) == len(images):
            return feats, None
    feats, ips = run_batched(backbone, normalize, images, bf16=False, fold_batchnorm=True)  # every image: pays
    with atomic_path(path) as tmp:
        np.save(tmp, feats)
    return feats, ips
