"""The assistant on the small demo: routes, reasons, languages, prompts that fit."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kefu.assistant.pipeline import BatchLane
from kefu.assistant.policy import ConversationState
from kefu.errors import KefuError
from tests.conftest import FAQ_EN, FAQ_ZH


def test_an_faq_question_takes_the_faq_route_with_its_citation(assistant) -> None:
    turn = assistant.turn(FAQ_EN, [], ConversationState())
    assert turn.route == "faq" and turn.reply.startswith("Please freeze your card")
    assert turn.sources() == [
        {
            "id": "lost-card-en",
            "title": FAQ_EN,
            "url": "https://www.acmebank.example/help/lost-card",
            "snippet": turn.decision.hits[0].snippet(),
        }
    ]
    assert turn.understood.intent == "card_lost_or_stolen"
    zh = assistant.turn(FAQ_ZH, [], ConversationState())
    assert (zh.route, zh.understood.language, zh.sources()[0]["id"]) == (
        "faq",
        "zh",
        "lost-card-zh",
    )


def test_each_language_goes_to_its_own_intent_model(assistant) -> None:
    assert set(assistant.intents) == {"en", "zh"}
    en = assistant.understand("my new card hasn't arrived yet")
    zh = assistant.understand("补办的卡还没收到")
    assert (en.language, zh.language) == ("en", "zh")
    assert en.intent == "card_delivery" and zh.intent == "card_delivery"


def test_entities_and_anger_are_part_of_what_is_understood(assistant) -> None:
    understood = assistant.understand("This is ridiculous!!! Where is transfer TX-20240312-0087?")
    assert {"type": "transaction_id"}.items() <= understood.entities[0].items()
    assert understood.anger >= 2
    assert assistant.turn(understood.text, [], ConversationState()).route == "handoff"


def test_the_generators_prompt_always_leaves_room_for_the_reply(assistant) -> None:
    history = []
    for n in range(40):  # far more history than a 128-token context holds
        history += [
            {"role": "user", "content": f"question number {n} about my savings account"},
            {"role": "assistant", "content": f"answer number {n}: it pays interest monthly"},
        ]
    turn = assistant.turn("and what about fees?" * 30, history, ConversationState())
    assert turn.route == "generator"
    budget = assistant.context_length() - assistant.config.assistant.max_new_tokens
    assert 0 < len(turn.prompt) <= budget
    reply = "".join(assistant.generate(turn, assistant.sampling()))
    assert reply.strip()


def test_every_model_version_is_named(assistant) -> None:
    assert set(assistant.versions) == {"intent/en", "intent/zh", "kb", "generator"}
    assert all(len(v) == 12 for v in assistant.versions.values())


def test_english_messages_are_embedded_once_for_intent_and_knowledge_base(assistant) -> None:
    text = "my new card hasn't arrived yet"
    [(understood, found)] = assistant.look([text])
    alone = assistant.knowledge_base.lookup(understood.text, k=3)  # embeds the text itself
    assert [h.id for h in found.hits] == [h.id for h in alone.hits]
    assert [h.dense for h in found.hits] == pytest.approx([h.dense for h in alone.hits], abs=1e-6)
    assert found.confidence == pytest.approx(alone.confidence, abs=1e-6)


def test_a_batch_understands_each_message_as_it_would_alone(assistant) -> None:
    texts = [FAQ_EN, "补办的卡还没收到", "I want to talk to a human", FAQ_ZH, "what is my balance"]
    together = assistant.look(texts)
    for text, (understood, found) in zip(texts, together, strict=True):
        [(alone, alone_found)] = assistant.look([text])
        assert (understood.intent, understood.language) == (alone.intent, alone.language)
        assert understood.intent_confidence == pytest.approx(alone.intent_confidence, abs=1e-5)
        assert [h.id for h in found.hits] == [h.id for h in alone_found.hits]


def test_the_lane_batches_what_waits_and_passes_errors_on() -> None:
    batches = []

    def work(items):
        batches.append(list(items))
        time.sleep(0.05)
        if "bad" in items:
            raise ValueError("bad item")
        return [item * 2 for item in items]

    lane = BatchLane(work)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lane, range(16)))
    assert results == [n * 2 for n in range(16)]
    assert len(batches) < 16 and sorted(item for batch in batches for item in batch) == list(
        range(16)
    )
    with pytest.raises(ValueError, match="bad item"):
        lane("bad")


def test_a_system_message_too_long_for_the_generator_is_refused_at_load(assistant) -> None:
    settings = assistant.config.assistant
    original = settings.system
    settings.system = "Please always be polite and helpful to every customer. " * 40
    try:
        with pytest.raises(KefuError, match=r"assistant.system takes \d+ tokens"):
            assistant.check_prompt_room()
    finally:
        settings.system = original


def test_a_prompt_of_a_tiny_message_with_no_room_still_ends(assistant) -> None:
    settings = assistant.config.assistant
    original = settings.system
    settings.system = "Be polite. " * 30  # over the budget, which the load check would refuse
    try:
        prompt = assistant.prompt([], "hi", [])
    finally:
        settings.system = original
    assert len(prompt) <= assistant.context_length() - settings.max_new_tokens


def test_an_lstm_generator_answers_one_reply_at_a_time(assistant) -> None:
    """An LSTM generator has no engine: its replies take turns behind the generation lock, and
    equal what `generate` gives the same prompt."""
    import torch

    from kefu.assistant.pipeline import Assistant
    from kefu.infer.generate import generate
    from kefu.models.checkpoint import LoadedRun
    from kefu.models.lstm import LSTMConfig, RecurrentLM

    tokenizer = assistant.generator.tokenizer
    torch.manual_seed(0)
    model = RecurrentLM(LSTMConfig(vocab_size=tokenizer.vocab_size, d_embed=32, d_hidden=32))
    run = LoadedRun(assistant.generator.path, "lstm", model.eval(), tokenizer, {})
    lstm = Assistant.assemble(assistant.config, {"generator": run}, {"generator": "lstm-test"})
    assert lstm.engine is None and lstm.context_length() is None
    turn = lstm.turn("and what about fees?", [], ConversationState())
    assert turn.route == "generator"
    sampling = lstm.sampling(temperature=0.0, max_tokens=8)
    with ThreadPoolExecutor(2) as pool:  # two replies at once, interleaved piece by piece
        replies = list(pool.map(lambda _: "".join(lstm.generate(turn, sampling)), range(2)))
    (alone,) = generate(model, tokenizer, [turn.prompt], sampling)
    expected = alone.text if alone.text.strip() else lstm.config.assistant.no_answer["en"]
    assert replies == [expected, expected]
