"""Dependencies the routes declare: the service, and who is calling with which scopes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from kefu.serve.security import APIError, Caller
from kefu.serve.service import ChatService


def service(request: Request) -> ChatService:
    return request.app.state.service


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _caller_with(scope: str):
    async def caller(request: Request) -> Caller:
        state = request.app.state
        header = request.headers.get("authorization", "")
        if header:
            kind, _, key = header.partition(" ")
            if kind.lower() != "bearer" or not key.strip():
                raise APIError(
                    401,
                    "Authorization must be `Bearer <API key>`",
                    "authentication_error",
                    code="invalid_api_key",
                )
            record = await run_in_threadpool(state.service.store.api_key, key.strip())
            if record is None:
                raise APIError(
                    401,
                    "unknown or revoked API key; create one with `kefu keys create`",
                    "authentication_error",
                    code="invalid_api_key",
                )
            found = Caller(
                f"key:{record.prefix}",
                frozenset(record.scopes),
                record.rate_limit_per_minute or state.settings.rate_limit_per_minute,
            )
        elif scope == "chat" and state.settings.anonymous_chat:
            address = request.client.host if request.client else "unknown"
            found = Caller(
                f"ip:{address}", frozenset({"chat"}), state.settings.rate_limit_per_minute
            )
        else:
            raise APIError(
                401,
                f"this endpoint needs an API key with scope {scope!r}: send `Authorization: Bearer <key>`",
                "authentication_error",
                code="missing_api_key",
            )
        if scope not in found.scopes:
            raise APIError(
                403,
                f"this API key lacks scope {scope!r} (it has {', '.join(sorted(found.scopes))})",
                "permission_error",
                code="insufficient_scope",
            )
        state.rate_limiter.check(found)
        return found

    return caller


Service = Annotated[ChatService, Depends(service)]
RequestId = Annotated[str | None, Depends(request_id)]
ChatCaller = Annotated[Caller, Depends(_caller_with("chat"))]
AdminCaller = Annotated[Caller, Depends(_caller_with("admin"))]
