"""Rich tables for the terminal: a run's and a study's metrics (a dataset's summary and audit: `console_data`)."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.table import Table

from medcad.metrics.compare import at_floor, p_floor

_FRAME_DECISIONS = (
    ("frame_decision", "max mean Dice"),
    ("frame_decision_specificity", "specificity target"),
)  # a segmentation run's frame-level decisions, as titled


NO_CI = "fewer than half of the resamples define it"  # the reason, where an interval does not say its own


def _fmt(m: dict | None) -> str:
    if not m or m.get("value") is None or m["value"] != m["value"]:  # none, or nan (a slope of separated classes)
        return "—"
    lo, hi = (m.get("ci95") or [None, None])[:2]
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        dash = " to " if lo < 0 or hi < 0 else "–"  # as the report writes it: "-0.181–-0.030" read as a range of signs
        ci = f" ({lo:.3f}{dash}{hi:.3f}{', exact' if str(m.get('ci95_method', '')).startswith('exact') else ''})"
    else:  # an interval no resample gave (None once written to JSON), or too few: stats.ci_entry says why
        ci = f" (no CI: {m.get('no_ci') or NO_CI})" if "ci95" in m else ""
    return f"{m['value']:.3f}{ci}"


def _share(x: dict, key: str) -> str:
    """A share kept under `key` beside its interval (ci95, ci95_method, no_ci), as `_fmt` shows a figure."""
    return _fmt({**x, "value": x[key]})


def _rounded(m: dict) -> float:
    """A figure as shown (3 decimals; 0 where there is none): compared as the reader sees it."""
    return round(m.get("value") or 0.0, 3)


def _label(m: dict, c: int) -> str:
    """Class c's name from the metrics' labels (its index where they are not there)."""
    labels = m.get("labels") or []
    return str(labels[c]) if c < len(labels) else str(c)


def _fmt_threshold(t: float | None) -> str:
    """A threshold; — where none met the rule (None, nan, or inf once written to JSON)."""
    return "—" if t is None or not np.isfinite(t) else f"{t:.3f}"


def print_metrics(m: dict, run: object = None, console: Console | None = None) -> None:
    """Headline metrics with 95 % CIs, per-class table and per-fold summary."""
    c = console or Console()
    n = m.get("n") or m.get("n_images") or (m.get("segmentation") or {}).get("n_images")
    c.print(f"[bold]{m.get('evaluation', 'evaluation')}[/] on {n} images" + (f" — {run}" if run else ""))
    if m.get("results_note"):
        c.print(f"[red]note:[/] {m['results_note']}")
    head = Table("metric", "value (95 % CI)")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
        if name in m:
            head.add_row(name, _fmt(m[name]))
    lesions = f", lesion classes alone ({', '.join(m.get('lesion_classes', []))})"
    for name, text in (("ap50", "AP50"), ("map", "mAP@[.5:.95]"), ("ap50_lesions", f"AP50{lesions}"),
                       ("map_lesions", f"mAP{lesions}")):  # fmt: skip
        if name in m:
            head.add_row(text, _fmt(m[name]))
    if "frame_level" in m:
        no_background = sum(m["frame_level"]["confusion_matrix"]["matrix"][-1]) == 0
        name = "frame accuracy (no background frame here)" if no_background else "frame accuracy (with background)"
        head.add_row(name, _fmt(m["frame_level"]["accuracy"]))
        majority = m["frame_level"].get("majority_accuracy") or {}
        if majority.get("value") is not None:
            head.add_row(f"  naming every frame {majority['class']!r} would score", f"{majority['value']:.3f}")
        for thr, r in m["iou_thresholds"].items():
            head.add_row(f"boxes: P / R / F1 at IoU {thr}", f"{r['precision']:.3f} / {r['recall']:.3f} / {r['f1']:.3f}")
    if vo := m.get("validated_operating_point"):
        r = vo["iou_thresholds"].get("0.5")
        if r:
            at = ", ".join("—" if t is None else f"{t:.3f}" for t in vo["thresholds"])
            head.add_row(
                f"boxes: P / R / F1 at IoU 0.5, validated score threshold ({at})",
                f"{r['precision']:.3f} / {r['recall']:.3f} / {_fmt({'value': r['f1'], 'ci95': r['ci95']['f1']})}",
            )
    if m.get("froc"):
        f = m["froc"]
        at = dict(zip(f["fp_per_image"], f["sensitivity"], strict=True))
        for rate in (0.5, 1.0, 2.0):
            head.add_row(f"lesion sensitivity at {rate:g} FP/image (FROC)", _fmt(at[rate]))
        head.add_row(
            f"FROC CPM (mean sensitivity at {', '.join(f'{x:g}' for x in f['fp_per_image'])} FP/image)", _fmt(f["cpm"])
        )
    seg = m.get("segmentation") or {}
    for name, text in (
        ("dice", "Dice (per image)"),
        ("iou", "IoU (per image)"),
        ("dice_lesion", "Dice, lesion images"),
        ("dice_pooled", "Dice, pooled pixels"),
    ):
        if seg.get(name):
            head.add_row(text, _fmt(seg[name]))
    if seg.get("per_class"):  # label maps: each lesion class
        head.add_row("Dice, mean over lesion classes (every image; 1 where neither has it)", _fmt(seg["class_dice"]))
        for lab, cm in seg["per_class"].items():
            hd = f"; HD95 {cm['hd95']['mean']['value']:.1f} px" if cm.get("hd95") else ""
            if (cm.get("hd95_normalised") or {}).get("n_defined"):
                hd += f" ({cm['hd95_normalised']['mean']['value']:.1f} % of the diagonal)"
            if (cm.get("nsd_lesion") or {}).get("n_scored"):  # over the same images as the Dice beside it
                hd += f"; NSD {cm['nsd_lesion']['mean']['value']:.3f}"
            shown = _fmt(cm["dice_lesion"]) if cm.get("dice_lesion") else "—"
            head.add_row(f"  {lab}: Dice (images with it, n={cm['n_lesion_images']})", shown + hd)
    for name, part in (seg.get("by_lesion_size") or {}).items():
        head.add_row(f"  Dice, lesions {name}, n={part['n_images']}", _fmt(part["dice"]))
    if seg.get("training_size"):
        head.add_row(f"Dice at training size {seg['training_size']['resolution']}", _fmt(seg["training_size"]["dice"]))
    if seg.get("hd95"):
        n = seg["hd95"].get("n_defined")
        head.add_row(
            f"HD95 px (original size), mean over the n={n} images with a lesion in both masks",
            _fmt(seg["hd95"]["mean"]),
        )
    if (seg.get("hd95_normalised") or {}).get("n_defined"):
        head.add_row("HD95, % of the image diagonal, mean", _fmt(seg["hd95_normalised"]["mean"]))
    if (seg.get("nsd") or {}).get("n_scored"):
        n = seg["nsd"]["n_scored"]
        head.add_row(
            f"NSD (surface Dice) within {seg['nsd']['tolerance']}, mean over the n={n} images with a lesion in either "
            "mask (a missed or false lesion scores 0)",
            _fmt(seg["nsd"]["mean"]),
        )
    lesion_nsd = seg.get("nsd_lesion") or {}
    if lesion_nsd.get("n_scored") and lesion_nsd["n_scored"] != (seg.get("nsd") or {}).get("n_scored"):
        head.add_row(f"  NSD, lesion images (n={seg['nsd_lesion']['n_scored']})", _fmt(seg["nsd_lesion"]["mean"]))
    if seg.get("empty_images"):
        e = seg["empty_images"]
        head.add_row(
            f"lesion-free images with lesion pixels (n={e['n']})",
            _share(e, "false_positive_rate"),
        )
    for key, title in _FRAME_DECISIONS:
        fd = seg.get(key)
        if not fd:
            continue
        head.add_row(f"frame-level decision ({title}): Dice", _fmt(fd["dice"]))
        if fd.get("dice_lesion"):
            head.add_row("  Dice, lesion images", _fmt(fd["dice_lesion"]))
        if fd.get("empty_images"):
            e, f = fd["empty_images"], fd.get("lesion_images_found")  # none without lesion images
            fp = {**e, "value": e["false_positive_rate"]}
            head.add_row("  lesion-free images with lesion pixels", _fmt(fp))
            if f:
                head.add_row("  lesion images with lesion pixels", _share(f, "rate"))
    c.print(head)
    for key, title in _FRAME_DECISIONS:
        if (seg.get(key) or {}).get("note"):
            c.print(f"[yellow]Frame-level decision ({title}):[/] {seg[key]['note']}")
    _print_frame_table(c, m)
    if "per_class" not in m:
        _print_fold_summary(c, m)
        return
    t = Table("class", "precision", "recall", "specificity", "F1", "AUC", "support", title="Per class")
    for lab, r in m.get("per_class", {}).items():
        t.add_row(
            lab,
            *[
                ("—" if r.get(k) is None else f"{r[k]:.3f}")
                for k in ("precision", "recall", "specificity", "f1", "auc")
            ],
            str(r.get("support")),
        )
    c.print(t)
    _print_validated(c, m)
    _print_fold_summary(c, m)
    sc = m.get("shortcut_check")
    if sc:
        aucs = ", ".join(f"{k} {_fmt({'value': v})}" for k, v in sc["auc_positive"].items())
        c.print(
            f"shortcut check on {sc['n_images']} lesion images, AUC of {sc['positive']}: {aucs}; "
            f"share of AUC above 0.5 retained without the lesion {_fmt({'value': sc['auc_retained']})}; "
            f"{sc['still_positive']['n']} of {sc['still_positive']['of']} still called {sc['positive']} without it"
        )


def _print_frame_table(c: Console, m: dict) -> None:
    """Detection: the frame decision per class (background row included) and averaged, as precision / recall / F1 at
    each IoU threshold, with the accuracy row (the class of the top detection, its box on a true box at the IoU)."""
    tables = (m.get("frame_level") or {}).get("iou_thresholds")
    if not tables:
        return
    t = Table("frame class", "n", *(f"P / R / F1 @ {thr}" for thr in tables), title="Frame decision by IoU")

    def prf(r: dict) -> str:
        return " / ".join(
            "—" if r.get(k) is None or r[k] != r[k] else f"{r[k]:.2f}" for k in ("precision", "recall", "f1")
        )

    first = next(iter(tables.values()))
    for lab, r in first["per_class"].items():
        t.add_row(lab, str(r["support"]), *(prf(x["per_class"][lab]) for x in tables.values()))
    n = sum(r["support"] for lab, r in first["per_class"].items() if lab != "background")
    for avg in ("macro", "weighted"):
        t.add_row(f"{avg} average", str(n), *(prf(x[avg]) for x in tables.values()))
    t.add_row("accuracy", "", *(_fmt(x["accuracy"]) for x in tables.values()))
    c.print(t)


def _print_validated(c: Console, m: dict) -> None:
    """Operating points chosen on validation and temperature scaling, when the run has them."""
    from medcad.metrics.operating import DEFAULT_RULES  # here: it imports scikit-learn (~0.9 s of a CLI start)

    for v in [m.get("validated_operating_points"), *(m.get("validated_operating_points_by_class") or {}).values()]:
        if not v:
            continue
        fixed = "threshold" in (v.get("youden") or {})  # carried to new data: the ensemble's one threshold
        t = Table(
            "rule (chosen on validation)", *["threshold"] * fixed, "sensitivity (95 % CI)", "specificity (95 % CI)"
        )
        rest = " against the rest" if v.get("one_vs_rest") else ""
        where = v.get("applied_to", "test")
        t.title = f"Operating points from validation, applied to {where} (positive: {v['positive']}{rest})"
        for rule in DEFAULT_RULES:
            if rule in v:
                t.add_row(
                    rule,
                    *([_fmt_threshold(v[rule]["threshold"])] if fixed else []),
                    _fmt(v[rule]["sensitivity"]),
                    _fmt(v[rule]["specificity"]),
                )
        c.print(t)
        if fixed:
            c.print(v["note"])
        if v.get("few_validation"):
            c.print(f"note: {v['few_validation']}")
        without = (v.get("youden") or {}).get("folds_without_threshold")
        if without:
            c.print(
                f"fold(s) {', '.join(without)}: the validation part holds one class, so no threshold was chosen; "
                + (
                    "the ensemble's threshold is the mean of the other folds' (— when none is left)"
                    if fixed
                    else "their test images are left out of these figures (— when no fold is left)"
                )
            )
        nothing = [
            f"{r}: fold(s) {', '.join(v[r]['folds_calling_nothing'])}"
            for r in DEFAULT_RULES
            if "folds_calling_nothing" in (v.get(r) or {})
        ]
        if nothing:
            c.print(
                "; ".join(nothing) + ": the validation part met the rule only by calling nothing positive; left out "
                "of the ensemble's mean threshold"
            )
    cal = m.get("calibration")
    if not cal:
        return
    from medcad.metrics.calibration import (
        fold_temperatures,
        scaled_by_temperature,
    )  # here: SciPy's import (~0.1 s of a CLI start)

    scaled = scaled_by_temperature(cal)  # every T = 1: one set of figures, said unscaled

    def both(before: dict, after: dict) -> str:
        return f"{_fmt(before)} -> {_fmt(after)}" if scaled else _fmt(before)

    text = f"calibration: ECE {both(cal['before']['ece'], cal['after']['ece'])}, Brier " + both(
        cal["before"]["brier"], cal["after"]["brier"]
    )
    text += "".join(
        f", calibration slope of p_{_label(m, a['class'])} {both(a['calibration_slope'], b['calibration_slope'])}"
        for a, b in zip(cal["before"].get("lines", []), cal["after"].get("lines", []), strict=True)
    )
    if not scaled:
        c.print(text + "; no temperature scaling: no fold's validation part showed evidence against T = 1")
        return
    temperatures = fold_temperatures(cal)
    kept = [f"fold {f} T = {t:.2f}" for f, t in sorted(temperatures.items()) if t != 1]
    unscaled = len(temperatures) - len(kept)
    text += " after temperature scaling on validation"
    text += f" ({', '.join(kept)}; {unscaled} fold(s) kept at T = 1 for lack of evidence)" if unscaled else ""
    worse = _rounded(cal["after"]["brier"]) > _rounded(cal["before"]["brier"])
    c.print(text + (" (the Brier score worse after it)" if worse else ""))


def _print_fold_summary(c: Console, m: dict) -> None:
    fs = {**(m.get("segmentation") or {}).get("fold_summary", {}), **(m.get("fold_summary") or {})}
    if fs and (m.get("splits") or {}).get("n_folds", 1) > 1:
        c.print(
            "per fold (mean ± sd): "
            + ", ".join(f"{k} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in fs.items() if v.get("mean") is not None)
        )


def print_study(results: dict, console: Console | None = None) -> None:
    """One row per run of a study: accuracy and macro AUC (Dice for masks) with 95 % CIs (fits 80 columns)."""
    c = console or Console()
    t = Table(title=f"Study {results['name']} ({results['protocol']}); more in report.html")
    t.add_column("run", overflow="fold", min_width=18)
    runs = results["runs"]
    cols = [
        (k, n)
        for k, n in (("ap50", "AP50"), ("dice", "Dice"), ("accuracy", "accuracy"), ("macro_auc", "macro AUC"))
        if any(r.get(k) for r in runs)
    ][-2:]
    for name in ("step", *(n for _, n in cols)):
        t.add_column(name, no_wrap=True)
    for r in runs:
        t.add_row(r["name"], r["step"], *(_fmt(r.get(k)) for k, _ in cols))
    c.print(t)
    _print_paired_tests(c, results.get("paired_tests") or [])


def p_value_text(v: float | None, floor: float | None = None) -> str:
    """A p-value as the console and the HTML reports show it: 4 decimals, "< 0.0001" below them; a bootstrap's at
    its resolution (no resample crossed 0: `floor`, a test's p_floor) as "< floor"; "—" where there is none (None,
    nan)."""
    if v is None or v != v:
        return "—"
    if at_floor(v, floor) and v < 1:  # a bound of 1 says nothing: written as the value
        # rounded up: a bound written lower than it is would claim more (beyond 10,000 resamples, below 4 decimals)
        return f"< {math.ceil(max(floor, 0.0001) * 1e4 - 1e-9) / 1e4:.4f}"
    return "< 0.0001" if v < 0.0001 else f"{v:.4f}"


def holm_floor(test: dict) -> float | None:
    """A test's Holm-adjusted p as the bound `p_value_text` writes "< ..." of, where it is one (`p_holm_bound`)."""
    return test.get("p_holm") if test.get("p_holm_bound") else None


