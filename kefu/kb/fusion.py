"""Hybrid ranking: the BM25 and dense rankings merged by weighted reciprocal-rank fusion.

    fused(chunk) = Σ over the rankings that hold it of  weight / (k + rank)

Ranks, unlike raw scores, are comparable across the two sides: a BM25 score of 12 and a cosine
of 0.7 share no scale. A small `k` trusts the first places of each ranking most; the weights let
the side that suits a knowledge base lead (`kefu kb calibrate` chooses both on held-out queries).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from kefu.config import StrictModel


class FusionConfig(StrictModel):
    """How the BM25 and dense rankings are merged."""

    k: int = Field(60, ge=1, description="Reciprocal-rank constant: larger flattens the ranks.")
    bm25_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking.")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking.")
    candidates: int = Field(100, ge=1, description="Chunks each ranking contributes.")


@dataclass
class Rankings:
    """What each side found for one query, before fusion: chunk → score, best first."""

    bm25: dict[int, float]
    dense: dict[int, float]  # empty when the encoder does not suit the query
    bm25_ceiling: float  # the most BM25 any text could score for this query (see BM25.ceiling)


def fuse(rankings: Rankings, fusion: FusionConfig) -> dict[int, float]:
    """Chunk → fused score, best first."""
    fused: dict[int, float] = {}
    sides = ((rankings.bm25, fusion.bm25_weight), (rankings.dense, fusion.dense_weight))
    for ranking, weight in sides:
        for rank, chunk in enumerate(ranking, start=1):
            fused[chunk] = fused.get(chunk, 0.0) + weight / (fusion.k + rank)
    # Ties (a chunk only one side found, at the same rank) go to the higher BM25 score.
    order = sorted(fused, key=lambda n: (-fused[n], -rankings.bm25.get(n, 0.0)))
    return {n: fused[n] for n in order}
