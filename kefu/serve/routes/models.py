"""GET /v1/models: the assistant, by the names clients put in `model` (one per generator adapter)."""

from __future__ import annotations

from fastapi import APIRouter

from kefu.serve.deps import ChatCaller, Service
from kefu.serve.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
def models(caller: ChatCaller, service: Service) -> ModelList:
    assistant = service.assistant
    cards = [
        ModelCard(
            id=name,
            created=int(service.started_at),
            kefu={
                "assistant": assistant.config.assistant.name,
                "languages": assistant.config.languages,
                "greeting": assistant.config.assistant.greeting,
                "adapter": adapter,
                "model_versions": assistant.versions,
            },
        )
        for name, adapter in assistant.model_names().items()
    ]
    return ModelList(data=cards)
