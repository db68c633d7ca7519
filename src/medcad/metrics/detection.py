"""Detection metrics: COCO-style AP and mAP, precision/recall/F1 at IoU thresholds, the frame-level decision.

Per image, predictions are float arrays (m, 6) `[x0, y0, x1, y1, score, class_index]` and truths (t, 5)
`[x0, y0, x1, y1, class_index]`, in the same pixel coordinates; class indices point into `labels` (no
background). A prediction matches the unmatched truth of its class with the highest IoU >= threshold, in
order of decreasing score; each truth is matched once (COCO's rule, no crowd or ignore regions).

Bootstrap CIs resample images (or whole groups, e.g. patients). Because greedy matching never crosses images,
each prediction's TP/FP flag is fixed, and a resample only reweights images: AP under 1000 resamples is then
a sparse matrix product and cumulative sums, ~1 s for 200 images.

The frame decision (the colonoscopy design: normal / unclear / tumour, or background) is the class of the
image's top detection at or above the score threshold, or background; the frame's true class is the class of its
largest true box, or background. At each IoU threshold the frame table counts a frame as correct when the
decision is its class AND, unless both are background, the top detection's box overlaps a true box of that class
at IoU >= the threshold; a right class in the wrong place is a miss of the class and a false alarm of it
("mislocated"). Frame classes (normal, unclear: `medcad.data.boxes`) have a whole-frame true box and go by the same
rule: their detection must cover at least that share of the frame, which the detector's whole-frame default boxes
make the usual case; one rule for every class, with no list of frame classes to pass around.

Undefined values (0/0, e.g. the precision of a class never predicted) are nan, left out of averages; except in
the frame table's macro and weighted averages, where they count 0 for a class that has frames (`_averages`). A
bootstrap resample averages the same classes as the point estimate: where one of them is undefined in it (a rare
class's truths or frames not drawn), the resample gives no macro figure (`medcad.metrics.stats.macro_mean`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from medcad.metrics.box_matching import (
    box_area,
    box_counts,
    box_iou,
    checked_arrays,
    greedy_match,
    nanmean,
    precision_recall_f1,
    safe_div,
)
from medcad.metrics.froc import FROCTable
from medcad.metrics.stats import bootstrap_samples, macro_mean, mean_sd, percentile_ci, resamples_used

COCO_IOUS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
BACKGROUND = "background"
SCORE_THRESHOLD = 0.5  # detections at or above it count for precision / recall / F1 and the frame decision


class _APTable:
    """Per class, the ranking of its predictions over all images reduced to what AP depends on.

    Only the TP positions matter (precision is taken from the envelope at each recall level), so a class keeps,
    for its k-th TP: the image it came from and a sparse (images x TPs) count of the FPs ranked since TP k-1.
    FPs after the last TP never change AP and are dropped.
    """

    def __init__(self, preds: list[np.ndarray], truths: list[np.ndarray], n_classes: int, thr: float) -> None:
        n = len(preds)
        flags = [greedy_match(p, t, box_iou(p, t), thr)[0] for p, t in zip(preds, truths, strict=True)]
        img = np.concatenate([np.full(len(p), i) for i, p in enumerate(preds)]) if n else np.zeros(0, int)
        allp = np.concatenate(preds) if n else np.zeros((0, 6))
        tp_all = np.concatenate(flags) if n else np.zeros(0, bool)
        self.n_images = n
        self.gt = np.zeros((n, n_classes))  # truths per image and class
        for i, t in enumerate(truths):
            np.add.at(self.gt[i], t[:, 4].astype(int), 1)
        self.classes: list[tuple[np.ndarray, sparse.csr_matrix] | None] = []
        for c in range(n_classes):
            sel = np.flatnonzero(allp[:, 5] == c)
            order = sel[np.argsort(-allp[sel, 4], kind="stable")]
            tp, im = tp_all[order], img[order]
            pos = np.flatnonzero(tp)
            if not len(pos):
                self.classes.append(None)
                continue
            fp = np.flatnonzero(~tp[: pos[-1]])
            seg = np.searchsorted(pos, fp)  # the TP each FP precedes
            fp_counts = sparse.csr_matrix((np.ones(len(fp)), (im[fp], seg)), shape=(n, len(pos)))
            self.classes.append((im[pos], fp_counts))

    def ap(self, w: np.ndarray) -> np.ndarray:
        """AP per class (B, K) under image weights (B, N); nan for a class without truths."""
        b = w.shape[0]
        n_gt = w @ self.gt  # (B, K)
        out = np.where(n_gt > 0, 0.0, np.nan)
        for c, entry in enumerate(self.classes):
            if entry is None:
                continue
            tp_img, fp_counts = entry
            tp_cum = np.cumsum(w[:, tp_img], axis=1)  # (B, T)
            fp_cum = np.cumsum(np.asarray(fp_counts.T @ w.T).T, axis=1)  # (B, T)
            prec = np.nan_to_num(safe_div(tp_cum, tp_cum + fp_cum))
            env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
            rec = safe_div(tp_cum, n_gt[:, c : c + 1])
            env = np.concatenate([env, np.zeros((b, 1))], axis=1)  # recall never reached -> precision 0
            for r in np.flatnonzero(n_gt[:, c] > 0):
                out[r, c] = env[r, np.searchsorted(rec[r], RECALL_POINTS, side="left")].mean()
        return out


def average_precision(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], n_classes: int, iou: float = 0.5
) -> np.ndarray:
    """COCO-style AP per class: 101-point interpolated precision-recall, greedy matching by score.

    Returns:
        (n_classes,) AP; nan for a class without truths, 0 for one with truths but no correct detection.
    """
    p, t = checked_arrays(preds, truths, n_classes)
    return _APTable(p, t, n_classes, iou).ap(np.ones((1, len(p))))[0]


class APScores:
    """One detector's AP50 and mAP@[.5:.95] on N images, under any image weights: the point estimate (weights 1)
    and every bootstrap resample of `detection_metrics` and of the paired test
    (`medcad.metrics.compare.paired_detection_bootstrap`) come from here.

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index], the full ranking.
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        n_classes: number of classes (no background).

    Raises:
        ValueError: preds and truths of different lengths, or a class index out of range.
    """

    def __init__(
        self,
        preds: Sequence[np.ndarray],
        truths: Sequence[np.ndarray],
        n_classes: int,
        lesions: np.ndarray | None = None,
    ) -> None:
        p, t = checked_arrays(preds, truths, n_classes)
        self.n_images = len(p)
        self.tables = [_APTable(p, t, n_classes, thr) for thr in COCO_IOUS]
        self.boxed = self.tables[0].gt.sum(0) > 0  # the classes with truths, which every resample's macro averages
        # with frame classes (whole-frame boxes: normal, unclear) among them, the lesion classes' own means too
        self.lesions = None if lesions is None or (self.boxed & ~lesions).sum() == 0 else self.boxed & lesions

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Under image weights w (B, N): ap50 and map (B,), the macro means over the classes with truths in the
        full data (nan in a resample where one of them has none); ap50_per_class and map_per_class (B, K); with
        `lesions` (K,) given and a frame class among those with truths, ap50_lesions and map_lesions over the lesion
        classes alone."""
        ap = np.stack([tab.ap(w) for tab in self.tables])  # (10, B, K)
        map_per_class = nanmean(ap, axis=0)  # (B, K) over the IoU thresholds
        lesions = {} if self.lesions is None else {
            "ap50_lesions": macro_mean(ap[0], self.lesions), "map_lesions": macro_mean(map_per_class, self.lesions)
        }  # fmt: skip
        return {
            "ap50": macro_mean(ap[0], self.boxed),
            "map": macro_mean(map_per_class, self.boxed),
            "ap50_per_class": ap[0],
            "map_per_class": map_per_class,
            **lesions,
        }


