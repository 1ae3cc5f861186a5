"""Batch order: shuffled epochs, and batches bucketed by length."""

from __future__ import annotations

import torch

from kefu.train.data import Order


def padding(order: Order, lengths: torch.Tensor, batches: int, size: int) -> int:
    """Padding positions when each batch is trimmed to its longest row."""
    total = 0
    for index in range(batches):
        batch = lengths[order.rows(index, size)]
        total += int(batch.max() * size - batch.sum())
    return total


def test_bucketed_batches_hold_similar_lengths_and_cover_the_data():
    lengths = torch.randint(2, 60, (1000,), generator=torch.Generator().manual_seed(0))
    bucketed, plain = Order(1000, seed=3, lengths=lengths), Order(1000, seed=3)
    per_epoch = 1000 // 32  # 31 whole batches; 8 rows wait for the next shuffle
    first = [bucketed.rows(i, 32) for i in range(per_epoch)]
    seen = [row for batch in first for row in batch]
    assert len(seen) == len(set(seen)) == 31 * 32
    # Every batch comes from one epoch's permutation, so the next epoch starts on a fresh one.
    assert set(bucketed.rows(per_epoch, 32)) != set(first[0])
    assert [Order(1000, seed=3, lengths=lengths).rows(i, 32) for i in range(3)] == first[:3]
    # Random batches of 32 are mostly padding; bucketed ones are nearly all text.
    assert padding(bucketed, lengths, per_epoch, 32) < padding(plain, lengths, per_epoch, 32) / 10
    # Batches do not come shortest first: the order of lengths across an epoch is mixed.
    widths = [int(lengths[batch].max()) for batch in first]
    assert widths != sorted(widths)
    over_ten_epochs = {row for i in range(10 * per_epoch) for row in bucketed.rows(i, 32)}
    assert len(over_ten_epochs) == 1000


def test_fewer_rows_than_a_batch_repeat_as_a_plain_shuffle():
    order = Order(5, seed=0, lengths=torch.tensor([3, 1, 4, 1, 5]))
    assert sorted(order.rows(0, 10)) == sorted([0, 1, 2, 3, 4] * 2)
