"""Lesion boxes (detect) and the colonoscopy study's frame decision: the folds' detectors as one ensemble, their
boxes merged by class-wise non-maximum suppression."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms

from medcad.inference.predictor import Predictor
from medcad.models.predict import predict_detections

ENSEMBLE_IOU = 0.5  # boxes of the same class from several folds' models overlapping more than this are one lesion
MAX_BOXES = 50


def merge_detections(per_model: list[np.ndarray], iou: float = ENSEMBLE_IOU) -> np.ndarray:
    """One image's detections from several models, (m_k, 6) each, merged by class-wise NMS: (m, 6) best first."""
    dets = np.concatenate([d.reshape(-1, 6) for d in per_model]) if per_model else np.zeros((0, 6))
    if len(per_model) == 1 or len(dets) == 0:
        return dets
    t = torch.from_numpy(dets.astype(np.float32))
    keep = batched_nms(t[:, :4], t[:, 4], t[:, 5].long(), iou)[:MAX_BOXES]
    return dets[keep.numpy()]


class BoxPredictor(Predictor):
    """Boxes (m, 6) [x0, y0, x1, y1, score, class_index] per image; `label` of a Prediction is the frame decision."""

    tasks = ("detect",)

    def infer(self, x: np.ndarray, batch: int = 16) -> dict:
        """{"boxes": per image (m, 6) in S x S pixels} for prepared uint8 images (N, S, S, 3)."""
        rows = np.arange(len(x))
        per_model = [predict_detections(m, x, rows, batch=batch, bf16=self.bf16) for m in self.models]
        return {"boxes": [merge_detections([p[i] for p in per_model]) for i in range(len(x))]}
