"""`medcad export | bench`: ONNX export and prediction speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medcad.cli.common import (
    BACKENDS,
    BackendOpt,
    DeviceOpt,
    JsonOpt,
    OperatingPointOpt,
    _fail,
    _serving_predictor,
    app,
)
from medcad.errors import MedcadError


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Also write a static int8 model calibrated on validation images (fold k's)."),
    ] = False,
    fold: Annotated[int | None, typer.Option(help="Export one fold's model (default: the fold ensemble).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder (default RUN/export, RUN/export_fold<k> with --fold).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where the PyTorch reference of the check runs: cpu, auto, cuda.")
    ] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Export a run of any task to ONNX (preprocessing recorded beside it) and check agreement with PyTorch fp32:
    top-1 for classes, Dice between masks, matched-box IoU for detections (boxes are decoded in PyTorch)."""
    try:
        from medcad.errors import ConfigError
        from medcad.inference.registry import export_run

        if fmt != "onnx":
            raise ConfigError(f"--format {fmt!r} is not supported; use onnx")
        result = export_run(run, out, fold=fold, int8=int8, device=device)
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for name, a in result["agreement"].items():
        measures = ", ".join(f"{k} {v:.4f}" for k, v in a.items() if k not in ("n", "agrees"))
        typer.echo(f"{name}: agreement with PyTorch fp32 on {a['n']} images ({result['images']}): {measures}")
        if not a["agrees"]:
            typer.echo(
                f"warning: {name} agrees less than 0.99 with PyTorch fp32: predict, serve and evaluate "
                "never pick it with --backend auto (name it with --backend to use it anyway)",
                err=True,
            )
    if "int8" in result:
        q = result["int8"]
        typer.echo(
            f"int8: {q['format']}, calibrated on {q['calibration']}; depthwise convolutions "
            f"({q['depthwise_in_float']}) and {len(q['float_layers'])} noisiest layer(s) kept in float; agreement on "
            f"them {q['agreement_calibration']:.4f}" + ("; 7-bit weights (no VNNI)" if q["reduce_range"] else "")
        )
    if "box_decoding" in result:
        typer.echo("box decoding: model.json's box_decoding, each fold model's default boxes in default_boxes.npz")
    typer.echo("files: " + ", ".join(result["files"]))


@app.command()
def bench(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    batch: Annotated[int, typer.Option(help="Batch size for the throughput figure.")] = 32,
    fold: Annotated[
        int | None, typer.Option(help="Time one fold's model (default: the fold ensemble, as predict and serve load).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    backends: Annotated[str, typer.Option(help="Comma-separated backends (default: every one).")] = ",".join(BACKENDS),
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Images/s and latency (p50/p95) of each prediction backend for a run of any task, side by side, with agreement
    to torch-fp32 by the task's measure: on fold k's held-out test images with --fold k (with its test accuracy for
    classifiers), on fold 0's test images for the ensemble (agreement only: its other folds' models trained on
    them)."""
    try:
        from medcad.inference.bench import bench as run_bench

        result = run_bench(
            run,
            backends=tuple(b.strip() for b in backends.split(",")),
            batch=batch,
            fold=fold,
            threads=threads,
            device=device,
        )
    except MedcadError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    measure = result["agreement_measure"].replace("_", " ")
    which = "fold ensemble" if result["fold"] is None else f"fold {result['fold']}"
    columns = ["backend", "images/s", "× fp32", "p50 ms", "p95 ms", measure]
    accuracy = any("accuracy" in b for b in result["backends"].values())
    t = Table(*columns, *(["held-out accuracy"] if accuracy else []), title=f"{run}, {which} (batch {batch})")
    for name, b in result["backends"].items():
        t.add_row(
            name + (" (default)" if name == result["default_backend"] else "") + ("" if b["agrees"] else " ✗"),
            f"{b['images_per_s']:.1f}",
            f"{b.get('speedup_vs_torch_fp32', 1):.2f}",
            f"{b['p50_ms']:.1f}",
            f"{b['p95_ms']:.1f}",
            f"{b['agreement']:.4f}",
            *([f"{b['accuracy']:.3f}" if "accuracy" in b else ""] if accuracy else []),
        )
    Console().print(t)
    shaky = [name for name, b in result["backends"].items() if "unsteady" in b]
    if shaky:
        typer.echo(
            f"warning: the timings of {', '.join(shaky)} varied between repeats, as when another job shares the "
            "cores: bench again on an idle machine before comparing them"
        )
    typer.echo(f"images: {result['n_agreement_images']} of {result['images']}; threads: {result['threads']}")
    cpu = result["cpu"]
    typer.echo(
        f"CPU: {cpu['cpu']} ({cpu['kind']}; native bf16: {cpu['native_bf16']}; VNNI: {cpu['vnni']}); "
        + (f"torch on {result['device']}; " if result["device"] != "cpu" else "")
        + f"predict/serve/evaluate use {result['default_backend']} here ({result['default_backend_reason']}); "
        "✗: agrees < 0.99 with torch-fp32, never chosen by auto"
    )


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder or model.pt file.")],
    host: Annotated[str, typer.Option(help="Address to listen on; beyond loopback a token is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: BackendOpt = "auto",
    fold: Annotated[int | None, typer.Option(help="Serve one fold's model (default: the fold ensemble).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Lesion-probability / box-score threshold (default 0.5).", show_default=False)
    ] = None,
    operating_point: OperatingPointOpt = None,
    workers: Annotated[int, typer.Option(help="Inference threads taking batches from the queue.")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch threads per inference.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="MEDCAD_TOKEN", help="Require 'Authorization: Bearer TOKEN' on the API.")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest image upload.")] = 32,
    max_video_mb: Annotated[float, typer.Option(help="Largest video upload.")] = 512,
    max_pixels: Annotated[float, typer.Option(help="Largest image, in megapixels (decompression bombs).")] = 40,
    timeout: Annotated[float, typer.Option(help="Seconds one image may wait for its result (then 504).")] = 30,
    queue: Annotated[int, typer.Option(help="Images that may wait; more get 503 + Retry-After.")] = 64,
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    gradcam: Annotated[bool, typer.Option(help="Offer Grad-CAM (?gradcam=true, the page's heat-map).")] = True,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="A web origin (https://viewer.example) whose pages may call the API (CORS); repeatable."),
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve a run: REST API (/predict, /predict/video, /model, /health, /docs) and a web page at /."""
    try:
        import uvicorn

        from medcad.inference.server import ServeOptions, check_bind, create_app
        from medcad.inference.uploads import Limits

        check_bind(host, token)
        limits = Limits(int(max_upload_mb * 2**20), int(max_video_mb * 2**20), int(max_pixels * 1e6))
        opts = ServeOptions(token, limits, timeout, queue, batch, workers, cors_origins=tuple(cors_origin or ()))
        predictor = _serving_predictor(run, fold, backend, threads, threshold, device, operating_point)
        explain = None
        if gradcam:
            from medcad.explain.explainers import bound_explainer

            explain = bound_explainer(predictor)
        server_app = create_app(predictor, opts, explain)
    except MedcadError as e:
        _fail(e)
    typer.echo(f"medcad serve: {run} ({predictor.task}) on http://{host}:{port}/  (API docs at /docs; Ctrl-C stops)")
    _log_requests()
    uvicorn.run(server_app, host=host, port=port, access_log=False, log_level="warning")


def _log_requests() -> None:
    """The server's one line per request (method, path, status, time: no client address, no file names; uvicorn's
    access log, which has the address, stays off) on stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    served = logging.getLogger("medcad.serve")
    served.addHandler(handler)
    served.setLevel(logging.INFO)
