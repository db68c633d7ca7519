"""The `medcad` app, shared options and output helpers of the commands."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from medcad.config import DataOptions
from medcad.runfolder import RunFolder, fold_words

# Prediction backends (medcad.inference.predictor, .onnx), named here so that `--help` imports no torch
BACKENDS = (
    "torch-fp32",
    "torch-bf16",
    "onnx-fp32",
    "onnx-int8",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
)
BackendOpt = Annotated[
    str,
    typer.Option(
        help="auto (the fastest backend that agrees >= 0.99 with torch-fp32 for this model on this machine, measured "
        "once on the run's held-out images and kept in RUN/backends.json; a predict of fewer than 256 images with "
        "nothing measured before runs on torch-fp32, where measuring cannot pay), or one of "
        + ", ".join(BACKENDS)
        + "."
    ),
]

app = typer.Typer(
    help="medcad: computer-aided diagnosis studies on endoscopy and ultrasound images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one line each, like the `note:` lines: what happened, not where in medcad's
    source (a library's own warnings keep their category name)."""
    kind = "warning" if category is UserWarning else category.__name__
    return f"{kind}: {message}\n"


def _print_version(value: bool) -> None:
    if value:
        from medcad import __version__

        typer.echo(f"medcad {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print medcad's version (`medcad checks`: the libraries' and the machine's) and exit.",
        ),
    ] = False,
) -> None:
    import warnings

    warnings.formatwarning = _warning_line


data_app = typer.Typer(help="Inspect, audit and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# The dataset-reading options, the same on every command that reads a dataset (see `with_data_options`).
_DATA = "Data"
DATA_OPTIONS: dict[str, tuple[object, object]] = {
    "layout": (
        Annotated[
            str | None,
            typer.Option(
                help="Force a layout: folders, csv, xlsx, images-masks, coco, labelme, cvat, yolo, voc, via, datalist.",
                rich_help_panel=_DATA,
            ),
        ],
        None,
    ),
    "pattern": (
        Annotated[
            str | None,
            typer.Option(
                help="Folder pattern, e.g. '{label}', '{domain}/{label}', '{group}/{label}'.", rich_help_panel=_DATA
            ),
        ],
        None,
    ),
    "mask_suffix": (
        Annotated[str, typer.Option(help="Masks beside images: <stem><suffix>[_n].png", rich_help_panel=_DATA)],
        "_mask",
    ),
    "mask_shapes": (
        Annotated[
            str | None,
            typer.Option(
                help="Annotation files: the shape labels drawn into the lesion masks, e.g. polyp,adenoma (others stay "
                "boxes); default every shape.",
                rich_help_panel=_DATA,
            ),
        ],
        None,
    ),
    "images": (
        Annotated[
            str | None,
            typer.Option(help="Paired folders: the images folder (relative to the dataset).", rich_help_panel=_DATA),
        ],
        None,
    ),
    "masks": (
        Annotated[
            str | None,
            typer.Option(help="Paired folders: the masks folder, same file names.", rich_help_panel=_DATA),
        ],
        None,
    ),
    "group_from": (
        Annotated[
            str | None,
            typer.Option(
                help="Regex on each image path whose group 'patient' (or first group) is the patient id, "
                "e.g. '^(P\\d+)_' or '^([^/]+)/'.",
                rich_help_panel=_DATA,
            ),
        ],
        None,
    ),
    "label_map": (
        Annotated[
            str | None,
            typer.Option(help="Rename labels (rows and boxes): 'old=new,old2=new2'.", rich_help_panel=_DATA),
        ],
        None,
    ),
    "allow_missing": (
        Annotated[
            bool,
            typer.Option(
                "--allow-missing",
                help="Go on when rows are left out (missing files, unknown labels); by default train, evaluate and "
                "predict stop and list them.",
                rich_help_panel=_DATA,
            ),
        ],
        False,
    ),
    "new_images": (
        Annotated[
            str,
            typer.Option(
                help="Images added since the run was made (or not in --splits): stop (say so) or ignore.",
                rich_help_panel=_DATA,
            ),
        ],
        "stop",
    ),
}


def with_options(table: dict[str, tuple[object, object]], receive: str, make, after=None):
    """A decorator that gives a command the options of `table` (name -> (annotation, default)), one definition for
    every command that takes them; the command receives `make(values)` (the values by name) as its keyword
    `receive` instead.

    The options follow the command's own; `after` (a table option -> the command's own options) places some of the
    command's own options after that table option instead, so that `--help` lists them there.
    """

    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        own = {n: p.replace(annotation=hints.get(n, p.annotation)) for n, p in sig.parameters.items() if n != receive}
        placed = {n: name for name, names in (after or {}).items() for n in names}
        unknown = (set(after or {}) - set(table)) | (set(placed) - set(own))
        if unknown:
            raise TypeError(f"{fn.__name__}: no option(s) {', '.join(sorted(unknown))} to place")
        params = [p for n, p in own.items() if n not in placed]
        for name, (ann, default) in table.items():
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
            params += [own[n].replace(kind=inspect.Parameter.KEYWORD_ONLY) for n in own if placed.get(n) == name]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, default) for name, (_, default) in table.items()}
            return fn(*args, **{receive: make(values)}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect._empty}
        del wrapper.__wrapped__  # typer must read the new signature, not the wrapped function's
        return wrapper

    return decorate


