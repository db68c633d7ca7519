"""`medcad data ...`: inspect, audit, split datasets and extract video frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medcad.cli.common import JsonOpt, LabelsOpt, _emit, _fail, _load, data_app, with_data_options
from medcad.config import DataOptions
from medcad.errors import MedcadError


@data_app.command("inspect")
@with_data_options
def data_inspect(
    path: Path,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the dataset as read to this manifest CSV (a valid input: paths relative to it)."),
    ] = None,
    labels: LabelsOpt = None,
    as_json: JsonOpt = False,
    *,
    options: DataOptions,
) -> None:
    """Summarise a dataset (any supported layout); with --out, write it as read to a manifest CSV."""
    try:
        from medcad.data.summary import summarize
        from medcad.tasks import images_per_finding

        manifest = _load(path, options, labels, quiet=True)  # the summary shows the notes
        summary = summarize(manifest)
        summary["findings"] = images_per_finding(manifest.table["label"])  # multi-label cells, as a run reads them
        summary["manifest_csv"] = str(manifest.save(out)) if out else "not written (--out FILE writes it)"
    except MedcadError as e:
        _fail(e)
    _emit(summary, as_json, "print_summary")


@data_app.command("audit")
@with_data_options
def data_audit(
    path: Path,
    splits: Annotated[
        Path | None, typer.Option(help="splits.json: report groups that straddle train and test.")
    ] = None,
    labels: LabelsOpt = None,
    mask_labels: Annotated[
        str | None,
        typer.Option(
            help="Label-map masks: the class of each value, e.g. 1=cyst,2=stone (default: a dataset.json or "
            "labelmap.txt beside the masks); every mask is then read as segment-multiclass reads it."
        ),
    ] = None,
    as_json: JsonOpt = False,
    *,
    options: DataOptions,
) -> None:
    """Find unreadable files, mask problems, empty labels, duplicates (also across labels) and split leakage."""
    try:
        from medcad.data.audit import audit
        from medcad.data.splits import load_splits

        manifest = _load(path, options, labels)
        split_data = load_splits(splits, manifest) if splits else None
        result = audit(manifest, split_data, progress=not as_json, mask_labels=mask_labels)
    except MedcadError as e:
        _fail(e)
    _emit(result, as_json, "print_audit")


@data_app.command("split")
@with_data_options
def data_split(
    path: Path,
    out: Annotated[Path, typer.Option(help="Where to write splits.json.")] = Path("splits.json"),
    folds: Annotated[int, typer.Option(help="k for grouped stratified k-fold.")] = 5,
    holdout: Annotated[float | None, typer.Option(help="Test fraction for a single holdout split.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Validation fraction carved from each training part.")] = 0.15,
    group: Annotated[str, typer.Option(help="auto, patient, duplicates, patient+duplicates, none.")] = "auto",
    seed: int = 0,
    split_column: Annotated[
        str | None,
        typer.Option(
            help="Keep the dataset's own split: a manifest column of train / val / test (one fold; groups that "
            "straddle its test part are named)."
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(help="The task the splits are for (multilabel: stratified by each image's rarest finding)."),
    ] = "classify",
    *,
    options: DataOptions,
) -> None:
    """Write grouped, stratified splits (k-fold or holdout) to splits.json, or the dataset's own (--split-column)."""
    try:
        from medcad.data.splits import make_splits, save_splits
        from medcad.tasks import get_task, split_strata

        strata_of = get_task(task)  # an unknown task fails before the data is read
        manifest = _load(path, options)
        splits = make_splits(
            manifest,
            folds=folds,
            holdout=holdout,
            val_fraction=val_fraction,
            seed=seed,
            group_by=group,
            progress=True,
            split_column=split_column,
            strata=split_strata(manifest, strata_of),
        )
        save_splits(splits, out)
    except MedcadError as e:
        _fail(e)
    for note in splits.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    sizes = ", ".join(f"{len(f['train'])}/{len(f['val'])}/{len(f['test'])}" for f in splits["folds"])
    typer.echo(
        f"{Path(out).resolve()}: {splits['method']}, {splits['n_folds']} fold(s), grouped by {splits['group_by']} "
        f"({splits['n_groups']} groups); train/val/test per fold: {sizes}"
    )


@data_app.command("frames")
def data_frames(
    video: Path,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for frames/ and manifest.csv.")] = Path("frames"),
    every: Annotated[int, typer.Option(help="Keep every N-th frame.")] = 10,
    blur_threshold: Annotated[
        float | None, typer.Option(help="Frames with sharpness below this get the label 'unclear'.")
    ] = None,
) -> None:
    """Extract frames from a procedure video with a sharpness score (variance of the Laplacian)."""
    try:
        import json

        from medcad.data.frame_extraction import extract_frames
        from medcad.data.frames import decode_notes

        manifest = extract_frames(video, out, every=every, blur_threshold=blur_threshold)
        decoded = json.loads((manifest.parent / "decode.json").read_text())
    except MedcadError as e:
        _fail(e)
    for line in decode_notes(decoded):
        typer.echo(line, err=True)
    typer.echo(
        f"{manifest}: frames with times and sharpness scores (low = blurred; label them 'unclear'); "
        f"{decoded['frames_decoded']} frames decoded, {decoded['frames_dropped']} dropped "
        f"(listed in {manifest.parent / 'decode.json'})"
    )
