"""One result type for every task: what a model says about one image, drawn on it and turned into a table row.

A `Prediction` holds the typed outputs its task has (`medcad.inference.outputs`): class probabilities (classify,
multilabel, multitask), a lesion mask at the image's own size (segment, segment-multiclass, multitask), boxes in the
image's pixels (detect). Its `label` is the frame-level decision a clinician sees first, made by the first output
in `OUTPUT_TYPES` order (a multitask image's label is its class; its mask's own frame decision stays in the row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from medcad.drawing import draw_boxes, draw_label, mask_overlay
from medcad.inference.outputs import OUTPUT_TYPES, Boxes, ClassProbabilities, LesionMask, Output
from medcad.tasks import reference_label

T = TypeVar("T", bound=Output)


@dataclass(frozen=True, eq=False)
class Prediction:
    """A model's outputs for one image.

    Attributes:
        image: where the image came from (path, upload name, or `video#frame`).
        labels: the model's class names (lesion classes for label-map models).
        outputs: the typed outputs, at most one of each type.
        extra: more fields for the table row (e.g. smoothed video decisions).
    """

    image: str
    labels: list[str]
    outputs: tuple[Output, ...] = ()
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        image: str,
        labels: list[str],
        *,
        probabilities: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        threshold: float = 0.5,
        multilabel: bool = False,
        frame_score_kind: str = "lesion_area",
        min_frame_score: float = 0.0,
        lesion_class: np.ndarray | None = None,
        class_values: tuple[int, ...] | None = None,
    ) -> Prediction:
        """A Prediction from arrays at the image's size: (K,) probabilities, (H, W) lesion probabilities `mask`
        (with the frame decision's kind and threshold, and a label map's (H, W) `lesion_class`), (m, 6) boxes."""
        outs: list[Output] = []
        p = None if probabilities is None else np.asarray(probabilities, np.float64)
        if p is not None:
            outs.append(ClassProbabilities(labels, p, multilabel, threshold))
        if boxes is not None:
            outs.append(Boxes(labels, np.asarray(boxes, np.float64).reshape(-1, 6), threshold))
        if mask is not None:
            m = np.asarray(mask, np.float32)
            outs.append(
                LesionMask(m, threshold, frame_score_kind, min_frame_score, labels, p, lesion_class, class_values)
            )
        return cls(image, labels, tuple(outs))

    @classmethod
    def from_infer(
        cls, outputs: dict, i: int, image: str, labels: list[str], size: tuple[int, int], s: int, settings: dict
    ) -> Prediction:
        """Image i of an `infer` dict at the image's (height, width), from the model's S x S input."""
        settings = {"labels": labels, **settings}
        found = [t.from_infer(outputs, i, size, s, settings) for t in OUTPUT_TYPES if outputs.get(t.key) is not None]
        return cls(image, labels, tuple(found))

    def get(self, kind: type[T]) -> T | None:
        """The output of this type, or None."""
        return next((o for o in self.outputs if isinstance(o, kind)), None)

    @property
    def decider(self) -> Output | None:
        """The output whose decision is the label (first in `OUTPUT_TYPES` order)."""
        return next((o for t in OUTPUT_TYPES for o in self.outputs if isinstance(o, t)), None)

    # what readers of one kind of output ask most
    @property
    def probabilities(self) -> np.ndarray | None:
        c = self.get(ClassProbabilities)
        return None if c is None else c.p

    @property
    def mask(self) -> LesionMask | None:
        return self.get(LesionMask)

    @property
    def boxes(self) -> Boxes | None:
        return self.get(Boxes)

    @property
    def threshold(self) -> float | None:
        """The deciding output's threshold (the predictor's: lesion probability, box score or a multi-label model's
        label probability; the positive class's at an operating point); None for one class per image decided by the
        most probable (no threshold takes part)."""
        d = self.decider
        if isinstance(d, ClassProbabilities) and not d.multilabel:
            return d.cut[1] if d.cut else None
        return d.threshold

    @property
    def label(self) -> str:
        """The frame-level decision (see `medcad.inference.outputs`)."""
        return self.decider.decision()[0]

    @property
    def score(self) -> float:
        """The decision's probability, the top box score, or the highest lesion probability."""
        return self.decider.decision()[1]

    def doubts(self) -> list[str]:
        """What makes this prediction doubtful by itself: under a class label (multitask), a mask whose own frame
        decision contradicts it (a lesion class over no mask, or the lesion-free class over a drawn lesion). The
        two are decided apart (the class by its most probable class or at an operating point, the mask at a frame
        threshold chosen on validation data for Dice) and can disagree: the demo's 360 images, 50 times. Boxes as
        many as the detector returns at most (`DETECTIONS_PER_IMAGE`): more may be there (a new user's detector had
        returned 50 on every image, each scoring 0.5 or more, without a word)."""
        boxes = [o for o in self.outputs if o.key == "boxes"]
        if not boxes:
            return self._class_against_mask()
        from medcad.models.detection import DETECTIONS_PER_IMAGE

        return [
            f"the detector returned its most, {DETECTIONS_PER_IMAGE} boxes: more may be there, and so many suggest a "
            "model that learned little"
            for o in boxes
            if len(o.kept) >= DETECTIONS_PER_IMAGE  # the listed ones (score >= threshold), not every candidate
        ]

    def _class_against_mask(self) -> list[str]:
        mask, ref = self.mask, reference_label(self.labels)
        if mask is None or self.decider is mask or ref is None or (self.label != ref) == mask.frame_has_lesion:
            return []
        return [f"the class says {self.label!r} ({self.score:.2f}) but the mask says {mask.frame_reason()}: review"]

    def row(self) -> dict:
        """A flat table row: image, label (the decision), score, then every output's fields (p_<label>;
        frame_decision, frame_score, lesion_fraction, fraction_<class>; n_boxes, boxes as JSON) and `extra`."""
        r: dict = {"image": self.image, "label": self.label, "score": round(self.score, 4)}
        for o in self.outputs:
            r |= o.fields()
        return r | self.extra

    def summary(self) -> dict:
        """A JSON-ready record: image, label, score, and every output's summary (probabilities {label: p},
        frame_decision, frame_score, lesion_fraction, boxes [[x0, y0, x1, y1, score, label]]; no pixel arrays)."""
        r: dict = {"image": self.image, "label": self.label, "score": round(self.score, 4)}
        for o in self.outputs:
            r |= o.summary()
        return r | self.extra

    def draw(
        self,
        rgb: np.ndarray,
        truth_mask: np.ndarray | None = None,
        truth_boxes=None,
        caption=None,
        note: str = "",
        above: bool = True,
    ) -> np.ndarray:
        """The image with what the prediction has: the lesion tinted and outlined (each class in its colour),
        boxes with class and score, and the decision written on a band above the image ((H + band, W, 3): it had
        covered the image's top rows, half of a 40 px high image and its mask), or, without `above`, on the image's
        top rows (video frames keep their size) (or `caption`, a (label, score) pair, e.g. a decision smoothed over
        video frames, said in `note`); true outlines/boxes in green when given. Under
        a class label (multitask), the mask's own decision is written beside it: the outline follows that one, so
        "normal 0.54" over a drawn lesion says "mask: lesion"."""
        out = rgb
        for o in sorted(self.outputs, key=lambda o: not isinstance(o, LesionMask)):  # masks under boxes
            out = o.draw(out, truth_mask, truth_boxes)
        if truth_mask is not None and self.mask is None:
            out = mask_overlay(out, None, truth_mask)
        if truth_boxes is not None and self.boxes is None:
            out = draw_boxes(out, np.zeros((0, 6)), self.labels, 1.0, truth_boxes)
        if caption is None:  # what the number is, where it is not the label's probability
            note = "; ".join(x for x in (self.decider.score_means, note) if x)
        if self.mask is not None and self.decider is not self.mask:  # the mask decides apart from the class
            note = "; ".join(x for x in (note, f"mask: {self.mask.fields()['frame_decision']}") if x)
        return draw_label(out, *(caption or (self.label, self.score)), note, above=above)
