"""A detector's ranking of its boxes as the score threshold falls: the free-response ROC (FROC: lesion-level
sensitivity against false positives per image), its sensitivities at fixed false-positive rates, their mean (the
CPM), and the pooled precision-recall curve (the threshold of the highest F1 is
`medcad.metrics.detection_operating`'s).

Boxes match as for AP (`medcad.metrics.box_matching.greedy_match`: class-aware, by decreasing score, each true box
once) at IoU 0.5, over the lesion classes pooled (whole-frame classes such as normal left out). Because greedy
matching never crosses images and a prediction's match depends only on higher-scored ones, each prediction's TP / FP
flag is fixed at every threshold, and a bootstrap resample only reweights images.

The sensitivity at a rate r is the highest the detector reaches at no more than r false positives per image (a step
reading, no interpolation between operating points; 0 where even its best box is a false positive too often).
Sources: Bunch et al., "A free-response approach to the measurement and characterization of radiographic-observer
performance", J Appl Photogr Eng 1978 (FROC); Setio et al., "Validation, comparison, and combination of algorithms
for automatic detection of pulmonary nodules in CT images: the LUNA16 challenge", Med Image Anal 2017 (the CPM: mean
sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcad.metrics.box_matching import box_iou, greedy_match, safe_div

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per image (LUNA16's CPM points)
_MAX_CELLS = 4_000_000  # largest (resamples x predictions) block held at once


class FROCTable:
    """One detector's ranking over N images reduced to what its FROC depends on: per prediction (lesion classes,
    by decreasing score) its image and TP flag, the ends of tied-score runs, and the true lesion boxes per image.

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index], the full ranking.
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        lesions: (K,) bool, the classes that are lesions (others, e.g. whole-frame normal boxes, are left out).
        iou: the IoU a prediction needs to find a true box.
    """

    def __init__(
        self, preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], lesions: np.ndarray, iou: float = 0.5
    ) -> None:
        lesion_classes = np.flatnonzero(np.asarray(lesions, dtype=bool))
        flags, images, scores = [], [], []
        self.truths_per_image = np.zeros(len(preds))
        for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
            p, t = p[np.isin(p[:, 5], lesion_classes)], t[np.isin(t[:, 4], lesion_classes)]
            flags.append(greedy_match(p, t, box_iou(p, t), iou)[0])
            images.append(np.full(len(p), i))
            scores.append(p[:, 4])
            self.truths_per_image[i] = len(t)
        score = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-score, kind="stable")
        self.score = score[order]
        self.tp = np.concatenate(flags)[order] if flags else np.zeros(0, bool)
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
        fp = w[:, self.image] * ~self.tp
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

    def point_curve(self, max_points: int = 400) -> dict[str, list[float]]:
        """The curve on all images, for a figure: fp_per_image, sensitivity, precision and score at up to
        `max_points` of its thresholds (evenly spaced along it, the last kept)."""
        if not len(self.ends):  # no lesion box predicted
            return {"fp_per_image": [], "sensitivity": [], "precision": [], "score": []}
        fpi, sens, prec = self.curve(np.ones((1, self.n_images)))
        keep = np.unique(np.r_[np.linspace(0, len(self.ends) - 1, max_points).round().astype(int), len(self.ends) - 1])
        rounded = lambda a: [round(float(v), 5) for v in a]  # noqa: E731
        return {
            "fp_per_image": rounded(fpi[0, keep]),
            "sensitivity": rounded(sens[0, keep]),
            "precision": rounded(prec[0, keep]),
            "score": rounded(self.score[self.ends][keep]),
        }
