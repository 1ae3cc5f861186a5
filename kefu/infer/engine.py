"""Continuous batching: many replies generated together, each joining and leaving between steps.

    stream() ─► waiting ─┐   the engine's thread, one loop per step:
                         ▼
    ┌─► admit: prefill the arrivals into free rows of the SlotCache, in batches of like ─┐
    │   length, and sample each batch's first tokens                                     │
    │   free the rows of finished and cancelled replies                                  │
    │   GPT.decode_slots: one forward pass, one new token for every active row           │
    └── sample each row with its own SamplingConfig ─► its _Reply ───────────────────────┤
                                                                                         ▼
                                      new text ─► the request's own queue ─► its reader

One background thread does all model work, so a step serves every reply at once: on a CPU a
batch of 16 rows costs little more than one (the weights are read once per step either way).
The thread never waits for a reader: each request has its own unbounded queue, so a slow or
vanished reader holds up no one. It starts with the first request and ends after
`idle_seconds` without any. The slot cache (keys and values for max_batch × context_length
tokens) is allocated at the first request and kept while the engine lives.

The prompts that arrive in one step are read together (GPT.prefill_slots: one forward pass,
left-padded to the longest, padding masked out), which is most of what a burst of requests
waits for. Padding costs as much as a real token, so a burst of very different lengths is cut
into batches of like length, as many as pays for their extra forward passes
(`_prefill_batches`).

The replies are those of `kefu.infer.generate.stream`, piece for piece: the same prefill (each
row's keys, values and logits as its prompt alone gives them, padding or not), the same
`next_token` on the same logits (up to float rounding of a batched matrix product, ~1e-6) and
the same `_Reply` bookkeeping. A seeded request samples with its own torch.Generator, so it
draws exactly the random numbers it would draw alone. One exception: an int8-dynamic model
(kefu.compress.quantize) rounds each layer's input with one scale for the whole batch, so a
row's logits move slightly with its neighbours', and a reply can differ from its solo one where
the model is nearly torn between two tokens.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kefu.errors import KefuError
from kefu.infer.generate import FinishReason, SamplingConfig, _Reply, next_token, settled_text
from kefu.models.gpt import GPT, SlotCache
from kefu.text.tokenizer import ChatTokenizer

# What a reader takes from its queue: a piece of text, None when the reply is complete, or the
# exception that broke the step its request was in.
Piece = str | BaseException | None

# What one more prefill pass costs, in prompt tokens: on a CPU, bench/batching.py's GPT spends
# ~5 ms on a forward pass besides ~0.1 ms on each token it reads, padding included. Its burst of
# 16 prompts of 23-120 tokens prefills about as fast with anything from 25 to 100.
PASS_COST_TOKENS = 50


@dataclass(eq=False)
class _Request:
    """One reply in the engine: what was asked, what has been generated, where pieces go."""

    prompt: list[int]
    sampling: SamplingConfig
    reply: _Reply
    generator: torch.Generator | None  # a seeded request's own random source
    history: list[int]  # prompt and sampled tokens, for the repetition penalty
    pieces: queue.SimpleQueue[Piece] = field(default_factory=queue.SimpleQueue)
    shown: str = ""  # the text already put in `pieces`
    logits: Tensor | None = None  # (vocab,) scores of the token to choose next
    cancelled: bool = False  # set by the reader's thread, read by the engine's

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def sampled(self) -> int:
        return len(self.history) - len(self.prompt)

    def sampling_group(self) -> object:
        """Requests with equal keys can be sampled in one `next_token` call."""
        if self.generator is not None:
            return self  # its generator must draw for it alone, as it would alone
        s = self.sampling
        return (s.temperature, s.top_k, s.top_p, s.repetition_penalty)


class ReplyStream(Iterator[str]):
    """The pieces of one reply as they are generated; they join to the whole reply.

    `close()` (or dropping the stream) cancels the request; its row is freed at the next step.
    Once the iteration has ended, `finish_reason` ("stop" or "length") and `tokens` (the reply's
    tokens as `Generation.ids` counts them) tell how it ended; both are None before, and after
    a cancellation.
    """

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._ended = False
        self._complete = False
        # A reader that goes away without closing (a dropped generator) frees the row all the same.
        weakref.finalize(self, request.cancel)

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        piece = self._request.pieces.get()
        if isinstance(piece, str):
            return piece
        self._ended = True
        if piece is None:
            self._complete = True
            raise StopIteration
        raise piece

    def close(self) -> None:
        """Stop reading: the engine drops the request at its next step. Safe from any thread;
        a reader blocked in `next` (a client gone mid-stream) wakes up and ends."""
        self._ended = True
        self._request.cancel()
        self._request.pieces.put(None)

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._request.reply.finish_reason if self._complete else None

    @property
    def tokens(self) -> int | None:
        return len(self._request.reply.ids) if self._complete else None


class GenerationEngine:
    """Generate replies for many concurrent requests with one GPT, in continuous batches.

    One engine per model (it holds a slot cache sized for that model from its first request
    on); a model swapped out goes with its engine. Thread-safe: any thread may call `stream`.

    Args:
        max_batch: most replies generated at once; further requests wait for a free row.
        idle_seconds: the engine's thread ends after this long without requests.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: ChatTokenizer,
        max_batch: int = 16,
        idle_seconds: float = 1.0,
    ) -> None:
        if not isinstance(model, GPT):
            raise KefuError(
                f"continuous batching needs a GPT, not a {type(model).__name__}; "
                "generate with kefu.infer.generate.stream instead"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.idle_seconds = idle_seconds
        self._device = model.embed.weight.device
        self._waiting: deque[_Request] = deque()
        self._wakeup = threading.Condition()  # guards _waiting and _thread
        self._thread: threading.Thread | None = None
        # Only the engine's thread uses it; kept between busy spells, since zeroing a cache of
        # max_batch × context_length tokens anew costs a burst's first reply tens of ms.
        self._slots: SlotCache | None = None

    def stream(self, prompt: list[int], sampling: SamplingConfig) -> ReplyStream:
        """Queue a reply to `prompt` (token ids) and return its pieces as they come.

        A prompt that is empty or leaves no room for `sampling.max_new_tokens` raises a
        KefuError here, before anything is queued.
        """
        if not prompt:
            raise KefuError("cannot generate from an empty prompt; give at least one token")
        self.model.check_room(len(prompt), sampling.max_new_tokens)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(sampling.seed)
        request = _Request(
            list(prompt), sampling, _Reply(self.tokenizer, sampling.stop), generator, list(prompt)
        )
        with self._wakeup:
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="kefu-generation-engine", daemon=True
                )
                self._thread.start()
            self._wakeup.notify()
        return ReplyStream(request)

    def _serve(self) -> None:
        """The engine's thread: admit, decode, sample, until idle for `idle_seconds`."""
        rows: list[_Request] = []  # rows[i] holds row i of the slot cache
        with torch.inference_mode():
            while True:
                arrivals = self._arrivals(self.max_batch - len(rows), busy=bool(rows))
                if arrivals is None:
                    return
                try:
                    if self._slots is None:
                        self._slots = self.model.new_slots(self.max_batch)
                    slots = self._slots
                    for batch in self._prefill_batches(arrivals):
                        prompts = [request.prompt for request in batch]
                        logits = self.model.prefill_slots(prompts, slots)  # (len(batch), vocab)
                        for request, row_logits in zip(batch, logits, strict=True):
                            request.logits = row_logits
                        rows += batch
                        # Their first tokens at once: a burst of arrivals shows each reply's start
                        # as soon as its own batch is read, not after everyone's.
                        self._advance(batch)
                    self._retire(rows, slots)
                    if rows:
                        ids = torch.tensor([r.history[-1] for r in rows], device=self._device)
                        logits = self.model.decode_slots(ids, slots)  # (n, vocab)
                        for request, row_logits in zip(rows, logits, strict=True):
                            request.logits = row_logits
                        self._advance(rows)
                except Exception as error:  # a bug or out of memory: fail this step, not the engine
                    for request in dict.fromkeys(rows + arrivals):
                        request.pieces.put(error)
                    # A fresh cache at the next request: this one may be half-written.
                    rows, self._slots = [], None

    def _arrivals(self, free: int, busy: bool) -> list[_Request] | None:
        """Up to `free` waiting requests (waiting for one if idle); None: idle long enough, stop."""
        with self._wakeup:
            if not busy and not self._waiting:
                self._wakeup.wait(self.idle_seconds)
                if not self._waiting:
                    self._thread = None  # under the lock: a new request starts a new thread
                    return None
            arrivals: list[_Request] = []
            while self._waiting and len(arrivals) < free:
                request = self._waiting.popleft()
                if not request.cancelled:
                    arrivals.append(request)
            return arrivals

    def _advance(self, requests: list[_Request]) -> None:
        """Choose each request's next token and hand its reader the text that became certain."""
        for request, token in zip(requests, self._choose(requests), strict=True):
            request.history.append(token)
            reply = request.reply
            reply.add(token)
            if reply.finish_reason is None and request.sampled == request.sampling.max_new_tokens:
                reply.finish_reason = "length"
            # As in generate.stream: hold back what a later token or stop string could change.
            text = reply.text if reply.finish_reason else settled_text(reply.text, reply.stop)
            if len(text) > len(request.shown):
                request.pieces.put(text[len(request.shown) :])
                request.shown = text
            if reply.finish_reason:
                request.pieces.put(None)

    @staticmethod
    def _prefill_batches(requests: list[_Request]) -> list[list[_Request]]:
        """The requests cut into batches of like prompt length, shortest first, to prefill fastest.

        A batch costs PASS_COST_TOKENS plus its rows × its longest prompt; in length order, the
        cheapest cut follows from the cheapest cut of every shorter prefix.
        """
        ordered = sorted(requests, key=lambda request: len(request.prompt))
        # cost[end]: least cost of the `end` shortest prompts; first[end]: where its last batch starts.
        cost = [0.0] + [math.inf] * len(ordered)
        first = [0] * (len(ordered) + 1)
        for end in range(1, len(ordered) + 1):
            longest = len(ordered[end - 1].prompt)
            for start in range(end):
                total = cost[start] + PASS_COST_TOKENS + (end - start) * longest
                if total < cost[end]:
                    cost[end], first[end] = total, start
        batches: list[list[_Request]] = []
        end = len(ordered)
        while end:
            batches.append(ordered[first[end] : end])
            end = first[end]
        return batches[::-1]

    @staticmethod
    def _retire(rows: list[_Request], slots: SlotCache) -> None:
        """Free the rows of finished and cancelled requests."""
        for row in reversed(range(len(rows))):  # from the last: removal moves the last row
            if rows[row].reply.finish_reason or rows[row].cancelled:
                slots.remove(row)
                rows[row] = rows[-1]
                rows.pop()

    @staticmethod
    def _choose(rows: list[_Request]) -> list[int]:
        """Each row's next token, sampled by its own settings; alike rows in one call."""
        groups: dict[object, list[int]] = {}
        for row, request in enumerate(rows):
            groups.setdefault(request.sampling_group(), []).append(row)
        tokens = [0] * len(rows)
        for members in groups.values():
            first = rows[members[0]]
            logits = torch.stack([rows[row].logits for row in members])  # type: ignore[misc]
            history = [rows[row].history for row in members]
            chosen = next_token(logits, history, first.sampling, first.generator)
            for row, token in zip(members, chosen.tolist(), strict=True):
                tokens[row] = token
        return tokens
