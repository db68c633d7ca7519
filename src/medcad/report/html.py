"""Render self-contained HTML reports (figures embedded) for runs and studies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from medcad import __version__
from medcad.data.manifest import atomic_write_text
from medcad.errors import DataError


def _env():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("medcad.report", "templates"), autoescape=select_autoescape(["j2", "html"]))
    return env


def render(template: str, **context) -> str:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return _env().get_template(template).render(version=__version__, date=now, **context)


def write_run_report(run: str | Path, gallery: bool = True, shared: dict | None = None) -> Path:
    """Write RUN/report.html and return its path. `shared`: what the runs of one study reuse (see collect_run)."""
    from medcad.report.run_report import collect_run

    run = Path(run)
    if not (run / "metrics.json").is_file():
        raise DataError(run, "no metrics.json: the run has not finished (rerun its train command to resume it)")
    out = run / "report.html"
    atomic_write_text(out, render("run.html.j2", r=collect_run(run, gallery=gallery, shared=shared)))
    return out


def write_study_report(study: str | Path, gallery: bool = True) -> Path:
    """Write STUDY/report.html (comparison, cross-domain matrix, DeLong) and each run's own report."""
    from medcad.report.study_report import collect_study

    study = Path(study)
    s = collect_study(study)
    shared: dict = {}  # the runs read the same data with the same splits: summary, audit and model cards once
    for r in s["runs"]:
        write_run_report(r["run"], gallery=gallery, shared=shared)
    out = study / "report.html"
    atomic_write_text(out, render("study.html.j2", s=s))
    return out


def write_report(path: str | Path, gallery: bool = True) -> Path:
    """report.html for a run folder (metrics.json) or a study folder (results.json)."""
    path = Path(path)
    if (path / "results.json").is_file():
        return write_study_report(path, gallery=gallery)
    return write_run_report(path, gallery=gallery)
