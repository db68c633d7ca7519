"""The routes of `medcad serve` (`medcad.inference.server.create_app`), as FastAPI routers over one shared state.

`page_router`: `GET /` (the page), `GET /favicon.ico` (its icon), `GET /health`, `GET /model` (the model card).
`predict_router`: `POST /predict` (one image -> JSON, or a DICOM SEG with `?format=dicom`). `video_router`:
`POST /predict/video` (a clip -> a job) and `GET /jobs/{id}` (its progress and per-frame results). The `/static`
assets are mounted by `create_app`.

Errors are answered as `{"detail": message}` with their status; nothing of an upload (name, DICOM header) is echoed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from medcad import __version__
from medcad.errors import MedcadError
from medcad.inference.answers import JobAnswer, PredictAnswer, VideoJobAccepted
from medcad.inference.batcher import Batcher, QueueFull
from medcad.inference.jobs import VideoJobs
from medcad.inference.limits import read_upload
from medcad.inference.prediction import Prediction
from medcad.inference.responses import MASK_FORMATS, RESPONSE_FORMATS, prediction_json, segmentation_dicom
from medcad.inference.uploads import Limits, Upload, UploadError, decode_upload, prediction_warnings

STATIC = Path(__file__).parent / "static"


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
        cors_origins: web origins (scheme://host[:port]) whose pages may call the API from a browser (CORS), e.g. a
            viewer served elsewhere; none by default (the server's own page is same-origin).
    """

    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    timeout_s: float = 30.0
    max_queue: int = 64
    max_batch: int = 8
    workers: int = 1
    max_jobs: int = 2
    cors_origins: tuple[str, ...] = ()


def _openapi(ok: dict, errors: dict[int, str]) -> dict:
    """The OpenAPI of an upload route: the body (a multipart field `file`, or the raw bytes), its success answer
    and its error answers ({"detail": message})."""
    binary = {"type": "string", "format": "binary"}
    detail = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
    return {
        "responses": ok | {status: {"description": why, "content": detail} for status, why in errors.items()},
        "openapi_extra": {
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"file": binary}, "required": ["file"]}
                    },
                    "application/octet-stream": {"schema": binary},
                },
                "required": True,
            }
        },
    }


