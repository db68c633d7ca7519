"""`medcad serve`'s guard and request log as plain ASGI middleware: they look at the response's start message only,
so a request passes through them in ~15 us (two Starlette `BaseHTTPMiddleware`, which wrap every response in a
stream of their own, had cost ~300 us on /health in process: `benchmarks/serve_middleware.py`)."""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medcad.inference.routes import error_response

OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json", "/favicon.ico")  # no token needed: nothing of the model
OPEN_PREFIXES = ("/static", "/static-offline-docs")
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
log = logging.getLogger("medcad.serve")


class Guard:
    """The token check (`token`: the one the API needs, None for none; RFC 6750 bearer, the scheme's name in any
    letter case as RFC 7235 has it), security headers on every answer (no sniffing, no referrer, no caching, a
    content security policy but on the API docs; a request the app fails on is answered 500 here, with them, before
    the error goes on to the server's log) and the count of error answers to /predict and /predict/video by status
    (`refused`)."""

    def __init__(self, app: ASGIApp, token: str | None, refused: Counter) -> None:
        self.app, self.token, self.refused = app, token, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, started = scope["path"], False

        async def guarded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if path.startswith("/predict") and message["status"] >= 400:
                    self.refused[message["status"]] += 1
                message.setdefault("headers", [])  # optional in ASGI
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cache-Control"] = "no-store"
                if not path.startswith(("/docs", "/static-offline-docs")):
                    headers["Content-Security-Policy"] = CSP
            await send(message)

        if self.token and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            scheme, _, given = Headers(scope=scope).get("authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                refusal = error_response(
                    401,
                    "this server needs its token: send 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": 'Bearer realm="medcad"'},
                )
                await refusal(scope, receive, guarded)
                return
        try:
            await self.app(scope, receive, guarded)
        except Exception:
            if not started:  # answered here, with the headers, rather than by the server's bare 500 outside
                await error_response(500, "internal error (the server's log says more)")(scope, receive, guarded)
            raise


class RequestLog:
    """One log line per request on the `medcad.serve` logger: method, path, status, milliseconds until the answer is
    sent (no client address, no file names); a request that fails before answering is logged as 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            # the path as decoded, control characters escaped: a client's %0A cannot write a line of its own
            path = scope["path"].encode("unicode_escape").decode("ascii")
            log.info("%s %s %d %.0f ms", scope["method"], path, status, 1000 * (time.perf_counter() - t0))
