"""One result type for every task: what a model says about one image, drawn on it and turned into a table row.

A `Prediction` carries what its task has: class probabilities (classify, multitask), a lesion-probability mask at
the image's own size (segment, multitask), boxes in the image's pixels (detect). Its `label` is the frame-level
decision a clinician sees first: the most probable class (multi-label: every label at or above the threshold, joined
by '+', or "none"); for a detector the top box's class, or "background" when
no box reaches the threshold; for a segmenter "lesion" when a pixel reaches the threshold and the frame passes the
frame-level decision fitted on validation data (its `frame_score` reaches `min_frame_score`), else "no lesion" — and
then no lesion pixel is shown either; a segmenter of several lesion classes (label maps) names the classes shown,
largest first ("stone+cyst"). A multitask model's label stays its most probable class; its mask follows the
frame-level decision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from medcad.metrics.segmentation import frame_scores
from medcad.tasks import reference_label

BACKGROUND = "background"
NO_LESION, LESION = "no lesion", "lesion"
NO_FINDING = "none"  # a multi-label image with no label at or above the threshold
TRUE_COLOUR = (40, 220, 40)  # RGB: ground truth contour / boxes
PRED_COLOUR = (255, 40, 40)  # RGB: predicted contour
BOX_COLOURS = [(255, 60, 60), (60, 160, 255), (255, 200, 40), (180, 90, 255), (40, 220, 120)]  # RGB per class


@dataclass(frozen=True)
class Prediction:
    """A model's output for one image (immutable: what is derived from the mask is computed once).

    Attributes:
        image: where the image came from (path, upload name, or `video#frame`).
        labels: the model's class names.
        probabilities: (K,) class probabilities, or None.
        mask: (H, W) float32 lesion probability in [0, 1] at the image's own size, or None.
        boxes: (m, 6) [x0, y0, x1, y1, score, class_index] in the image's pixels, best first, or None.
        threshold: lesion-probability threshold of the mask, score threshold of the boxes, or (multi-label) the
            probability from which a label is present.
        multilabel: the probabilities are independent per label (any subset present), not one class's share.
        frame_score_kind: what the frame-level decision of a mask scores: "lesion_area" (fraction of the image
            at or above the threshold) or "p_lesion" (1 - the probability of the class "normal").
        min_frame_score: the frame shows a lesion (and its mask) only from this score on (0: always).
        extra: more fields for the table row (e.g. smoothed video decisions).
        lesion_class: (H, W) uint8 most probable lesion class per pixel (1 + its index in `labels`), for label-map
            models (segment-multiclass); the pixels shown as lesion take it (`class_map`).
        class_values: the mask value of each class in `labels` (label-map models: what the run's masks hold).
    """

    image: str
    labels: list[str]
    probabilities: np.ndarray | None = None
    mask: np.ndarray | None = None
    boxes: np.ndarray | None = None
    threshold: float = 0.5
    multilabel: bool = False
    frame_score_kind: str = "lesion_area"
    min_frame_score: float = 0.0
    extra: dict = field(default_factory=dict)
    lesion_class: np.ndarray | None = None
    class_values: tuple[int, ...] | None = None

    @cached_property
    def _above(self) -> np.ndarray:
        """bool (H, W): pixels whose lesion probability reaches the threshold (the one full-frame comparison)."""
        return self.mask >= self.threshold

    @cached_property
    def frame_score(self) -> float | None:
        """The frame-level decision's score (see `medcad.metrics.segmentation.frame_scores`), or None without a
        mask."""
        if self.mask is None:
            return None
        if self.frame_score_kind == "p_lesion":
            normal = self.labels.index(reference_label(self.labels))
            return float(frame_scores("p_lesion", None, self.probabilities[None], normal)[0])
        return float(frame_scores("lesion_area", self._above[None], None, None, threshold=True)[0])  # bool pixels

    @cached_property
    def frame_has_lesion(self) -> bool | None:
        """The frame-level decision of a mask: True when the frame shows a lesion (its frame score reaches
        `min_frame_score` and some pixel reaches the threshold), or None without a mask."""
        if self.mask is None:
            return None
        return bool(self.frame_score >= self.min_frame_score and self._above.any())

    @cached_property
    def lesion(self) -> np.ndarray | None:
        """bool (H, W) lesion pixels at the threshold (none when the frame-level decision says no lesion), or None
        without a mask. Computed once and shared by label, row, summary and draw: copy it before changing it."""
        if self.mask is None:
            return None
        return self._above if self.frame_has_lesion else np.zeros(self.mask.shape, bool)

    @cached_property
    def lesion_fraction(self) -> float | None:
        """Fraction of the image shown as lesion (0 when the frame-level decision says no lesion)."""
        return None if self.mask is None else float(self.lesion.mean())

    @cached_property
    def class_map(self) -> np.ndarray | None:
        """uint8 (H, W) class per pixel of a label-map model: 0 where no lesion is shown, else 1 + the class index in
        `labels`; None for other models."""
        if self.lesion_class is None:
            return None
        return np.where(self.lesion, self.lesion_class, 0).astype(np.uint8)

    def mask_image(self) -> np.ndarray | None:
        """The mask to save, uint8 (H, W): 0 / 255 for lesion; for label-map models the class map in the run's mask
        values (e.g. 1 cyst, 2 stone), as its training masks were written; None without a mask."""
        if self.mask is None:
            return None
        if self.class_map is None:
            return self.lesion.astype(np.uint8) * 255
        values = np.array((0, *(self.class_values or range(1, len(self.labels) + 1))), np.uint8)
        return values[self.class_map]

    @cached_property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image shown as each lesion class (label-map models; else empty)."""
        if self.class_map is None:
            return {}
        counts = np.bincount(self.class_map.ravel(), minlength=len(self.labels) + 1)[1:] / self.class_map.size
        return {lab: float(f) for lab, f in zip(self.labels, counts, strict=True)}

    @property
    def kept_boxes(self) -> np.ndarray | None:
        return None if self.boxes is None else self.boxes[self.boxes[:, 4] >= self.threshold]

    @property
    def label(self) -> str:
        """The frame-level decision (see the module docstring)."""
        if self.probabilities is not None and self.multilabel:
            present = [lab for lab, p in zip(self.labels, self.probabilities, strict=True) if p >= self.threshold]
            return "+".join(present) or NO_FINDING
        if self.probabilities is not None:
            return self.labels[int(np.argmax(self.probabilities))]
        if self.boxes is not None:
            kept = self.kept_boxes
            return self.labels[int(kept[0, 5])] if len(kept) else BACKGROUND
        shown = sorted((f, lab) for lab, f in self.class_fractions.items() if f > 0)
        if shown:
            return "+".join(lab for _, lab in reversed(shown))
        return LESION if self.frame_has_lesion else NO_LESION

    @property
    def score(self) -> float:
        """The decision's probability, the top box score, or the highest lesion probability."""
        if self.probabilities is not None:
            return float(np.max(self.probabilities))
        if self.boxes is not None:
            return float(self.boxes[0, 4]) if len(self.boxes) else 0.0
        return float(self.mask.max()) if self.mask is not None and self.mask.size else 0.0

    def row(self) -> dict:
        """A flat table row: image, label (the decision), score, p_<label>, the mask's frame decision
        (`frame_decision`: "lesion" / "no lesion", `frame_score`) and lesion_fraction, n_boxes, boxes (JSON)."""
        r: dict = {"image": self.image, "label": self.label, "score": round(self.score, 4)}
        if self.probabilities is not None:
            r |= {f"p_{lab}": float(p) for lab, p in zip(self.labels, self.probabilities, strict=True)}
        r |= self._mask_fields()
        if self.boxes is not None:
            kept = self.kept_boxes
            r["n_boxes"] = len(kept)
            r["boxes"] = json.dumps([[*np.round(b[:5], 1).tolist(), self.labels[int(b[5])]] for b in kept])
        return r | self.extra

    def summary(self) -> dict:
        """A JSON-ready record: image, label, score, probabilities {label: p}, frame_decision, frame_score,
        lesion_fraction, boxes [[x0, y0, x1, y1, score, label]] (those the task has; no pixel arrays)."""
        r: dict = {"image": self.image, "label": self.label, "score": round(self.score, 4)}
        if self.probabilities is not None:
            r["probabilities"] = {lab: float(p) for lab, p in zip(self.labels, self.probabilities, strict=True)}
        r |= self._mask_fields()
        if self.boxes is not None:
            r["boxes"] = [[*np.round(b[:5], 1).tolist(), self.labels[int(b[5])]] for b in self.kept_boxes]
        return r | self.extra

    def _mask_fields(self) -> dict:
        """A mask's frame decision as the row shows it: `frame_decision` ("lesion" / "no lesion"; for a multitask
        model it can differ from the class label), `frame_score` (what the decision thresholds), `lesion_fraction`."""
        if self.mask is None:
            return {}
        return {
            "frame_decision": LESION if self.frame_has_lesion else NO_LESION,
            "frame_score": round(self.frame_score, 4),
            "lesion_fraction": self.lesion_fraction,
        } | {f"fraction_{lab}": f for lab, f in self.class_fractions.items()}

    def draw(self, rgb: np.ndarray, truth_mask: np.ndarray | None = None, truth_boxes=None, caption=None) -> np.ndarray:
        """The image with what the prediction has: the lesion tinted and outlined (red), boxes with class and
        score, and the decision written in the corner (or `caption`, a (label, score) pair, e.g. a decision
        smoothed over video frames); true outlines/boxes in green when given."""
        out = rgb
        if self.class_map is not None:
            out = class_overlay(out, self.class_map, truth_mask, self.labels)
        elif self.mask is not None or truth_mask is not None:
            out = mask_overlay(out, self.lesion, truth_mask)
        if self.boxes is not None or truth_boxes is not None:
            out = draw_boxes(
                out,
                self.boxes if self.boxes is not None else np.zeros((0, 6)),
                self.labels,
                self.threshold,
                truth_boxes,
            )
        return draw_label(out, *(caption or (self.label, self.score)))


def mask_overlay(image: np.ndarray, pred: np.ndarray | None, true: np.ndarray | None = None, alpha=0.3) -> np.ndarray:
    """RGB image with the predicted lesion tinted and outlined in red and the true lesion outlined in green."""
    out = image.copy()
    for mask, colour, fill in ((true, TRUE_COLOUR, False), (pred, PRED_COLOUR, True)):
        if mask is None:
            continue
        m = mask.astype(np.uint8)
        if fill:  # blend only the lesion pixels (a full-frame float blend costs more than the model on video)
            sel = m > 0
            out[sel] = (out[sel] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, max(1, round(max(out.shape[:2]) / 250)))
    return out


def class_overlay(
    image: np.ndarray, classes: np.ndarray, true: np.ndarray | None = None, names=None, alpha=0.3
) -> np.ndarray:
    """RGB image with each lesion class of a class map (uint8 (H, W), 0 none, c for class c - 1) tinted and outlined
    in its colour (`BOX_COLOURS`, as boxes of that class), the true lesion (any class) outlined in green, and with
    `names` a legend of the classes shown, each in its colour, at the bottom left."""
    out = mask_overlay(image, None, None if true is None else np.asarray(true) > 0)
    shown = [int(c) for c in np.unique(classes) if c]
    t = max(1, round(max(out.shape[:2]) / 250))
    for c in shown:
        colour, m = BOX_COLOURS[(c - 1) % len(BOX_COLOURS)], (classes == c).astype(np.uint8)
        out[m > 0] = (out[m > 0] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, t)
    line = max(14, out.shape[0] // 20)
    for j, c in enumerate(shown[::-1] if names else []):
        y = out.shape[0] - 6 - j * line
        colour = BOX_COLOURS[(c - 1) % len(BOX_COLOURS)]
        cv2.putText(out, names[c - 1], (6, y), cv2.FONT_HERSHEY_SIMPLEX, line / 30, colour, t, cv2.LINE_AA)
    return out


def draw_boxes(
    rgb: np.ndarray,
    dets: np.ndarray,
    labels: Sequence[str],
    threshold: float,
    truths: np.ndarray | None = None,
) -> np.ndarray:
    """RGB image with predicted boxes (coloured per class, with class and score) at or above `threshold`, and
    true boxes in green; boxes in the image's own pixel coordinates."""
    out = rgb.copy()
    t = max(1, round(max(out.shape[:2]) / 300))
    for b in truths if truths is not None else []:
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), TRUE_COLOUR, t)
    for d in dets:
        if d[4] < threshold:
            continue
        colour = BOX_COLOURS[int(d[5]) % len(BOX_COLOURS)]
        cv2.rectangle(out, (int(d[0]), int(d[1])), (int(d[2]), int(d[3])), colour, t + 1)
        text = f"{labels[int(d[5])]} {d[4]:.2f}"
        cv2.putText(out, text, (int(d[0]) + 2, max(12, int(d[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t)
    return out


def draw_label(rgb: np.ndarray, label: str, p: float) -> np.ndarray:
    """The decision and its score written on a black band at the top (a copy; RGB or BGR alike)."""
    out = rgb.copy()
    h, w = out.shape[:2]
    bar = max(18, h // 14)
    cv2.rectangle(out, (0, 0), (w, bar), (0, 0, 0), -1)
    cv2.putText(
        out, f"{label} {p:.2f}", (6, bar - 5), cv2.FONT_HERSHEY_SIMPLEX, bar / 32, (255, 255, 255), 1, cv2.LINE_AA
    )
    return out
