"""The FastAPI app: middleware, error bodies, routes; everything else lives in the ChatService.

`create_app(settings)` loads the project's models and opens its store before the first request,
so a server that starts is ready (`/readyz` then only checks the database). Every error leaves
as OpenAI's JSON error body with the request id: bad JSON and invalid fields 400, a missing or
unknown key 401, a missing scope 403, unknown things 404, conflicts 409, oversize bodies 413,
rate limits 429, the database down 503 — and anything unexpected 500, logged with its traceback
and the request id, never sent to the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from importlib import resources

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from kefu.assistant.pipeline import Assistant
from kefu.errors import KefuError
from kefu.project import load_project
from kefu.serve.deployment import Deployments, Serving
from kefu.serve.metrics import Metrics
from kefu.serve.routes import admin, chat, conversations, health, models, web
from kefu.serve.security import APIError, RateLimiter, RequestIdAndBodyLimit, error_body
from kefu.serve.service import ChatService
from kefu.serve.settings import ServeSettings
from kefu.store.repository import Conflict, NotFound, Store, StoreError, StoreUnavailable

log = logging.getLogger("kefu.serve")
WORKER_THREADS = 256


def create_app(settings: ServeSettings, assistant: Assistant | None = None) -> FastAPI:
    """The app for a built project.

    Args:
        assistant: an already loaded assistant of the same project, from its build folder
            (tests share one); it serves the versions that build became in the registry.
    """
    config = load_project(settings.project)
    # The assistant runs two lanes of model work at once (understanding, generation): half
    # the cores each, so they do not fight over the same ones.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    store = Store.open(settings.database_url(config))
    metrics = Metrics()

    def swapped(serving: Serving) -> None:
        canaries = {
            kind: (share, version) for kind, (share, version, _) in serving.canaries.items()
        }
        metrics.set_models(serving.revision, serving.live_versions, canaries)

    deployments = Deployments(config, store, on_swap=swapped)
    try:
        for line in deployments.start(preloaded=assistant):
            log.info("model registry: %s", line)
    except BaseException:
        store.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Requests wait for a model lane in worker threads; with the default 40 threads, 40
        # streams waiting to generate would leave none for quick FAQ turns or /readyz.
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield
        deployments.stop()
        store.close()

    app = FastAPI(
        lifespan=lifespan,
        title=f"kefu — {config.assistant.name}",
        version="1",
        description="OpenAI-compatible chat completions with kefu's extension object `kefu`.",
    )
    app.state.service = ChatService(deployments, store, metrics)
    app.state.settings = config.serve
    app.state.page = web.filled_page(deployments.serving.live)
    app.state.rate_limiter = RateLimiter()

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.request_seconds.labels(path).observe(time.perf_counter() - started)
        return response

    if config.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.serve.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestIdAndBodyLimit, max_body_bytes=config.serve.max_body_bytes)
    _error_handlers(app)
    for module in (chat, models, conversations, health, web, admin):
        app.include_router(module.router)
    if settings.wechat is not None:
        from kefu.serve.channels import wechat

        app.include_router(wechat.router(settings.wechat))
    with resources.as_file(resources.files("kefu.serve") / "static") as static:
        app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process (`kefu serve --workers N`)."""
    return create_app(ServeSettings.from_environment())


def _json_error(
    request: Request, status: int, message: str, type: str, param=None, code=None, headers=None
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse(
        error_body(message, type, request_id, param, code), status_code=status, headers=headers
    )


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    problems = []
    param = None
    for error in err.errors():
        loc = [str(part) for part in error["loc"] if part != "body"]
        if error["type"] == "json_invalid":
            where = error.get("ctx", {}).get("error", "")
            return f"the body is not valid JSON ({where}); send a JSON object", None
        field = ".".join(loc) or "body"
        param = param or field
        problems.append(f"{field}: {error['msg']}")
    return "invalid request: " + "; ".join(problems), param


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return _json_error(
            request, err.status, err.message, err.type, err.param, err.code, err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        message, param = _validation_message(err)
        return _json_error(request, 400, message, "invalid_request_error", param, "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return _json_error(request, err.status_code, message, "invalid_request_error")

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound):
        return _json_error(request, 404, str(err), "invalid_request_error", code="not_found")

    @app.exception_handler(Conflict)
    async def conflict(request: Request, err: Conflict):
        return _json_error(request, 409, str(err), "invalid_request_error", code="conflict")

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, err: StoreUnavailable):
        log.error("%s %s", getattr(request.state, "request_id", None), err)
        return _json_error(
            request,
            503,
            "the conversation store is unavailable; nothing was answered, retry shortly",
            "unavailable",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, err: StoreError):
        return _json_error(request, 400, str(err), "invalid_request_error")

    @app.exception_handler(KefuError)
    async def kefu_error(request: Request, err: KefuError):
        return _json_error(request, 400, str(err), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        request_id = getattr(request.state, "request_id", None)
        log.exception("%s unexpected error", request_id)
        # This handler runs outside the request-id middleware, so it sets the header itself.
        return _json_error(
            request,
            500,
            f"internal error; the server log has the details under request id {request_id}",
            "server_error",
            headers={"X-Request-ID": request_id or ""},
        )
