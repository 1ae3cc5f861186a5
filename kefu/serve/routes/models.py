"""GET /v1/models: the assistant, by the name clients put in `model`."""

from __future__ import annotations

from fastapi import APIRouter

from kefu.serve.deps import ChatCaller, Service
from kefu.serve.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
def models(caller: ChatCaller, service: Service) -> ModelList:
    assistant = service.assistant
    card = ModelCard(
        id=assistant.name,
        created=int(service.started_at),
        kefu={
            "assistant": assistant.config.assistant.name,
            "languages": assistant.config.languages,
            "greeting": assistant.config.assistant.greeting,
            "model_versions": assistant.versions,
        },
    )
    return ModelList(data=[card])
