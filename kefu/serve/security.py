"""Request ids, body limits, API keys with scopes, and rate limits.

Keys are `Authorization: Bearer kefu-…`, stored only as their SHA-256 (`kefu keys create`).
A key has scopes: `chat` (talk to the assistant, give feedback, ask for a person) and `admin`
(the hand-off queue). When the project allows anonymous chat (`serve.anonymous_chat`, the
public web page), requests without a key get the chat scope, rate-limited per client address.
Rate limits are token buckets per key (or address) in each worker's memory: a limit of 60 a
minute allows bursts of 60 and refills one a second.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class APIError(Exception):
    """An error answered as OpenAI's JSON error body with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}


def error_body(
    message: str,
    type: str,
    request_id: str | None,
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {
        "error": {
            "message": message,
            "type": type,
            "param": param,
            "code": code,
            "request_id": request_id,
        }
    }


class RequestIdAndBodyLimit:
    """ASGI middleware: give every request an id (X-Request-ID, kept if the client sent a sane
    one) and refuse bodies over `max_body_bytes` with 413 — by Content-Length before reading,
    and by reading it first when it is streamed without one."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given and len(given) <= 64 and given.isprintable() else ""
        request_id = request_id or f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send_with_id, request_id)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A body without a length (chunked): read it here, up to the limit, and replay it.
            messages, received = [], 0
            while True:
                message = await receive()
                messages.append(message)
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    await self._too_large(send_with_id, request_id)
                    return
                if message["type"] != "http.request" or not message.get("more_body"):
                    break

            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    async def _too_large(self, send: Send, request_id: str) -> None:
        body = json.dumps(
            error_body(
                f"request body over the limit of {self.max_body_bytes} bytes; send a shorter message",
                "invalid_request_error",
                request_id,
                code="body_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key (by its name and prefix) or an anonymous address."""

    identity: str  # "key:<prefix>" or "ip:<address>"
    scopes: frozenset[str]
    rate_limit_per_minute: int


class RateLimiter:
    """Token buckets by caller identity, thread-safe."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # identity → (tokens, last refill)
        self._lock = threading.Lock()

    def check(self, caller: Caller) -> None:
        """Take one token, or raise 429 saying when to retry."""
        rate = caller.rate_limit_per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller.identity, (caller.rate_limit_per_minute, now))
            tokens = min(caller.rate_limit_per_minute, tokens + (now - last) * rate)
            if tokens < 1:
                retry = max(1, int((1 - tokens) / rate + 0.999))
                self._buckets[caller.identity] = (tokens, now)
                raise APIError(
                    429,
                    f"rate limit of {caller.rate_limit_per_minute} requests a minute reached; retry in {retry} s",
                    "rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry)},
                )
            self._buckets[caller.identity] = (tokens - 1, now)
