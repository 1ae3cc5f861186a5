"""Dense retrieval: unit-length sentence vectors and exact nearest-neighbour search.

Vectors are unit length, so the inner product is the cosine similarity and one matrix-vector
product scores the whole base: at 10k vectors of 384 floats that is ~4M multiply-adds, well under
a millisecond, so exact search is both the simplest and fast enough for a support knowledge base.
`VectorSearch` is the interface an approximate index (faiss) can implement for very large bases.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from kefu.models.encoder import SentenceEncoder


class VectorSearch(Protocol):
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest vectors to `query` (dim,): (their indices, their scores), best first."""
        ...


class ExactSearch:
    """Every vector scored against the query; the best `k` found with a partial sort."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors  # (N, dim) float32, unit rows

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.vectors @ query  # (N,)
        k = min(k, len(scores))
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]  # the best k, unordered
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]


@functools.cache
def load_encoder(name_or_path: str) -> SentenceEncoder:
    """A sentence encoder, loaded once per process (loading MiniLM takes about two seconds)."""
    from kefu.models.encoder import SentenceEncoder

    return SentenceEncoder(name_or_path)


def embed(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    """(N, dim) float32 unit vectors of `texts`."""
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    vectors = encoder.encode(texts).numpy().astype(np.float32)
    # SentenceEncoder already normalises; a user's encoder folder may not, and search needs it.
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
