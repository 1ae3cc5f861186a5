"""Weighted reciprocal-rank fusion, against values worked out by hand."""

import pytest

from kefu.kb.fusion import FusionConfig, Rankings, fuse


def test_fused_scores_are_weighted_reciprocal_ranks():
    rankings = Rankings(bm25={7: 9.0, 3: 4.0}, dense={3: 0.8, 5: 0.7, 7: 0.2}, bm25_ceiling=10.0)
    fused = fuse(rankings, FusionConfig(k=1, bm25_weight=0.5, dense_weight=1.0))
    # 3: 0.5/(1+2) + 1/(1+1); 7: 0.5/(1+1) + 1/(1+3); 5: 1/(1+2)
    assert list(fused) == [3, 7, 5]
    assert list(fused.values()) == pytest.approx([0.5 / 3 + 0.5, 0.25 + 0.25, 1 / 3])


def test_a_zero_weight_leaves_one_side_in_charge_and_ties_go_to_bm25():
    rankings = Rankings(bm25={1: 5.0, 2: 3.0}, dense={2: 0.9, 1: 0.1}, bm25_ceiling=6.0)
    assert list(fuse(rankings, FusionConfig(bm25_weight=0.0))) == [2, 1]
    assert list(fuse(rankings, FusionConfig(dense_weight=0.0))) == [1, 2]
    # Each chunk first on one side, second on the other: equal sums, BM25's first wins.
    assert list(fuse(rankings, FusionConfig())) == [1, 2]
