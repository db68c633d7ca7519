"""A detector's ranking of its boxes as the score threshold falls: the free-response ROC (FROC: lesion-level
sensitivity against false positives per image), its sensitivities at fixed false-positive rates, their mean (the
CPM), and the pooled precision-recall curve (the threshold of the highest F1 is
`medcad.metrics.detection_operating`'s).

Boxes find lesions as LUNA16's evaluation counts them: by decreasing score, each true lesion box once
(`medcad.metrics.box_matching.greedy_match`) at IoU 0.5, whatever lesion class a box names (the lesion classes
pooled; whole-frame classes such as normal left out); a further box on a lesion already found is a double detection,
neither a TP nor an FP. Because matching never crosses images and a prediction's match depends only on higher-scored
ones, each prediction's flag is fixed at every threshold, and a bootstrap resample only reweights images.

The sensitivity at a rate r is the highest the detector reaches at no more than r false positives per image: a step
reading, where LUNA16's script interpolates linearly between operating points (so this reading is never above it;
0 where even its best box is a false positive too often). A box is found at IoU 0.5, where LUNA16 asks a candidate
point to lie within the nodule's radius: the figures are read as LUNA16's are, not comparable to its.
Sources: Bunch et al., "A free-response approach to the measurement and characterization of radiographic-observer
performance", J Appl Photogr Eng 1978 (FROC); Setio et al., "Validation, comparison, and combination of algorithms
for automatic detection of pulmonary nodules in CT images: the LUNA16 challenge", Med Image Anal 2017 (the CPM: mean
sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcad.metrics.box_matching import box_iou, greedy_match, safe_div
from medcad.metrics.stats import ci_entry, part_units

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per image (LUNA16's CPM points)
_MAX_CELLS = 4_000_000  # largest (resamples x predictions) block held at once


class FROCTable:
    """One detector's ranking over N images reduced to what its FROC depends on: per prediction (lesion classes,
    by decreasing score) its image and whether it is a TP or an FP, the ends of tied-score runs, and the true lesion
    boxes per image.

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index], the full ranking.
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        lesions: (K,) bool, the classes that are lesions (others, e.g. whole-frame normal boxes, are left out).
        iou: the IoU a prediction needs to find a true box.
        lesion_level: the FROC's reading (LUNA16's evaluation): a box finds a lesion whatever lesion class it names,
            and a further box on a lesion already found is a double detection, neither TP nor FP. False: the boxes'
            own reading, as AP and box F1 count them (the class must agree; a second box on a lesion is an FP).
    """

    def __init__(
        self,
        preds: Sequence[np.ndarray],
        truths: Sequence[np.ndarray],
        lesions: np.ndarray,
        iou: float = 0.5,
        lesion_level: bool = True,
    ) -> None:
        lesion_classes = np.flatnonzero(np.asarray(lesions, dtype=bool))
        hits, misses, images, scores = [], [], [], []
        self.iou = iou
        self.truths_per_image = np.zeros(len(preds))
        for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
            p, t = p[np.isin(p[:, 5], lesion_classes)], t[np.isin(t[:, 4], lesion_classes)]
            overlap = box_iou(p, t)
            if lesion_level:  # one class: where the lesions are
                tp = greedy_match(np.c_[p[:, :5], np.zeros(len(p))], np.c_[t[:, :4], np.zeros(len(t))], overlap, iou)[0]
                double = ~tp & (overlap.max(axis=1, initial=0.0) >= iou)  # on a lesion a better box found
            else:
                tp, double = greedy_match(p, t, overlap, iou)[0], np.zeros(len(p), bool)
            hits.append(tp)
            misses.append(~tp & ~double)
            images.append(np.full(len(p), i))
            scores.append(p[:, 4])
            self.truths_per_image[i] = len(t)
        score = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-score, kind="stable")
        self.score = score[order]
        self.tp = np.concatenate(hits)[order] if hits else np.zeros(0, bool)
        self.fp = np.concatenate(misses)[order] if misses else np.zeros(0, bool)
        self.image = np.concatenate(images)[order].astype(int) if images else np.zeros(0, int)
        # a threshold keeps a whole run of tied scores: the curve's points are at each run's last prediction
        self.ends = (
            np.flatnonzero(np.r_[self.score[1:] != self.score[:-1], True]) if len(self.score) else np.zeros(0, int)
        )
        self.n_images = len(preds)

    @property
    def has_lesions(self) -> bool:
        return bool(self.truths_per_image.sum() > 0)

    def curve(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Under image weights w (B, N): (false positives per image, sensitivity, precision), each (B, P) at the P
        distinct score thresholds, highest first (the curve from its origin outwards)."""
        tp = w[:, self.image] * self.tp
        fp = w[:, self.image] * self.fp
        cum_tp, cum_fp = np.cumsum(tp, axis=1)[:, self.ends], np.cumsum(fp, axis=1)[:, self.ends]
        fpi = safe_div(cum_fp, w.sum(axis=1, keepdims=True))
        sens = safe_div(cum_tp, (w @ self.truths_per_image)[:, None])
        return fpi, sens, safe_div(cum_tp, cum_tp + cum_fp)

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Under image weights w (B, N): "froc_sensitivity" (B, R) at each of `FP_RATES` and "froc_cpm" (B,), their
        mean; nan in a resample that draws no true lesion box."""
        step = max(1, _MAX_CELLS // max(1, len(self.score)))
        sens_at = np.zeros((len(w), len(FP_RATES)))
        for s in range(0, len(w), step):
            fpi, sens, _ = self.curve(w[s : s + step])
            for j, rate in enumerate(FP_RATES):
                reached = (fpi <= rate).sum(axis=1)  # fpi never falls along the curve: its first points
                last = np.take_along_axis(sens, np.maximum(reached - 1, 0)[:, None], axis=1)[:, 0] if sens.size else 0
                sens_at[s : s + step, j] = np.where(reached > 0, last, 0.0)
        sens_at[(w @ self.truths_per_image) == 0] = np.nan
        return {"froc_sensitivity": sens_at, "froc_cpm": sens_at.mean(axis=1)}

    def section(self, point: dict, samples: dict, labels: list[str], frame_classes: Sequence[str], groups) -> dict:
        """The FROC as `medcad.metrics.detection.detection_metrics` reports it, from its bootstrap's `point` and
        `samples` of this table's keys: sensitivity at each false-positive rate with CIs (expanded for the groups
        holding lesions; exact where every resample gives 0 or 1, as `ci_entry` takes shares), the CPM, the curve."""
        units = part_units(groups, {"lesions": self.truths_per_image > 0})["lesions"]

        def entry(value: float, s: np.ndarray) -> dict:
            return {"value": float(value), **ci_entry(s, units=units, proportion=True)}

        sens = samples["froc_sensitivity"]
        return {
            "iou": self.iou,
            "classes": [lab for lab in labels if lab not in frame_classes],
            "n_lesions": int(self.truths_per_image.sum()),
            "fp_per_image": list(FP_RATES),
            "sensitivity": [entry(point["froc_sensitivity"][0, j], sens[:, j]) for j in range(len(FP_RATES))],
            "cpm": entry(point["froc_cpm"][0], samples["froc_cpm"]),
            "curve": self.point_curve(),
        }

    def point_curve(self, max_points: int = 2000) -> dict[str, list[float]]:
        """The curve on all images, for a figure: fp_per_image, sensitivity, precision and score at the thresholds
        where the sensitivity rises (the step's corners: between them it holds, so a step drawn through them is the
        curve the table reads), those just before (precision's troughs), and the last; at most `max_points` of them,
        evenly spaced, where there are more."""
        if not len(self.ends):  # no lesion box predicted
            return {"fp_per_image": [], "sensitivity": [], "precision": [], "score": []}
        fpi, sens, prec = self.curve(np.ones((1, self.n_images)))
        rises = np.flatnonzero(np.diff(np.r_[0.0, sens[0]]) > 0)
        # and the point before each rise: the precision-recall panel's trough before its next peak
        keep = np.unique(np.r_[rises, rises[rises > 0] - 1, len(self.ends) - 1])
        if len(keep) > max_points:
            keep = np.unique(np.r_[keep[np.linspace(0, len(keep) - 1, max_points).round().astype(int)], keep[-1]])
        rounded = lambda a: [round(float(v), 5) for v in a]  # noqa: E731
        return {
            "fp_per_image": rounded(fpi[0, keep]),
            "sensitivity": rounded(sens[0, keep]),
            "precision": rounded(prec[0, keep]),
            "score": rounded(self.score[self.ends][keep]),
        }
