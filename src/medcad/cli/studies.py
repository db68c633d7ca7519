"""`medcad study | report | demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medcad.cli.common import JsonOpt, _fail, _report, _stoppable, app, with_data_options
from medcad.config import DataOptions
from medcad.errors import MedcadError


@app.command()
@with_data_options
def study(
    study_file: Annotated[Path, typer.Argument(help="Study YAML: data, task, models, protocol, settings.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Study folder (default: studies/<its name> beside the file).")
    ] = None,
    make_report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
    executor: Annotated[
        str, typer.Option(help="local (runs one after another here) or ray (each fold a task on a Ray cluster).")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: a local one).")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            help="local: worker processes training folds side by side, the cores shared among them (small images on "
            "few cores train faster so)."
        ),
    ] = 1,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan", help="Print every run, its settings and training stages, and stop (trains and writes nothing)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    *,
    options: DataOptions,
) -> None:
    """Run (or resume) a study: protocols, several models on the same folds, DeLong comparisons, one report.
    Data options given here override the study file's settings."""
    if plan:
        try:
            from medcad.study.runner import plan_study

            planned = plan_study(study_file, options, out)
        except MedcadError as e:
            _fail(e)
        if as_json:
            import json

            typer.echo(json.dumps(planned, indent=1, default=str))
        else:
            _print_plan(planned)
        return
    from medcad.devices import process_group_left

    with _stoppable(lambda: _study_folder(study_file, out)), process_group_left():
        try:
            from medcad.report.console import print_study
            from medcad.study.runner import run_study

            results = run_study(study_file, out, data_options=options, executor=executor, address=address, jobs=jobs)
            print_study(results)
            _report(Path(results["splits"]).parent, make_report)
        except MedcadError as e:
            _fail(e)


def _study_folder(study_file: Path, out: Path | None) -> Path:
    """The folder a study trains in (`--out`, or its default beside the study file)."""
    from medcad.study.runner import study_folder
    from medcad.study.spec import load_study

    try:
        return study_folder(load_study(study_file, check_data=False), out)
    except MedcadError:
        return out or study_file.parent


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "medcad's defaults"


def _print_plan(plan: dict) -> None:
    """`study --plan`: the study, then each run with its own settings and one line per training stage."""
    found = (
        ""
        if plan["data_found"]
        else " (not found yet: the study file's `data:` is read from the file's own folder; the reference studies'"
        " first comment says how to get theirs)"
    )
    typer.echo(f"study {plan['name']}: {plan['file']}")
    typer.echo(f"data: {plan['data']}{found}")
    typer.echo(f"study folder: {plan['folder']}")
    domains = f", domains {', '.join(plan['domains'])}" if plan["domains"] else ""
    typer.echo(f"task {plan['task']}, protocol {plan['protocol']}{domains}; splits: {plan['splits']}")
    typer.echo(f"settings (every run; the rest are medcad's defaults): {_settings_text(plan['settings'])}")
    typer.echo(f"{len(plan['runs'])} runs:")
    for i, r in enumerate(plan["runs"], 1):
        trains = r["train_domains"] if r["train_domains"] == "all" else " + ".join(r["train_domains"])
        init = f"; continues from {r['init']}" if r["init"] else ""
        state = {
            "new": "",
            "resumes": " (begun: resumes with its saved settings)",
            "finished": " (finished: skipped)",
            "pools again": " (finished: pooled again with the study's positive class, not trained)",
        }
        typer.echo(f"{i:3d}. {r['name']}  [{r['step']}; trains on {trains}{init}] -> {r['run']}{state[r['state']]}")
        if r["settings"]:
            typer.echo(f"       own settings: {_settings_text(r['settings'])}")
        for line in r["training"]:
            typer.echo(f"       {line}")
    typer.echo("nothing trained (--plan); `--plan --json` lists every setting of every run")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run or study folder.")],
    gallery: Annotated[bool, typer.Option(help="Include the Grad-CAM gallery.")] = True,
) -> None:
    """Write the self-contained report.html of a run or study."""
    try:
        from medcad.report.html import write_report

        path = write_report(run, gallery=gallery)
    except MedcadError as e:
        _fail(e)
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo data and results.")] = Path("runs/demo"),
    seed: int = 0,
) -> None:
    """Run medcad end to end on a built-in synthetic dataset (offline)."""
    try:
        from medcad.demo import run_demo

        run_demo(out, seed=seed)
    except MedcadError as e:
        _fail(e)
