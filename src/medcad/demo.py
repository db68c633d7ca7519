"""`medcad demo`: the whole pipeline on a built-in synthetic dataset, offline, in minutes on 2 CPU cores.

It reproduces the urinary-endoscopy design on synthetic data: lesion vs normal, two imaging domains, two
backbones, sequential transfer both ways against combined training, every model tested on both domains, one
report. Beside it the renal design: one network that outlines the lesion and classifies the image (multitask U-Net),
on the study's splits, with its own report. The study's folds and the U-Net's are tasks for two worker processes
(`run_study(jobs=2, also=...)`: on 2 cores, small images train faster in two processes of one thread each).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

DEMO_STUDY = """\
# The demo study: written by `medcad demo`; edit it and run `medcad study {path}` to try other settings.
name: demo
data: data
task: classify
protocol: sequential          # train on A, continue on B (and the reverse); combined A + B; test on both
domains: [endoscopy, ultrasound]
folds: 3                      # grouped by patient, stratified by label x domain; shared by every run
models:
  - tf_efficientnet_lite0     # offline ImageNet weights
  - tf_efficientnet_lite1
settings:
  image_size: 96
  epochs: 3                   # fine-tuning epochs (stage 2); the head trains first on cached features
  head_epochs: 40
  batch_size: 32
  augment: light
"""


def _multitask_config():
    from medcad.config import TrainConfig

    return TrainConfig(
        task="multitask", arch="unet", image_size=64, epochs=4, batch_size=16, lr=3e-4, missing_masks="empty", folds=3
    )


def _lesion_vs_normal(manifest_csv: Path) -> None:
    """The urinary design is lesion vs no lesion: merge benign and malignant into `lesion` (atomically)."""
    import pandas as pd

    from medcad.atomic import atomic_write_text

    table = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    table["label"] = table["label"].where(table["label"] == "normal", "lesion")
    atomic_write_text(manifest_csv, table.to_csv(index=False))


def run_demo(out: str | Path, seed: int = 0, console: Console | None = None) -> dict:
    """Generate the synthetic set, inspect and audit it, run the demo study and write its report.

    Returns:
        paths and headline figures of what it did.
    """
    from medcad.data.audit import audit
    from medcad.data.layouts import load_manifest
    from medcad.data.summary import summarize
    from medcad.data.synthetic import generate_synthetic
    from medcad.devices import machine
    from medcad.report.console import print_metrics, print_study
    from medcad.report.console_data import print_audit, print_summary
    from medcad.report.html import write_report
    from medcad.study.executors import RunJob
    from medcad.study.runner import run_study

    c = console or Console()
    out = Path(out)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}  # seconds per step, printed at the end
    mark = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        steps[name], mark[0] = now - mark[0], now

    data_dir = out / "data"
    manifest_csv = data_dir / "manifest.csv"
    if not manifest_csv.is_file():
        c.rule("1. Synthetic dataset")
        _lesion_vs_normal(generate_synthetic(data_dir, n_patients=120, frames_per_patient=3, size=96, seed=seed))
    manifest = load_manifest(manifest_csv)
    lap("synthetic data")
    c.print(f"Synthetic endoscopy + ultrasound frames in {data_dir}: patients, two domains, subgroups, masks, boxes")
    c.rule("2. Inspect")
    summary = summarize(manifest)
    summary["manifest_csv"] = str(manifest_csv)
    print_summary(summary, c)
    lap("inspect")
    c.rule("3. Audit")
    print_audit(audit(manifest, progress=True), c)
    lap("audit")
    c.rule("4. Study: sequential transfer between domains, two backbones, same folds; beside it a multitask U-Net")
    study_file = out / "study.yaml"
    if not study_file.is_file():
        study_file.write_text(DEMO_STUDY.format(path=study_file))
    seg_run = out / "multitask"

    def multitask(study) -> list[RunJob]:  # trained by the study's workers, on the study's splits
        return [
            RunJob(
                "multitask",
                seg_run.resolve(),
                _multitask_config(),
                manifest_csv.resolve(),
                study.splits_path,
                study.folds,
            )
        ]

    results = run_study(study_file, out / "study", jobs=min(2, machine().cores), also=multitask)
    print_study(results, c)
    lap("study and multitask runs")
    c.rule("5. Report")
    report = write_report(out / "study")
    lap("study report")
    c.rule("6. Lesion masks + class from one network (multitask U-Net, same folds)")
    print_metrics(results["also"]["multitask"], seg_run, c)
    seg_report = write_report(seg_run)
    lap("multitask report")
    elapsed = time.perf_counter() - t0
    c.rule("Done")
    c.print(
        f"Data: {data_dir}\nStudy file: {study_file}\nStudy folder: {out / 'study'} (one run folder per model "
        f"and protocol step: config, splits, fold models, predictions.csv, metrics.json, TensorBoard logs)\n"
        f"Report: {report}\nMultitask run: {seg_run}, report {seg_report}\nWall time: {elapsed:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items())
        + ")"
    )
    return {
        "data": str(data_dir),
        "study": str(out / "study"),
        "report": str(report),
        "multitask_report": str(seg_report),
        "seconds": elapsed,
        "step_seconds": steps,
    }
