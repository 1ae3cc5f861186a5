import pytest

from kefu.assistant.policy import ConversationState, Understanding, asks_for_person, decide
from kefu.config import HandoffConfig
from kefu.kb.index import Hit
from kefu.kb.sources import Chunk

HANDOFF = HandoffConfig()
HIT = Hit(1, Chunk("lost-card", "faq.csv", "faq", ["Lost card?"], "Freeze it."), 0.1, 3.0, 0.8)


def understood(text: str = "my card is gone", intent: str | None = "card_lost", anger: float = 0):
    return Understanding(text, "en", intent, 0.9, [], anger)


def turn(u=None, state=None, confident=False, confidence=0.5, generator=True):
    return decide(
        u or understood(),
        state or ConversationState(),
        [HIT],
        confidence,
        confident,
        HANDOFF,
        generator,
    )


def test_a_confident_faq_hit_answers_with_its_entry() -> None:
    decision = turn(confident=True, confidence=0.95)
    assert decision.route == "faq"
    assert "lost-card" in decision.reason and "0.95" in decision.reason
    assert decision.handoff_reason is None and not decision.low_confidence


def test_otherwise_the_generator_answers_and_says_why() -> None:
    decision = turn(confidence=0.4)
    assert decision.route == "generator"
    assert "best 0.40" in decision.reason and "card_lost" in decision.reason
    assert not decision.low_confidence  # the intent is in scope


@pytest.mark.parametrize(
    "text",
    ["I want to talk to a HUMAN", "agent please", "转人工", "我要人工客服", "get me a real person"],
)
def test_an_explicit_request_hands_off_before_anything_else(text: str) -> None:
    decision = turn(understood(text), confident=True, confidence=0.99)
    assert decision.route == "handoff" and decision.trigger == "requested"
    assert decision.handoff_reason and "asked for a person" in decision.handoff_reason


def test_english_phrases_match_whole_words_only() -> None:
    assert asks_for_person("my agency sent money", HANDOFF) is None
    assert asks_for_person("humanitarian donation", HANDOFF) is None
    assert asks_for_person("Human, please", HANDOFF) == "human"


def test_anger_hands_off() -> None:
    decision = turn(understood(anger=3.0))
    assert (decision.route, decision.trigger) == ("handoff", "anger")


def test_the_turn_limit_hands_off() -> None:
    state = ConversationState(customer_turns=HANDOFF.max_turns - 1)
    assert turn(state=state).trigger == "max_turns"
    assert turn(state=ConversationState(customer_turns=HANDOFF.max_turns - 2)).route == "generator"


def test_low_confidence_hands_off_on_the_nth_turn_in_a_row() -> None:
    lost = understood("what about the thing", intent="out_of_scope")
    first = turn(lost, ConversationState(low_confidence_streak=0))
    assert first.route == "generator" and first.low_confidence
    second = turn(lost, ConversationState(low_confidence_streak=HANDOFF.low_confidence_turns - 1))
    assert (second.route, second.trigger) == ("handoff", "low_confidence")


def test_a_conversation_with_a_person_stays_there_without_a_new_handoff() -> None:
    decision = turn(state=ConversationState(with_person=True), confident=True, confidence=0.99)
    assert decision.route == "handoff" and decision.handoff_reason is None


def test_without_a_generator_an_unsure_turn_goes_to_a_person() -> None:
    assert turn(generator=False).trigger == "no_generator"
    assert turn(generator=False, confident=True, confidence=0.9).route == "faq"
