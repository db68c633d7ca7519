"""`medcad train | evaluate`: runs of every task and their metrics (`predict` and `explain` are in cli/predict.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

from medcad.cli.common import (
    JsonOpt,
    _fail,
    _report,
    _say_notes,
    _stoppable,
    app,
    with_data_options,
    with_options,
)
from medcad.config import DataOptions, check_nsd_tolerance
from medcad.errors import ConfigError, MedcadError


class _Setting(NamedTuple):
    """A training setting on the command line: a `TrainConfig` field's option."""

    type: type
    help: str | None
    default: object = None  # None: not given, the config's default stands
    option: str | None = None  # the option's name where it is not the field's


# The `TrainConfig` fields that `medcad train` takes as options, in the order `--help` lists them (see
# `with_train_options`).
TRAIN_SETTINGS: dict[str, _Setting] = {
    "task": _Setting(
        str,
        "classify, segment, segment-multiclass (label maps), multitask (mask + class), detect or multilabel.",
        "classify",
    ),
    "model": _Setting(str, "Any timm backbone name (the encoder for segment).", "tf_efficientnet_lite0"),
    "arch": _Setting(str, "segment/multitask: attention-unetpp, unet, unetpp, unet-vgg11, dsconv-resnet."),
    "decoder_channels": _Setting(
        str,
        "unet, unetpp, unet-vgg11: widths of the five decoder blocks, deepest first; auto: 128,64,32,16,16 for unet, "
        "smp's 256,128,64,32,16 for the others.",
    ),
    "missing_masks": _Setting(
        str, "segment/multitask: images without a mask are an error, empty (lesion-free), or leave-out (named)."
    ),
    "nsd_tolerance": _Setting(
        float, "segment/multitask: NSD's tolerance, % of each image's diagonal (frames carry no mm spacing)."
    ),
    "mask_labels": _Setting(
        str, "segment-multiclass: the class of each mask value, e.g. 1=cyst,2=stone (default: dataset.json)."
    ),
    "class_loss_weight": _Setting(float, "multitask: weight of the class loss."),
    "frame_classes": _Setting(str, "detect: labels whose frames are whole-frame boxes, e.g. normal,unclear."),
    "positive": _Setting(
        str,
        "classify/multitask with two classes: the positive one (sensitivity, ROC, operating points); default the "
        "finding beside its negation (normal, no X, non-X), malignant beside benign, else the last label.",
    ),
    "dropout": _Setting(float, "Dropout before the class layer."),
    "weights": _Setting(str, "auto (offline ImageNet if shipped), hub, none, or a file.", "auto"),
    "head": _Setting(str, "linear, or mlp (features-2048-1024-n).", "linear"),
    "group_by": _Setting(str, "auto, patient, duplicates, patient+duplicates, none.", option="group"),
    "epochs": _Setting(int, "Fine-tuning epochs (classify: stage 2; 0: head only)."),
    "head_epochs": _Setting(int, "Stage-1 epochs on cached features."),
    "unfreeze": _Setting(int, "Backbone parameter groups trained in stage 2."),
    "freeze_stride": _Setting(
        int,
        "A pretrained encoder's stem and stages up to this output stride keep ImageNet weights "
        "(default 8 for classifiers and detectors, 0 for mask models and stage lists; 0: fine-tune all; "
        "a resumed run keeps its own).",
    ),
    "lr": _Setting(float, "Stage-2 backbone learning rate."),
    "head_lr": _Setting(float, "Stage-1 learning rate of the head on cached features."),
    "optimizer": _Setting(str, "adam or adamw (default), every task and stage."),
    "weight_decay": _Setting(float, "Weight decay (default 1e-4)."),
    "schedule": _Setting(str, "Learning rate over each fit's epochs: cosine (default) or constant."),
    "new_layer_lr_factor": _Setting(
        float, "New layers (head, decoder, detection heads, from-scratch models) learn at this x lr (5)."
    ),
    "stages": _Setting(
        str,
        "classify/multilabel: stages replacing head-then-fine-tune, EPOCHS:LAYERS:LR[:OPTIMIZER][:cached] "
        "comma-separated, LAYERS all, head or lastN (weight layers from the output), e.g. "
        "'5:all:1e-4:adam,30:last4:1e-3:adam'; or a JSON list of {epochs, layers, lr, optimizer, cached}.",
    ),
    "batch_size": _Setting(int, "Stage-2 batch size."),
    "image_size": _Setting(int, "Square input size in pixels."),
    "augment": _Setting(str, "kvasir, light or none."),
    "bilateral": _Setting(bool, "Bilateral-filter denoising (ultrasound)."),
    "interface": _Setting(str, "Ultrasound: none, crop (to the imaging area), crop+marks (also inpaint marks)."),
    "oversample": _Setting(bool, "Oversample rare classes in training folds."),
    "class_weights": _Setting(bool, "Class-weighted loss."),
    "precision": _Setting(str, "auto (bf16 where the device has it, else fp16 on GPUs, fp32), bf16-mixed, ..."),
    "tta": _Setting(str, "Test-time augmentation: auto (mirror for mask models), none, hflip."),
    "accelerator": _Setting(str, "auto (a GPU when present, else the CPU), cpu or gpu."),
    "devices": _Setting(int, "Processes per node: GPUs, or CPU processes (DDP)."),
    "num_nodes": _Setting(int, "Machines (launch one process per device with srun)."),
    "strategy": _Setting(str, "auto (ddp for several processes) or a Lightning strategy."),
    "logger": _Setting(str, "Comma-separated: tensorboard, csv, mlflow (default tensorboard,csv), or none."),
    "tracking_uri": _Setting(str, "MLflow tracking server or store (default: sqlite mlflow.db beside the run)."),
    "patience": _Setting(int, "Early stopping: epochs without a better validation score."),
    "keep_checkpoints": _Setting(
        bool, "Keep each finished fold's training checkpoints (best and last .ckpt); model.pt holds its weights."
    ),
    "seed": _Setting(int, None),
    "threads": _Setting(int, "Torch CPU threads."),
    "val_fraction": _Setting(float, "Validation fraction carved (grouped) from each training part."),
}

