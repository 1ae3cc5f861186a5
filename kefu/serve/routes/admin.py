"""/admin/models: the model registry over HTTP, for operators with an admin key.

The same decisions as `kefu models` (kefu.registry), so either may drive a live fleet: the
state lives in the shared database and every server process follows it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from kefu.registry import NotTakenUp, Promotion, PromotionRefused, Registry
from kefu.serve.deps import AdminCaller, Service
from kefu.serve.protocol import CanaryRequest, PromoteRequest, PushRequest, RollbackRequest
from kefu.serve.security import APIError

router = APIRouter(prefix="/admin/models")


def _registry(service, caller) -> Registry:
    return Registry(service.deployments.config, service.store, actor=caller.identity)


async def _changed(change, *args) -> dict:
    """Run a registry change; a refused promotion is 409, a change not yet served everywhere 504."""
    try:
        return _done(await run_in_threadpool(change, *args))
    except PromotionRefused as err:
        raise APIError(409, str(err), param="version", code="promotion_refused") from None
    except NotTakenUp as err:
        raise APIError(504, str(err), "timeout", code="not_yet_serving") from None


def _done(promotion: Promotion) -> dict:
    return {
        "deployment": {
            k: v.isoformat() if hasattr(v, "isoformat") else v
            for k, v in dataclasses.asdict(promotion.deployment).items()
        },
        "gate": promotion.gate,
        "workers": promotion.workers,
    }


@router.get("")
async def status(caller: AdminCaller, service: Service) -> dict:
    """What serves each kind, every version with its evaluation, the server processes, and
    each serving version's turns, routes, latency and feedback over the last day."""
    registry = _registry(service, caller)
    report = await run_in_threadpool(registry.status)
    versions = await run_in_threadpool(registry.versions)
    report["versions"] = [
        {
            "kind": v.kind,
            "version": v.version,
            "evaluation": v.evaluation,
            "source": v.source,
            "note": v.note,
            "created_at": v.created_at.isoformat(),
        }
        for v in versions
    ]
    report["this_process"] = {
        "worker": service.deployments.worker,
        "revision": service.deployments.serving.revision,
    }
    return report


@router.post("/push")
async def push(body: PushRequest, caller: AdminCaller, service: Service) -> dict:
    """Add a version from a model folder on the server (loaded, smoke-tested, evaluated)."""
    registry = _registry(service, caller)
    record, new = await run_in_threadpool(registry.push, body.kind, Path(body.path), body.note)
    return {
        "kind": record.kind,
        "version": record.version,
        "new": new,
        "evaluation": record.evaluation,
    }


@router.post("/promote")
async def promote(body: PromoteRequest, caller: AdminCaller, service: Service) -> dict:
    registry = _registry(service, caller)
    return await _changed(registry.promote, body.kind, body.version, body.force, body.wait_s)


@router.post("/rollback")
async def rollback(body: RollbackRequest, caller: AdminCaller, service: Service) -> dict:
    return await _changed(_registry(service, caller).rollback, body.kind, body.wait_s)


@router.post("/canary")
async def canary(body: CanaryRequest, caller: AdminCaller, service: Service) -> dict:
    registry = _registry(service, caller)
    if body.version is None:
        return await _changed(registry.end_canary, body.kind, body.wait_s)
    return await _changed(registry.canary, body.kind, body.version, body.share, body.wait_s)
