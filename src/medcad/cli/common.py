"""The `medcad` app, shared options and output helpers of the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="medcad: computer-aided diagnosis studies on endoscopy and ultrasound images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, audit and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

LayoutOpt = Annotated[str | None, typer.Option(help="Force a layout: folders, csv, images-masks, coco.")]
PatternOpt = Annotated[
    str | None, typer.Option(help="Folder pattern, e.g. '{label}', '{domain}/{label}', '{group}/{label}'.")
]
MaskSuffixOpt = Annotated[str, typer.Option(help="Masks beside images: <stem><suffix>[_n].png")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
LabelsOpt = Annotated[str | None, typer.Option(help="Allowed labels, comma-separated; other rows are reported.")]


def _fail(err: Exception) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(2)


def _emit(obj: dict, as_json: bool, printer: str) -> None:
    """Print a result as one JSON object, or as tables with the named function of medcad.report.console."""
    if as_json:
        typer.echo(json.dumps(obj, indent=1))
        return
    from medcad.report import console

    getattr(console, printer)(obj)


def _report(folder: Path, wanted: bool) -> None:
    """Write a run's or study's report.html and say where it is."""
    if wanted:
        from medcad.report.html import write_report

        typer.echo(f"report: {write_report(folder)}")


def _load(path: Path, layout: str | None, pattern: str | None, mask_suffix: str, labels: str | None = None):
    from medcad.data.manifest import load_manifest

    allowed = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    return load_manifest(path, layout=layout, pattern=pattern, mask_suffix=mask_suffix, labels=allowed)


def _echo_video(v: dict) -> None:
    typer.echo(
        f"{v['video']}: {v['frames_predicted']} frames at {v['frames_per_s']:.1f} frames/s end to end "
        f"({v['latency_ms_per_frame']:.1f} ms/frame model time); {v['csv']}; {v['annotated']}"
    )


def _print_table(table, as_json: bool, where: str) -> None:
    if as_json:
        typer.echo(table.to_json(orient="records", indent=1))
        return
    from rich.console import Console

    Console().print(table.to_string(index=False, float_format="%.3f"))
    typer.echo(where)
