"""A reporting checklist for the run's report: the items of CLAIM (Checklist for Artificial Intelligence in Medical
Imaging; Mongan et al., Radiology: Artificial Intelligence 2020, updated by Tejani et al. 2024), with two TRIPOD+AI
items (Collins et al., BMJ 2024) on calibration and thresholds, each marked as documented by the run (and where in
the report) or as the user's to add. Items are paraphrased and grouped by section, not numbered."""

from __future__ import annotations

from pathlib import Path

from medcad.runfolder import RunFolder

USER = "add it yourself"


def _item(section: str, text: str, where: str | None) -> dict:
    return {"section": section, "item": text, "documented": where is not None, "where": where or USER}


def checklist(r: dict, run: Path) -> list[dict]:
    """Checklist rows for a collected run report `r` (see `collect_run`); each {section, item, documented, where}."""
    m, cfg, splits = r["metrics"], r["config"], r["splits"]
    seg = m.get("segmentation") or {}
    has_ci = bool((m.get("macro_auc") or m.get("dice") or m.get("ap50") or {}).get("ci95"))
    group = splits.get("group_by") or "none"
    return [
        _item("Title / abstract", "Identify the study as AI in medical imaging; structured summary", None),
        _item("Introduction", "Scientific and clinical background, intended use and clinical role; objectives", None),
        _item(
            "Methods: study design",
            "Prospective or retrospective; study goal (e.g. feasibility, non-inferiority)",
            None,
        ),
        _item("Methods: data", "Data sources (sites, devices, dates) and eligibility criteria", None),
        _item(
            "Methods: data",
            "Preprocessing (resizing, denoising, normalisation)",
            "Settings table (image_size, bilateral) and model card",
        ),
        _item(
            "Methods: data", "Data quality: unreadable files, duplicates, missing masks and how handled", "Data → Audit"
        ),
        _item("Methods: data", "De-identification and ethics approval / consent", None),
        _item(
            "Methods: ground truth",
            "Definition of the reference standard, annotators, their expertise, inter-rater agreement",
            None,
        ),
        _item(
            "Methods: partitions",
            "How data were split, at which level, and that no patient or duplicate crosses the split",
            f"Splits section ({splits.get('method')}, grouped by {group}; leakage check under Audit)",
        ),
        _item("Methods: partitions", "Intended sample size and how it was determined", None),
        _item(
            "Methods: model",
            "Model description: architecture, inputs, outputs, parameters",
            "Model card; settings table",
        ),
        _item(
            "Methods: model",
            "Software and versions; hardware",
            "Training: settings table and software and machine table"
            if r["meta"].get("environment")
            else "Settings table (medcad settings); a run made before 2026-12-06 kept no library versions: add them",
        ),
        _item(
            "Methods: model",
            "Initialisation (pretrained weights, source)",
            f"Settings table (weights: {cfg.get('weights')})",
        ),
        _item(
            "Methods: training",
            "Training details: augmentation, optimiser, learning rate, epochs, stopping",
            "Settings table; Training curves (with the epochs each fold ran and kept)",
        ),
        _item(
            "Methods: training",
            "How the final model was selected (validation only, never test)",
            "Note at the top; per-fold table (stage kept)",
        ),
        _item("Methods: training", "Ensembling", "Model card (one model per fold; predictors average the folds)"),
        *_evaluation_items(m, r, run, has_ci),
        _item("Results: data", "Flow of cases; numbers per class and partition", "Data table; Splits table"),
        _item("Results: data", "Demographic and clinical characteristics of cases in each partition", None),
        _item(
            "Results: performance",
            "Performance with CIs; segmentation scored at the images' own resolution",
            (
                "Results (masks at each image's own size, training size beside)"
                if seg.get("training_size")
                else "Results"
            )
            if has_ci
            else None,
        ),
        _item(
            "Results: performance",
            "Failure analysis of incorrectly classified cases",
            "Gallery of right and wrong predictions" if r.get("gallery") or seg else None,
        ),
        _item("Discussion", "Limitations, including bias and generalisability; implications for practice", None),
        _item("Other information", "Registration, protocol, data and code availability, funding", None),
    ]


def _evaluation_items(m: dict, r: dict, run: Path, has_ci: bool) -> list[dict]:
    """The "Methods: evaluation" rows: metrics and uncertainty, operating point, calibration, robustness,
    explainability, external validation."""
    seg, cal = m.get("segmentation") or {}, m.get("calibration")
    folder = RunFolder(run)
    external = sorted(p.name for p in folder.evaluations.glob("*") if p.is_dir()) if folder.evaluations.is_dir() else []
    shortcut = folder.shortcut_check.is_file()
    return [
        _item(
            "Methods: evaluation",
            "Performance metrics and the statistical methods for their uncertainty",
            "Results: every headline with a 95 % CI (cluster bootstrap over groups)" if has_ci else None,
        ),
        _item(
            "Methods: evaluation",
            "Operating point / decision threshold and how it was chosen (TRIPOD+AI)",
            "Results → Operating points chosen on validation data"
            if m.get("validated_operating_points") or m.get("validated_operating_points_by_class")
            else "Results → Lesion boxes: at each fold's validated score threshold"
            if m.get("validated_operating_point")
            else None,
        ),
        _item(
            "Methods: evaluation",
            "Calibration (TRIPOD+AI)",
            "Results → Calibration (temperature scaling fitted on validation)"
            if cal
            else ("Reliability diagram" if m.get("reliability") else None),
        ),
        _item(
            "Methods: evaluation",
            "Robustness or sensitivity analysis",
            "Shortcut check (lesion blanked / lesion only)" if shortcut else None,
        ),
        _item(
            "Methods: evaluation",
            "Methods for explainability or interpretability",
            "Grad-CAM gallery" if r.get("gallery") or seg else None,
        ),
        _item(
            "Methods: evaluation",
            "Validation on external data",
            f"evaluations/{', '.join(external)} (medcad evaluate --data): external only if another site, device or "
            "period; say which"
            if external
            else None,
        ),
    ]
