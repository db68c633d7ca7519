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
    """0..255 float images -> the ensemble's mean lesion probability (N, S, S) (label maps: and the lesion classes'
    mean probabilities (N, K, S, S); multitask: and class probabilities (N, K))."""

    def __init__(
        self, normalize, models, temperatures: list[float], with_class: bool, hflip: bool, label_map: bool = False
    ) -> None:
        super().__init__()
        self.normalize, self.members, self.temperatures = normalize, torch.nn.ModuleList(models), temperatures
        self.with_class, self.hflip, self.label_map = with_class, hflip, label_map

    def forward(self, x: torch.Tensor):
        x = self.normalize(x)
        outs = [mask_outputs(m, x, self.hflip) for m in self.members]
        mask = torch.stack([o["mask"] for o in outs]).mean(0)
        if self.label_map:
            return mask, torch.stack([o["lesion_classes"] for o in outs]).mean(0)
        if not self.with_class:
            return mask
        # the temperature divides the class logits: log-probabilities are logits up to a constant per image
        probs = torch.stack(
            [(o["class"].clamp_min(EPS).log() / t).softmax(-1) for o, t in zip(outs, self.temperatures, strict=True)]
        ).mean(0)
        return mask, probs


class MaskPredictor(Predictor):
    """Mean lesion probability per pixel (and mean class probabilities for multitask) over the ensemble."""

    tasks = ("segment", "segment-multiclass", "multitask")
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
        self.label_map = get_task(self.task).mask_kind == "classes"  # several lesion classes (label maps)
        self.hflip = flip_tta(self.config.tta, self.task)  # test-time augmentation as the model was evaluated
        self.graph_outputs = ("mask", "probabilities") if self.with_class else ("mask",)
        if self.label_map:
            self.graph_outputs = ("mask", "lesion_classes")

    def infer_torch(self, x: np.ndarray, batch: int) -> dict:
        """{"mask": (N, S, S) float32 in [0, 1], "probabilities": (N, K) or None, "lesion_classes": (N, K, S, S)
        float32 or None} for prepared uint8 images."""
        rows = np.arange(len(x))
        masks, probs, classes = [], [], []
        for model, t in zip(self.models, self.temperatures, strict=True):
            out = predict_masks(model, self.normalize, x, rows, batch=batch, bf16=self.bf16, hflip=self.hflip)
            if out["mask"] is not None:
                masks.append(out["mask"].astype(np.float32) / 255)
            if out["lesion_classes"] is not None:
                classes.append(out["lesion_classes"].astype(np.float32) / 255)
            if out["class"] is not None:  # the class head's temperature, fitted on the fold's validation part
                probs.append(apply_temperature(out["class"], t))
        mean = {"mask": masks, "probabilities": probs, "lesion_classes": classes}
        return {k: np.mean(v, 0) if v else None for k, v in mean.items()}

    def graph(self) -> torch.nn.Module:
        args = (self.normalize, self.models, self.temperatures, self.with_class, self.hflip, self.label_map)
        return _Graph(*args).eval()

    def decode(self, outputs: dict[str, np.ndarray]) -> dict:
        return {k: outputs.get(k) for k in ("mask", "probabilities", "lesion_classes")}

    def agreement(self, ref: dict, got: dict) -> dict:
        t = self.threshold
        out = {
            "mask_dice": float(dice_iou(mask_counts(ref["mask"] >= t, got["mask"] >= t))[0].mean()),
            "max_prob_diff": float(np.abs(ref["mask"] - got["mask"]).max()),
        }
        if ref.get("lesion_classes") is not None:  # the pixels' lesion class where both call a pixel lesion
            both = (ref["mask"] >= t) & (got["mask"] >= t)
            same = ref["lesion_classes"].argmax(1) == got["lesion_classes"].argmax(1)
            out["lesion_class_agreement"] = float(same[both].mean()) if both.any() else 1.0
        if ref.get("probabilities") is not None:
            out["top1_agreement"] = float((ref["probabilities"].argmax(1) == got["probabilities"].argmax(1)).mean())
        return out
