import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import pytest
import torch

from kefu.errors import KefuError
from kefu.infer.engine import GenerationEngine
from kefu.infer.generate import SamplingConfig, generate, stream
from kefu.models.gpt import GPT, GPTConfig
from tests.infer.conftest import REPLIES, prompt_for

PROMPTS = ["Hello, I lost my card", "我的银行卡", "Thanks 😊 退回？", "How do I reset"]
LONG_PROMPT = "Thanks 😊 我的银行卡丢了，怎么办？"  # 41 tokens, against PROMPTS' 12-19


def read(pieces: Iterator[str], count: int | None = None, timeout: float = 10.0) -> list[str]:
    """The next `count` pieces (None: all of them); a test failure instead of a hang."""
    got: list[str] = []
    failed: list[BaseException] = []

    def take() -> None:
        try:
            got.extend(islice(pieces, count))
        except BaseException as error:
            failed.append(error)

    reader = threading.Thread(target=take, daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"no reply within {timeout} s"
    if failed:
        raise failed[0]
    return got


@pytest.fixture
def long_gpt(tokenizer) -> GPT:
    """A tiny GPT with room for replies of hundreds of tokens: steps to spare for timing tests."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=512, n_layer=2, n_head=2, d_model=32
    )
    return GPT(config).eval()


def test_prefill_slots_fills_each_row_as_its_prompt_alone_would(gpt, tokenizer):
    gpt.eval()
    prompts = [tokenizer.encode(text) for text in [*PROMPTS[:3], LONG_PROMPT]]
    assert len({len(p) for p in prompts}) == 4  # left-padded to the longest, masked
    slots = gpt.new_slots(5)
    gpt.prefill_slots(prompts[:1], slots)  # a row already taken: the batch goes after it
    logits = gpt.prefill_slots(prompts, slots)
    assert slots.lengths == [len(prompts[0])] + [len(p) for p in prompts]
    for row, prompt in enumerate(prompts, start=1):
        expected, alone = gpt.prefill([prompt], 0)
        torch.testing.assert_close(logits[row - 1], expected[0], atol=1e-5, rtol=0)
        # Exactly its own tokens from position 0, no padding before them: as if prefilled alone.
        length = len(prompt)
        torch.testing.assert_close(
            slots.keys[:, row, :, :length], alone.keys[:, 0], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            slots.values[:, row, :, :length], alone.values[:, 0], atol=1e-5, rtol=0
        )


def test_decode_slots_equals_decoding_each_sequence_alone(gpt, tokenizer):
    gpt.eval()
    prompts = [tokenizer.encode(text) for text in PROMPTS[:3]]
    assert len({len(p) for p in prompts}) == 3  # rows of different lengths, unpadded
    slots = gpt.new_slots(4)
    alone = {}  # sequence -> its own KVCache
    owner: list[int] = []  # row -> sequence
    generator = torch.Generator().manual_seed(0)

    def join(*sequences: int) -> None:
        logits = gpt.prefill_slots([prompts[sequence] for sequence in sequences], slots)
        for sequence, row_logits in zip(sequences, logits, strict=True):
            expected, alone[sequence] = gpt.prefill([prompts[sequence]], 20)
            torch.testing.assert_close(row_logits, expected[0], atol=1e-5, rtol=0)
            owner.append(sequence)

    def step() -> None:
        ids = torch.randint(tokenizer.vocab_size, (slots.active,), generator=generator)
        logits = gpt.decode_slots(ids, slots)
        for row, sequence in enumerate(owner):
            expected = gpt.decode(ids[row : row + 1], alone[sequence])
            torch.testing.assert_close(logits[row], expected[0], atol=1e-5, rtol=0)

    join(0, 1)  # prefilled together, padded
    for _ in range(3):
        step()
    join(2)  # joins mid-way, shorter than the others
    step()
    slots.remove(0)  # the first leaves; the last row moves into its place
    owner[0] = owner.pop()
    for _ in range(3):
        step()
    assert slots.lengths == [len(prompts[2]) + 4, len(prompts[1]) + 7]


@pytest.mark.parametrize("arch", ["gpt", "trained_gpt"])
def test_concurrent_greedy_streams_equal_each_stream_alone(arch, request, tokenizer):
    model = request.getfixturevalue(arch)
    config = SamplingConfig(max_new_tokens=30)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    prompts += [prompt_for(tokenizer, message) for message in [*REPLIES, "hello 你好"]]
    engine = GenerationEngine(model, tokenizer, max_batch=3)  # the rest wait for a row
    first = engine.stream(prompts[0], config)
    streams = [first, engine.stream(prompts[1], config)]
    early = read(first, 1)  # the engine is mid-way through these two when the others join
    streams += [engine.stream(prompt, config) for prompt in prompts[2:]]
    replies = {i: read(s) for i, s in reversed(list(enumerate(streams)))}
    replies[0] = early + replies[0]
    for i, prompt in enumerate(prompts):
        (expected,) = generate(model, tokenizer, [prompt], config)
        assert replies[i] == list(stream(model, tokenizer, prompt, config))
        assert (streams[i].finish_reason, streams[i].tokens) == (
            expected.finish_reason,
            len(expected.ids),
        )
    if arch == "trained_gpt":
        assert "".join(replies[4]) == REPLIES["hello"]


@pytest.mark.parametrize("arch", ["gpt", "trained_gpt"])
def test_requests_arriving_together_are_prefilled_together_and_reply_as_alone(
    arch, request, tokenizer, monkeypatch
):
    model = request.getfixturevalue(arch)
    batches: list[list[int]] = []  # the prompt lengths of each prefill pass
    prefill_slots = model.prefill_slots

    def recorded(prompts, slots):
        batches.append([len(prompt) for prompt in prompts])
        return prefill_slots(prompts, slots)

    monkeypatch.setattr(model, "prefill_slots", recorded)
    prompts = [tokenizer.encode(text) for text in [LONG_PROMPT, PROMPTS[0], PROMPTS[2]]]
    prompts += [prompt_for(tokenizer, "hello"), prompt_for(tokenizer, "你好")]
    configs = [
        SamplingConfig(max_new_tokens=20),
        SamplingConfig(max_new_tokens=20, temperature=0.8, top_k=40, top_p=0.95, seed=0),
        SamplingConfig(max_new_tokens=20, temperature=1.2, repetition_penalty=1.3, seed=2),
        SamplingConfig(max_new_tokens=40),
        SamplingConfig(max_new_tokens=40),
    ]
    engine = GenerationEngine(model, tokenizer)
    with engine._wakeup:  # the engine's thread waits for the lock: all arrive in its first step
        streams = [engine.stream(p, c) for p, c in zip(prompts, configs, strict=True)]
    replies = [read(s) for s in streams]
    # The four short ones, of four lengths, in one padded pass; padding them to the long one's
    # 41 tokens would cost more than the long one's pass of its own.
    assert batches == [[5, 9, 12, 19], [41]]
    for reply, prompt, config in zip(replies, prompts, configs, strict=True):
        assert reply == list(stream(model, tokenizer, prompt, config))
    if arch == "trained_gpt":  # its replies by heart, read through 14 and 10 tokens of padding
        assert "".join(replies[3]) == REPLIES["hello"]
        assert "".join(replies[4]) == REPLIES["你好"]


def test_requests_from_many_threads_each_get_their_own_reply(gpt, tokenizer):
    config = SamplingConfig(max_new_tokens=12)
    prompts = [tokenizer.encode(text) for text in PROMPTS] * 3
    engine = GenerationEngine(gpt, tokenizer, max_batch=4)
    with ThreadPoolExecutor(len(prompts)) as customers:
        replies = list(customers.map(lambda p: read(engine.stream(p, config)), prompts))
    for prompt, reply in zip(prompts, replies, strict=True):
        assert reply == list(stream(gpt, tokenizer, prompt, config))


def test_seeded_request_reproduces_its_single_stream_among_others(gpt, tokenizer):
    prompts = [tokenizer.encode(text) for text in [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1]]]
    configs = [
        SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=40, top_p=0.95, seed=0),
        SamplingConfig(max_new_tokens=30, temperature=1.2, repetition_penalty=1.3, seed=2),
        SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=40, top_p=0.95, seed=6),
        SamplingConfig(max_new_tokens=30),  # greedy, sampled in its own group
    ]
    engine = GenerationEngine(gpt, tokenizer)
    streams = [engine.stream(p, c) for p, c in zip(prompts, configs, strict=True)]
    # An unseeded sampled request in the same steps draws from torch's global generator.
    unseeded = engine.stream(prompts[0], SamplingConfig(max_new_tokens=30, temperature=1.0))
    replies = [read(s) for s in streams]
    read(unseeded)
    for reply, pieces, prompt, config in zip(replies, streams, prompts, configs, strict=True):
        assert reply == list(stream(gpt, tokenizer, prompt, config))
        assert pieces.tokens >= 10  # long enough for the comparison to mean something
    assert replies[0] != replies[2]  # same prompt and settings, different seeds


def test_each_request_stops_at_its_own_limit_and_stop_strings(trained_gpt, tokenizer):
    engine = GenerationEngine(trained_gpt, tokenizer)
    hello, ni_hao = prompt_for(tokenizer, "hello"), prompt_for(tokenizer, "你好")
    cut = engine.stream(hello, SamplingConfig(max_new_tokens=3))
    stopped = engine.stream(ni_hao, SamplingConfig(max_new_tokens=40, stop=["有什么", "never"]))
    whole = engine.stream(hello, SamplingConfig(max_new_tokens=40))
    assert cut.finish_reason is None  # not known before the reply ends

    reply_ids = tokenizer.encode(REPLIES["hello"])
    assert "".join(read(cut)) == tokenizer.decode(reply_ids[:3])
    assert (cut.finish_reason, cut.tokens) == ("length", 3)
    assert "".join(read(stopped)) == "您好🦄，请问"
    assert stopped.finish_reason == "stop"
    assert "".join(read(whole)) == REPLIES["hello"]
    assert (whole.finish_reason, whole.tokens) == ("stop", len(reply_ids))


@pytest.mark.parametrize("leave", ["close", "drop"])
def test_a_cancelled_stream_frees_its_row_while_an_unread_one_runs_on(
    leave, long_gpt, tokenizer, monkeypatch
):
    steps = 0
    decode_slots = long_gpt.decode_slots

    def counted(ids, slots):
        nonlocal steps
        steps += 1
        return decode_slots(ids, slots)

    monkeypatch.setattr(long_gpt, "decode_slots", counted)
    engine = GenerationEngine(long_gpt, tokenizer, max_batch=2)
    long = SamplingConfig(max_new_tokens=400)
    prompt = tokenizer.encode(PROMPTS[0])
    leaving = engine.stream(prompt, long)
    unread = engine.stream(prompt, long)  # never read: must not hold anyone up
    read(leaving, 1)
    if leave == "close":
        leaving.close()
        assert read(leaving) == []
        assert leaving.finish_reason is None
    else:
        del leaving  # a reader that went away without closing
    third = engine.stream(tokenizer.encode(PROMPTS[1]), SamplingConfig(max_new_tokens=5))
    read(third)
    # Without the freed row, the third would have waited ~400 steps for one of the others.
    assert third.finish_reason == "length"
    assert steps < 200
    unread.close()


def test_a_prompt_that_does_not_fit_or_is_empty_fails_at_submit(gpt, tokenizer):
    engine = GenerationEngine(gpt, tokenizer)
    prompt = list(range(1, 60))
    with pytest.raises(KefuError) as alone:
        gpt.prefill([prompt], 10)
    with pytest.raises(KefuError) as submitted:
        engine.stream(prompt, SamplingConfig(max_new_tokens=10))
    assert str(submitted.value) == str(alone.value)
    with pytest.raises(KefuError, match="empty prompt"):
        engine.stream([], SamplingConfig())
    ok = engine.stream(prompt, SamplingConfig(max_new_tokens=5))  # exactly fills the context
    assert len(read(ok)) >= 1 and ok.tokens == 5


def test_a_failing_step_fails_its_streams_and_the_engine_serves_on(
    long_gpt, tokenizer, monkeypatch
):
    decode_slots = long_gpt.decode_slots
    failed = False

    def failing_once_both_run(ids, slots):
        nonlocal failed
        if slots.active == 2 and not failed:
            failed = True
            raise RuntimeError("out of memory, say")
        return decode_slots(ids, slots)

    monkeypatch.setattr(long_gpt, "decode_slots", failing_once_both_run)
    engine = GenerationEngine(long_gpt, tokenizer)
    config = SamplingConfig(max_new_tokens=400)
    prompts = [tokenizer.encode(text) for text in PROMPTS[:2]]
    broken = [engine.stream(prompt, config) for prompt in prompts]
    for pieces in broken:
        with pytest.raises(RuntimeError, match="out of memory, say"):
            read(pieces)
        assert pieces.finish_reason is None
    short = SamplingConfig(max_new_tokens=10)
    after = engine.stream(prompts[1], short)
    assert read(after) == list(stream(long_gpt, tokenizer, prompts[1], short))


def test_the_idle_engine_thread_ends_and_a_new_request_starts_another(gpt, tokenizer):
    engine = GenerationEngine(gpt, tokenizer, idle_seconds=0.05)
    config = SamplingConfig(max_new_tokens=5)
    prompt = tokenizer.encode(PROMPTS[0])
    expected = list(stream(gpt, tokenizer, prompt, config))
    assert read(engine.stream(prompt, config)) == expected
    time.sleep(0.2)  # idle: the thread has ended
    assert read(engine.stream(prompt, config)) == expected
    # The running thread is what holds a dropped engine (and its model): it must end.
    dropped = weakref.ref(engine)
    del engine
    deadline = time.monotonic() + 5
    while dropped() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dropped() is None
