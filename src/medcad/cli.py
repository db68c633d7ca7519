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


@data_app.command("inspect")
def data_inspect(
    path: Path,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
    out: Annotated[Path, typer.Option(help="Where to write the manifest CSV.")] = Path("manifest.csv"),
    labels: LabelsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a dataset (any supported layout) and write its manifest.csv."""
    try:
        from medcad.data.summary import summarize

        manifest = _load(path, layout, pattern, mask_suffix, labels)
        summary = summarize(manifest)
        summary["manifest_csv"] = str(manifest.save(out))
    except MedcadError as e:
        _fail(e)
    _emit(summary, as_json, "print_summary")


@data_app.command("audit")
def data_audit(
    path: Path,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
    splits: Annotated[
        Path | None, typer.Option(help="splits.json: report groups that straddle train and test.")
    ] = None,
    labels: LabelsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find unreadable files, mask problems, empty labels, duplicates (also across labels) and split leakage."""
    try:
        from medcad.data.audit import audit
        from medcad.data.splits import load_splits

        manifest = _load(path, layout, pattern, mask_suffix, labels)
        split_data = load_splits(splits, manifest) if splits else None
        result = audit(manifest, split_data, progress=not as_json)
    except MedcadError as e:
        _fail(e)
    _emit(result, as_json, "print_audit")


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
        from medcad.data.video import extract_frames

        manifest = extract_frames(video, out, every=every, blur_threshold=blur_threshold)
    except MedcadError as e:
        _fail(e)
    typer.echo(f"{manifest}: frames with sharpness scores (low = blurred; label them 'unclear')")


@app.command()
def train(
    path: Annotated[Path, typer.Argument(help="Dataset: folder, CSV/TSV manifest or COCO JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (resumed when it exists).")] = Path("runs/run"),
    task: Annotated[str, typer.Option(help="classify, segment, multitask (mask + class) or detect.")] = "classify",
    model: Annotated[
        str, typer.Option(help="Any timm backbone name (the encoder for segment).")
    ] = "tf_efficientnet_lite0",
    arch: Annotated[
        str | None, typer.Option(help="segment/multitask: attention-unetpp, unet, unetpp, unet-vgg11, dsconv-resnet.")
    ] = None,
    missing_masks: Annotated[
        str | None, typer.Option(help="segment/multitask: images without a mask are an error, or empty (lesion-free).")
    ] = None,
    class_loss_weight: Annotated[float | None, typer.Option(help="multitask: weight of the class loss.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout before the class layer.")] = None,
    weights: Annotated[str, typer.Option(help="auto (offline ImageNet if shipped), hub, none, or a file.")] = "auto",
    head: Annotated[str, typer.Option(help="linear, or mlp (features-2048-1024-n).")] = "linear",
    folds: Annotated[int | None, typer.Option(help="k-fold CV, grouped and stratified.")] = None,
    holdout: Annotated[float | None, typer.Option(help="Single split with this test fraction.")] = None,
    group: Annotated[str | None, typer.Option(help="auto, patient, duplicates, patient+duplicates, none.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Reuse this splits.json (same folds as another run).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs (classify: stage 2; 0: head only).")] = None,
    head_epochs: Annotated[int | None, typer.Option(help="Stage-1 epochs on cached features.")] = None,
    unfreeze: Annotated[int | None, typer.Option(help="Backbone parameter groups trained in stage 2.")] = None,
    lr: Annotated[float | None, typer.Option(help="Stage-2 backbone learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Stage-2 batch size.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    augment: Annotated[str | None, typer.Option(help="kvasir, light or none.")] = None,
    bilateral: Annotated[bool | None, typer.Option(help="Bilateral-filter denoising (ultrasound).")] = None,
    oversample: Annotated[bool | None, typer.Option(help="Oversample rare classes in training folds.")] = None,
    class_weights: Annotated[bool | None, typer.Option(help="Class-weighted loss.")] = None,
    precision: Annotated[str | None, typer.Option(help="bf16-mixed or 32-true.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    repeats: Annotated[
        int, typer.Option(help="Train this many times (seeds seed, seed+1, ...) on the same splits; mean ± sd.")
    ] = 1,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.")] = None,
    layout: LayoutOpt = None,
    pattern: PatternOpt = None,
    mask_suffix: MaskSuffixOpt = "_mask",
    make_report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
) -> None:
    """Train and evaluate a model with grouped cross-validation or a holdout split; writes a run folder."""
    try:
        from medcad.config import TrainConfig
        from medcad.engine.train import train_run
        from medcad.models.backbones import check_model_name

        check_model_name(model)
        overrides = dict(
            task=task,
            model=model,
            arch=arch,
            missing_masks=missing_masks,
            class_loss_weight=class_loss_weight,
            dropout=dropout,
            weights=weights,
            head=head,
            group_by=group,
            epochs=epochs,
            head_epochs=head_epochs,
            unfreeze=unfreeze,
            lr=lr,
            batch_size=batch_size,
            image_size=image_size,
            augment=augment,
            bilateral=bilateral,
            oversample=oversample,
            class_weights=class_weights,
            precision=precision,
            seed=seed,
            threads=threads,
            layout=layout,
            pattern=pattern,
            mask_suffix=mask_suffix,
        )
        if holdout is not None:
            overrides.update(holdout=holdout, folds=None)
        elif folds is not None:
            overrides["folds"] = folds
        cfg = TrainConfig().replace(**overrides)
        if holdout is not None:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "folds": None})
        from medcad.report.console import print_metrics

        if repeats > 1:
            from medcad.engine.train import train_repeats

            summary = train_repeats(path, out, cfg, repeats, splits_path=splits)
            for run_dir in summary["runs"]:
                _report(Path(run_dir), make_report)
            typer.echo(json.dumps(summary["summary"], indent=1))
            typer.echo(f"{out / 'repeats.json'}: mean ± sd over {repeats} seeds on the same splits")
            return
        metrics = train_run(path, out, cfg, splits_path=splits)
        print_metrics(metrics, out)
        _report(out, make_report)
    except MedcadError as e:
        _fail(e)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (its folds as an ensemble) or a model.pt file.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images, folders of images, or videos.")],
    fold: Annotated[int | None, typer.Option(help="Use one fold's model instead of the ensemble.")] = None,
    backend: Annotated[str, typer.Option(help="torch-bf16, torch-fp32, onnx-fp32 or onnx-int8.")] = "torch-bf16",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for videos, masks and overlays.")] = Path(
        "predictions"
    ),
    threshold: Annotated[
        float, typer.Option(help="segment: lesion probability threshold; detect: detection score threshold.")
    ] = 0.5,
    smooth: Annotated[int, typer.Option(help="Videos: average probabilities over this many frames.")] = 5,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 8,
    realtime: Annotated[bool, typer.Option(help="Videos: keep pace with the source, dropping frames.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Predict the class of images, or of every frame of videos (annotated video + per-frame CSV); for a segment or
    multitask run, write lesion masks and overlays."""
    try:
        from medcad.data.video import is_video
        from medcad.inference.predictor import Predictor, expand_inputs, run_task
        from medcad.inference.video import predict_video

        task = run_task(run)
        if task in ("segment", "multitask"):
            from medcad.inference.masks import predict_mask_files

            table = predict_mask_files(run, expand_inputs(inputs), out, fold=fold, threshold=threshold, batch=batch)
            _print_table(table, as_json, f"masks and overlays in {out}/ (<image>_mask.png, <image>_overlay.png)")
            return
        if task == "detect":
            from medcad.inference.detections import DetectionPredictor, predict_detection_files

            images = expand_inputs([p for p in inputs if not is_video(p)])
            if images:
                table = predict_detection_files(run, images, out, fold=fold, threshold=threshold, batch=batch)
                _print_table(table, as_json, f"boxes drawn in {out}/<image>_boxes.png; {out}/predictions.csv")
            detector = DetectionPredictor(run, fold, threshold, threads)
            for v in [p for p in inputs if is_video(p)]:
                _echo_video(predict_video(detector, v, out, batch=batch, smooth=smooth, realtime=realtime))
            return
        predictor = Predictor(run, fold=fold, backend=backend, threads=threads)
        videos = [p for p in inputs if is_video(p)]
        results = predictor.predict_files(expand_inputs([p for p in inputs if not is_video(p)]), batch)
        summaries = [predict_video(predictor, v, out, batch=batch, smooth=smooth, realtime=realtime) for v in videos]
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(results + summaries if summaries else results, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    if results:
        t = Table("image", "prediction", *predictor.labels)
        for r in results:
            t.add_row(r["image"], r["label"], *[f"{r['probabilities'][lab]:.3f}" for lab in predictor.labels])
        Console().print(t)
    for v in summaries:
        _echo_video(v)


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


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[Path | None, typer.Option(help="External test set (same labels): predict and score it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute a run's metrics from its fold results, or score its models on another dataset."""
    try:
        from medcad.engine.evaluate import evaluate_external, evaluate_run

        metrics, where = evaluate_external(run, data) if data is not None else evaluate_run(run)
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(metrics, indent=1, default=str))
        return
    from medcad.report.console import print_metrics

    print_metrics(metrics, where)


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    image: Annotated[Path, typer.Argument(help="Image to explain.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Overlay PNG to write.")] = Path("gradcam.png"),
    fold: Annotated[int | None, typer.Option(help="One fold's model instead of the ensemble.")] = None,
    layer: Annotated[
        str | None, typer.Option(help="Target layer name (default: the backbone's last feature map).")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--class", help="Explain this class instead of the predicted one.")
    ] = None,
) -> None:
    """Grad-CAM heat-map of a prediction, written as an overlay with the class and probability; for a segment or
    multitask run, the predicted outline, CBAM attention maps and Grad-CAM of the predicted lesion side by side."""
    try:
        import numpy as np
        from PIL import Image

        from medcad.data.io import read_image
        from medcad.errors import ConfigError
        from medcad.explain.gradcam import explain_predictor, overlay
        from medcad.inference.predictor import Predictor, run_task

        if run_task(run) in ("segment", "multitask"):
            from medcad.explain.segmentation import explain_mask
            from medcad.inference.masks import MaskPredictor

            mp = MaskPredictor(run, fold=fold if fold is not None else 0)
            tiles = explain_mask(mp.models[0], mp.normalize, mp.prepare(read_image(image)), layer)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([t for t, _ in tiles], axis=1)).save(out)
            typer.echo(f"{out}: " + " | ".join(c for _, c in tiles) + f" (fold {mp.files[0].parent.name})")
            return
        predictor = Predictor(run, fold=fold)
        if label is not None and label not in predictor.labels:
            raise ConfigError(f"--class {label!r} is not one of the model's labels {predictor.labels}")
        rgb = read_image(image)
        x = predictor.prepare(rgb)[None]
        classes = None if label is None else [predictor.labels.index(label)]
        heat, probs = explain_predictor(predictor, x, classes, layer)
        c = int(probs[0].argmax()) if classes is None else classes[0]
        shown = overlay(rgb, heat[0], f"{predictor.labels[c]} p={probs[0, c]:.2f}")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shown).save(out)
    except MedcadError as e:
        _fail(e)
    typer.echo(f"{out}: Grad-CAM for {predictor.labels[c]} (p={probs[0, c]:.3f})")


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(help="Study YAML: data, task, models, protocol, settings.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Study folder (default: beside the file).")] = None,
    make_report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
) -> None:
    """Run (or resume) a study: protocols, several models on the same folds, DeLong comparisons, one report."""
    try:
        from medcad.report.console import print_study
        from medcad.study.runner import run_study

        results = run_study(study_file, out)
        print_study(results)
        _report(Path(results["splits"]).parent, make_report)
    except MedcadError as e:
        _fail(e)


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
def export(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write a static int8 model calibrated on training images.")
    ] = False,
    fold: Annotated[int | None, typer.Option(help="Export one fold's model (default: the fold ensemble).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder (default RUN/export).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a run to ONNX (preprocessing recorded beside it) and check agreement with PyTorch."""
    try:
        from medcad.errors import ConfigError
        from medcad.inference.export import export_onnx

        if fmt != "onnx":
            raise ConfigError(f"--format {fmt!r} is not supported; use onnx")
        result = export_onnx(run, out, fold=fold, int8=int8)
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for name, a in result["agreement"].items():
        typer.echo(
            f"{name}: top-1 agreement with PyTorch {a['top1_agreement']:.1%} on {a['n']} held-out images, "
            f"max probability difference {a['max_prob_diff']:.4f}"
        )
    typer.echo("files: " + ", ".join(result["files"]))


@app.command()
def bench(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    batch: Annotated[int, typer.Option(help="Batch size for the throughput figure.")] = 32,
    fold: Annotated[int | None, typer.Option(help="Fold model to time (default 0; none = ensemble).")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    backends: Annotated[
        str, typer.Option(help="Comma-separated backends.")
    ] = "torch-fp32,torch-bf16,onnx-fp32,onnx-int8",
    as_json: JsonOpt = False,
) -> None:
    """Images/s and latency (p50/p95) of each prediction backend, side by side, with agreement to fp32."""
    try:
        from medcad.inference.bench import bench as run_bench

        result = run_bench(
            run, backends=tuple(b.strip() for b in backends.split(",")), batch=batch, fold=fold, threads=threads
        )
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("backend", "images/s", "× fp32", "p50 ms", "p95 ms", "top-1 agreement", title=f"{run} (batch {batch})")
    for name, b in result["backends"].items():
        t.add_row(
            name,
            f"{b['images_per_s']:.1f}",
            f"{b.get('speedup_vs_torch_fp32', 1):.2f}",
            f"{b['p50_ms']:.1f}",
            f"{b['p95_ms']:.1f}",
            f"{b['agreement']:.1%}",
        )
    Console().print(t)


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
