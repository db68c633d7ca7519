"""The kinds of output a model gives for one image, each a type that knows its own scaling to the image, decision,
table fields, drawing and what a video averages over frames: class probabilities, a lesion mask (one lesion, or
several lesion classes), boxes. A `Prediction` holds the outputs its task has.

Decisions: class probabilities name the most probable class (at a validated operating point: the positive class
from its threshold on, else the other; multi-label: every label at or above the threshold,
joined by '|' as in a manifest's cells, or "none"); boxes name the top kept box's class, or "background" when no box
reaches the threshold; a mask says "lesion" when a pixel reaches the threshold and the frame passes the frame-level
decision fitted on validation data (its `frame_score` reaches `min_frame_score`), else "no lesion" — and then no
lesion pixel is shown either; a mask of several lesion classes names the classes shown, largest first ("stone|cyst").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from medcad.data.boxes import listed_boxes
from medcad.data.manifest import LABEL_JOIN
from medcad.drawing import class_overlay, draw_boxes, mask_overlay
from medcad.errors import MedcadError
from medcad.metrics.detection import BACKGROUND  # the frame label of "no box" (the design's background row)
from medcad.metrics.segmentation import frame_scores
from medcad.tasks import p_lesion_words, reference_label

NO_LESION, LESION = "no lesion", "lesion"
NO_FINDING = "none"  # a multi-label image with no label at or above the threshold
PNG_MAX = 65535  # the largest value a (16-bit) PNG mask holds


def check_png_values(values: tuple[int, ...]) -> tuple[int, ...]:
    """A label-map run's mask values, checked to fit a PNG mask (0..65535).

    Raises:
        MedcadError: a value below 0 or above 65535 (a signed or 32-bit TIFF label map).
    """
    if values and (min(values) < 0 or max(values) > PNG_MAX):
        raise MedcadError(
            f"the run's mask values {', '.join(map(str, values))} cannot all be written in a PNG mask, which holds "
            f"0..{PNG_MAX}"
        )
    return values


class Output:
    """One output of a model for one image. Subclasses set `key` (the `infer` dict's key) and implement
    `from_infer`, `decision`, `fields`, and where they have them `draw` and the video hooks."""

    key = ""
    score_means = ""  # what the decision's score is, where a caption must say (a class's probability: nothing)
    evidence_means = ""  # what `evidence` is, where a video's smoothed caption must say

    @classmethod
    def from_infer(cls, outputs: dict, i: int, size: tuple[int, int], s: int, settings: dict) -> Output:
        """Image i's output of an `infer` dict, scaled from the model's S x S input to the image's (height, width);
        `settings` carries the predictor's threshold and decision rules."""
        raise NotImplementedError

    def decision(self) -> tuple[str, float]:
        """The frame-level decision this output makes, and its score."""
        raise NotImplementedError

    def fields(self) -> dict:
        """Flat table fields (a predictions.csv row)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """JSON fields (no pixel arrays); the table's by default."""
        return self.fields()

    def draw(self, rgb: np.ndarray, truth_mask=None, truth_boxes=None) -> np.ndarray:
        return rgb

    def evidence(self) -> np.ndarray:
        """What a video averages over frames to smooth the decision."""
        return np.array([self.decision()[1]])

    def smoothed(self, mean: np.ndarray) -> tuple[str, float]:
        """The decision from `evidence` averaged over frames."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ClassProbabilities(Output):
    """(K,) class probabilities; `multilabel`: independent per label, each present from `threshold` on; `cut`
    (positive class, threshold): a two-class decision at a validated operating point (`Predictor`'s
    `operating_point`), else the most probable class."""

    labels: list[str]
    p: np.ndarray
    multilabel: bool = False
    threshold: float = 0.5
    cut: tuple[str, float] | None = None
    key = "probabilities"

    @classmethod
    def from_infer(cls, outputs, i, size, s, settings) -> ClassProbabilities:
        p = np.asarray(outputs["probabilities"][i], np.float64)
        multilabel, threshold = settings.get("multilabel", False), settings.get("threshold", 0.5)
        return cls(settings["labels"], p, multilabel, threshold, settings.get("cut"))

    def decision(self) -> tuple[str, float]:
        return self._decide(self.p)

    def _decide(self, p: np.ndarray) -> tuple[str, float]:
        """The label and its probability (multi-label: the labels present, and the top probability)."""
        if self.multilabel:
            present = [lab for lab, q in zip(self.labels, p, strict=True) if q >= self.threshold]
            return LABEL_JOIN.join(present) or NO_FINDING, float(np.max(p))
        if self.cut is not None:
            positive, threshold = self.cut
            c = self.labels.index(positive)
            c = c if p[c] >= threshold else 1 - c
            return self.labels[c], float(p[c])
        return self.labels[int(np.argmax(p))], float(np.max(p))

    def fields(self) -> dict:
        at = {"decided_at": f"p_{self.cut[0]} >= {self.cut[1]:.6g}"} if self.cut else {}
        return {f"p_{lab}": float(p) for lab, p in zip(self.labels, self.p, strict=True)} | at

    def summary(self) -> dict:
        at = {"decided_at": {"positive": self.cut[0], "threshold": self.cut[1]}} if self.cut else {}
        return {"probabilities": {lab: float(p) for lab, p in zip(self.labels, self.p, strict=True)}, **at}

    def evidence(self) -> np.ndarray:
        return self.p

    def smoothed(self, mean: np.ndarray) -> tuple[str, float]:
        return self._decide(mean)


def no_finding_decisions(outputs: tuple[str, ...], label_kind: str, labels: list[str]) -> list[str]:
    """The decisions (a frame's label, its frame_decision) that say "no finding" for a task of these `outputs` and
    `label_kind` with these `labels`: the reference class (`reference_label`; none when no label reads as one), "none"
    of a multi-label model, "no lesion" of a mask, "background" of boxes. Every other decision is a finding."""
    said = []
    if "probabilities" in outputs:
        said.append(NO_FINDING if label_kind == "multi" else reference_label(labels))
    if "mask" in outputs:
        said.append(NO_LESION)
    if "boxes" in outputs:
        said.append(BACKGROUND)
    return [s for s in said if s]


def frame_rule(kind: str, min_frame_score: float, threshold: float, labels: list[str]) -> str:
    """A mask's frame-level decision in words, with its thresholds: `kind` "p_lesion" or "lesion_area" (see
    `LesionMask`), the frame score's threshold, the lesion-probability threshold of pixels, the model's labels."""
    what = (
        f"{p_lesion_words(labels)} (temperature-scaled)"
        if kind == "p_lesion"
        else f"the fraction of the image at lesion probability >= {threshold:g}"
    )
    return (
        f"'lesion' (and its mask shown) when {what} reaches {min_frame_score:.4g} and some pixel's lesion probability "
        f"reaches {threshold:g}; else 'no lesion' and no mask"
    )


@dataclass(frozen=True, eq=False)
class LesionMask(Output):
    """(H, W) float32 lesion probability in [0, 1] at the image's own size, with the frame-level decision.

    Attributes:
        frame_score_kind: "lesion_area" (fraction of the image at or above the threshold) or "p_lesion" (1 - the
            class head's probability of the lesion-free class; needs `class_probabilities`).
        min_frame_score: the frame shows a lesion (and its mask) only from this score on (0: always).
        lesion_class: (H, W) uint8 most probable lesion class per pixel (1 + its index in `labels`) of a label-map
            model (segment-multiclass); `labels` are then its lesion classes and `class_values` their mask values.
    """

    prob: np.ndarray
    threshold: float = 0.5
    frame_score_kind: str = "lesion_area"
    min_frame_score: float = 0.0
    labels: list[str] | None = None
    class_probabilities: np.ndarray | None = None
    lesion_class: np.ndarray | None = None
    class_values: tuple[int, ...] | None = None
    key = "mask"
    score_means = "top lesion probability"
    evidence_means = "lesion area"

    @classmethod
    def from_infer(cls, outputs, i, size, s, settings) -> LesionMask:
        h, w = size
        prob = cv2.resize(np.asarray(outputs["mask"][i], np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        lesion_class = None
        if outputs.get("lesion_classes") is not None:  # label maps: each pixel's most probable lesion class
            per_class = [cv2.resize(np.asarray(c, np.float32), (w, h)) for c in outputs["lesion_classes"][i]]
            lesion_class = (np.argmax(per_class, axis=0) + 1).astype(np.uint8)
        probs = outputs.get("probabilities")
        return cls(
            prob,
            settings.get("threshold", 0.5),
            settings.get("frame_score_kind", "lesion_area"),
            settings.get("min_frame_score", 0.0),
            settings["labels"],
            None if probs is None else np.asarray(probs[i], np.float64),
            lesion_class,
            settings.get("class_values"),
        )

    @cached_property
    def above(self) -> np.ndarray:
        """bool (H, W): pixels whose lesion probability reaches the threshold (the one full-frame comparison)."""
        return self.prob >= self.threshold

    @cached_property
    def frame_score(self) -> float:
        """The frame-level decision's score (see `medcad.metrics.segmentation.frame_scores`)."""
        if self.frame_score_kind == "p_lesion":
            normal = self.labels.index(reference_label(self.labels))
            return float(frame_scores("p_lesion", None, self.class_probabilities[None], normal)[0])
        return float(frame_scores("lesion_area", self.above[None], None, None, threshold=True)[0])  # bool pixels

    @cached_property
    def frame_has_lesion(self) -> bool:
        """The frame shows a lesion: its frame score reaches `min_frame_score` and some pixel the threshold."""
        return bool(self.frame_score >= self.min_frame_score and self.above.any())

    @cached_property
    def lesion(self) -> np.ndarray:
        """bool (H, W) lesion pixels shown (none when the frame-level decision says no lesion). Shared by every
        reader: copy it before changing it."""
        return self.above if self.frame_has_lesion else np.zeros(self.prob.shape, bool)

    @cached_property
    def lesion_fraction(self) -> float:
        return float(self.lesion.mean())

    @cached_property
    def class_map(self) -> np.ndarray | None:
        """uint8 (H, W) class per pixel of a label-map model: 0 where no lesion is shown, else 1 + the class index;
        None for one-lesion models."""
        if self.lesion_class is None:
            return None
        return np.where(self.lesion, self.lesion_class, 0).astype(np.uint8)

    @cached_property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image shown as each lesion class (label-map models; else empty)."""
        if self.class_map is None:
            return {}
        counts = np.bincount(self.class_map.ravel(), minlength=len(self.labels) + 1)[1:] / self.class_map.size
        return {lab: float(f) for lab, f in zip(self.labels, counts, strict=True)}

    @property
    def mask_values(self) -> tuple[int, ...]:
        """The mask value of each lesion class (K,) of a label-map model, in `labels` order: the run's
        (`class_values`, as its training masks hold them), else 1..K."""
        return tuple(self.class_values or range(1, len(self.labels) + 1))

    def mask_image(self) -> np.ndarray:
        """The mask to save at the image's size (H, W): uint8 0 / 255 for lesion; for label-map models the class map
        in the run's mask values (0 where no lesion is shown), as its training masks were written: uint8 where every
        value fits (e.g. 1 cyst, 2 stone), else uint16, a 16-bit PNG (e.g. 1000 benign, 2000 malignant).

        Raises:
            MedcadError: a class value that no PNG holds (below 0 or above 65535: a signed or 32-bit TIFF label map).
        """
        if self.class_map is None:
            return self.lesion.astype(np.uint8) * 255
        values = check_png_values(self.mask_values)
        return np.array((0, *values), np.uint8 if max(values) <= 255 else np.uint16)[self.class_map]

    def decision(self) -> tuple[str, float]:
        shown = sorted((f, lab) for lab, f in self.class_fractions.items() if f > 0)
        label = LABEL_JOIN.join(lab for _, lab in reversed(shown)) if shown else None
        score = float(self.prob.max()) if self.prob.size else 0.0
        return label or (LESION if self.frame_has_lesion else NO_LESION), score

    @property
    def frame_score_name(self) -> str:
        """What the frame score is, in words: "P(not 'normal')" or "lesion area"."""
        if self.frame_score_kind == "p_lesion":
            return f"P(not {reference_label(self.labels)!r})"
        return "lesion area"

    def frame_reason(self) -> str:
        """Why this frame's decision is what it is, with the numbers compared."""
        score = f"{self.frame_score_name} {self.frame_score:.3f}"
        if self.frame_score < self.min_frame_score:
            return f"no lesion: {score} is below the frame threshold {self.min_frame_score:.4g}"
        if not self.above.any():
            top = float(self.prob.max()) if self.prob.size else 0.0
            return (
                f"no lesion: no pixel's lesion probability reaches {self.threshold:g} (highest {top:.2f}); "
                f"{score} reaches the frame threshold {self.min_frame_score:.4g}"
            )
        return (
            f"lesion: {score} reaches the frame threshold {self.min_frame_score:.4g} and "
            f"{int(self.above.sum())} pixels ({self.above.mean():.2%} of the image) reach lesion probability "
            f"{self.threshold:g}"
        )

    def summary(self) -> dict:
        """`fields`, with the frame decision's threshold (`frame_threshold`, on `frame_score_kind`) and
        `frame_reason`: why the decision is what it is, in words."""
        return self.fields() | {
            "frame_score_kind": self.frame_score_kind,
            "frame_threshold": round(self.min_frame_score, 4),
            "frame_reason": self.frame_reason(),
        }

    def fields(self) -> dict:
        """`frame_decision` ("lesion" / "no lesion"; under a multitask model's class label it can differ from it),
        `frame_score` (what the decision thresholds), `lesion_fraction`, and `fraction_<class>` of label maps."""
        return {
            "frame_decision": LESION if self.frame_has_lesion else NO_LESION,
            "frame_score": round(self.frame_score, 4),
            "lesion_fraction": self.lesion_fraction,
        } | {f"fraction_{lab}": f for lab, f in self.class_fractions.items()}

    def draw(self, rgb, truth_mask=None, truth_boxes=None) -> np.ndarray:
        if self.class_map is not None:
            return class_overlay(rgb, self.class_map, truth_mask, self.labels)
        return mask_overlay(rgb, self.lesion, truth_mask)

    def evidence(self) -> np.ndarray:
        return np.array([self.lesion_fraction])

    def smoothed(self, mean: np.ndarray) -> tuple[str, float]:
        return (LESION if mean[0] > 0 else NO_LESION), float(mean[0])


@dataclass(frozen=True, eq=False)
class Boxes(Output):
    """(m, 6) [x0, y0, x1, y1, score, class_index] in the image's pixels, best first; kept from `threshold` on.
    Listed (CSV, JSON) as [x0, y0, x1, y1, score, class name] by `medcad.data.boxes.listed_boxes`."""

    labels: list[str]
    boxes: np.ndarray
    threshold: float = 0.5
    key = "boxes"
    score_means = evidence_means = "top box score"

    @classmethod
    def from_infer(cls, outputs, i, size, s, settings) -> Boxes:
        h, w = size
        boxes = np.array(outputs["boxes"][i], np.float64).reshape(-1, 6)
        boxes[:, [0, 2]] *= w / s
        boxes[:, [1, 3]] *= h / s
        return cls(settings["labels"], boxes, settings.get("threshold", 0.5))

    @property
    def kept(self) -> np.ndarray:
        return self.boxes[self.boxes[:, 4] >= self.threshold]

    def decision(self) -> tuple[str, float]:
        kept = self.kept
        score = float(self.boxes[0, 4]) if len(self.boxes) else 0.0
        return (self.labels[int(kept[0, 5])] if len(kept) else BACKGROUND), score

    def _listed(self) -> list:
        return listed_boxes(self.kept, self.labels)

    def fields(self) -> dict:
        return {"n_boxes": len(self.kept), "boxes": json.dumps(self._listed())}

    def summary(self) -> dict:
        return {"boxes": self._listed()}

    def draw(self, rgb, truth_mask=None, truth_boxes=None) -> np.ndarray:
        return draw_boxes(rgb, self.boxes, self.labels, self.threshold, truth_boxes)

    def smoothed(self, mean: np.ndarray) -> tuple[str, float]:
        top = self.labels[int(self.boxes[0, 5])] if len(self.boxes) else BACKGROUND
        return (top if mean[0] >= self.threshold else BACKGROUND), float(mean[0])


# The outputs a Prediction can hold, in the order their decision counts: a class head decides before boxes and masks
# (a multitask image's label is its class; its mask keeps its own frame decision in the row).
OUTPUT_TYPES: tuple[type[Output], ...] = (ClassProbabilities, Boxes, LesionMask)
