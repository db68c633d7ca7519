"""Render self-contained HTML reports (figures embedded) for runs and studies."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from medcad import __version__, usable_cores
from medcad.atomic import atomic_write_text
from medcad.errors import DataError
from medcad.runfolder import RunFolder


def _env():
    from jinja2 import Environment, PackageLoader, select_autoescape

    from medcad.metrics.calibration import scaled_by_temperature
    from medcad.metrics.compare import p_floor
    from medcad.report.console import NO_CI, holm_floor, p_value_text

    env = Environment(loader=PackageLoader("medcad.report", "templates"), autoescape=select_autoescape(["j2", "html"]))
    env.globals["p_value_text"] = p_value_text  # one rule for p-values in the terminal and the reports
    env.globals["p_floor"] = p_floor
    env.globals["holm_floor"] = holm_floor
    env.globals["scaled_by_temperature"] = scaled_by_temperature  # one rule for the console, figures and tables
    env.globals["NO_CI"] = NO_CI  # the console's words where an interval does not say why it is missing
    return env


def render(template: str, **context) -> str:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return _env().get_template(template).render(version=__version__, date=now, **context)


def write_run_report(run: str | Path, gallery: bool = True, shared: dict | None = None) -> Path:
    """Write RUN/report.html and return its path. `shared`: what the runs of one study reuse (see collect_run)."""
    from medcad.report.run_report import collect_run

    run = Path(run)
    if not RunFolder(run).metrics.is_file():
        raise DataError(run, "no metrics.json: the run has not finished (rerun its train command to resume it)")
    out = RunFolder(run).report
    atomic_write_text(out, render("run.html.j2", r=collect_run(run, gallery=gallery, shared=shared)))
    return out


def write_study_report(study: str | Path, gallery: bool = True) -> Path:
    """Write STUDY/report.html (comparison, cross-domain matrix, DeLong) and each run's own report."""
    from medcad.report.study_report import collect_study

    study = Path(study)
    s = collect_study(study)
    _write_run_reports([r["run"] for r in s["runs"]], gallery)
    out = RunFolder(study).report
    atomic_write_text(out, render("study.html.j2", s=s))
    return out


def _write_runs(runs: list[str], gallery: bool) -> None:
    shared: dict = {}  # the runs read the same data with the same splits: summary, audit and model cards once
    for run in runs:
        write_run_report(run, gallery=gallery, shared=shared)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the workers share the cores: no oversubscribed Grad-CAM


def _write_run_reports(runs: list[str], gallery: bool) -> None:
    """Each run's report.html. Rendering is single-threaded (matplotlib, Python), so a study of four runs or more
    splits them between up to `usable_cores()` (at most 4) worker processes; an error in any is raised here."""
    workers = min(usable_cores(), 4, len(runs) // 2)
    if workers < 2:
        _write_runs(runs, gallery)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process whose torch thread pool is running
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        list(pool.map(_write_runs, [runs[i::workers] for i in range(workers)], [gallery] * workers))


def write_report(path: str | Path, gallery: bool = True) -> Path:
    """report.html for a run folder (metrics.json) or a study folder (results.json)."""
    path = Path(path)
    if (path / "results.json").is_file():
        return write_study_report(path, gallery=gallery)
    return write_run_report(path, gallery=gallery)
