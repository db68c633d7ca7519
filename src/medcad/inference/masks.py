"""Lesion masks for new images from a segmentation or multitask run: mask PNGs, overlays and a CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from medcad.config import TrainConfig
from medcad.data.datasets import preprocess
from medcad.data.manifest import atomic_write_text
from medcad.data.transforms import Normalize
from medcad.engine.segment import predict_masks
from medcad.errors import DataError
from medcad.inference.predictor import image_batches, load_models

TRUE_COLOUR = (40, 220, 40)  # RGB: ground truth contour
PRED_COLOUR = (255, 40, 40)  # RGB: predicted contour


def mask_overlay(image: np.ndarray, pred: np.ndarray | None, true: np.ndarray | None = None, alpha=0.3) -> np.ndarray:
    """RGB image with the predicted lesion tinted and outlined in red and the true lesion outlined in green."""
    out = image.copy()
    for mask, colour, fill in ((true, TRUE_COLOUR, False), (pred, PRED_COLOUR, True)):
        if mask is None:
            continue
        m = mask.astype(np.uint8)
        if fill:
            tint = np.zeros_like(out)
            tint[m > 0] = colour
            out = np.where(m[..., None] > 0, (out * (1 - alpha) + tint * alpha).astype(np.uint8), out)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, max(1, round(max(out.shape[:2]) / 250)))
    return out


class MaskPredictor:
    """Lesion probabilities (and class probabilities for multitask) from a run's fold ensemble or one model."""

    def __init__(self, run: str | Path, fold: int | None = None, bf16: bool = True, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        files, loaded = load_models(Path(run), fold, "segment", "multitask")
        meta = loaded[0][1]
        self.files, self.models = files, [m for m, _ in loaded]
        self.labels: list[str] = meta["labels"]
        self.config = TrainConfig.from_dict(meta["config"])
        self.normalize = Normalize(meta["data_config"]["mean"], meta["data_config"]["std"])
        self.bf16 = bf16

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.config.image_size, self.config.bilateral)

    def predict_arrays(self, images: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Mean lesion probability (N, S, S) float32 in [0, 1] and mean class probabilities (N, K) (or None) over
        the ensemble, for prepared uint8 images (N, S, S, 3)."""
        rows = np.arange(len(images))
        masks, probs = [], []
        for model in self.models:
            m, p, _ = predict_masks(model, self.normalize, images, rows, bf16=self.bf16)
            if m is not None:
                masks.append(m.astype(np.float32) / 255)
            if p is not None:
                probs.append(p)
        return (np.mean(masks, 0) if masks else None), (np.mean(probs, 0) if probs else None)


def predict_mask_files(
    run: str | Path,
    inputs: Sequence[Path],
    out: str | Path,
    *,
    fold: int | None = None,
    threshold: float = 0.5,
    bf16: bool = True,
    batch: int = 16,
) -> pd.DataFrame:
    """Write <stem>_mask.png (0/255, the image's own size) and <stem>_overlay.png per input image into `out`, and
    predictions.csv with the lesion's area fraction (and class probabilities for a multitask run)."""
    predictor = MaskPredictor(run, fold, bf16)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for paths, originals, prepared in image_batches(inputs, predictor.prepare, batch):
        masks, probs = predictor.predict_arrays(prepared)
        for j, (path, image) in enumerate(zip(paths, originals, strict=True)):
            row: dict = {"image": str(path)}
            if masks is not None:
                h, w = image.shape[:2]
                mask = cv2.resize(masks[j], (w, h), interpolation=cv2.INTER_LINEAR) >= threshold
                stem = out / Path(path).stem
                _write_png(stem.with_name(stem.name + "_mask.png"), mask.astype(np.uint8) * 255)
                _write_png(stem.with_name(stem.name + "_overlay.png"), mask_overlay(image, mask))
                row["lesion_fraction"] = float(mask.mean())
            if probs is not None:
                row["predicted"] = predictor.labels[int(probs[j].argmax())]
                row.update({f"p_{lab}": float(probs[j, k]) for k, lab in enumerate(predictor.labels)})
            records.append(row)
    table = pd.DataFrame(records)
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False))
    return table


def _write_png(path: Path, arr: np.ndarray) -> None:
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), bgr):
        raise DataError(path, "cannot write the image (is the folder writable?)")
    tmp.replace(path)
