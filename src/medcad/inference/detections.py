"""Lesion boxes (detect) and the colonoscopy study's frame decision: the folds' detectors as one ensemble, their
boxes merged by class-wise non-maximum suppression.

Exported, the graph stops at each detector's raw head outputs (box regression and class logits per default box);
decoding (default boxes, softmax, score threshold, top-k, per-class NMS) runs in PyTorch with torchvision's own
SSD post-processing, on ONNX Runtime's outputs, so both backends decode boxes with the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_iou

from medcad.inference.onnx import DEFAULT_BOXES
from medcad.inference.operating_points import validated_score_threshold
from medcad.inference.predictor import Predictor
from medcad.models.predict import detections_to_array, predict_detections

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


def box_agreement(ref: list[np.ndarray], got: list[np.ndarray], threshold: float) -> dict:
    """Matched-box IoU between two backends' detections at a score threshold: per image, boxes of the same class
    are matched greedily by IoU; the mean IoU over matches counts each unmatched box (either side) as 0."""
    ious, n_ref, n_got = [], 0, 0
    for a, b in zip(ref, got, strict=True):
        a, b = a[a[:, 4] >= threshold], b[b[:, 4] >= threshold]
        n_ref, n_got = n_ref + len(a), n_got + len(b)
        if len(a) == 0 or len(b) == 0:
            ious += [0.0] * max(len(a), len(b))
            continue
        m = box_iou(torch.from_numpy(a[:, :4]).float(), torch.from_numpy(b[:, :4]).float()).numpy()
        m[a[:, 5][:, None] != b[:, 5][None, :]] = 0
        used: set[int] = set()
        for i in np.argsort(-a[:, 4]):
            j = next((j for j in np.argsort(-m[i]) if j not in used and m[i, j] > 0), None)
            ious.append(float(m[i, j]) if j is not None else 0.0)
            used |= {j} if j is not None else set()
        ious += [0.0] * (len(b) - len(used))
    return {"box_iou_agreement": float(np.mean(ious)) if ious else 1.0, "n_boxes_ref": n_ref, "n_boxes_got": n_got}


class _Graph(torch.nn.Module):
    """0..255 float images -> every member's raw SSD head outputs (box regression, class logits)."""

    def __init__(self, models) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor):
        outs = []
        for m in self.members:
            t = m.transform
            z = (x / 255 - torch.tensor(t.image_mean)[None, :, None, None]) / torch.tensor(t.image_std)[
                None, :, None, None
            ]
            head = m.head(list(m.backbone(z).values()))
            outs += [head["bbox_regression"], head["cls_logits"]]
        return tuple(outs)


