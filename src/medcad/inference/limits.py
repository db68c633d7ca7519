"""Request bodies within limits: counted as they arrive (a client's Content-Length is not trusted), read from a
multipart field or as the raw body."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medcad.inference.uploads import UploadError

SLACK = 64 * 1024  # multipart boundaries and headers around the file
VIDEO_PATH = "/predict/video"


class BodyTooLarge(Exception):
    """Raised from `receive` when the bytes received pass the limit; `BodyLimit` turns it into a 413."""


class BodyLimit:
    """ASGI middleware answering 413 to a body larger than `max_bytes` (`video_bytes` on /predict/video), from
    its Content-Length before reading, or as soon as the bytes received pass the limit."""

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
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = (
            b'{"detail":"the upload is larger than this server accepts (%d bytes); send a smaller file or raise '
            b'the limit (medcad serve --max-upload-mb)"}' % (limit - SLACK)
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def read_upload(request: Request, field: str = "file", video: bool = False) -> bytes:
    """The uploaded bytes: multipart/form-data field `field`, or else the raw request body.

    Raises:
        UploadError: 400 when the form has no such field or the field is not a file.
    """
    kind = "video" if video else "image"
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except BodyTooLarge:
            raise
        except Exception as e:  # starlette raises MultiPartException / HTTPException for malformed forms
            raise UploadError(400, f"malformed multipart form ({getattr(e, 'detail', e)})") from e
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
    return await request.body()