_FIELD = {s.option or field: field for field, s in TRAIN_SETTINGS.items()}
TRAIN_OPTIONS = {
    s.option or field: (
        Annotated[s.type if s.default is not None else s.type | None, typer.Option(help=s.help)],
        s.default,
    )
    for field, s in TRAIN_SETTINGS.items()
}


def with_train_options(**after: tuple[str, ...]):
    """Give a command the training settings (`TRAIN_SETTINGS`); it receives the given ones (not None) by field name
    as `settings: dict`. `after` places the command's own options among them (see `with_options`)."""
    return with_options(
        TRAIN_OPTIONS, "settings", lambda values: {_FIELD[k]: v for k, v in values.items() if v is not None}, after
    )


@app.command()
@with_data_options
@with_train_options(head=("folds", "holdout"), group=("splits",), seed=("repeats",), val_fraction=("make_report",))
def train(
    path: Annotated[Path, typer.Argument(help="Dataset: folder, CSV/TSV manifest or COCO JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (resumed when it exists).")] = Path("runs/run"),
    folds: Annotated[int | None, typer.Option(help="k-fold CV, grouped and stratified.")] = None,
    holdout: Annotated[float | None, typer.Option(help="Single split with this test fraction.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Reuse this splits.json (same folds as another run).")] = None,
    repeats: Annotated[
        int, typer.Option(help="Train this many times (seeds seed, seed+1, ...) on the same splits; mean ± sd.")
    ] = 1,
    make_report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
    jobs: Annotated[
        int,
        typer.Option(
            help="Worker processes training folds side by side, the cores shared among them (small images on few "
            "cores train faster so)."
        ),
    ] = 1,
    *,
    settings: dict[str, object],
    options: DataOptions,
) -> None:
    """Train and evaluate a model with grouped cross-validation or a holdout split; writes a run folder."""
    from medcad.devices import process_group_left

    with _stoppable(lambda: out), process_group_left():
        try:
            from medcad.config import TrainConfig
            from medcad.engine.train import train_run
            from medcad.models.backbones import check_model_name

            check_model_name(settings["model"])
            overrides = {**settings, **options.given()}
            if holdout is not None and folds is not None:  # it had trained a holdout split, --folds unsaid
                raise ConfigError(
                    f"--folds {folds} and --holdout {holdout:g} ask for two kinds of split: give one (--folds k for "
                    "k-fold cross-validation, --holdout f for one test part of that share)"
                )
            if holdout is not None:
                overrides["holdout"] = holdout
            elif folds is not None:
                overrides["folds"] = folds
            cfg = TrainConfig().replace(**overrides)  # a holdout split has no folds (TrainConfig.__post_init__)
            from medcad.engine.modules import schedule_note
            from medcad.report.console import print_metrics
            from medcad.run import saved_settings, settled_settings

            # optimiser, learning rate per parameter group, schedule (or stages): as the run trains, a resumed one
            # with its own saved settings (a detector begun before the stride-8 default resumes at 0)
            _say_notes([schedule_note(settled_settings(cfg, saved_settings(out)))])
            if repeats > 1 and jobs != 1:
                raise ConfigError("--jobs trains the folds of one run: leave it out with --repeats")
            if repeats > 1:
                from medcad.engine.train import train_repeats

                summary = train_repeats(path, out, cfg, repeats, splits_path=splits)
                _report(out, make_report)  # each seed's report, and the seeds side by side
                typer.echo(json.dumps(summary["summary"], indent=1))
                typer.echo(f"{out / 'repeats.json'}: mean ± sd over {repeats} seeds on the same splits")
                return
            if jobs != 1:
                from medcad.study.executors import train_in_workers

                metrics = train_in_workers(path, out, cfg, jobs, splits)
            else:
                metrics = train_run(path, out, cfg, splits_path=splits)
            if not metrics:  # a DDP process other than rank 0: rank 0 reports
                return
            print_metrics(metrics, out)
            _report(out, make_report)
        except MedcadError as e:
            _fail(e)


