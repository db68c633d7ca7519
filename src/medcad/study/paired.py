"""Paired tests between a study's runs on the same test images: AUCs, Dice and AP, Holm-adjusted as one family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medcad.data.splits import row_groups
from medcad.runfolder import RunFolder, read_predictions
from medcad.study.protocol import Experiment, compared_pairs, slug
from medcad.tasks import positive_label

DETECTION_TESTS = ("ap50", "map", "cpm", "f1", "frame_accuracy")  # a pair of detectors' tests (F1, frames: IoU 0.5)


def paired_tests(
    study_dir: Path,
    exps: list[Experiment],
    labels: list[str],
    groups_of: dict,
    domain_of: dict,
    positive: str | None = None,
) -> list[dict]:
    """Paired tests between the runs `compared_pairs` names, on the same test images (of its domain, when it names one),
    with the study's patient / duplicate groups as the unit: a paired cluster bootstrap of the AUCs where the runs
    predict classes (DeLong's image-level test beside it; both on each class's `class_score`, the score the runs' own
    AUCs are on), a paired cluster bootstrap of the mean per-image Dice where they predict masks (and of the mean NSD
    over the lesion images, where both runs score it), and a paired cluster
    bootstrap of AP50, mAP, F1 and frame accuracy where they detect boxes (`paired_detections`). p-values are
    Holm-adjusted over the study's family of tests by `adjust_family`. `domain_of`: each image key's domain (the study's
    dataset), for the pairs compared on one domain's test images. `positive`: the study's positive class of two
    labels (`runner._study_positive`; None: `positive_label`'s choice)."""
    from medcad.metrics.compare import paired_auc_bootstrap, paired_mean_test
    from medcad.metrics.roc import class_score, delong_test

    preds = {e.name: read_predictions(RunFolder(study_dir / "runs" / slug(e.name)).predictions) for e in exps}
    metrics = {e.name: _run_metrics(study_dir / "runs" / slug(e.name)) for e in exps}  # each read once
    out = []
    positive = (positive or positive_label(labels)) if len(labels) == 2 else None  # the study's, its runs' too
    detections: dict = {}  # each detector run's, read once
    for ea, eb, domain in compared_pairs(exps):
        a = preds[ea.name].set_index("image")
        if domain is not None:
            a = a[np.array([domain_of.get(k) == domain for k in a.index], dtype=bool)]
        b = preds[eb.name].set_index("image").loc[a.index]
        g = row_groups(groups_of, list(a.index))
        pair: dict = {"a": ea.name, "b": eb.name, "n": len(a), "n_groups": len(set(g))}
        if domain is not None:
            pair["domain"] = domain  # compared on this domain's test images alone
        if "detections" in a:  # boxes: AP pairs whole rankings, not a per-image score
            pair |= paired_detections(study_dir, ea.name, eb.name, list(a.index), g, detections)
        elif all(f"p_{lab}" in a and f"p_{lab}" in b for lab in labels):
            pair |= _scales_note(study_dir, ea.name, eb.name, metrics)
            y = a["label"].to_numpy(dtype=str)
            tests = {}
            cols = [f"p_{lab}" for lab in labels]
            pa, pb = a[cols].to_numpy(dtype=float), b[cols].to_numpy(dtype=float)
            for lab in [positive] if positive else labels:
                yb = (y == lab).astype(int)
                if 0 < yb.sum() < len(yb):
                    sa, sb = class_score(pa, labels.index(lab)), class_score(pb, labels.index(lab))
                    tests[lab] = paired_auc_bootstrap(yb, sa, sb, groups=g)
                    dl = delong_test(yb, sa, sb)
                    tests[lab]["delong_image_level"] = {"z": dl["z"], "p_value": dl["p_value"]}
            pair["test"] = "binary AUC" if positive else "one-vs-rest AUC per class"
            pair["by_class"] = tests
        if "dice" in a and "dice" in b:
            da, db = a["dice"].to_numpy(float), b["dice"].to_numpy(float)
            pair["dice"] = paired_mean_test(da, db, g)
            lesion = a["true_area"].to_numpy(float) > 0 if "true_area" in a else np.ones(len(da), bool)
            if 0 < lesion.sum() < len(lesion):  # an empty mask scores 1 on a lesion-free frame: apart too
                pair["dice_lesion"] = paired_mean_test(da[lesion], db[lesion], g[lesion])
            if "nsd" in a and "nsd" in b and lesion.any():  # boundaries, on the lesion images (NSD defined on each)
                pair |= _paired_nsd(ea.name, eb.name, metrics, a, b, lesion, g)
        out.append(pair)
    return adjust_family(out)


def _run_metrics(run: Path) -> dict | None:
    """A run's metrics.json, None where it has none yet (or one cut off)."""
    try:
        return json.loads(RunFolder(run).metrics.read_text())
    except (OSError, ValueError):
        return None


def _paired_nsd(a: str, b: str, metrics: dict, rows_a, rows_b, lesion: np.ndarray, g: np.ndarray) -> dict:
    """{"nsd_lesion": the paired test of runs `a` and `b`'s mean NSD over the lesion images, with its tolerance}
    where both scored NSD at one tolerance (their `metrics`, by name); else {"nsd_note": why not}: NSD at 1 % and at 2 %
    of the diagonal are two measures (a study's model can set it, and `evaluate --nsd-tolerance` scores a run
    again)."""
    from medcad.metrics.compare import paired_mean_test

    tolerance = {}
    for name in (a, b):
        seg = (metrics[name] or {}).get("segmentation") or {}
        tolerance[name] = (seg.get("nsd") or {}).get("tolerance_pct_diagonal")
    if tolerance[a] is None or tolerance[a] != tolerance[b]:
        said = ", ".join(f"{n}: {t if t is not None else 'none'}" for n, t in tolerance.items())
        return {"nsd_note": f"NSD not compared: scored at different tolerances, % of the diagonal ({said})"}
    na, nb = rows_a["nsd"].to_numpy(float), rows_b["nsd"].to_numpy(float)
    test = paired_mean_test(na[lesion], nb[lesion], g[lesion], what="NSD")
    return {"nsd_lesion": test | {"tolerance_pct_diagonal": tolerance[a]}}


def probability_scale(metrics: dict) -> str:
    """The scale of a run's predictions.csv probabilities: its metrics.json's "probabilities"; a run pooled before
    2026-12-06 kept them as trained."""
    return metrics.get("probabilities", "as trained")


def _scales_note(study_dir: Path, a: str, b: str, metrics: dict) -> dict:
    """{"note": ...} where runs `a` and `b` hold their probabilities on different scales (one pooled before
    2026-12-06, as trained; their `metrics`, by name), said as a warning too: their AUCs are then paired on different
    scales; else {}."""
    import warnings

    scales = {name: None if metrics[name] is None else probability_scale(metrics[name]) for name in (a, b)}
    if len(set(scales.values())) < 2 or None in scales.values():
        return {}
    older = next(n for n, s in scales.items() if s == "as trained")
    said = ", ".join(f"{n}: {s}" for n, s in scales.items())
    note = (
        f"{a} and {b} hold their probabilities on different scales ({said}): "
        f"`medcad evaluate {study_dir / 'runs' / slug(older)}` pools {older} again on the temperature-scaled ones"
    )
    warnings.warn(note, UserWarning, stacklevel=2)
    return {"note": note}


def on_classes(boxes: np.ndarray, labels: list[str], common: list[str]) -> np.ndarray:
    """Boxes (m, >=5) whose last column indexes `labels`, kept where their class is in `common` and re-indexed so."""
    index = np.array([common.index(n) if n in common else -1 for n in labels] or [-1])
    cls = index[boxes[:, -1].astype(int)] if len(boxes) else np.zeros(0, int)
    out = boxes[cls >= 0].copy()
    out[:, -1] = cls[cls >= 0]
    return out


def paired_detections(study_dir: Path, a: str, b: str, keys: list[str], groups: np.ndarray, read: dict) -> dict:
    """AP50, mAP, the FROC's CPM (A's lesion classes among those shared), F1 and frame accuracy (IoU 0.5, at the runs'
    score threshold) of detector runs `a` and `b` on the
    test images `keys`, compared by a paired cluster bootstrap (`medcad.metrics.compare.paired_detection_bootstrap`)
    on their out-of-fold detections and A's truths as their metrics score them (`read`: the runs' `RunDetections`
    read so far, by name). B's boxes are scaled to A's input size where the runs trained at different sizes (each
    axis is stretched to S, so IoU, and every measure, is the same at any S). Classes pair by name; where the runs'
    box classes differ (one with frame classes, a domain without a class) both are scored on the classes they share,
    which `note` names."""
    from medcad.engine.evaluate import run_detections
    from medcad.metrics.compare import paired_detection_bootstrap

    for name in (a, b):
        if name not in read:
            read[name] = run_detections(study_dir / "runs" / slug(name), say_notes=False)
    ra, rb = read[a], read[b]
    common = [n for n in ra.labels if n in rb.labels]
    at_a = dict(zip(ra.keys, zip(ra.detections, ra.truths, strict=True), strict=True))
    at_b = dict(zip(rb.keys, rb.detections, strict=True))
    scale = np.array([ra.image_size / rb.image_size] * 4 + [1, 1])
    thresholds = {name: _score_threshold(study_dir / "runs" / slug(name)) for name in (a, b)}
    out = paired_detection_bootstrap(
        [on_classes(at_a[k][0], ra.labels, common) for k in keys],
        [on_classes(at_b[k] * scale, rb.labels, common) for k in keys],
        [on_classes(at_a[k][1], ra.labels, common) for k in keys],
        len(common),
        groups=groups,
        score_threshold=thresholds[a],
        lesions=np.array([c not in ra.frame_classes for c in common], bool),
    )
    same_decisions = set(ra.labels) == set(rb.labels) and len(set(thresholds.values())) == 1
    ranked = ("ap50", "map", "cpm") if "cpm" in out else ("ap50", "map")
    pair = {"test": f"paired cluster bootstrap of AP50, mAP{', CPM' if 'cpm' in out else ''}"}
    pair["test"] += ", F1 and frame accuracy" if same_decisions else ""
    pair |= {"n_boot": out["n_boot"], **{k: out[k] for k in ranked}}
    if same_decisions:  # each run's decisions as its own metrics make them
        pair |= {k: out[k] for k in ("f1", "frame_accuracy", "score_threshold", "iou")}
    if set(ra.labels) != set(rb.labels):
        extra = {name: [n for n in x.labels if n not in common] for name, x in ((a, ra), (b, rb))}
        said = "; ".join(f"{name} also detects {', '.join(v)}" for name, v in extra.items() if v)
        pair["note"] = (
            f"AP and CPM compared on the box classes both runs detect ({', '.join(common) or 'none'}); {said}. F1 "
            "and frame accuracy are not compared: each run decides among its own classes, against its own truths"
        )
    elif not same_decisions:  # the same classes, other thresholds
        levels = sorted(set(thresholds.values()))
        pair["note"] = f"F1 and frame accuracy are not compared: the runs decide at score thresholds {levels}"
    return pair


def _score_threshold(run: Path) -> float:
    """The score threshold a detector run's metrics decided at (its metrics.json; the default where absent)."""

    from medcad.metrics.detection import SCORE_THRESHOLD

    # not evaluated yet, or cut off: the runs' default
    return float((_run_metrics(run) or {}).get("score_threshold", SCORE_THRESHOLD))


def adjust_family(pairs: list[dict]) -> list[dict]:
    """Holm-adjust (statsmodels) the study's family of paired tests in place: every AUC test (each class of each pair),
    every Dice and NSD test and every detection test (AP50, mAP, CPM, F1 and frame accuracy of each pair of
    detectors) gets `p_holm` beside its raw `p_value`, `p_holm_bound` (True where p_holm is an upper bound: it
    follows from a raw p at its bootstrap's resolution, `medcad.metrics.compare.holm_bounds`), and `family_size`, the
    number of tests Holm adjusted over (those with a p-value; a nan one is left out of the family and its p_holm is
    nan); DeLong's image-level p-values form their own family. Returns `pairs`."""
    from medcad.metrics.compare import at_floor, holm, holm_bounds, p_floor

    tested = [(p, d) for p in pairs for d in (p.get("by_class") or {}).values()]
    tested += [(p, p[k]) for p in pairs for k in ("dice", "dice_lesion", "nsd_lesion", *DETECTION_TESTS) if k in p]
    tests = [d for _, d in tested]
    floors = [at_floor(d["p_value"], p_floor(d, p.get("n_boot"))) for p, d in tested]
    adjusted, bounds = holm_bounds([d["p_value"] for d in tests], floors)
    family_size = int(np.isfinite(adjusted).sum())  # holm's m: the finite p-values, adjusted to finite ones
    for d, adj, bound in zip(tests, adjusted, bounds, strict=True):
        d["p_holm"] = adj
        d["p_holm_bound"] = bound
        d["family_size"] = family_size
    secondary = [d["delong_image_level"] for d in tests if "delong_image_level" in d]
    for d, adj in zip(secondary, holm([d["p_value"] for d in secondary]), strict=True):
        d["p_holm"] = adj
    return pairs
