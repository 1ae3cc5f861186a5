"""The wire format: OpenAI's chat-completions schema (fields in OpenAI's order), pydantic only.

kefu's own fields travel in one extension object named `kefu`, on the request (which
conversation to continue, which channel) and on responses and stream chunks (conversation,
route, reason, sources, hand-off). Clients that do not know it ignore it; the official `openai`
client passes it with `extra_body={"kefu": {...}}` and shows it in `response.model_extra`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ID = 2**63 - 1  # the largest row id SQLite and PostgreSQL's bigint hold


class Message(BaseModel):
    # OpenAI accepts more roles and content parts than a support chat needs; unknown fields are
    # ignored rather than refused, as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts of type text are joined, others skipped."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class KefuRequest(BaseModel):
    """kefu's extension on a request."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = Field(
        None, max_length=64, description="Continue this conversation; none: start a new one."
    )
    channel: Literal["api", "web"] = Field("api", description="Where the customer is.")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1)
    model: str
    frequency_penalty: float | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = Field(None, max_length=255)
    kefu: KefuRequest = Field(default_factory=KefuRequest)

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Source(BaseModel):
    id: str
    title: str
    url: str | None
    snippet: str


class KefuResult(BaseModel):
    """kefu's extension on a response: what happened in this turn and why."""

    conversation_id: str
    user_message_id: int
    message_id: int | None = (
        None  # the answer's id (for feedback); in the last chunk when streaming
    )
    route: Literal["faq", "generator", "handoff"]
    reason: str
    intent: str | None
    confidence: float | None
    language: str
    sources: list[Source]
    handoff: bool
    model_versions: dict[str, str]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    kefu: KefuResult


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    kefu: KefuResult | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kefu"
    kefu: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The conversation id proves the caller holds the conversation; message ids are sequential.
    conversation_id: str = Field(max_length=64)
    message_id: int = Field(ge=1, le=MAX_ID)
    rating: Literal[1, -1]
    comment: str | None = Field(None, max_length=2000)


class HandoffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: str = Field(max_length=64)


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=128)
    note: str | None = Field(None, max_length=2000)


# -- /admin/models: the model registry (kefu.registry), as `kefu models` drives it

Kind = Annotated[
    str, Field(min_length=1, max_length=32, description="intent/<language>, kb or generator.")
]
Version = Annotated[
    str, Field(min_length=1, max_length=16, description="v1, v2, … (`kefu models list`).")
]
WaitSeconds = Annotated[
    float,
    Field(30, ge=0, le=300, description="Wait this long for every server process to serve it."),
]


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    path: str = Field(min_length=1, max_length=4096, description="A model folder on the server.")
    note: str | None = Field(None, max_length=2000)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    version: Version
    force: bool = Field(False, description="Promote even if its evaluation is worse.")
    wait_s: WaitSeconds = 30


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    wait_s: WaitSeconds = 30


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    version: Version | None = Field(None, description="The candidate; none: end the canary.")
    share: float = Field(0.1, gt=0, lt=1, description="Share of new conversations it gets.")
    wait_s: WaitSeconds = 30
