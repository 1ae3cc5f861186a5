"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from kefu.serve.deps import Service
from kefu.serve.security import APIError
from kefu.store.repository import StoreUnavailable

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: Service) -> dict:
    """Ready when the models are loaded (they are before the app starts) and the store answers."""
    try:
        await run_in_threadpool(service.store.ping)
    except StoreUnavailable as err:
        raise APIError(503, f"not ready: {err}", "unavailable", code="store_unavailable") from None
    return {
        "status": "ready",
        "model": service.assistant.name,
        "model_versions": service.assistant.versions,
        "registry_revision": service.deployments.serving.revision,
    }


@router.get("/metrics")
def metrics(service: Service) -> Response:
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