@app.command()
@with_data_options
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[Path | None, typer.Option(help="External test set (same labels): predict and score it.")] = None,
    shortcut_check: Annotated[
        bool,
        typer.Option(
            "--shortcut-check",
            help="Also score the test images with the lesion blanked and with only the lesion kept (runs with masks).",
        ),
    ] = False,
    unseen_labels: Annotated[
        str,
        typer.Option(
            help="--data: images without a label or of labels the model never saw: stop (name them), or leave-out "
            "(score the rest)."
        ),
    ] = "stop",
    make_report: Annotated[
        bool, typer.Option("--report/--no-report", help="--data: rewrite the run's report.html with this set.")
    ] = True,
    nsd_tolerance: Annotated[
        float | None,
        typer.Option(help="Masks: NSD's tolerance, % of each image's diagonal, for this scoring (default: the run's)."),
    ] = None,
    missing_masks: Annotated[
        str | None,
        typer.Option(
            help="--data, masks: the set's images without a mask are an error, empty (lesion-free) or leave-out "
            "(named) (default: the run's setting)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    *,
    options: DataOptions,
) -> None:
    """Recompute a run's metrics from its fold results, or score its models on another dataset (read with the
    data options given here, not the run's) and rewrite the run's report with it."""
    try:
        from medcad.engine.evaluate import evaluate_run
        from medcad.study.external import evaluate_external

        if nsd_tolerance is not None:  # before anything is predicted
            check_nsd_tolerance(nsd_tolerance)
        if missing_masks is not None and data is None:
            raise ConfigError("--missing-masks is --data's: a run's own images are read as it was trained")
        if data is not None:
            metrics, where, notes = evaluate_external(run, data, options, unseen_labels, nsd_tolerance, missing_masks)
            _say_notes(notes)
        else:
            metrics, where = evaluate_run(run, nsd_tolerance)
        if shortcut_check:
            from medcad.study.shortcut import shortcut_check as check

            metrics["shortcut_check"] = check(run)
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(metrics, indent=1, default=str))
    else:
        from medcad.report.console import print_metrics

        print_metrics(metrics, where)
    _report(run, data is not None and make_report, err=as_json, warn=True)  # with the external set
