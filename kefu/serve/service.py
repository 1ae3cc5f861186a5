"""The serving object behind every route: the assistant, the conversation store and the metrics.

One customer turn, whatever the channel:

    begin   the customer's message is stored (a new conversation with its history, or the next
            message of a known one) — committed before anything is generated — and the
            assistant decides the turn (route, reason, sources)
    answer  the FAQ answer or hand-off message at once, or the generator's reply, streamed
    finish  the answer is stored with its route, reason, intent, confidence, sources, model
            versions, tokens and latency; a hand-off opens a queue entry in the same commit

Routes run `begin` and `finish` in worker threads (the store and the models block); streaming
reads the generator piece by piece from a thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from kefu.assistant.pipeline import Assistant, Turn
from kefu.assistant.policy import ConversationState
from kefu.data.pii import Redactor
from kefu.infer.generate import SamplingConfig
from kefu.serve.deployment import Deployments
from kefu.serve.metrics import Metrics
from kefu.serve.protocol import ChatCompletionRequest, KefuResult
from kefu.serve.security import APIError
from kefu.store.models import utcnow
from kefu.store.repository import ConversationRecord, NotFound, Store

log = logging.getLogger("kefu.serve")

# A channel customer who writes again after this long starts a new conversation (WeChat has
# no "new chat" button), unless the old one is waiting for a person.
CHANNEL_SESSION_IDLE = datetime.timedelta(minutes=30)
HOLDING_REPLY = {
    "en": "I'm still looking into this. Send any message in a moment to see the answer.",
    "zh": "正在为您查询，请稍后发送任意消息查看答复。",
}


@dataclass
class Started:
    """A turn whose customer message is stored and whose route is decided."""

    conversation_id: str
    user_message_id: int
    turn: Turn
    started: float
    request_id: str | None
    prompt_tokens: int
    assistant: Assistant  # the versions this turn started on, kept to its end

    def result(self, message_id: int | None = None) -> KefuResult:
        understood, decision = self.turn.understood, self.turn.decision
        confidence = (
            decision.kb_confidence if self.turn.route == "faq" else understood.intent_confidence
        )
        return KefuResult(
            conversation_id=self.conversation_id,
            user_message_id=self.user_message_id,
            message_id=message_id,
            route=self.turn.route,
            reason=decision.reason,
            intent=understood.intent,
            confidence=confidence,
            language=understood.language,
            sources=self.turn.sources(),
            handoff=self.turn.route == "handoff",
            model_versions=self.assistant.versions,
        )


def _turns_since_handoff(messages: list) -> int:
    """Customer messages since the conversation last went to a person (all, if it never did):
    once a person has resolved a hand-off, the turn limit counts afresh."""
    last = max((n for n, m in enumerate(messages) if m.route == "handoff"), default=-1)
    return sum(m.role == "user" for m in messages[last + 1 :])


class ChatService:
    def __init__(self, deployments: Deployments, store: Store, metrics: Metrics) -> None:
        self.deployments = deployments
        self.store = store
        self.metrics = metrics
        self.redact = Redactor()
        self.started_at = time.time()  # the `created` of the model card
        # Channel user → answers the channel still owes them (late ones; see channel_reply).
        self._undelivered: dict[str, list[str]] = {}

    @property
    def assistant(self) -> Assistant:
        """The live assistant: for what every version shares (name, languages, messages)."""
        return self.deployments.serving.live

    # -- one turn ---------------------------------------------------------------------------

    def begin(
        self,
        request: ChatCompletionRequest,
        request_id: str | None,
        channel_message_id: str | None = None,
        channel: str | None = None,
        conversation: ConversationRecord | None = None,
    ) -> Started:
        """Store the customer's message and decide the turn (raises APIError for bad requests).

        Args:
            channel_message_id: the channel's own id of the message (WeChat's MsgId), unique.
            channel: the channel, when not the request's (`kefu.channel`).
            conversation: the request's conversation, when the caller has just read it.
        """
        names = self.assistant.model_names()
        if request.model not in names:
            raise APIError(
                404,
                f"model {request.model!r} does not exist; this server has "
                f"{', '.join(map(repr, names))} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        last = request.messages[-1]
        text = last.text().strip()
        if last.role != "user" or not text:
            raise APIError(
                400,
                "the last message must be the customer's (role user) with non-empty text",
                param="messages",
                code="invalid_messages",
            )
        started = time.perf_counter()
        language = self.assistant.language(text)
        redacted = self.redact(text)
        conversation_id = request.kefu.conversation_id
        if conversation_id:
            try:
                if conversation is None or conversation.id != conversation_id:
                    conversation = self.store.conversation(conversation_id)
            except NotFound:
                raise APIError(
                    404,
                    f"conversation {conversation_id!r} does not exist; leave kefu.conversation_id out to start one",
                    param="kefu.conversation_id",
                    code="conversation_not_found",
                ) from None
            user_message_id = self.store.add_user_message(
                conversation_id, text, redacted, request_id, channel_message_id
            )
            history = [{"role": m.role, "content": m.text} for m in conversation.messages]
            state = ConversationState(
                customer_turns=_turns_since_handoff(conversation.messages),
                low_confidence_streak=conversation.low_confidence_streak,
                with_person=conversation.status == "handoff",
            )
        else:
            messages = [
                {
                    "role": "system" if m.role == "developer" else m.role,
                    "text": m.text(),
                    "redacted_text": self.redact(m.text()),
                    "request_id": request_id,
                }
                for m in request.messages
                if m.role in ("system", "developer", "user", "assistant") and m.text().strip()
            ]
            messages[-1]["channel_message_id"] = channel_message_id
            conversation_id, ids = self.store.start_conversation(
                channel or request.kefu.channel, request.user, language, messages
            )
            user_message_id = ids[-1]
            history = [{"role": m["role"], "content": m["text"]} for m in messages[:-1]]
            state = ConversationState(
                customer_turns=sum(m["role"] == "user" for m in messages[:-1])
            )
        log.info(
            "%s conversation %s: customer said %r",
            request_id,
            conversation_id,
            redacted[:200],
        )
        assistant = self.deployments.serving.pick(conversation_id)
        turn = assistant.turn(text, history, state)
        turn.adapter = names[request.model]
        prompt_tokens = len(turn.prompt) if turn.prompt else assistant.count_tokens(text)
        return Started(
            conversation_id, user_message_id, turn, started, request_id, prompt_tokens, assistant
        )

    def sampling(self, request: ChatCompletionRequest) -> SamplingConfig:
        return self.assistant.sampling(
            request.temperature,
            request.top_p,
            request.max_completion_tokens or request.max_tokens,
            request.stop_list(),
            request.seed,
        )

    def pieces(self, started: Started, sampling: SamplingConfig) -> Iterator[str]:
        """The answer in pieces: one piece for the FAQ and hand-off routes, streamed otherwise."""
        if started.turn.reply is not None:
            yield started.turn.reply
        else:
            yield from started.assistant.generate(started.turn, sampling)

    def finish(
        self,
        started: Started,
        text: str,
        completion_tokens: int,
        interrupted: str | None = None,
    ) -> int:
        """Store the answer and count the turn; returns the answer's message id."""
        turn, decision = started.turn, started.turn.decision
        seconds = time.perf_counter() - started.started
        reason = decision.reason + (f"; {interrupted}" if interrupted else "")
        result = started.result()
        message_id = self.store.add_assistant_message(
            started.conversation_id,
            text,
            self.redact(text),
            route=turn.route,
            reason=reason,
            intent=turn.understood.intent,
            confidence=result.confidence,
            sources=[source.model_dump() for source in result.sources],
            model_versions=started.assistant.versions,
            tokens=completion_tokens,
            latency_ms=1000 * seconds,
            request_id=started.request_id,
            low_confidence=decision.low_confidence,
            handoff_reason=decision.handoff_reason,
        )
        versions = self.metrics.versions_label(started.assistant.versions)
        self.metrics.turns.labels(turn.route, versions).inc()
        self.metrics.turn_seconds.labels(turn.route, versions).observe(seconds)
        if decision.handoff_reason:
            self.metrics.handoffs.labels(decision.trigger or "other").inc()
        if turn.route == "generator" and completion_tokens:
            self.metrics.generated_tokens.inc(completion_tokens)
            self.metrics.tokens_per_second.observe(completion_tokens / max(seconds, 1e-6))
        log.info(
            "%s conversation %s: %s (%s) in %.0f ms",
            started.request_id,
            started.conversation_id,
            turn.route,
            reason,
            1000 * seconds,
        )
        return message_id

    def answer(self, started: Started, sampling: SamplingConfig) -> tuple[str, str, int, int]:
        """The whole answer: (text, finish reason, completion tokens, stored message id)."""
        text = "".join(self.pieces(started, sampling))
        return text, *self.complete(started, text, sampling)

    def complete(
        self, started: Started, text: str, sampling: SamplingConfig
    ) -> tuple[str, int, int]:
        """Store a whole answer: (finish reason, completion tokens, stored message id).

        The finish reason is `length` when the generator ran out of tokens; FAQ and hand-off
        answers are always whole.
        """
        tokens = started.assistant.count_tokens(text)
        cut = started.turn.route == "generator" and tokens >= sampling.max_new_tokens
        return "length" if cut else "stop", tokens, self.finish(started, text, tokens)

    # -- channels without streaming (WeChat) ------------------------------------------------

    def greeting(self, language_hint: str | None = None) -> str:
        return self.assistant.greeting(language_hint)

    @staticmethod
    def channel_text(text: str, route: str | None, sources: list[dict] | None) -> str:
        """An answer for a plain-text channel: an FAQ answer's citation goes after the text."""
        cited = [f"{s['title']} {s['url'] or ''}".strip() for s in sources or []]
        return text + "".join(f"\n\n— {c}" for c in cited) if route == "faq" else text

    async def channel_reply(
        self,
        channel: str,
        user: str,
        text: str,
        channel_message_id: str,
        deadline_s: float,
        request_id: str | None = None,
    ) -> str:
        """Answer a message from a channel that cannot stream and waits only so long.

        A retry of a message already stored (same channel message id) gets the stored answer,
        waiting for it until the deadline. An answer not ready by the deadline is replaced by
        a holding reply; it is stored when ready and sent with the customer's next message.
        """
        known = await run_in_threadpool(self.store.message_by_channel_id, channel_message_id)
        if known is not None:
            return await self._stored_reply(known.id, deadline_s, known.text)
        task = asyncio.ensure_future(
            run_in_threadpool(
                self._channel_turn, channel, user, text, channel_message_id, request_id
            )
        )
        try:
            reply = await asyncio.wait_for(asyncio.shield(task), deadline_s)
        except TimeoutError:
            task.add_done_callback(lambda done: self._owe(channel, user, done, request_id))
            reply = HOLDING_REPLY[self.assistant.language(text)]
        owed = self._undelivered.pop(f"{channel}:{user}", [])  # taken once this reply exists
        return "\n\n".join([*owed, reply])

    def _owe(self, channel: str, user: str, done: asyncio.Future, request_id: str | None) -> None:
        """Keep a late answer for the customer's next message (every one, in order)."""
        if done.cancelled():
            return
        if done.exception() is not None:
            log.error(
                "%s a late %s answer for a customer failed: %r",
                request_id,
                channel,
                done.exception(),
            )
            return
        self._undelivered.setdefault(f"{channel}:{user}", []).append(done.result())

    def _channel_turn(
        self, channel: str, user: str, text: str, channel_message_id: str, request_id: str | None
    ) -> str:
        conversation = self.store.open_conversation(channel, user)
        idle = conversation and utcnow() - conversation.updated_at > CHANNEL_SESSION_IDLE
        if idle and conversation.status == "open":
            conversation = None  # a new visit starts a new conversation; a hand-off waits on
        request = ChatCompletionRequest.model_validate(
            {
                "model": self.assistant.name,
                "messages": [{"role": "user", "content": text}],
                "user": user,
                "kefu": {"conversation_id": conversation.id if conversation else None},
            }
        )
        started = self.begin(request, request_id, channel_message_id, channel, conversation)
        reply, *_ = self.answer(started, started.assistant.sampling())
        return self.channel_text(reply, started.turn.route, started.turn.sources())

    async def _stored_reply(self, message_id: int, deadline_s: float, question: str) -> str:
        waited = 0.0
        while True:
            reply = await run_in_threadpool(self.store.reply_to, message_id)
            if reply is not None:
                return self.channel_text(reply.text, reply.route, reply.sources)
            if waited >= deadline_s:
                return HOLDING_REPLY[self.assistant.language(question)]
            await asyncio.sleep(0.1)
            waited += 0.1
