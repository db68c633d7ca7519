"""`medcad serve`: a REST API and a web page for any trained run, every task the same way, through its predictor.

Routes: `POST /predict` (one image -> JSON, or a DICOM SEG with `?format=dicom`), `POST /predict/video` (a clip ->
a job; `GET /jobs/{id}` its progress and per-frame results), `GET /model` (the model card), `GET /health`,
`/docs` (OpenAPI, served offline), `/` (the page, every asset served from `static/`).

Safe by default: request bodies are limited by size (counted as they arrive, whatever Content-Length says), images
by pixel count before decoding, kinds by content; each request waits at most `timeout_s`; a bounded queue answers
503 with Retry-After when full; uploads exist only in a temporary folder removed at shutdown; a token is required
off loopback; nothing of an upload (name, DICOM header) is logged or echoed, except inside a DICOM SEG, which
must carry its source's patient and study to be filed beside it.

Grad-CAM sits in `medcad.explain`, a layer above this one: the caller (the CLI) passes an `explain` function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from medcad import __version__
from medcad.errors import MedcadError
from medcad.inference.batcher import Batcher, QueueFull
from medcad.inference.card import model_card
from medcad.inference.jobs import VideoJobs
from medcad.inference.limits import BodyLimit, read_upload
from medcad.inference.predictor import Predictor
from medcad.inference.responses import MASK_FORMATS, data_url, prediction_json, segmentation_dicom
from medcad.inference.uploads import Limits, UploadError, decode_upload

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json", "/favicon.ico")  # no token needed: nothing of the model
log = logging.getLogger("medcad.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs (see `medcad serve --help`).

    Attributes:
        token: required as `Authorization: Bearer <token>` on the API when set; must be set off loopback.
        limits: upload limits.
        timeout_s: longest wait for one image's result (queue + inference); then 504.
        max_queue: images allowed to wait; more are refused with 503 + Retry-After.
        max_batch: images per forward pass.
        workers: inference threads.
        max_jobs: video jobs waiting or running; more are refused with 503.
    """

    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    timeout_s: float = 30.0
    max_queue: int = 64
    max_batch: int = 8
    workers: int = 1
    max_jobs: int = 2


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token.

    Raises:
        MedcadError: a non-loopback host and no token.
    """
    if host not in LOOPBACK and not token:
        raise MedcadError(
            f"--host {host} makes the server reachable from other machines: set a token (--token or MEDCAD_TOKEN) "
            "that clients send as 'Authorization: Bearer <token>'"
        )


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def create_app(
    predictor: Predictor, options: ServeOptions | None = None, explain: Callable | None = None
) -> FastAPIOffline:
    """The FastAPI application serving `predictor`.

    Args:
        predictor: any task's predictor (`medcad.inference.registry.load_predictor`).
        options: limits, queue and token.
        explain: rgb (H, W, 3) uint8 -> (RGB picture, caption), e.g. the task's entry of
            `medcad.explain.explainers.EXPLAINERS` bound to the predictor; None turns `?gradcam=true` into a 400.
    """
    opts = options or ServeOptions()
    workdir = Path(tempfile.mkdtemp(prefix="medcad-serve-"))
    card = model_card(predictor)
    lock = threading.Lock() if opts.workers > 1 else None  # explainers hook the model: one at a time

    def run_batch(items: list[tuple[np.ndarray, bool]]) -> list[dict]:
        preds = predictor.predict([rgb for rgb, _ in items], [f"image-{i}" for i in range(len(items))])
        out = [{"prediction": p} for p in preds]
        for (rgb, cam), o in zip(items, out, strict=True):
            if cam:
                if lock is None:
                    picture, caption = explain(rgb)
                else:
                    with lock:
                        picture, caption = explain(rgb)
                o["heatmap"] = {"image": data_url(picture), "caption": caption}
        return out

    batcher = Batcher(run_batch, opts.max_queue, opts.max_batch, opts.workers)
    jobs = VideoJobs(predictor, workdir, opts.limits, opts.max_jobs)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        jobs.close()
        shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPIOffline(
        title="medcad",
        version=__version__,
        description=f"{card['task']} model: {', '.join(card['labels'])}. Research use only.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.jobs, app.state.workdir = batcher, jobs, workdir

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Token check, security headers and one log line per request (no client address, no file names)."""
        t0 = time.perf_counter()
        path = request.url.path
        if opts.token and path not in OPEN_PATHS and not path.startswith(("/static", "/static-offline-docs")):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), opts.token.encode()):
                return _error(401, "this server needs its token: send 'Authorization: Bearer <token>'")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        if not path.startswith(("/docs", "/static-offline-docs")):
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                "frame-ancestors 'none'"
            )
        log.info("%s %s %d %.0f ms", request.method, path, response.status_code, 1000 * (time.perf_counter() - t0))
        return response

    app.add_middleware(BodyLimit, max_bytes=opts.limits.max_image_bytes, video_bytes=opts.limits.max_video_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        """Liveness and load: queue length, images served and refused."""
        return {
            "status": "ok",
            "task": card["task"],
            "queued": batcher.queue.qsize(),
            "served": batcher.served,
            "refused": batcher.refused,
            "jobs": jobs.active(),
        }

    @app.get("/model")
    async def model() -> dict:
        """The model card: task, labels, decision rule, preprocessing, headline metrics with 95 % CIs, training
        data and the evaluation that produced them."""
        return card

    @app.post(
        "/predict",
        responses={200: {"content": {"application/json": {}, "application/dicom": {}}}},
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
                "required": True,
            }
        },
    )
    async def predict(
        request: Request,
        mask: str = Query("png", description="Mask encoding: png, rle (row-major run lengths) or none."),
        overlay: bool = Query(False, description="Add the drawn overlay as a PNG data URL."),
        gradcam: bool = Query(False, description="Add the Grad-CAM picture (slower)."),
        format: str = Query("json", description="json, or dicom for a DICOM SEG (mask tasks, DICOM input)."),
        frame: int = Query(0, ge=0, description="Frame of a multi-frame DICOM."),
    ) -> Response:
        """One image (multipart field `file`, or the raw bytes as the body) -> the task's result."""
        try:
            if mask not in MASK_FORMATS:
                raise UploadError(400, f"mask={mask!r}: use one of {', '.join(MASK_FORMATS)}")
            if format not in ("json", "dicom"):
                raise UploadError(400, f"format={format!r}: use json or dicom")
            if gradcam and explain is None:
                raise UploadError(400, "this server runs without Grad-CAM; start it with medcad serve")
            data = await read_upload(request, "file")
            upload = await asyncio.to_thread(decode_upload, data, workdir, opts.limits, frame)
            if format == "dicom":
                _check_dicom_out(upload, card)
            fut = batcher.submit((upload.rgb, gradcam))
        except UploadError as e:
            return _error(e.status, str(e))
        except QueueFull as e:
            return _error(
                503, f"the server is busy; retry after {e.retry_after} s", {"Retry-After": str(e.retry_after)}
            )
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut), opts.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            return _error(504, f"no result within {opts.timeout_s:.0f} s (medcad serve --timeout); retry later")
        except MedcadError as e:
            return _error(422, str(e))
        pred = dataclasses.replace(result["prediction"], image="upload")  # the upload's name is never echoed
        if format == "dicom":
            try:
                seg = await asyncio.to_thread(segmentation_dicom, upload.dicom, pred.lesion, "lesion", __version__)
            except MedcadError as e:
                return _error(422, str(e))
            return Response(
                seg, media_type="application/dicom", headers={"Content-Disposition": 'attachment; filename="seg.dcm"'}
            )
        body = prediction_json(pred, upload.rgb, card["task"], mask, overlay)
        if "heatmap" in result:
            body["heatmap"] = result["heatmap"]
        return JSONResponse(body)

    @app.post("/predict/video", status_code=202)
    async def predict_video(request: Request) -> JSONResponse:
        """A clip (multipart field `file`, or the raw bytes) -> 202 and a job; poll `GET /jobs/{id}`."""
        try:
            data = await read_upload(request, "file", video=True)
            job = await asyncio.to_thread(jobs.submit, data)
        except UploadError as e:
            return _error(e.status, str(e))
        except QueueFull as e:
            return _error(503, f"{e} (video jobs running)", {"Retry-After": str(e.retry_after)})
        return JSONResponse({"job": job, "status_url": f"/jobs/{job}"}, status_code=202)

    @app.get("/jobs/{job}")
    async def job_status(job: str) -> JSONResponse:
        """A video job: status (queued, running, done, failed), frames done of total, and when done the summary
        and one record per frame (decision, probabilities / lesion fraction / boxes, smoothed decision)."""
        state = jobs.get(job)
        if state is None:
            return _error(404, f"no job {job!r} (jobs are kept for the last {jobs.keep} clips)")
        return JSONResponse(state)

    return app


def _check_dicom_out(upload, card: dict) -> None:
    if "mask" not in card["outputs"]:
        raise UploadError(400, f"format=dicom gives a DICOM SEG, which needs a mask; this model is {card['task']}")
    if upload.kind != "dicom":
        raise UploadError(400, "format=dicom needs a DICOM upload to reference; this upload is " + upload.kind)
    if int(upload.dicom.get("NumberOfFrames", 1) or 1) > 1:
        raise UploadError(400, "format=dicom supports single-frame DICOM sources; send one frame")