def with_data_options(fn):
    """Give a command the dataset-reading options (`DATA_OPTIONS`); it receives them as `options: DataOptions`.

    One definition for every command that reads a dataset, so they all take the same options.
    """
    return with_options(DATA_OPTIONS, "options", lambda values: DataOptions(**values))(fn)


DeviceOpt = Annotated[
    str, typer.Option(help="Where torch models run: auto (the first GPU if any, else the CPU), cpu, cuda or cuda:N.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
OperatingPointOpt = Annotated[
    str | None,
    typer.Option(
        help="Two-class classify / multitask runs: name the positive class at this validated operating point "
        "(youden, sens>=0.90, spec>=0.95, ...: the report's and `medcad serve`'s /model), its threshold chosen on "
        "validation data; default: the most probable class. Detection runs: f1 keeps boxes from the score of the "
        "highest box F1 on validation (not with --threshold)."
    ),
]
LabelsOpt = Annotated[str | None, typer.Option(help="Allowed labels, comma-separated; other rows are reported.")]


def _fail(err: Exception) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(2)


@contextlib.contextmanager
def _stoppable(folder: Callable[[], Path]):
    """A command that trains stops on SIGTERM (what schedulers send) or SIGINT (Ctrl-C): at once, or at a fit's next
    step (medcad.stopping), saying on stderr what it keeps (`folder()`: the run, repeats or study folder) and that the
    same command resumes, with the status a shell gives a process the signal ended (128 + its number: 143, 130)."""
    from medcad.stopping import Stopped, stoppable

    try:
        with stoppable():
            yield
    except Stopped as stop:
        typer.echo(
            f"stopped by {stop.name}: {_kept(folder())}. The same command resumes: finished folds are kept, an "
            "unfinished fold continues from its last saved epoch",
            err=True,
        )
        raise typer.Exit(stop.code) from None


def _kept(folder: Path) -> str:
    """What a stopped run keeps: its finished folds and those not finished; for a folder of runs (`--repeats`'
    seed_<s>, a study's runs/<name>), how many runs are finished and the folds of the others. (Read from the folder
    alone, without importing the engine: a scheduler's grace period after SIGTERM is short.)"""
    if RunFolder(folder).config.is_file():
        return _run_kept(RunFolder(folder))
    runs = sorted(p.parent for pattern in ("*/config.json", "runs/*/config.json") for p in folder.glob(pattern))
    if not runs:
        return f"{folder} holds no run yet"
    finished = [r for r in runs if RunFolder(r).metrics.is_file()]
    others = [_run_kept(RunFolder(r)) for r in runs if r not in finished]
    return "; ".join([f"{folder}: {len(finished)} of {len(runs)} run(s) begun finished", *others])


def _run_kept(run: RunFolder) -> str:
    """A run folder's finished folds (those with a result.json) and those of its splits.json not finished."""
    every = [f["fold"] for f in json.loads(run.splits.read_text())["folds"]] if run.splits.is_file() else []
    finished = run.finished(every)
    todo = [k for k in every if k not in finished]
    if not every:
        return f"{run.root} has no fold yet"
    if not todo:
        return f"{run.root} keeps all its {len(every)} folds (finished)"
    kept = f"keeps {fold_words(finished)} (finished)" if finished else "has no finished fold yet"
    return f"{run.root} {kept}; {fold_words(todo)} not finished"


def _emit(obj: dict, as_json: bool, printer: str) -> None:
    """Print a result as one JSON object, or as tables with the named function of medcad.report.console_data."""
    if as_json:
        typer.echo(json.dumps(obj, indent=1))
        return
    from medcad.report import console_data

    getattr(console_data, printer)(obj)


def _report(folder: Path, wanted: bool, err: bool = False, warn: bool = False) -> None:
    """Write a run's or study's report.html and say where it is (on stderr with `err`: --json output stays clean).
    With `warn`, a report that cannot be made is a warning, not an error (what was shown before it stands)."""
    if not wanted:
        return
    from medcad.errors import MedcadError
    from medcad.report.html import write_report

    try:
        typer.echo(f"report: {write_report(folder)}", err=err)
    except MedcadError as e:
        if not warn:
            raise
        typer.echo(f"warning: report not rewritten: {e}", err=True)


def _load(path: Path, options: DataOptions, labels: str | None = None, quiet: bool = False):
    """Read a dataset with the command's data options; say how it was read (on stderr) unless quiet."""
    from medcad.data.layouts import load_manifest

    allowed = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    manifest = load_manifest(path, options, labels=allowed)
    if not quiet:
        _say_notes(manifest.notes)
    return manifest


def _say_notes(notes: list[str]) -> None:
    """Print how a dataset was read, one line each, on stderr (so --json output stays clean)."""
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def _serving_predictor(run, fold, backend, threads, threshold, device, operating_point, images=None):
    """The predictor of `medcad predict` and `medcad serve` (`load_predictor`; `images`: how many predict will
    predict, None for serve), with which backend it runs on and why (`--backend auto` decides per model, machine and
    job size) and, at an operating point, its decision, on stderr."""
    from medcad.inference.card import class_decision
    from medcad.inference.registry import load_predictor

    given = {} if threshold is None else {"threshold": threshold}  # else the predictor's default, 0.5
    predictor = load_predictor(run, fold, backend, device, operating_point, images, threads=threads, **given)
    decision = [f"decision: {class_decision(predictor)}"] if predictor.cut else []
    if predictor.operating_point and not predictor.cut:  # a detector at its validated box-score threshold
        ensemble = len(predictor.files) > 1
        merged = (
            (
                "; chosen per fold model, while the ensemble merges their boxes, so it may keep more false "
                "positives at it: `medcad evaluate RUN --data SET` scores what it deploys"
            )
            if ensemble
            else ""
        )
        decision = [f"boxes kept from score {predictor.threshold:.3f}: the run's validated operating point "
                    f"{predictor.operating_point!r}{merged}"]  # fmt: skip
    _say_notes([f"backend {predictor.backend}: {predictor.backend_choice['reason']}", *decision])
    return predictor


def _echo_video(v: dict) -> None:
    typer.echo(
        f"{v['video']}: {v['frames_predicted']} frames at {v['frames_per_s']:.1f} frames/s end to end "
        f"({v['latency_ms_per_frame']:.1f} ms/frame model time); {v['csv']}; {v['annotated']}"
    )
    from medcad.data.frames import decode_lines

    for level, line in decode_lines(v):
        typer.echo(f"{level}: {line}")
    skipped = v.get("skipped_frames") or []
    if skipped:
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        shown = ", ".join(map(str, skipped[:10]))
        typer.echo(f"note: {v['video']}: {len(skipped)} frame(s) skipped by --realtime to keep pace: {shown}{more}")


def _distinct_tails(paths: list[str]) -> list[str]:
    """Each path's shortest tail of folders and name that no other path shares (a DICOMDIR tree's files are all
    IM000000 by name: PAT1/ST1/IM000000 and PAT2/ST1/IM000000)."""
    from collections import Counter

    parts = [Path(p).parts or ("",) for p in paths]
    out: list[str | None] = [None] * len(parts)
    for k in range(1, max(map(len, parts), default=0) + 1):
        counts = Counter(q[-k:] for q in parts)
        for i, q in enumerate(parts):
            if out[i] is None and (counts[q[-k:]] == 1 or k >= len(q)):
                out[i] = str(Path(*q[-k:]))
    return [o or "" for o in out]


def _print_table(table, as_json: bool, where: str) -> None:
    """A predictions table: JSON records, or a console table (image file names, numbers to 3 decimals)."""
    if as_json:
        typer.echo(table.to_json(orient="records", indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    shown = Table(*map(str, table.columns))
    names = _distinct_tails([str(v) for v in table["image"]]) if "image" in table.columns else None
    for k, row in enumerate(table.itertuples(index=False)):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        if names is not None:
            cells[list(table.columns).index("image")] = names[k]
        shown.add_row(*cells)
    Console().print(shown)
    typer.echo(where)
