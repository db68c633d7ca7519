"""What `medcad serve`'s guard and request log cost a request: GET /health on an in-process FastAPI app (httpx's ASGI
transport, 2,000 requests after 100 to warm up, median of 3 rounds) with no middleware, with the same two as
Starlette `BaseHTTPMiddleware` functions (how medcad had them: each wraps every response in a stream of its own),
and with medcad's plain ASGI `Guard` and `RequestLog`.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/serve_middleware.py
        [--out benchmarks/results/serve_middleware.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
from common import write_result
from fastapi import FastAPI, Request

from medcad.inference.middleware import Guard, RequestLog

HERE = Path(__file__).resolve().parent


def bare() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app


def base_http_middleware() -> FastAPI:
    app = bare()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = await call_next(request)
        for name, value in (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")):
            response.headers[name] = value
        return response

    @app.middleware("http")
    async def request_log(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        _ = (request.method, request.url.path, response.status_code, time.perf_counter() - t0)
        return response

    return app


def plain_asgi() -> FastAPI:
    app = bare()
    app.add_middleware(Guard, token=None, refused=Counter())
    app.add_middleware(RequestLog)
    return app


async def per_request_us(app: FastAPI, n: int = 2000) -> float:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
        for _ in range(100):
            await client.get("/health")
        t0 = time.perf_counter()
        for _ in range(n):
            await client.get("/health")
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "serve_middleware.json"))
    args = parser.parse_args()
    rounds: dict[str, list[float]] = {"none": [], "base_http_middleware": [], "plain_asgi": []}
    for _ in range(3):
        for name, make in (("none", bare), ("base_http_middleware", base_http_middleware), ("plain_asgi", plain_asgi)):
            rounds[name].append(asyncio.run(per_request_us(make())))
    result = {
        "request": "GET /health, in process (httpx ASGI transport)",
        "us_per_request": {k: [round(v, 1) for v in vs] for k, vs in rounds.items()},
        "us_per_request_median": {k: round(statistics.median(vs), 1) for k, vs in rounds.items()},
    }
    print(result)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
