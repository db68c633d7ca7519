"""Render self-contained HTML reports (figures embedded) for runs and studies."""

from __future__ import annotations

import datetime as dt
import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from medcad import __version__, usable_cores
from medcad.atomic import atomic_write_text
from medcad.errors import DataError
from medcad.runfolder import RunFolder


@functools.cache
def _env():
    """The reports' Jinja environment, made once per process: it keeps each template compiled (a new environment
    per report had compiled the templates again, 0.37 s of each report)."""
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


def write_repeats_report(folder: str | Path, gallery: bool = True) -> Path:
    """Write the report.html of a folder of `--repeats` runs (its repeats.json): each seed's own report, and beside
    them a page of each seed's headline figures with their CIs and the mean ± sd over the seeds (the folder had no
    report: `medcad report` said the run had not finished)."""
    folder = Path(folder)
    repeated = json.loads(RunFolder(folder).repeats.read_text())
    runs = [folder / Path(r).name for r in repeated["runs"]]  # each seed's folder inside it, wherever it moved
    for run in runs:
        if not RunFolder(run).metrics.is_file():
            raise DataError(run, "a seed of this --repeats folder without metrics.json: rerun its train command")
    _write_run_reports([str(r) for r in runs], gallery)
    keys = list(repeated["summary"])
    seeds = []
    for seed, run in zip(repeated["seeds"], runs, strict=True):
        m = json.loads(RunFolder(run).metrics.read_text())
        link = f"{run.name}/{RunFolder(run).report.name}"
        seeds.append({"seed": seed, "metrics": {k: m.get(k) for k in keys}, "link": link})
    shown = [k for k in keys if all(isinstance(s["metrics"][k], dict) for s in seeds)]  # headline figures with CIs
    r = {"folder": str(folder), "runs": seeds, "figures": shown, "summary": repeated["summary"]}
    out = RunFolder(folder).report
    atomic_write_text(out, render("repeats.html.j2", r=r))
    return out


def write_report(path: str | Path, gallery: bool = True) -> Path:
    """report.html for a run folder (metrics.json), a study folder (results.json) or a folder of `--repeats` runs
    (repeats.json)."""
    path = Path(path)
    if (path / "results.json").is_file():
        return write_study_report(path, gallery=gallery)
    if RunFolder(path).repeats.is_file() and not RunFolder(path).metrics.is_file():
        return write_repeats_report(path, gallery=gallery)
    return write_run_report(path, gallery=gallery)
