"""Reading an HTTP request body with a size limit: refused as soon as it passes the limit, never buffered whole."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The request body passed the configured limit while being read."""


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, refusing early once it passes limit_bytes (declared or actually sent).

    Raises:
        BodyTooLarge: the declared Content-Length or the bytes received so far exceed limit_bytes.
        ClientDisconnect: the client went away before sending the whole body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
