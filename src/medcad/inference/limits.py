"""Request bodies within limits: counted as they arrive (a client's Content-Length is not trusted), read from a
multipart field or as the raw body."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medcad.inference.uploads import UploadError

SLACK = 64 * 1024  # multipart boundaries and headers around the file
VIDEO_PATH = "/predict/video"
TOO_LARGE = "medcad.body_too_large"  # scope key: the limit a body passed


class BodyLimit:
    """ASGI middleware refusing a body larger than `max_bytes` (`video_bytes` on /predict/video): a 413 from its
    Content-Length before reading; otherwise, as soon as the bytes received pass the limit, the app sees the client
    disconnect and `read_upload` answers the 413 (an exception would cross other middleware as a 500)."""

    def __init__(self, app: ASGIApp, max_bytes: int, video_bytes: int) -> None:
        self.app, self.max_bytes, self.video_bytes = app, max_bytes, video_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (self.video_bytes if scope["path"] == VIDEO_PATH else self.max_bytes) + SLACK
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            if scope.get(TOO_LARGE):
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    scope[TOO_LARGE] = limit - SLACK
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = b'{"detail":"%s"}' % too_large_message(limit - SLACK).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int) -> str:
    return (
        f"the upload is larger than this server accepts ({limit} bytes); send a smaller file or raise the limit "
        "(medcad serve --max-upload-mb / --max-video-mb)"
    )


async def _checked(request: Request, read):
    """Await `read()`; a client disconnect caused by `BodyLimit` becomes a 413."""
    try:
        return await read()
    except ClientDisconnect:
        if request.scope.get(TOO_LARGE):
            raise UploadError(413, too_large_message(request.scope[TOO_LARGE])) from None
        raise


async def read_upload(request: Request, field: str = "file", video: bool = False) -> bytes:
    """The uploaded bytes: multipart/form-data field `field`, or else the raw request body.

    Raises:
        UploadError: 400 when the form has no such field or the field is not a file.
    """
    kind = "video" if video else "image"
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await _checked(request, lambda: request.form(max_files=1, max_fields=8))
        except (UploadError, ClientDisconnect):
            raise
        except Exception as e:  # starlette raises MultiPartException / HTTPException for malformed forms
            why = str(getattr(e, "detail", e))
            if why.startswith("Too many files"):
                one = f"one file per request (field '{field}'); send each {kind} in a request of its own"
                raise UploadError(400, one) from e
            raise UploadError(400, f"malformed multipart form ({why})") from e
        try:
            item = form.get(field)
            if item is None:
                got = ", ".join(sorted(form.keys())) or "none"
                raise UploadError(
                    400, f"no form field {field!r} (fields sent: {got}); send the {kind} as multipart field {field!r}"
                )
            if not isinstance(item, UploadFile):
                raise UploadError(400, f"form field {field!r} must be a file upload, not text")
            return await item.read()
        finally:
            await form.close()
    return await _checked(request, request.body)
