"""Conversations, feedback and the hand-off queue."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from kefu.serve.deps import AdminCaller, ChatCaller, Service
from kefu.serve.protocol import MAX_ID, ClaimRequest, FeedbackRequest, HandoffRequest
from kefu.store.repository import NotFound

router = APIRouter()
HandoffId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _plain(record) -> dict:
    """A store record as JSON: dataclass fields, datetimes as ISO 8601."""
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in ((f.name, getattr(record, f.name)) for f in dataclasses.fields(record))
        if not isinstance(value, list) or key != "messages"
    }


@router.get("/v1/conversations/{conversation_id}")
async def conversation(conversation_id: str, caller: ChatCaller, service: Service) -> dict:
    record = await run_in_threadpool(service.store.conversation, conversation_id)
    return {**_plain(record), "messages": [_plain(m) for m in record.messages]}


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, caller: ChatCaller, service: Service) -> dict:
    message = await run_in_threadpool(service.store.message, body.message_id)
    if message.conversation_id != body.conversation_id:  # the same answer as for no message
        raise NotFound(
            f"message {body.message_id} not found in conversation {body.conversation_id!r}"
        )
    record = await run_in_threadpool(
        service.store.add_feedback, body.message_id, body.rating, body.comment
    )
    versions = service.metrics.versions_label(message.model_versions or {})
    service.metrics.feedback.labels(str(body.rating), versions).inc()
    return _plain(record)


@router.post("/v1/handoffs/request")
async def request_handoff(body: HandoffRequest, caller: ChatCaller, service: Service) -> dict:
    record = await run_in_threadpool(
        service.store.request_handoff,
        body.conversation_id,
        "the customer pressed “talk to a person”",
    )
    service.metrics.handoffs.labels("button").inc()
    conversation = await run_in_threadpool(service.store.conversation, body.conversation_id)
    language = conversation.language or service.assistant.config.languages[0]
    return {
        "handoff_id": record.id,
        "status": record.status,
        "message": service.assistant.handoff_message(language),
    }


@router.get("/v1/handoffs")
async def handoffs(
    caller: AdminCaller,
    service: Service,
    status: Literal["queued", "claimed", "resolved"] | None = None,
) -> dict:
    records = await run_in_threadpool(service.store.handoffs, status)
    return {"object": "list", "data": [_plain(r) for r in records]}


@router.post("/v1/handoffs/{handoff_id}/claim")
async def claim(
    handoff_id: HandoffId, body: ClaimRequest, caller: AdminCaller, service: Service
) -> dict:
    return _plain(await run_in_threadpool(service.store.claim_handoff, handoff_id, body.agent))


@router.post("/v1/handoffs/{handoff_id}/resolve")
async def resolve(
    handoff_id: HandoffId, body: ClaimRequest, caller: AdminCaller, service: Service
) -> dict:
    return _plain(
        await run_in_threadpool(service.store.resolve_handoff, handoff_id, body.agent, body.note)
    )
