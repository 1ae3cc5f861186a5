"""Text generation for any `LanguageModel`: sampling, batched generation and streaming.

    prompts ─ prefill ─► logits ─ next_token ─► token ─ decode ─► logits ─ … until every
                                 (penalty, temperature, top-k, top-p)      sequence has stopped

A sequence stops at the end-of-turn or end-of-text token, at a stop string, or after
`max_new_tokens`. `generate` and `stream` share one loop, so streaming a prompt gives exactly the
text that generating it gives, piece by piece.

Byte-level BPE can cut a Chinese character or an emoji across tokens, and the text decoded so far
then ends in U+FFFD until the rest of its bytes arrive; `settled_text` holds such an ending back,
and any ending that could still turn out to be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from kefu.config import StrictModel
from kefu.errors import KefuError
from kefu.models import LanguageModel
from kefu.text.tokenizer import ChatTokenizer

FinishReason = Literal["stop", "length"]
REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 character decodes to


class SamplingConfig(StrictModel):
    """How the next token is chosen and when generation stops."""

    max_new_tokens: int = Field(128, ge=1, description="Most tokens to generate per reply.")
    temperature: float = Field(
        0.0, ge=0, description="Softmax temperature; 0 is greedy (always the likeliest token)."
    )
    top_k: int | None = Field(
        None, ge=1, description="Sample only among the k likeliest tokens; none: all."
    )
    top_p: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Nucleus sampling: the fewest likeliest tokens whose probability reaches p.",
    )
    repetition_penalty: float = Field(
        1.0,
        ge=1,
        description="Penalise tokens already in the prompt or reply (CTRL-style); 1: no penalty.",
    )
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Strings that end the reply; the text ends before them."
    )
    seed: int | None = Field(
        None, description="Seed for sampling, so a reply can be reproduced; none: random."
    )


@dataclass
class Generation:
    """One generated reply.

    `ids` never include the end-of-turn token. After a stop string they do include the tokens
    that spelt it, while `text` ends before it.
    """

    ids: list[int]
    text: str
    finish_reason: FinishReason


def apply_repetition_penalty(logits: Tensor, history: list[list[int]], penalty: float) -> Tensor:
    """Logits (B, V) with the tokens each row has seen made less likely (CTRL-style).

    Positive logits are divided by `penalty`, negative ones multiplied, so both move down.
    """
    logits = logits.clone()
    for row, ids in enumerate(history):
        if not ids:
            continue
        seen = torch.tensor(sorted(set(ids)), device=logits.device)
        scores = logits[row, seen]
        logits[row, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def next_token(
    logits: Tensor,
    history: list[list[int]],
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token (B,) per row of logits (B, V).

    Args:
        history: per row, the tokens seen so far (prompt and reply), for the repetition penalty.
        generator: the random source for sampling; none: torch's global one.
    """
    logits = logits.float()
    if config.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep a token while the likelier ones have not yet reached top_p: the top one always.
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def settled_text(text: str, stop: Sequence[str] = ()) -> str:
    """The part of `text` (a reply decoded so far) that later tokens cannot change.

    Holds back a trailing incomplete character (U+FFFD) and the longest ending that is the
    start of a stop string.
    """
    text = text.rstrip(REPLACEMENT)
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return text[: len(text) - hold]


@dataclass
class _Reply:
    """One sequence being generated: its tokens, its text so far, and why it stopped."""

    tokenizer: ChatTokenizer
    stop: list[str]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None

    def add(self, token: int) -> None:
        if token in (self.tokenizer.end_of_turn_id, self.tokenizer.end_of_text_id):
            self.finish_reason = "stop"
            return
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        found = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.finish_reason = "stop"


def _replies(
    model: LanguageModel,
    tokenizer: ChatTokenizer,
    prompts: list[list[int]],
    config: SamplingConfig,
) -> Iterator[list[_Reply]]:
    """Generate for all prompts at once, yielding the replies after every token.

    Sequences that have stopped keep being fed their sampled tokens (the outputs are ignored):
    simpler than shrinking the batch, and a batch rarely outlives its first finisher by much.
    """
    if any(not p for p in prompts):
        raise KefuError("cannot generate from an empty prompt; give at least one token")
    model.eval()  # type: ignore[attr-defined]
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=_device(model)).manual_seed(config.seed)
    replies = [_Reply(tokenizer, config.stop) for _ in prompts]
    history = [list(p) for p in prompts]
    # Not around the yields: the caller's code between tokens must not run in inference mode.
    with torch.inference_mode():
        logits, state = model.prefill(prompts, config.max_new_tokens)
    for step in range(config.max_new_tokens):
        with torch.inference_mode():
            tokens = next_token(logits, history, config, generator)
        for reply, seen, token in zip(replies, history, tokens.tolist(), strict=True):
            seen.append(token)
            if reply.finish_reason is None:
                reply.add(token)
        last = step == config.max_new_tokens - 1
        for reply in replies:
            if last and reply.finish_reason is None:
                reply.finish_reason = "length"
        yield replies
        if all(r.finish_reason is not None for r in replies):
            return
        with torch.inference_mode():
            logits = model.decode(tokens, state)


def _device(model: LanguageModel) -> torch.device:
    return next(model.parameters()).device  # type: ignore[attr-defined]


def generate(
    model: LanguageModel,
    tokenizer: ChatTokenizer,
    prompts: list[list[int]],
    config: SamplingConfig,
) -> list[Generation]:
    """Generate a reply to each prompt (token ids), all prompts in one batch.

    A prompt too long for the model's context raises the model's KefuError.
    """
    if not prompts:
        return []
    *_, replies = _replies(model, tokenizer, prompts, config)  # run to the end
    return [Generation(r.ids, r.text, r.finish_reason or "length") for r in replies]


def stream(
    model: LanguageModel,
    tokenizer: ChatTokenizer,
    prompt: list[int],
    config: SamplingConfig,
) -> Iterator[str]:
    """Yield a reply to one prompt in pieces as its tokens arrive.

    The pieces join to `generate(model, tokenizer, [prompt], config)[0].text`; none ends in half
    a character, and none shows text that a stop string could still cut off.
    """
    shown = ""
    for (reply,) in _replies(model, tokenizer, [prompt], config):
        text = reply.text if reply.finish_reason else settled_text(reply.text, config.stop)
        if len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