class BoxPredictor(Predictor):
    """Boxes (m, 6) [x0, y0, x1, y1, score, class_index] per image; `label` of a Prediction is the frame decision."""

    tasks = ("detect",)
    agreement_measure = "box_iou_agreement"
    networks_at_start = True  # `decode` runs torchvision's SSD post-processing of each model on every batch

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.graph_outputs = tuple(f"{kind}_{k}" for k in range(len(self.files)) for kind in ("boxes", "logits"))

    @classmethod
    def operating_point_settings(cls, run: Path, fold: int | None, rule: str) -> tuple[dict, None]:
        """A detector's operating point is its box-score threshold (`validated_score_threshold`), set at load."""
        return {"threshold": validated_score_threshold(run, fold, rule)}, None

    def infer_torch(self, x: np.ndarray, batch: int) -> dict:
        """{"boxes": per image (m, 6) in S x S pixels} for prepared uint8 images (N, S, S, 3)."""
        rows = np.arange(len(x))
        per_model = [predict_detections(m, x, rows, batch=batch, bf16=self.bf16) for m in self.models]
        return {"boxes": [merge_detections([p[i] for p in per_model]) for i in range(len(x))]}

    def graph(self) -> torch.nn.Module:
        return _Graph(self.models).eval()

    @torch.no_grad()
    def decode(self, outputs: dict[str, np.ndarray]) -> dict:
        """Each member's raw head outputs decoded by its own default boxes and torchvision's SSD post-processing."""
        s = self.config.image_size
        per_model = []
        for k, m in enumerate(self.models):
            reg = torch.from_numpy(outputs[f"boxes_{k}"])
            logits = torch.from_numpy(outputs[f"logits_{k}"])
            anchors = self._anchors(m, s)
            dets = m.postprocess_detections(
                {"bbox_regression": reg, "cls_logits": logits}, [anchors] * len(reg), [(s, s)] * len(reg)
            )
            per_model.append([detections_to_array(d) for d in dets])
        n = len(per_model[0]) if per_model else 0
        return {"boxes": [merge_detections([p[i] for p in per_model]) for i in range(n)]}

    def default_boxes(self) -> dict[str, np.ndarray]:
        """{"anchors_k": (A, 4) float32 [x0, y0, x1, y1] in S x S input pixels} of each fold model k: the default
        boxes its graph outputs boxes_k are offsets against (learned from the training boxes: `anchor_scales`)."""
        s = self.config.image_size
        return {f"anchors_{k}": self._anchors(m, s).numpy().astype(np.float32) for k, m in enumerate(self.models)}

    def decoding(self) -> dict:
        """How `decode` turns the graph's outputs into boxes, step by step, with each model's own constants, so that
        it can be done without medcad (torchvision's SSD post-processing, then `merge_detections`)."""
        m = self.models[0]
        weights = [float(v) for v in m.box_coder.weights]
        constants = {
            "box_coder_weights": weights,
            "log_size_clip": float(m.box_coder.bbox_xform_clip),
            "score_threshold": float(m.score_thresh),
            "top_k_per_class": int(m.topk_candidates),
            "nms_iou": float(m.nms_thresh),
            "boxes_per_model": int(m.detections_per_img),
            "ensemble_nms_iou": ENSEMBLE_IOU,
            "ensemble_boxes": MAX_BOXES,
        }
        return {
            "constants": constants,
            "default_boxes": f"{DEFAULT_BOXES} beside the graph: anchors_k (A, 4) [x0, y0, x1, y1] in S x S input "
            "pixels, fold model k's",
            "boxes": f"boxes_k (N, A, 4) are offsets (dx, dy, dw, dh) against anchors_k, weights {weights}: with an "
            "anchor's width w, height h and centre (cx, cy), the box's centre is (cx + dx / wx * w, cy + dy / wy * h), "
            f"its size (w * exp(min(dw / ww, {m.box_coder.bbox_xform_clip:.6f})), h * exp(min(dh / wh, same))); "
            "corners centre -/+ half the size, then clipped to [0, S]",
            "scores": "softmax over each row of logits_k (N, A, K + 1); column 0 the background, column c the class "
            "labels[c - 1]",
            "per_model": f"for each class: the boxes whose score > {m.score_thresh:g}, the best {m.topk_candidates} "
            f"of them by score; all classes' together: NMS within each class at IoU {m.nms_thresh:g} "
            f"(torchvision.ops.batched_nms), the {m.detections_per_img} best kept; boxes with no area dropped",
            "ensemble": f"the fold models' boxes of an image together: NMS within each class at IoU {ENSEMBLE_IOU:g}, "
            f"the {MAX_BOXES} best kept"
            if len(self.models) > 1
            else "one model: its boxes",
            "to_image": "x times w / S, y times h / S for an image of width w and height h",
            "frame_decision": "the class of the best box whose score reaches predict's --threshold (0.5 by default); "
            "'background' when none does",
        }

    @staticmethod
    def _anchors(model, size: int) -> torch.Tensor:
        """The detector's default boxes (A, 4) for S x S inputs (they depend only on the feature-map sizes)."""
        cached = getattr(model, "_medcad_anchors", None)
        if cached is None or cached[0] != size:
            x = torch.zeros(1, 3, size, size)
            features = list(model.backbone(x).values())
            anchors = model.anchor_generator(ImageList(x, [(size, size)]), features)[0]
            model._medcad_anchors = cached = (size, anchors)
        return cached[1]

    def agreement(self, ref: dict, got: dict) -> dict:
        return box_agreement(ref["boxes"], got["boxes"], self.threshold)
