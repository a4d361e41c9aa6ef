"""Plain ASGI guards (no ``BaseHTTPMiddleware`` task per request): the API key and the body limit.

Torch-free and engine-free, like ``serving.schemas``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class ApiKeyMiddleware:
    """Every request must carry ``X-API-Key``; compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
            if not hmac.compare_digest(given, self.key):
                what = "wrong" if given else "missing"
                await _send_json(send, 401, {"detail": f"{what} API key: send it in the X-API-Key header"},
                                 [(b"www-authenticate", b"ApiKey")])
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: by Content-Length up front, and by counting as they stream.

    The whole body is read here (it is small: the limit is a megabyte) and replayed to the app, so
    a chunked upload that grows past the limit is refused before any handler sees it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = {"detail": f"request body is larger than {self.limit} bytes: send fewer or shorter "
                             f"sequences, or split the batch"}
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "Content-Length is not a number"},
                                 [(b"connection", b"close")])
                return
            if size > self.limit:
                await _send_json(send, 413, too_big, [(b"connection", b"close")])
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await _send_json(send, 413, too_big, [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
