"""POST /v1/chat/completions: one customer turn, answered whole or streamed as server-sent events."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from kefu.serve.deps import ChatCaller, RequestId, Service
from kefu.serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
)
from kefu.serve.security import error_body

router = APIRouter()
log = logging.getLogger("kefu.serve")


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    request: ChatCompletionRequest, caller: ChatCaller, service: Service, request_id: RequestId
):
    started = await run_in_threadpool(service.begin, request, request_id)
    sampling = service.sampling(request)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if not request.stream:
        text, finish_reason, tokens, message_id = await run_in_threadpool(
            service.answer, started, sampling
        )
        return ChatCompletion(
            id=completion_id,
            model=request.model,
            choices=[Choice(message=ResponseMessage(content=text), finish_reason=finish_reason)],
            usage=Usage(
                prompt_tokens=started.prompt_tokens,
                completion_tokens=tokens,
                total_tokens=started.prompt_tokens + tokens,
            ),
            kefu=started.result(message_id),
        )

    def chunk(**fields) -> str:
        return ChatCompletionChunk(id=completion_id, model=request.model, **fields).model_dump_json(
            exclude_none=True
        )

    async def events() -> AsyncIterator[str]:
        pieces = service.pieces(started, sampling)
        parts: list[str] = []
        finished = False
        interrupted = "the client disconnected before the end"
        try:
            yield chunk(
                choices=[ChunkChoice(delta=Delta(role="assistant", content=""))],
                kefu=started.result(),
            )
            while (piece := await run_in_threadpool(next, pieces, None)) is not None:
                parts.append(piece)
                yield chunk(choices=[ChunkChoice(delta=Delta(content=piece))])
            finish_reason, tokens, message_id = await run_in_threadpool(
                service.complete, started, "".join(parts), sampling
            )
            finished = True
            yield chunk(
                choices=[ChunkChoice(delta=Delta(), finish_reason=finish_reason)],
                kefu=started.result(message_id),
            )
            if request.stream_options and request.stream_options.include_usage:
                usage = Usage(
                    prompt_tokens=started.prompt_tokens,
                    completion_tokens=tokens,
                    total_tokens=started.prompt_tokens + tokens,
                )
                yield json.dumps(
                    {**json.loads(chunk(choices=[])), "choices": [], "usage": usage.model_dump()}
                )
            yield "[DONE]"
        except Exception as err:  # headers are sent: the error goes in the stream, then it ends
            log.exception("%s the answer failed mid-stream", request_id)
            interrupted = f"the answer failed: {type(err).__name__}"
            yield json.dumps(
                error_body(
                    f"the answer failed part-way; the server log has the details under request id {request_id}",
                    "server_error",
                    request_id,
                )
            )
        finally:
            if not finished:  # keep what the customer was sent, and say why it stopped
                started.turn.cancel()  # free the generator's row for the next customer
                with anyio.CancelScope(shield=True):
                    text = "".join(parts)
                    await run_in_threadpool(
                        service.finish,
                        started,
                        text,
                        started.assistant.count_tokens(text),
                        interrupted,
                    )

    return EventSourceResponse(events(), ping=15)