def _frame_classes(
    p: list[np.ndarray], t: list[np.ndarray], k: int, score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the truth class (of the largest box), the predicted class (top detection), k = background; and
    the top detection's best IoU with a true box of its class (0 when there is none or no decision)."""
    y, pred, iou = np.full(len(p), k), np.full(len(p), k), np.zeros(len(p))
    for i, (pi, ti) in enumerate(zip(p, t, strict=True)):
        if len(ti):
            y[i] = int(ti[np.argmax(box_area(ti)), 4])
        if len(pi) and pi[:, 4].max() >= score:
            top = pi[np.argmax(pi[:, 4])]
            pred[i] = int(top[5])
            same = ti[ti[:, 4] == top[5]]
            iou[i] = box_iou(top[None], same).max() if len(same) else 0.0
    return y, pred, iou


def _frame_correct(y: np.ndarray, pred: np.ndarray, top_iou: np.ndarray, k: int, thr: float) -> np.ndarray:
    """(N,) whether each frame's decision is right at IoU `thr`: its class, and unless both are background, where a
    true box of that class is (`_frame_classes`' outputs; k is background)."""
    return (y == pred) & ((pred == k) | (top_iou >= thr))


class DecisionScores:
    """One detector's decisions at a score threshold, under any image weights: micro box F1 at IoU `iou` and the
    frame decision's accuracy at IoU `iou` (module docstring), as `detection_metrics` reports them; for the paired
    test (`medcad.metrics.compare.paired_detection_bootstrap`).

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index].
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        n_classes: number of classes (no background).
        iou: the IoU a detection needs to match a truth.
        score: detections at or above it count.
    """

    def __init__(
        self,
        preds: Sequence[np.ndarray],
        truths: Sequence[np.ndarray],
        n_classes: int,
        iou: float = 0.5,
        score: float = SCORE_THRESHOLD,
    ) -> None:
        p, t = checked_arrays(preds, truths, n_classes)
        self.counts = box_counts(p, t, n_classes, iou, score)  # (3, N, K)
        self.correct = _frame_correct(*_frame_classes(p, t, n_classes, score), n_classes, iou).astype(float)
        self.n_classes = n_classes

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Under image weights w (B, N): f1 and frame_accuracy (B,); nan without classes (every frame would be
        background, decided right by any detector)."""
        tp, fp, fn = (w @ self.counts[j] for j in range(3))  # (B, K) each
        frames = safe_div(w @ self.correct, w.sum(1)) if self.n_classes else np.full(len(w), np.nan)
        return {"f1": precision_recall_f1(tp.sum(1), fp.sum(1), fn.sum(1))["f1"], "frame_accuracy": frames}


def _onehot(v: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n)[v] if len(v) else np.zeros((0, n))


def _frame_rates(w: np.ndarray, y: np.ndarray, pred: np.ndarray, correct: np.ndarray, kb: int) -> dict:
    """Per resample and class (B, kb), background last: frame counts and one-vs-rest rates of the frame decision.

    A frame is a true positive of its class when `correct`; every other frame decided as a class is a false
    positive of it, every other frame of a class a false negative; one-vs-rest accuracy counts a frame wrong
    for a class when it is of that class or decided as it, and not a true positive.
    """
    truth, decided = _onehot(y, kb), _onehot(pred, kb)
    true, dec = w @ truth, w @ decided  # (B, kb)
    tp, both = w @ (truth * correct[:, None]), w @ (truth * decided)
    n = w.sum(1, keepdims=True)
    out = precision_recall_f1(tp, dec - tp, true - tp)
    out["accuracy"] = 1 - safe_div(true + dec - both - tp, n)
    out |= {"support": true, "tp": tp, "fp": dec - tp, "fn": true - tp, "mislocated": both - tp}
    return out


def _averages(rates: dict, framed: np.ndarray) -> dict[str, np.ndarray]:
    """Macro (mean) and support-weighted averages (B,) of each rate over the classes that have frames (background
    left out; `framed` (k,) marks those of the full data, which every resample's macro average takes). A rate
    undefined for such a class (the precision of a class never decided) counts 0, as scikit-learn's zero_division=0:
    leaving it out would credit a detector that never names a class."""
    out = {}
    support = rates["support"][:, : len(framed)]
    has = support > 0
    for m in ("accuracy", "precision", "recall", "f1"):
        v = np.where(has, np.nan_to_num(rates[m][:, : len(framed)], nan=0.0), np.nan)
        out[f"macro_{m}"] = macro_mean(v, framed)
        out[f"weighted_{m}"] = safe_div(np.where(has, v * support, 0).sum(1), support.sum(1))
    return out


def detection_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_thresholds: Sequence[float] = (0.45, 0.5, 0.55),
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    frame_classes: Sequence[str] = (),
    ranking: bool = True,
) -> dict[str, Any]:
    """Everything a detection study reports, headline numbers with bootstrap 95 % CIs over images (or groups).

    Args:
        preds: per image (m, 6) [x0, y0, x1, y1, score, class_index]: the full ranking (low scores included).
        truths: per image (t, 5) [x0, y0, x1, y1, class_index].
        labels: class names (no background).
        score_threshold: detections at or above it count for precision/recall/F1 and the frame decision.
        iou_thresholds: IoU thresholds for precision/recall/F1 (the colonoscopy study: 0.45, 0.5, 0.55).
        groups: optional group (patient) per image for a cluster bootstrap.
        n_boot: bootstrap resamples (0: CIs are nan).
        seed: bootstrap seed.
        frame_classes: classes boxed as whole frames (normal, unclear), not lesions: with one among the classes with
            truths, ap50_lesions and map_lesions average the other classes alone (beside ap50 and map over all, the
            design's; BUSI's normal frames had raised a lesion detector's headline AP50 from 0.283 to 0.403).
        ranking: False: the figures of the boxes at `score_threshold` alone (box counts, the frame decision), without
            those of the full ranking (AP, mAP, FROC), for boxes already cut at an operating point.

    Returns:
        JSON-ready dict: n_images, n_boxes, labels, score_threshold; with `ranking`: ap50 and map ({value, ci95};
        mean over the classes with truths; map over IoU 0.50:0.95), (ap50_lesions, map_lesions, lesion_classes: the
        same over the classes not in `frame_classes`, when one of those has truths), ap50_per_class, map_per_class,
        froc (where a lesion class has truths: {iou, classes, n_lesions, fp_per_image, sensitivity [{value, ci95}] at
        each rate, cpm, curve}, `medcad.metrics.froc`); iou_thresholds
        ({"0.45": {precision, recall, f1 (micro), ci95, macro, tp, fp, fn, per_class}}: box counts), frame_level
        (the frame decision: confusion matrix of classes with the background row and column, accuracy, macro_f1
        over `labels`, per_class, majority_accuracy: {value, class} of naming every frame its most frequent class;
        and its table at each IoU threshold, iou_thresholds {"0.45": {accuracy,
        macro, weighted (averages over the `labels` with frames), per_class (background row included:
        accuracy, precision, recall, f1, support, tp, fp, fn, mislocated, ci95)}}), bootstrap (n_boot, seed,
        by_group, and resamples_used: {"ap50", "map", "frame_level.macro_f1", ...: how many resamples defined the
        macro figure at that place of the result for every class the point estimate averages, the ones its
        interval is read from; the interval is nan when fewer than half did}).
    """
    labels = [str(v) for v in labels]
    k = len(labels)
    p, t = checked_arrays(preds, truths, k)
    n = len(p)
    lesions = ~np.isin(labels, list(frame_classes))
    ap_scores = APScores(p, t, k, lesions) if ranking else None
    froc = FROCTable(p, t, lesions) if ranking else None
    counts = {f"{thr:g}": box_counts(p, t, k, thr, score_threshold) for thr in iou_thresholds}
    y, pred, top_iou = _frame_classes(p, t, k, score_threshold)
    kb = k + 1
    cell = y * kb + pred
    frame_correct = {f"{thr:g}": _frame_correct(y, pred, top_iou, k, thr) for thr in iou_thresholds}  # (N,) each
    # the classes each frame macro figure averages (as on the full data, in every resample; AP's: `APScores`): with
    # frames or decisions (the frame F1's are defined), background last; with frames
    seen, framed = np.isin(np.arange(kb), np.r_[y, pred]), np.isin(np.arange(k), y)

    def batch(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {} if ap_scores is None else ap_scores(w) | (froc(w) if froc.has_lesions else {})
        for name, c in counts.items():
            tp, fp, fn = (w @ c[j] for j in range(3))  # (B, K) each
            for m, v in precision_recall_f1(tp.sum(1), fp.sum(1), fn.sum(1)).items():
                out[f"{name}/{m}"] = v
        b = w.shape[0]
        idx = (cell[None, :] + kb * kb * np.arange(b)[:, None]).ravel()
        cm = np.bincount(idx, w.ravel(), minlength=b * kb * kb).reshape(b, kb, kb)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        rates = precision_recall_f1(tp, cm.sum(1) - tp, cm.sum(2) - tp)
        out["frame/accuracy"] = safe_div(tp.sum(1), cm.sum((1, 2)))
        out["frame/macro_f1"] = macro_mean(rates["f1"][:, :k], seen[:k])  # the classes' (the design's average)
        out["frame/macro_f1_with_background"] = macro_mean(rates["f1"], seen)  # and saying "no lesion" right
        out |= {f"frame/{m}": v for m, v in rates.items()}
        out["frame/cm"] = cm
        for name, correct in frame_correct.items():
            r = _frame_rates(w, y, pred, correct, kb)
            out |= {f"frame@{name}/{m}": v for m, v in (r | _averages(r, framed)).items()}
            out[f"frame@{name}/overall_accuracy"] = safe_div(r["tp"].sum(1), w.sum(1))
        return out

    point, samples = bootstrap_samples(batch, n, groups=groups, n_boot=n_boot, seed=seed)
    stats = _Stats(point, samples)
    counts_only = ("support", "tp", "fp", "fn", "mislocated")
    frame = _frame_section(stats, labels, list(frame_correct), counts_only)
    macro = {  # where each macro figure stands in the result: its samples
        **({"ap50": "ap50", "map": "map"} if ranking else {}),
        **(
            {"ap50_lesions": "ap50_lesions", "map_lesions": "map_lesions"}
            if ranking and ap_scores.lesions is not None
            else {}
        ),
        **({"froc.cpm": "froc_cpm"} if ranking and froc.has_lesions else {}),
        "frame_level.macro_f1": "frame/macro_f1",
        "frame_level.macro_f1_with_background": "frame/macro_f1_with_background",
        **{f"frame_level.iou_thresholds.{name}.macro.f1": f"frame@{name}/macro_f1" for name in frame_correct},
    }
    out: dict[str, Any] = {
        "n_images": n,
        "n_boxes": int(sum(len(a) for a in t)),
        "labels": labels,
        "score_threshold": float(score_threshold),
    }
    if ranking:
        out |= {"ap50": stats.stat("ap50"), "map": stats.stat("map")}
        if ap_scores.lesions is not None:
            out["lesion_classes"] = [lab for lab, on in zip(labels, ap_scores.lesions, strict=True) if on]
            out |= {"ap50_lesions": stats.stat("ap50_lesions"), "map_lesions": stats.stat("map_lesions")}
        out["ap50_per_class"] = {lab: float(point["ap50_per_class"][0, j]) for j, lab in enumerate(labels)}
        out["map_per_class"] = {lab: float(point["map_per_class"][0, j]) for j, lab in enumerate(labels)}
    out["iou_thresholds"] = {name: _box_section(c, stats, name, labels) for name, c in counts.items()}
    if ranking and froc.has_lesions:
        out["froc"] = froc.section(stats.point, stats.samples, labels, frame_classes, groups)
    out["frame_level"] = frame
    out["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "by_group": groups is not None,
        "resamples_used": resamples_used(samples, macro),
    }
    return out


class _Stats:
    """The point values and bootstrap samples of `detection_metrics`' batch function, read by key."""

    def __init__(self, point: dict[str, np.ndarray], samples: dict[str, np.ndarray]) -> None:
        self.point, self.samples = point, samples

    def stat(self, key: str) -> dict[str, Any]:
        return {"value": float(self.point[key][0]), "ci95": self.ci(key)}

    def ci(self, key: str, c: int | None = None) -> list[float]:
        values = self.samples[key] if c is None else self.samples[key][:, c]
        return list(percentile_ci(values, units=getattr(self.samples, "units", None)))


def _box_section(c: np.ndarray, stats: _Stats, name: str, labels: list[str]) -> dict[str, Any]:
    """Box counts at one IoU threshold: micro precision / recall / F1 with CIs, macro, counts, per class."""
    tp, fp, fn = c.sum(1)  # (K,) each
    rates = precision_recall_f1(tp, fp, fn)
    prf = ("precision", "recall", "f1")
    return {
        **{m: float(stats.point[f"{name}/{m}"][0]) for m in prf},
        "ci95": {m: stats.ci(f"{name}/{m}") for m in prf},
        "macro": {m: float(nanmean(v)) for m, v in rates.items()},
        "tp": int(tp.sum()),
        "fp": int(fp.sum()),
        "fn": int(fn.sum()),
        "per_class": {
            lab: {**{m: float(v[j]) for m, v in rates.items()}, "tp": int(tp[j]), "fp": int(fp[j]), "fn": int(fn[j])}
            for j, lab in enumerate(labels)
        },
    }


def _frame_section(stats: _Stats, labels: list[str], iou_names: list[str], counts_only: tuple) -> dict[str, Any]:
    """The frame decision: confusion matrix with the background row and column, accuracy, macro F1 over the classes
    (background left out, as the design averages) and with background (a model that calls every frame a lesion
    scores 0 on it), per class, and the design's table at each IoU threshold."""
    point = stats.point
    cm = point["frame/cm"][0]
    frame_labels = [*labels, BACKGROUND]
    rates = ("accuracy", "precision", "recall", "f1")
    prf = ("precision", "recall", "f1")

    def frame_table(name: str) -> dict[str, Any]:
        key = f"frame@{name}/"
        averages = {
            avg: {**{m: float(point[f"{key}{avg}_{m}"][0]) for m in rates}, "ci95": {"f1": stats.ci(f"{key}{avg}_f1")}}
            for avg in ("macro", "weighted")
        }
        per_class = {
            lab: {
                **{m: float(point[key + m][0, j]) for m in rates},
                **{c: int(round(point[key + c][0, j])) for c in counts_only},
                "ci95": {m: stats.ci(key + m, j) for m in prf},
            }
            for j, lab in enumerate(frame_labels)
        }
        return {"accuracy": stats.stat(key + "overall_accuracy"), **averages, "per_class": per_class}

    return {
        "labels": frame_labels,
        "confusion_matrix": {"labels": frame_labels, "matrix": cm.astype(int).tolist()},
        "accuracy": stats.stat("frame/accuracy"),
        # the accuracy of naming every frame its most frequent class, beside which the accuracy is read (a
        # detector of AP50 0.001 had shown 0.870: every frame called 'polyp', 40 of 46)
        "majority_accuracy": {
            "value": float(cm.sum(1).max() / cm.sum()) if cm.sum() else float("nan"),
            "class": frame_labels[int(cm.sum(1).argmax())],
        },
        "macro_f1": stats.stat("frame/macro_f1"),
        "macro_f1_with_background": stats.stat("frame/macro_f1_with_background"),
        "per_class": {
            lab: {
                **{m: float(point[f"frame/{m}"][0, j]) for m in prf},
                "support": int(cm[j].sum()),
                "ci95": {m: stats.ci(f"frame/{m}", j) for m in prf},
            }
            for j, lab in enumerate(frame_labels)
        },
        "iou_thresholds": {name: frame_table(name) for name in iou_names},
    }


def seeds_summary(runs: Sequence[dict]) -> dict[str, Any]:
    """Mean and SD over repeated runs (other seeds) of AP50, mAP, F1 at each IoU threshold, frame accuracy.

    Args:
        runs: `detection_metrics` results, one per seed.

    Returns:
        {n_runs, ap50, map, frame_accuracy: {mean, sd, n}, f1: {"0.45": {mean, sd, n}, ...}}.
    """
    ious = sorted({name for r in runs for name in r.get("iou_thresholds", {})}, key=float)
    return {
        "n_runs": len(runs),
        "ap50": mean_sd([r["ap50"]["value"] for r in runs]),
        "map": mean_sd([r["map"]["value"] for r in runs]),
        "frame_accuracy": mean_sd([r["frame_level"]["accuracy"]["value"] for r in runs]),
        "f1": {name: mean_sd([r["iou_thresholds"].get(name, {}).get("f1") for r in runs]) for name in ious},
    }
