"""Lesion masks (segment) and masks with class probabilities (multitask): the folds' models as one ensemble."""

from __future__ import annotations

import numpy as np

from medcad.inference.predictor import Predictor
from medcad.metrics.calibration import apply_temperature
from medcad.models.predict import predict_masks


class MaskPredictor(Predictor):
    """Mean lesion probability per pixel (and mean class probabilities for multitask) over the ensemble."""

    tasks = ("segment", "multitask")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperatures = [float(m.get("temperature", 1.0)) for m in self.metas]

    def infer(self, x: np.ndarray, batch: int = 16) -> dict:
        """{"mask": (N, S, S) float32 in [0, 1], "probabilities": (N, K) or None} for prepared uint8 images."""
        rows = np.arange(len(x))
        masks, probs = [], []
        for model, t in zip(self.models, self.temperatures, strict=True):
            m, p, _ = predict_masks(model, self.normalize, x, rows, batch=batch, bf16=self.bf16)
            if m is not None:
                masks.append(m.astype(np.float32) / 255)
            if p is not None:  # the class head's temperature, fitted on the fold's validation part
                probs.append(apply_temperature(p, t))
        return {"mask": np.mean(masks, 0) if masks else None, "probabilities": np.mean(probs, 0) if probs else None}
