"""Lesion masks (segment) and masks with class probabilities (multitask): the folds' models as one ensemble."""

from __future__ import annotations

import numpy as np
import torch

from medcad.inference.predictor import Predictor
from medcad.metrics.calibration import EPS, apply_temperature
from medcad.metrics.segmentation import dice_iou, mask_counts
from medcad.models.predict import mask_outputs, predict_masks
from medcad.tasks import flip_tta, get_task


class _Graph(torch.nn.Module):
    """0..255 float images -> the ensemble's mean lesion probability (N, S, S) (and class probabilities)."""

    def __init__(self, normalize, models, temperatures: list[float], with_class: bool, hflip: bool) -> None:
        super().__init__()
        self.normalize, self.members, self.temperatures = normalize, torch.nn.ModuleList(models), temperatures
        self.with_class, self.hflip = with_class, hflip

    def forward(self, x: torch.Tensor):
        x = self.normalize(x)
        outs = [mask_outputs(m, x, self.hflip) for m in self.members]
        mask = torch.stack([o["mask"] for o in outs]).mean(0)
        if not self.with_class:
            return mask
        # the temperature divides the class logits: log-probabilities are logits up to a constant per image
        probs = torch.stack(
            [(o["class"].clamp_min(EPS).log() / t).softmax(-1) for o, t in zip(outs, self.temperatures, strict=True)]
        ).mean(0)
        return mask, probs


class MaskPredictor(Predictor):
    """Mean lesion probability per pixel (and mean class probabilities for multitask) over the ensemble."""

    tasks = ("segment", "multitask")
    agreement_measure = "mask_dice"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperatures = [float(m.get("temperature", 1.0)) for m in self.metas]
        # the frame-level decision of each fold, fitted on its validation part; an ensemble uses the mean threshold
        decisions = [m.get("decision") or {} for m in self.metas]
        if all(decisions) and len({d["frame_score"] for d in decisions}) == 1:
            self.frame_score_kind = decisions[0]["frame_score"]
            self.min_frame_score = float(np.mean([d["min_frame_score"] for d in decisions]))
        self.with_class = "probabilities" in get_task(self.task).outputs
        self.hflip = flip_tta(self.config.tta, self.task)  # test-time augmentation as the model was evaluated
        self.graph_outputs = ("mask", "probabilities") if self.with_class else ("mask",)

    def infer_torch(self, x: np.ndarray, batch: int) -> dict:
        """{"mask": (N, S, S) float32 in [0, 1], "probabilities": (N, K) or None} for prepared uint8 images."""
        rows = np.arange(len(x))
        masks, probs = [], []
        for model, t in zip(self.models, self.temperatures, strict=True):
            m, p, _ = predict_masks(model, self.normalize, x, rows, batch=batch, bf16=self.bf16, hflip=self.hflip)
            if m is not None:
                masks.append(m.astype(np.float32) / 255)
            if p is not None:  # the class head's temperature, fitted on the fold's validation part
                probs.append(apply_temperature(p, t))
        return {"mask": np.mean(masks, 0) if masks else None, "probabilities": np.mean(probs, 0) if probs else None}

    def graph(self) -> torch.nn.Module:
        return _Graph(self.normalize, self.models, self.temperatures, self.with_class, self.hflip).eval()

    def decode(self, outputs: dict[str, np.ndarray]) -> dict:
        return {"mask": outputs["mask"], "probabilities": outputs.get("probabilities")}

    def agreement(self, ref: dict, got: dict) -> dict:
        t = self.threshold
        out = {
            "mask_dice": float(dice_iou(mask_counts(ref["mask"] >= t, got["mask"] >= t))[0].mean()),
            "max_prob_diff": float(np.abs(ref["mask"] - got["mask"]).max()),
        }
        if ref.get("probabilities") is not None:
            out["top1_agreement"] = float((ref["probabilities"].argmax(1) == got["probabilities"].argmax(1)).mean())
        return out
