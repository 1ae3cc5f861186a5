"""Training data from a data folder: packed token windows (lm) and masked conversations (chat).

Both are `Batches`: batch `index` is drawn from a permutation fixed by (seed, epoch), so the data
a step sees depends on the step alone — the property exact resume rests on.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from kefu.data.folder import load_stats, read_split, record_texts
from kefu.errors import KefuError
from kefu.text.tokenizer import ChatTokenizer
from kefu.train.loop import IGNORE


class Order:
    """Row `n` of an endless sequence of shuffled epochs over `count` rows.

    Given each row's length, batches are bucketed instead: each batch holds rows of similar length
    (a shuffled pool of 50 batches is sorted, then cut), the batches come in random order, and an
    epoch's leftover rows, fewer than a batch, wait for the next shuffle. A batch trimmed to its
    longest row is then little padding: a MiniLM fine-tuning step on BANKING77 runs 2.9x faster
    so (bench/finetune_step.py).
    """

    def __init__(self, count: int, seed: int, lengths: Tensor | None = None) -> None:
        self.count = count
        self.seed = seed
        self.lengths = lengths

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs per object, freed with it
    def _epoch(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.count, generator=generator)

    @lru_cache(maxsize=4)  # noqa: B019 - as above
    def _bucketed(self, epoch: int, size: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        pools = torch.randperm(self.count, generator=generator).split(size * POOL_BATCHES)
        ordered = torch.cat(
            [pool[torch.argsort(self.lengths[pool], stable=True)] for pool in pools]
        )
        batches = ordered[: self.count // size * size].split(size)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=generator)])

    def rows(self, index: int, size: int) -> list[int]:
        if self.lengths is not None and self.count >= size:
            per_epoch = self.count // size
            first = (index % per_epoch) * size
            return self._bucketed(index // per_epoch, size)[first : first + size].tolist()
        start = index * size
        return [
            int(self._epoch((start + i) // self.count)[(start + i) % self.count])
            for i in range(size)
        ]


# Batches sorted together when bucketing by length: enough for similar lengths, few enough
# that the rows of one batch still come from across the data.
POOL_BATCHES = 50


class PackedTokens:
    """All text as one token stream cut into windows of `block + 1` tokens (inputs, shifted targets)."""

    def __init__(self, stream: Tensor, block: int, seed: int) -> None:
        self.windows = (len(stream) - 1) // block
        if self.windows < 1:
            raise KefuError(
                f"the data holds {len(stream)} tokens, fewer than one training window of {block + 1}"
            )
        self.stream = stream
        self.block = block
        self.order = Order(self.windows, seed)

    def batch(self, index: int, size: int) -> tuple[Tensor, Tensor]:
        return self.rows(self.order.rows(index, size))

    def rows(self, windows: Iterable[int]) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of the given windows, in that order."""
        rows = torch.stack(
            [self.stream[w * self.block : w * self.block + self.block + 1] for w in windows]
        )
        return rows[:, :-1], rows[:, 1:]

    @property
    def tokens(self) -> int:
        return self.windows * self.block


class ChatExamples:
    """Conversations rendered with the chat template; targets only on the assistant's tokens."""

    def __init__(
        self, examples: list[tuple[list[int], list[int]]], pad_id: int, block: int, seed: int
    ) -> None:
        if not examples:
            raise KefuError("the data holds no conversation with an assistant reply to learn from")
        self.examples = examples
        self.pad_id = pad_id
        self.block = block
        self.order = Order(len(examples), seed)

    def batch(self, index: int, size: int) -> tuple[Tensor, Tensor]:
        return self.rows(self.order.rows(index, size))

    def rows(self, indices: Iterable[int]) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of the given conversations, in that order, padded on the right."""
        chosen = [self.examples[r] for r in indices]
        # Widths rounded up to a multiple of 64: every new shape costs oneDNN a new kernel.
        width = min(self.block, -(-(max(len(ids) for ids, _ in chosen) - 1) // 64) * 64)
        inputs = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(chosen), width), IGNORE, dtype=torch.long)
        for row, (ids, mask) in enumerate(chosen):
            n = len(ids) - 1
            inputs[row, :n] = torch.tensor(ids[:-1])
            target = torch.tensor(ids[1:])
            targets[row, :n] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), target, IGNORE)
        return inputs, targets

    @property
    def tokens(self) -> int:
        return sum(sum(mask) for _, mask in self.examples)


def truncate_left(
    ids: list[int], mask: list[int], limit: int, turn_starts: set[int]
) -> tuple[list[int], list[int]]:
    """Keep the last `limit` tokens, starting at a turn boundary when one is in reach."""
    if len(ids) <= limit:
        return ids, mask
    cut = len(ids) - limit
    boundary = next((i for i in range(cut, len(ids)) if ids[i] in turn_starts), cut)
    if sum(mask[boundary:]) == 0:  # keeping whole turns would drop every reply: cut mid-turn
        boundary = cut
    return ids[boundary:], mask[boundary:]


def check_data(data_dir: str | Path, task: str) -> dict:
    stats = load_stats(data_dir)
    if task == "chat" and stats["kind"] != "conversations":
        raise KefuError(
            f"{data_dir} holds {stats['kind']}, but chat training needs conversations; "
            "ingest chat logs (e.g. --format messages) or use `kefu train lm`"
        )
    return stats


def chat_examples(
    data_dir: str | Path, split: str, tokenizer: ChatTokenizer, block: int, seed: int
) -> ChatExamples:
    """Every conversation of a split, rendered and cut to `block + 1` tokens from the left."""
    turn_starts = set(tokenizer.role_ids.values())
    examples = []
    for record in read_split(data_dir, split):
        rendered = tokenizer.render(record["messages"])
        ids, mask = truncate_left(rendered.ids, rendered.assistant_mask, block + 1, turn_starts)
        if sum(mask[1:]):
            examples.append((ids, mask))
    return ChatExamples(examples, tokenizer.pad_id, block, seed)


def token_stream(data_dir: str | Path, split: str, tokenizer: ChatTokenizer) -> Tensor:
    """A split as one token stream: conversations in the chat template, other records as text,
    each followed by <|endoftext|>."""
    ids: list[int] = []
    for record in read_split(data_dir, split):
        if "messages" in record:
            ids += tokenizer.render(record["messages"]).ids
        else:
            for piece in tokenizer.encode_batch(list(record_texts(record))):
                ids += piece
        ids.append(tokenizer.end_of_text_id)
    return torch.tensor(ids, dtype=torch.long)


def build_batches(
    task: str, data_dir: str | Path, split: str, tokenizer: ChatTokenizer, block: int, seed: int
) -> PackedTokens | ChatExamples:
    """The `Batches` of `task` ("lm" or "chat") over one split of a data folder."""
    if task == "chat":
        return chat_examples(data_dir, split, tokenizer, block, seed)
    return PackedTokens(token_stream(data_dir, split, tokenizer), block, seed)
