"""Collect what a study's report shows: runs compared, cross-domain matrix with ROC per domain, DeLong tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medcad.data.splits import load_splits
from medcad.errors import DataError
from medcad.report import plots
from medcad.report.run_report import png_data_uri
from medcad.runfolder import RunFolder, study_path
from medcad.tasks import metrics_positive


def collect_study(study: Path) -> dict:
    """results.json of a study folder with its paths resolved (`study_path`), each run's report link, test images
    (n, per domain) and evaluation, and the figures.

    Raises:
        DataError: no results.json, or a run folder or the splits it names is gone.
    """
    path = study / "results.json"
    if not path.is_file():
        raise DataError(study, "no results.json: the study has not finished (rerun `medcad study` to resume it)")
    s = json.loads(path.read_text())
    try:
        s["splits"] = str(study_path(study, s["splits"]))
        for r in s["runs"]:
            r["run"] = str(study_path(study, r["run"]))
    except FileNotFoundError as e:
        raise DataError(path, f"a path it holds cannot be read: {e}") from e
    splits = load_splits(s["splits"])
    s["split_info"] = {k: splits.get(k) for k in ("n_folds", "method", "group_by")}
    metrics = {r["name"]: json.loads(RunFolder(Path(r["run"])).metrics.read_text()) for r in s["runs"]}  # read once
    for r in s["runs"]:
        r["href"] = os.path.relpath(RunFolder(Path(r["run"])).report, study)
        m = metrics[r["name"]]
        r["n"] = m.get("n") or m.get("n_images") or (m.get("segmentation") or {}).get("n_images")
        r["evaluation"] = m.get("evaluation")
        r["n_by_domain"] = {d: v.get("n") for d, v in (m.get("by_domain") or {}).items()}
    s["n_images"] = sorted({r["n"] for r in s["runs"]})
    cells = [(d, c) for row in (s.get("cross_domain_matrix") or {}).values() for d, c in row.items()]
    partial = {f"{d}: {', '.join(c['averaged_over'])}" for d, c in cells if (c or {}).get("averaged_over")}
    s["matrix_partial"] = sorted(partial)  # cells whose macro AUC is over fewer classes than the study's
    key, title = next(
        ((k, t) for k, t in (("ap50", "AP50"), ("dice", "Dice")) if all(r.get(k) for r in s["runs"])),
        ("macro_auc", "macro AUC"),
    )
    bars = {r["name"]: (r[key]["value"], *(r[key].get("ci95") or [None, None])) for r in s["runs"] if r.get(key)}
    figures = {"bars": png_data_uri(plots.bars_png(bars, f"{title} per run (95 % CI)", title)), "roc_domains": {}}
    positive = metrics_positive(next(iter(metrics.values()), {}), s["labels"])  # the study's runs share settings
    for d in s.get("domains") or []:
        curves, aucs = {}, {}
        for r in s["runs"]:
            m = metrics[r["name"]]
            sub = (m.get("by_domain") or {}).get(d) or {}
            if sub.get("roc", {}).get(positive):
                curves[r["name"]] = sub["roc"][positive]
                aucs[r["name"]] = (sub.get("per_class") or {}).get(positive, {}).get("auc")
        if curves and s.get("cross_domain_matrix"):
            figures["roc_domains"][d] = png_data_uri(
                plots.roc_png(curves, f"ROC of '{positive}' on {d} test images", aucs)
            )
    s["figures"] = figures
    return s
