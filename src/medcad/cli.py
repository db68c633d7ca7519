"""The `medcad` command line. Heavy modules are imported inside commands so that `--help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medcad.errors import MedcadError

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


def _fail(err: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
    raise typer.Exit(2)


def _load(path: Path, layout: str | None, pattern: str | None, mask_suffix: str):
    from medcad.data.manifest import load_manifest

    return load_manifest(path, layout=layout, pattern=pattern, mask_suffix=mask_suffix)


@data_app.command("inspect")
def data_inspect(
    path: Path,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
    out: Annotated[Path, typer.Option(help="Where to write the manifest CSV.")] = Path("manifest.csv"),
    as_json: JsonOpt = False,
) -> None:
    """Summarise a dataset (any supported layout) and write its manifest.csv."""
    try:
        from medcad.data.summary import summarize

        manifest = _load(path, layout, pattern, mask_suffix)
        summary = summarize(manifest)
        summary["manifest_csv"] = str(manifest.save(out))
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    from medcad.report.console import print_summary

    print_summary(summary)


@data_app.command("audit")
def data_audit(
    path: Path,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
    splits: Annotated[
        Path | None, typer.Option(help="splits.json: report groups that straddle train and test.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find unreadable files, mask problems, empty labels, duplicates (also across labels) and split leakage."""
    try:
        from medcad.data.audit import audit
        from medcad.data.splits import load_splits

        manifest = _load(path, layout, pattern, mask_suffix)
        split_data = load_splits(splits, manifest) if splits else None
        result = audit(manifest, split_data, progress=not as_json)
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from medcad.report.console import print_audit

    print_audit(result)


@data_app.command("split")
def data_split(
    path: Path,
    out: Annotated[Path, typer.Option(help="Where to write splits.json.")] = Path("splits.json"),
    folds: Annotated[int, typer.Option(help="k for grouped stratified k-fold.")] = 5,
    holdout: Annotated[float | None, typer.Option(help="Test fraction for a single holdout split.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Validation fraction carved from each training part.")] = 0.15,
    group: Annotated[str, typer.Option(help="auto, patient, duplicates, patient+duplicates, none.")] = "auto",
    seed: int = 0,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
) -> None:
    """Write grouped, stratified splits (k-fold or holdout) to splits.json."""
    try:
        from medcad.data.splits import make_splits, save_splits

        manifest = _load(path, layout, pattern, mask_suffix)
        splits = make_splits(
            manifest, folds=folds, holdout=holdout, val_fraction=val_fraction, seed=seed, group_by=group, progress=True
        )
        save_splits(splits, out)
    except MedcadError as e:
        _fail(e)
    sizes = ", ".join(f"{len(f['train'])}/{len(f['val'])}/{len(f['test'])}" for f in splits["folds"])
    typer.echo(
        f"{out}: {splits['method']}, {splits['n_folds']} fold(s), grouped by {splits['group_by']} "
        f"({splits['n_groups']} groups); train/val/test per fold: {sizes}"
    )


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
