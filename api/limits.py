"""Request-size limit: a body over SAGAN_MAX_BODY_BYTES is answered 413 before any route reads it (an upload
route reads its body as a stream and counts it itself, against its own limit)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Pure ASGI (no per-request task or streaming wrapper, which cost latency on every request).

    A declared Content-Length over the limit is refused at once (uvicorn holds a body to its declared
    length). A body without one (chunked) is read here up to the limit and handed on from memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.streamed = streamed or {}  # path -> its limit, for POSTs the route streams (uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        streamed = self.streamed.get(scope["path"]) if scope["method"] == "POST" else None
        limit = streamed or self.max_bytes
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await _too_large(send, limit, "SAGAN_MAX_UPLOAD_GB" if streamed else "SAGAN_MAX_BODY_BYTES")
                return
            await self.app(scope, receive, send)
            return
        if streamed is not None:  # never held here: the route counts what it reads
            await self.app(scope, receive, send)
            return
        if not any(name == b"transfer-encoding" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)  # no body
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _too_large(send, self.max_bytes, "SAGAN_MAX_BODY_BYTES")
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, max_bytes: int, setting: str) -> None:
    body = json.dumps({"detail": f"the request body is over this service's limit of {max_bytes} bytes "
                                 f"({setting})"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
