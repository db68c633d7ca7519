"""`medcad serve`: a REST API and a web page for any trained run, every task the same way, through its predictor.

Routes: `POST /predict` (one image -> JSON, or a DICOM SEG with `?format=dicom`), `POST /predict/video` (a clip ->
a job; `GET /jobs/{id}` its progress and per-frame results), `GET /model` (the model card), `GET /health`,
`/docs` (OpenAPI, served offline), `/` (the page, every asset served from `static/`). The routes are FastAPI
routers in `medcad.inference.routes`, sharing one `ServeState`; this module builds it and the app, with the guard
and request log of `medcad.inference.middleware`.

Safe by default: request bodies are limited by size (counted as they arrive, whatever Content-Length says), images
by pixel count before decoding, kinds by content; each request waits at most `timeout_s`; a bounded queue answers
503 with Retry-After when full; uploads exist only in a temporary folder removed at shutdown; a token is required
off loopback; nothing of an upload (name, DICOM header) is logged or echoed, except inside a DICOM SEG, which
must carry its source's patient and study to be filed beside it.

Grad-CAM sits in `medcad.explain`, a layer above this one: the caller (the CLI) passes an `explain` function.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from medcad import __version__
from medcad.data.pixel_limit import allow_pixels
from medcad.errors import ConfigError, MedcadError
from medcad.inference.batcher import Batcher
from medcad.inference.card import model_card
from medcad.inference.jobs import VideoJobs
from medcad.inference.limits import BodyLimit
from medcad.inference.middleware import Guard, RequestLog
from medcad.inference.outputs import check_png_values
from medcad.inference.predictor import Predictor
from medcad.inference.responses import data_url
from medcad.inference.routes import (
    STATIC,
    ServeOptions,
    ServeState,
    error_response,
    page_router,
    predict_router,
    video_router,
)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
log = logging.getLogger("medcad.serve")


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


def create_app(
    predictor: Predictor, options: ServeOptions | None = None, explain: Callable | None = None
) -> FastAPIOffline:
    """The FastAPI application serving `predictor`.

    Args:
        predictor: any task's predictor (`medcad.inference.registry.load_predictor`).
        options: limits, queue and token.
        explain: (rgb (H, W, 3) uint8, its `Prediction`) -> (RGB picture, caption), called from the batcher's
            threads beside predictions, e.g. `medcad.explain.explainers.bound_explainer(predictor)` (safe there);
            None turns `?gradcam=true` into a 400.

    A pixel limit above medcad's decoding default raises it for this process (`medcad.data.pixel_limit.allow_pixels`).

    Raises:
        ConfigError: a CORS origin that is not scheme://host[:port].
    """
    opts = options or ServeOptions()
    allow_pixels(opts.limits.max_pixels)
    state = _start(predictor, opts, explain)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    card = state.card
    app = FastAPIOffline(
        title="medcad",
        version=__version__,
        description=f"{card['task']} model: {', '.join(card['labels'])}. Research use only.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.jobs, app.state.workdir = state.batcher, state.jobs, state.workdir
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(BodyLimit, max_bytes=opts.limits.max_image_bytes, video_bytes=opts.limits.max_video_bytes)
    app.add_middleware(Guard, token=opts.token, refused=state.refused)  # outside BodyLimit: its 413s counted too
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in (page_router(state), predict_router(state), video_router(state)):
        app.include_router(router)
    if opts.cors_origins:  # outside the guard: a browser's preflight (no token) is answered before it asks for one
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[web_origin(o) for o in opts.cors_origins],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],  # what a 503 tells a client to wait for
        )
    app.add_middleware(RequestLog)  # outermost: every request has its line, a preflight CORS answers included
    return app


def web_origin(text: str) -> str:
    """A web origin as browsers send it (scheme://host[:port], no path, no trailing slash).

    Raises:
        ConfigError: not an http(s) origin, naming it.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise ConfigError(
            f"--cors-origin {text!r}: give a web origin, scheme://host[:port], e.g. https://viewer.example"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _start(predictor: Predictor, opts: ServeOptions, explain: Callable | None) -> ServeState:
    """The temporary folder, the model card, the image queue and the video jobs of a new app."""
    workdir = Path(tempfile.mkdtemp(prefix="medcad-serve-"))
    card = model_card(predictor)
    try:
        check_png_values(tuple(predictor.class_values or ()))
    except MedcadError as e:  # a signed or 32-bit label map's values: ?mask=rle still answers
        card["mask_png_refused"] = str(e)
    run_batch = _batch_runner(predictor, explain)
    batcher = Batcher(run_batch, opts.max_queue, opts.max_batch, opts.workers)
    jobs = VideoJobs(predictor, workdir, opts.limits, opts.max_jobs)
    return ServeState(opts, card, batcher, jobs, workdir, explain)


def _batch_runner(predictor: Predictor, explain: Callable | None) -> Callable:
    """The batcher's function: [(rgb, gradcam)] -> [{"prediction", "heatmap" when gradcam}]."""

    def run_batch(items: list[tuple[np.ndarray, bool]]) -> list[dict]:
        preds = predictor.predict([rgb for rgb, _ in items], [f"image-{i}" for i in range(len(items))])
        out = [{"prediction": p} for p in preds]
        for (rgb, cam), o in zip(items, out, strict=True):
            if cam:
                picture, caption = explain(rgb, o["prediction"])
                o["heatmap"] = {"image": data_url(picture), "caption": caption}
        return out

    return run_batch


ALLOWED = {  # what a query parameter of each type takes, for the 422 of a value pydantic refuses
    "bool_parsing": "true or false",
    "int_parsing": "a whole number",
    "greater_than_equal": "a whole number from {ge} on",
}


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request parameter of the wrong type: a 422 naming the parameter, the value and what it takes (pydantic's
    list of error objects had been answered as it is)."""
    said = []
    for e in exc.errors():
        where, name = (e["loc"][0], e["loc"][-1]) if len(e["loc"]) > 1 else ("request", e["loc"][0])
        allowed = ALLOWED.get(e["type"], e["msg"]).format(**e.get("ctx", {}))
        said.append(f"{where} parameter {name}={e.get('input')!r}: give {allowed}")
    return error_response(422, "; ".join(said))
