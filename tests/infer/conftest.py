"""A tiny tokenizer and tiny models, one of them trained to give two replies by heart."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from kefu.models.gpt import GPT, GPTConfig
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.text.tokenizer import ChatTokenizer, train_tokenizer

CORPUS = [
    "Hello, I lost my card yesterday. Can you freeze it?",
    "Sure, I have frozen your card. A new one arrives in 5-7 business days.",
    "How do I reset my password?",
    "Tap 'Forgot password' on the login page and follow the steps.",
    "我的银行卡丢了，怎么办？",
    "您好，已为您冻结银行卡，新卡将在5到7个工作日内寄到。",
    "转账失败了，钱什么时候退回？",
    "一般在1到3个工作日内退回原账户。",
    "Thanks a lot 😊",
    "不客气，祝您生活愉快 🙏",
] * 4

# 🦄 is not in the corpus: its four bytes are four tokens, and so are most Chinese characters'.
REPLIES = {
    "hello": "Hi! How can I help you today?",
    "你好": "您好🦄，请问有什么可以帮您？",
}


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and many times faster when other jobs load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="session")
def tokenizer() -> ChatTokenizer:
    return train_tokenizer(CORPUS, vocab_size=300)


# Untrained models get untied, large embeddings: with the small default ones, greedy decoding
# repeats one token whatever the input, which would make parity tests prove little.


@pytest.fixture
def gpt(tokenizer: ChatTokenizer) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=64,
        n_layer=2,
        n_head=2,
        d_model=32,
        tie_embeddings=False,
    )
    model = GPT(config)
    torch.nn.init.normal_(model.embed.weight, std=1.0)
    return model


@pytest.fixture
def lstm(tokenizer: ChatTokenizer) -> RecurrentLM:
    torch.manual_seed(0)
    config = LSTMConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, d_embed=32, d_hidden=48, tie_embeddings=False
    )
    model = RecurrentLM(config)
    torch.nn.init.normal_(model.embed.weight, std=1.0)
    return model


def prompt_for(tokenizer: ChatTokenizer, message: str) -> list[int]:
    messages = [{"role": "user", "content": message}]
    return tokenizer.render(messages, add_generation_prompt=True).ids


@pytest.fixture(scope="session")
def trained_gpt(tokenizer: ChatTokenizer) -> GPT:
    """A GPT that answers each message in REPLIES with its reply, learnt by heart.

    Its context is long enough for a short chat: a system message and two exchanges.
    """
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=128, n_layer=2, n_head=2, d_model=32
    )
    model = GPT(config)
    conversations = [
        tokenizer.render(
            [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        ).ids
        for message, reply in REPLIES.items()
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    # Session fixtures are set up before the module's one_thread, so this one sets it itself.
    with single_thread():
        for _ in range(80):
            loss = sum(
                F.cross_entropy(model(torch.tensor([ids[:-1]]))[0], torch.tensor(ids[1:]))
                for ids in conversations
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