def _print_paired_tests(c: Console, pairs: list[dict]) -> None:
    """Paired comparisons: difference with its 95 % CI, raw p and Holm-adjusted p (over the study's family)."""
    named = (
        ("dice", "Dice"),
        ("dice_lesion", "Dice, lesion images"),
        ("nsd_lesion", "NSD, lesion images"),
        ("ap50", "AP50"),
        ("map", "mAP@[.5:.95]"),
        ("cpm", "FROC CPM"),
        ("f1", "F1 at IoU 0.5"),
        ("frame_accuracy", "frame accuracy at IoU 0.5"),
    )
    rows = [
        (p, what, d)
        for p in pairs
        for what, d in [
            *((f"AUC {lab}", d) for lab, d in (p.get("by_class") or {}).items()),
            *((what, p[key]) for key, what in named if key in p),
        ]
    ]
    for p in pairs:
        for key in ("note", "nsd_note"):
            if p.get(key):
                c.print(f"{p['a']} vs {p['b']}: {p[key]}")
    if not rows:
        return
    t = Table(title="Paired tests (groups as unit; p Holm-adjusted over all of them)")
    for name in ("what", "difference (95 % CI)", "p", "p Holm"):
        t.add_column(name, overflow="fold")
    pair = None
    for p, what, d in rows:
        if (p["a"], p["b"]) != pair:  # one heading row per pair of runs: long run names stay readable
            pair = (p["a"], p["b"])
            on = f" (on {p['domain']}'s test images)" if p.get("domain") else ""
            t.add_row(f"[bold]{p['a']} vs {p['b']}{on}[/bold]", "", "", "", end_section=False)
        diff = _fmt({"value": d.get("difference"), "ci95": d.get("ci95"), "no_ci": d.get("no_ci")})
        raw = p_value_text(d["p_value"], p_floor(d, p.get("n_boot")))
        t.add_row(f"  {what}", diff, raw, p_value_text(d.get("p_holm"), holm_floor(d)))
    c.print(t)
