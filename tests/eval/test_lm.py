"""`kefu eval lm`: perplexity and bits per byte checked against a model whose answer is known."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kefu.config import DataSource
from kefu.data.ingest import ingest
from kefu.eval.lm import NearestReply, perplexity, token_bytes
from kefu.models.checkpoint import LoadedRun
from kefu.models.gpt import GPT, GPTConfig
from kefu.text.tokenizer import train_tokenizer

CORPUS = ["Where is my card?", "Your card arrives in 5 days.", "我的卡丢了", "已为您冻结 🙏"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_token_bytes_add_up_to_the_utf8_length(tokenizer, text):
    sizes = token_bytes(tokenizer)
    assert int(sizes[tokenizer.encode(text)].sum()) == len(text.encode())


def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary(tokenizer, tmp_path):
    lines = [
        json.dumps(
            {
                "id": f"c{i}",
                "messages": [
                    {"role": "user", "content": f"{CORPUS[i % 4]} {i}"},
                    {"role": "assistant", "content": CORPUS[(i + 1) % 4]},
                ],
            },
            ensure_ascii=False,
        )
        for i in range(40)
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(
        DataSource(
            format="messages",
            inputs=[str(tmp_path / "c.jsonl")],
            split={"train": 0.5, "valid": 0.0, "test": 0.5},
        ),
        tmp_path / "data",
    )
    model = GPT(
        GPTConfig(
            vocab_size=tokenizer.vocab_size, context_length=64, n_layer=1, n_head=2, d_model=16
        )
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # every logit 0: each token has probability 1/vocab
    run = LoadedRun(tmp_path, "gpt", model.eval(), tokenizer, {"recipe": {"task": "chat"}})
    result = perplexity(run, tmp_path / "data", "test", "chat")
    assert result["perplexity"] == pytest.approx(tokenizer.vocab_size, rel=1e-5)
    expected_bits = result["tokens"] * math.log2(tokenizer.vocab_size) / result["bytes"]
    assert result["bits_per_byte"] == pytest.approx(expected_bits, rel=1e-5)
    # Scored: each reply's tokens plus its closing <|end|> (no bytes).
    test = [
        json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text().splitlines()
    ]
    replies = [r["messages"][1]["content"] for r in test]
    assert result["bytes"] == sum(len(r.encode()) for r in replies)
    assert result["tokens"] == sum(len(tokenizer.encode(r)) + 1 for r in replies)


def test_nearest_reply_answers_with_the_reply_to_the_most_similar_question(tmp_path):
    pairs = [
        ("how do I reset my pin", "Use the app: Cards > PIN."),
        ("my card was stolen", "Freeze it now in the app."),
        ("转账失败了怎么办", "钱会在2个工作日内退回。"),
    ]
    lines = [
        json.dumps(
            {
                "id": str(i),
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            },
            ensure_ascii=False,
        )
        for i, (q, a) in enumerate(pairs)
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(
        DataSource(
            format="messages",
            inputs=[str(tmp_path / "c.jsonl")],
            split={"train": 1.0, "valid": 0.0, "test": 0.0},
        ),
        tmp_path / "data",
    )
    nearest = NearestReply(tmp_path / "data")
    assert nearest.answer(["someone stole my card", "reset pin please", "我的转账失败"]) == [
        "Freeze it now in the app.",
        "Use the app: Cards > PIN.",
        "钱会在2个工作日内退回。",
    ]
