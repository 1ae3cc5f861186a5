"""Who answers a turn: the FAQ, the generator, or a person — and why.

The rules, in the order they are tried (the first that applies decides):

1. The conversation is already with a person: the customer is told so; nothing is generated.
2. The customer asks for a person ("agent", "human", "转人工", "人工客服", … in HandoffConfig).
3. The customer is angry (sentiment.anger reaches `handoff.anger`).
4. The conversation reached `handoff.max_turns` customer messages.
5. The knowledge base is confident about its first hit (calibrated, `KnowledgeBase.lookup`):
   that entry's answer, with its citation.
6. The turn is low-confidence (no confident FAQ hit and the intent is out of scope) for the
   `handoff.low_confidence_turns`-th time in a row: a person.
7. Otherwise the generator answers from the history and the retrieved passages (a project
   without a generator hands off instead).

`decide` is a pure function of what the turn understood and the conversation's state, so every
rule is tested without models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from kefu.config import HandoffConfig
from kefu.kb.index import Hit

Route = Literal["faq", "generator", "handoff"]


@dataclass
class Understanding:
    """What the assistant made of one customer message."""

    text: str  # normalised
    language: str  # "en" or "zh"
    intent: str | None  # None without an intent model; "out_of_scope" below its threshold
    intent_confidence: float | None
    entities: list[dict] = field(default_factory=list)
    anger: float = 0.0


@dataclass
class ConversationState:
    """What the policy needs to know of the conversation before this message."""

    customer_turns: int = 0  # customer messages before this one
    low_confidence_streak: int = 0
    with_person: bool = False


@dataclass
class Decision:
    """The route of one turn and everything recorded about it."""

    route: Route
    reason: str
    hits: list[Hit]
    kb_confidence: float | None
    low_confidence: bool
    handoff_reason: str | None = None  # set when this turn opens a hand-off
    trigger: str | None = None  # which rule handed off: requested, anger, max_turns, …


def asks_for_person(text: str, handoff: HandoffConfig) -> str | None:
    """The hand-off phrase in `text`, if any (English: whole words, any case)."""
    lowered = text.lower()
    for phrase in handoff.phrases.get("en", []):
        if re.search(rf"(?<![a-z]){re.escape(phrase.lower())}(?![a-z])", lowered):
            return phrase
    for phrase in handoff.phrases.get("zh", []):
        if phrase in text:
            return phrase
    return None


def decide(
    understood: Understanding,
    state: ConversationState,
    hits: list[Hit],
    kb_confidence: float | None,
    kb_confident: bool,
    handoff: HandoffConfig,
    has_generator: bool,
) -> Decision:
    """Apply the rules above to one turn."""

    def person(trigger: str, reason: str) -> Decision:
        opens = trigger != "waiting"
        return Decision(
            "handoff", reason, hits, kb_confidence, False, reason if opens else None, trigger
        )

    if state.with_person:
        return person("waiting", "the conversation is waiting for a person")
    phrase = asks_for_person(understood.text, handoff)
    if phrase:
        return person("requested", f"the customer asked for a person ({phrase!r})")
    if understood.anger >= handoff.anger:
        return person(
            "anger", f"the customer sounds angry (anger {understood.anger:.1f} ≥ {handoff.anger:g})"
        )
    if state.customer_turns + 1 >= handoff.max_turns:
        return person(
            "max_turns", f"the conversation reached {handoff.max_turns} customer messages"
        )
    if kb_confident and hits:
        return Decision(
            "faq",
            f"FAQ entry {hits[0].id!r} at confidence {kb_confidence:.2f}",
            hits,
            kb_confidence,
            False,
        )
    low = understood.intent is None or understood.intent == "out_of_scope"
    best = "none" if kb_confidence is None else f"{kb_confidence:.2f}"
    if low and state.low_confidence_streak + 1 >= handoff.low_confidence_turns:
        return person(
            "low_confidence",
            f"{handoff.low_confidence_turns} low-confidence turns in a row (intent "
            f"{understood.intent or 'unknown'}, FAQ confidence {best})",
        )
    if not has_generator:
        return person("no_generator", "no confident FAQ answer and no generator")
    intent = understood.intent or "no intent model"
    return Decision(
        "generator",
        f"no confident FAQ answer (best {best}; intent {intent}); generated from "
        f"{len(hits)} passages",
        hits,
        kb_confidence,
        low,
    )
