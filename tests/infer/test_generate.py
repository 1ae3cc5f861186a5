import itertools

import pytest
import torch

from kefu.errors import KefuError
from kefu.infer.generate import (
    SamplingConfig,
    apply_repetition_penalty,
    generate,
    next_token,
    settled_text,
    stream,
)
from tests.infer.conftest import REPLIES, prompt_for

PROMPTS = ["Hello, I lost my card", "我的银行卡", "Thanks 😊 退回？"]


def reference_greedy(model, tokenizer, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding the slow, obvious way: the whole sequence through the model every step."""
    model.eval()
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token in (tokenizer.end_of_turn_id, tokenizer.end_of_text_id):
                break
            ids.append(token)
            out.append(token)
    return out


@pytest.mark.parametrize("arch", ["gpt", "lstm", "trained_gpt"])
def test_greedy_equals_full_forward_reference(arch, request, tokenizer):
    model = request.getfixturevalue(arch)
    config = SamplingConfig(max_new_tokens=20)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    prompts += [prompt_for(tokenizer, message) for message in [*REPLIES, "hello 你好"]]
    for prompt in prompts:
        (result,) = generate(model, tokenizer, [prompt], config)
        expected = reference_greedy(model, tokenizer, prompt, 20)
        assert result.ids == expected
        assert result.text == tokenizer.decode(expected)
        assert result.finish_reason == ("length" if len(expected) == 20 else "stop")


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_batch_of_different_lengths_equals_one_by_one(arch, request, tokenizer):
    model = request.getfixturevalue(arch)
    config = SamplingConfig(max_new_tokens=12)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # left padding is exercised
    batched = generate(model, tokenizer, prompts, config)
    alone = [generate(model, tokenizer, [p], config)[0] for p in prompts]
    assert batched == alone


def test_trained_model_answers_by_heart_and_stops_at_end_of_turn(trained_gpt, tokenizer):
    prompts = [prompt_for(tokenizer, message) for message in REPLIES]
    results = generate(trained_gpt, tokenizer, prompts, SamplingConfig(max_new_tokens=40))
    assert [r.text for r in results] == list(REPLIES.values())
    assert [r.ids for r in results] == [tokenizer.encode(reply) for reply in REPLIES.values()]
    assert all(r.finish_reason == "stop" for r in results)


def test_max_new_tokens_gives_length(trained_gpt, tokenizer):
    prompt = prompt_for(tokenizer, "hello")
    (result,) = generate(trained_gpt, tokenizer, [prompt], SamplingConfig(max_new_tokens=3))
    assert result.finish_reason == "length"
    assert result.ids == tokenizer.encode(REPLIES["hello"])[:3]
    assert result.text == tokenizer.decode(result.ids)


def test_stop_string_cuts_the_text_before_it(trained_gpt, tokenizer):
    prompt = prompt_for(tokenizer, "你好")
    config = SamplingConfig(max_new_tokens=40, stop=["有什么", "never"])
    (result,) = generate(trained_gpt, tokenizer, [prompt], config)
    assert result.text == "您好🦄，请问"
    assert result.finish_reason == "stop"
    # Generation ends at the token that completes the stop string, not at the end of the reply.
    assert len(result.ids) < len(tokenizer.encode(REPLIES["你好"]))
    assert tokenizer.decode(result.ids).startswith("您好🦄，请问有")


def test_same_seed_same_sample_and_different_seeds_differ(gpt, tokenizer):
    prompt = tokenizer.encode(PROMPTS[0])

    def sample(seed: int) -> list[int]:
        config = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=seed)
        return generate(gpt, tokenizer, [prompt], config)[0].ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    # The call's own generator: torch's global random state is neither used nor disturbed.
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    sample(1)
    assert torch.rand(1) == expected


def test_top_k_1_is_greedy(gpt, tokenizer):
    prompt = tokenizer.encode(PROMPTS[1])
    greedy = generate(gpt, tokenizer, [prompt], SamplingConfig(max_new_tokens=20))
    config = SamplingConfig(max_new_tokens=20, temperature=1.5, top_k=1, seed=0)
    assert generate(gpt, tokenizer, [prompt], config) == greedy


def test_tiny_top_p_is_greedy(trained_gpt, tokenizer):
    prompts = [prompt_for(tokenizer, message) for message in REPLIES]
    greedy = generate(trained_gpt, tokenizer, prompts, SamplingConfig(max_new_tokens=40))
    config = SamplingConfig(max_new_tokens=40, temperature=1.0, top_p=0.01, seed=0)
    assert generate(trained_gpt, tokenizer, prompts, config) == greedy


def test_top_k_and_top_p_sample_only_from_the_kept_tokens():
    # probabilities ≈ [0.64, 0.24, 0.09, 0.03, 0.004]
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -2.0]]).repeat(2000, 1)
    history = [[] for _ in range(len(logits))]
    generator = torch.Generator().manual_seed(0)

    def drawn(**fields) -> set[int]:
        config = SamplingConfig(temperature=1.0, **fields)
        return set(next_token(logits, history, config, generator).tolist())

    assert drawn() == {0, 1, 2, 3, 4}
    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.7) == {0, 1}  # 0.64 < 0.7: the second token is needed to reach p
    assert drawn(top_p=0.9) == {0, 1, 2}
    assert drawn(top_p=0.5) == {0}


def test_repetition_penalty_golden_values():
    logits = torch.tensor([[2.0, 1.8, -1.0, -1.2, 0.5]])
    penalised = apply_repetition_penalty(logits, [[0, 3, 3]], 2.0)
    assert torch.equal(penalised, torch.tensor([[1.0, 1.8, -1.0, -2.4, 0.5]]))
    assert torch.equal(logits, torch.tensor([[2.0, 1.8, -1.0, -1.2, 0.5]]))  # left alone

    def choice(history: list[int], penalty: float) -> int:
        config = SamplingConfig(repetition_penalty=penalty)
        return int(next_token(logits, [history], config)[0])

    assert choice([], 2.0) == 0
    assert choice([0], 1.0) == 0
    assert choice([0], 1.05) == 0  # 2.0 / 1.05 = 1.90 still beats 1.8
    assert choice([0], 2.0) == 1  # 2.0 / 2 = 1.0 loses to 1.8
    assert choice([0, 1], 2.0) == 0  # 1.0 beats 0.9
    assert choice([0, 1], 5.0) == 4  # 0.4 and 0.36 lose to the unseen 0.5
    negative = torch.tensor([[-1.0, -1.2, -3.0, -3.0, -3.0]])
    config = SamplingConfig(repetition_penalty=1.5)
    assert int(next_token(negative, [[0]], config)[0]) == 1  # -1.0 × 1.5 = -1.5 < -1.2


def test_stream_joins_to_generate_and_never_splits_a_character(trained_gpt, tokenizer):
    prompt = prompt_for(tokenizer, "你好")
    reply_ids = tokenizer.encode(REPLIES["你好"])
    # The reply really does cut characters across tokens.
    assert any(tokenizer.decode(reply_ids[:n]).endswith("\ufffd") for n in range(1, len(reply_ids)))
    config = SamplingConfig(max_new_tokens=40)
    pieces = list(stream(trained_gpt, tokenizer, prompt, config))
    assert "".join(pieces) == generate(trained_gpt, tokenizer, [prompt], config)[0].text
    assert "".join(pieces) == REPLIES["你好"]
    assert len(pieces) > 5 and all(p and not p.endswith("\ufffd") for p in pieces)
    assert "🦄" in pieces


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1.0, "seed": 0},
        {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 5},
    ],
)
def test_sampled_stream_joins_to_generate(gpt, tokenizer, fields):
    prompt = tokenizer.encode(PROMPTS[2])
    config = SamplingConfig(max_new_tokens=30, **fields)
    pieces = list(stream(gpt, tokenizer, prompt, config))
    assert "".join(pieces) == generate(gpt, tokenizer, [prompt], config)[0].text
    assert len(pieces) > 5
    # An untrained model may emit bytes that never make a character; only the end shows them.
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])


def test_sampled_stream_with_stop_strings_joins_to_generate(gpt, tokenizer):
    prompt = tokenizer.encode(PROMPTS[2])
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=7)
    (free,) = generate(gpt, tokenizer, [prompt], config)
    # Stop strings taken from the middle of the free text, so one of them surely stops it.
    middle = len(free.text) // 2
    stop = [free.text[middle : middle + 3], free.text[middle + 1 : middle + 2], "never"]
    config = config.model_copy(update={"stop": stop})
    (stopped,) = generate(gpt, tokenizer, [prompt], config)
    cut = min(free.text.find(s) for s in stop if s in free.text)
    assert stopped.text == free.text[:cut]
    assert stopped.finish_reason == "stop"
    assert "".join(stream(gpt, tokenizer, prompt, config)) == stopped.text


def test_stream_holds_back_a_possible_stop_string(trained_gpt, tokenizer):
    prompt = prompt_for(tokenizer, "hello")
    config = SamplingConfig(max_new_tokens=40, stop=["help me", "today?!"])
    pieces = list(stream(trained_gpt, tokenizer, prompt, config))
    assert "".join(pieces) == REPLIES["hello"]
    shown = "".join(pieces[:-1])  # before the end of turn proved "today?" is not "today?!"
    assert not shown.endswith("today?") and not shown.endswith("help")


def test_settled_text_holds_back_partial_characters_token_by_token(tokenizer):
    text = "你好🦄 龘!"
    ids = tokenizer.encode(text)
    decoded = [tokenizer.decode(ids[:n]) for n in range(len(ids) + 1)]
    assert sum(d.endswith("\ufffd") for d in decoded) >= 3  # the byte splits really happen
    settled = [settled_text(d) for d in decoded]
    for earlier, later in itertools.pairwise(settled):
        assert not later.endswith("\ufffd")
        assert later.startswith(earlier)
        assert text.startswith(later)
    assert settled[-1] == text


def test_settled_text_holds_back_the_start_of_a_stop_string():
    assert settled_text("Hello wor", ["world"]) == "Hello "
    assert settled_text("Hello", ["lo!", "xyz"]) == "Hel"
    assert settled_text("Hello", ["o", "llo!"]) == "He"
    assert settled_text("Hello", ["Hello!"]) == ""
    assert settled_text("Hello", ["abc"]) == "Hello"
    assert settled_text("你好\ufffd", ["好的"]) == "你"


def test_prompt_too_long_raises_the_models_error(gpt, tokenizer):
    with pytest.raises(KefuError, match="context of 64"):
        generate(gpt, tokenizer, [[5] * 70], SamplingConfig(max_new_tokens=4))
    with pytest.raises(KefuError, match="context of 64"):
        list(stream(gpt, tokenizer, [5] * 70, SamplingConfig(max_new_tokens=4)))


def test_empty_prompt_is_an_error(gpt, tokenizer):
    with pytest.raises(KefuError, match="empty prompt"):
        generate(gpt, tokenizer, [[5], []], SamplingConfig())


def test_sampling_config_rejects_bad_values():
    for fields in (
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": 0},
        {"repetition_penalty": 0.5},
        {"stop": [""]},
        {"max_new_tokens": 0},
        {"temprature": 1},
    ):
        with pytest.raises(ValueError):
            SamplingConfig.model_validate(fields)