UPLOAD_ERRORS = {
    400: "no file, an empty one, more than one, or a bad option",
    401: "the server's token is missing or wrong",
    413: "larger than the server's limit (bytes, or an image's pixels)",
    415: "not a kind of file this route reads",
}
PREDICT_OPENAPI = _openapi(  # /predict answers JSON (its schema: `PredictAnswer`) or a DICOM SEG (?format=dicom)
    {
        200: {
            "model": PredictAnswer,
            "description": "The image's result (JSON), or its DICOM SEG with ?format=dicom",
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    UPLOAD_ERRORS
    | {
        422: "a corrupt or truncated image, a frame it lacks, or a query parameter of the wrong type",
        503: "the queue is full (Retry-After)",
        504: "no result within the server's timeout",
    },
)
MASK_QUERY = (
    "Mask encoding: png (0 / 255; label-map models: each pixel's class value in the run's values, a 16-bit PNG where "
    "a value exceeds 255, with `classes` {value: name}), rle (one-lesion models: `counts`, row-major run lengths "
    "starting with background; label-map models: `lesion_counts`, those run lengths of the lesion of any class, and "
    "`per_class` {name: {value, coco_rle}}, one COCO compressed RLE per class) or none."
)
VIDEO_OPENAPI = _openapi(
    {202: {"model": VideoJobAccepted, "description": "The job; poll its status_url"}},
    UPLOAD_ERRORS | {503: "too many video jobs (Retry-After)"},
)


@dataclass(frozen=True)
class ServeState:
    """What the routes of one app share.

    Attributes:
        options: the server's `ServeOptions` (limits, timeout, token).
        card: the predictor's model card (`medcad.inference.card.model_card`).
        batcher: the image queue; its items are (rgb, gradcam) and its results {"prediction", "heatmap"?}.
        jobs: the video jobs.
        workdir: the temporary folder of uploads, removed by `close`.
        explain: the Grad-CAM function, or None when the server runs without it.
        refused: requests to /predict and /predict/video answered with an error, by HTTP status (counted by the
            server's guard middleware).
    """

    options: ServeOptions
    card: dict
    batcher: Batcher
    jobs: VideoJobs
    workdir: Path
    explain: Callable | None = None
    refused: Counter = field(default_factory=Counter)

    def close(self) -> None:
        """Stop the queue and the video jobs and remove the temporary folder (at shutdown)."""
        self.batcher.close()
        self.jobs.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """`{"detail": message}` with `status` (and `headers`, e.g. Retry-After)."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def page_router(state: ServeState) -> APIRouter:
    """`GET /` (the page), `GET /favicon.ico`, `GET /health` and `GET /model`."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # the page links it; browsers ask for /favicon.ico elsewhere (/docs)
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @router.head("/health", include_in_schema=False)  # what load balancers and uptime checks send
    async def health_head() -> Response:
        return Response(status_code=200)

    @router.get("/health")
    async def health() -> dict:
        """Liveness and load: `queued` images, `served` (images answered), `refused` (requests to /predict and
        /predict/video answered with an error: 4xx for the upload or the request, 503 busy, 504 too slow) and
        `refused_by_status` ({"413": n, ...}), `jobs` (video jobs waiting or running)."""
        return {
            "status": "ok",
            "task": state.card["task"],
            "queued": state.batcher.queue.qsize(),
            "served": state.batcher.served,
            "refused": sum(state.refused.values()),
            "refused_by_status": {str(k): n for k, n in sorted(state.refused.items())},
            "jobs": state.jobs.active(),
        }

    @router.get("/model")
    async def model() -> dict:
        """The model card: task, labels, decision rule, preprocessing, headline metrics with 95 % CIs, training
        data and the evaluation that produced them."""
        return state.card

    return router


def predict_router(state: ServeState) -> APIRouter:
    """`POST /predict`: one image through the queue, answered within `timeout_s`."""
    router = APIRouter()
    timeout_s = state.options.timeout_s

    @router.post("/predict", **PREDICT_OPENAPI)
    async def predict(
        request: Request,
        mask: str = Query("png", description=MASK_QUERY, json_schema_extra={"enum": list(MASK_FORMATS)}),
        overlay: bool = Query(False, description="Add the drawn overlay as a PNG data URL."),
        gradcam: bool = Query(False, description="Add the Grad-CAM picture (slower)."),
        format: str = Query(
            "json",
            description="json, or dicom for a DICOM SEG (mask tasks, DICOM input).",
            json_schema_extra={"enum": list(RESPONSE_FORMATS)},
        ),
        frame: int = Query(0, ge=0, description="Frame of a multi-frame DICOM, page of a TIFF or animated GIF / WebP."),
    ) -> Response:
        """One image (multipart field `file`, or the raw bytes as the body) -> the task's result.

        A mask model's `mask` (see `?mask=`): `png`, base64 `data`; `rle`, one-lesion models: `counts`, row-major
        run lengths starting with background; label-map models (segment-multiclass): `classes` ({mask value: class
        name}), `lesion_counts` (those run lengths of the lesion of any class) and `per_class` ({class name:
        {"value": its mask value, "coco_rle": COCO's compressed RLE of its pixels, for `pycocotools.mask.decode`}}).
        """
        try:
            _check_query(mask, format, gradcam, state.explain is not None, state.card.get("mask_png_refused"))
            upload = await _read_image(request, state, frame, format == "dicom")
            fut = state.batcher.submit((upload.rgb, gradcam))
        except UploadError as e:
            return error_response(e.status, str(e))
        except QueueFull as e:
            return error_response(
                503, f"the server is busy; retry after {e.retry_after} s", {"Retry-After": str(e.retry_after)}
            )
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            return error_response(504, f"no result within {timeout_s:.0f} s (medcad serve --timeout); retry later")
        except MedcadError as e:
            return error_response(422, str(e))
        pred = dataclasses.replace(result["prediction"], image="upload")  # the upload's name is never echoed
        if format == "dicom":
            return await _dicom_response(upload, pred)
        body = prediction_json(pred, upload.rgb, state.card["task"], mask, overlay)
        if upload.frames > 1:  # which of a cine's frames (a TIFF's pages) this answers for: frame= picks another
            body |= {"frame": upload.frame, "frames": upload.frames, "pages": upload.pages, "kind": upload.kind}
        doubts = prediction_warnings(pred, upload.rgb, state.card["preprocessing"]["size"])
        if doubts:
            body["warnings"] = doubts
        if "heatmap" in result:
            body["heatmap"] = result["heatmap"]
        return JSONResponse(body)

    return router


def video_router(state: ServeState) -> APIRouter:
    """`POST /predict/video` (a clip -> a job) and `GET /jobs/{job}` (its state)."""
    router = APIRouter()
    jobs = state.jobs

    @router.post("/predict/video", status_code=202, **VIDEO_OPENAPI)
    async def predict_video(request: Request) -> JSONResponse:
        """A clip (multipart field `file`, or the raw bytes) -> 202 and a job; poll `GET /jobs/{id}`."""
        try:
            data = await read_upload(request, "file", video=True)
            job = await asyncio.to_thread(jobs.submit, data)
        except UploadError as e:
            return error_response(e.status, str(e))
        except QueueFull as e:
            return error_response(503, f"{e} (video jobs running)", {"Retry-After": str(e.retry_after)})
        return JSONResponse({"job": job, "status_url": f"/jobs/{job}"}, status_code=202)

    @router.get(
        "/jobs/{job}",
        responses={
            200: {"model": JobAnswer, "description": "The job's state"},
            404: {"description": "No such job (only the last clips' are kept)."},
        },
    )
    async def job_status(job: str) -> JSONResponse:
        """A video job: status (queued, running, done, failed), frames done of total, and when done the summary
        and one record per frame (decision, probabilities / lesion fraction / boxes, smoothed decision)."""
        job_state = jobs.get(job)
        if job_state is None:
            return error_response(404, f"no job {job!r} (jobs are kept for the last {jobs.keep} clips)")
        return JSONResponse(job_state)

    return router


def _check_query(mask: str, format: str, gradcam: bool, can_explain: bool, png_refused: str | None = None) -> None:
    """Refuse /predict's unknown options (400) before reading the upload, and a PNG mask a model's mask values do
    not fit (`png_refused`, the model card's reason: 422; it had been a 500 after the prediction)."""
    if mask not in MASK_FORMATS:
        raise UploadError(400, f"mask={mask!r}: use one of {', '.join(MASK_FORMATS)}")
    if mask == "png" and format == "json" and png_refused:
        raise UploadError(422, f"{png_refused}: ask ?mask=rle")
    if format not in RESPONSE_FORMATS:
        raise UploadError(400, f"format={format!r}: use {' or '.join(RESPONSE_FORMATS)}")
    if gradcam and not can_explain:
        raise UploadError(400, "this server runs without Grad-CAM; start it with medcad serve")


async def _read_image(request: Request, state: ServeState, frame: int, dicom_out: bool) -> Upload:
    """The request's image, read within the limits and decoded off the event loop."""
    data = await read_upload(request, "file")
    upload = await asyncio.to_thread(decode_upload, data, state.workdir, state.options.limits, frame)
    if dicom_out:
        _check_dicom_out(upload, state.card)
    return upload


def _check_dicom_out(upload: Upload, card: dict) -> None:
    if "mask" not in card["outputs"]:
        raise UploadError(400, f"format=dicom gives a DICOM SEG, which needs a mask; this model is {card['task']}")
    if upload.kind != "dicom":
        raise UploadError(400, "format=dicom needs a DICOM upload to reference; this upload is " + upload.kind)
    if int(upload.dicom.get("NumberOfFrames", 1) or 1) > 1:
        raise UploadError(400, "format=dicom supports single-frame DICOM sources; send one frame")


async def _dicom_response(upload: Upload, pred: Prediction) -> Response:
    """The prediction's mask as a DICOM SEG referencing the uploaded DICOM (422 when it cannot be made)."""
    try:
        m = pred.mask
        mask, names = (m.lesion, "lesion") if m.class_map is None else (m.class_map, pred.labels)
        seg = await asyncio.to_thread(segmentation_dicom, upload.dicom, mask, names, __version__)
    except MedcadError as e:
        return error_response(422, str(e))
    return Response(
        seg, media_type="application/dicom", headers={"Content-Disposition": 'attachment; filename="seg.dcm"'}
    )
