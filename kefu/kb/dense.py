"""Dense retrieval: unit-length sentence vectors, searched exactly or on an HNSW graph.

Vectors are unit length, so the inner product is the cosine similarity and one matrix-vector
product scores the whole base: at 10k vectors of 384 floats that is ~4M multiply-adds, about a
millisecond, so exact search is both the simplest and fast enough for most support knowledge
bases. It reads every vector for every query, though, so its time grows with the base (~20 ms at
100k on two cores); past that `HNSWSearch`, a faiss graph, visits only a few thousand vectors and
finds nearly the same neighbours. Both implement `VectorSearch`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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


# HNSW settings, measured by bench/retrieval.py on MiniLM vectors of a 100k-chunk base and on
# 100k clustered random unit vectors (384 dims): M=16 loses recall that M=32 keeps;
# efConstruction 200 builds a graph no better than 100 in twice the time; efSearch 64 finds
# 0.98+ of the exact 10 nearest at a few tenths of a millisecond.
HNSW_LINKS = 32  # faiss's M: neighbours kept per vector (level 0 keeps twice as many)
HNSW_EF_CONSTRUCTION = 100  # candidates weighed when a vector is linked in
HNSW_EF_SEARCH = 64  # candidates kept while searching; faiss widens it to k when k is larger
HNSW_ADD_BATCH = 10_000  # vectors added between progress-bar updates


class HNSWSearch:
    """Approximate search on a faiss HNSW graph of the vectors (inner product = cosine).

    The graph takes minutes to build at 100k vectors, so `kefu kb build` builds it once and saves
    it beside the vectors (`save`); `load` reads it back in well under a second, and the file
    is the same on any machine.
    """

    def __init__(self, index: Any) -> None:  # a faiss.IndexHNSWFlat; faiss ships no types
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray) -> HNSWSearch:
        """A graph of `vectors` (N, dim) float32 unit rows; shows progress (minutes at 100k)."""
        import faiss

        from kefu.console import progress

        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        with progress("vectors") as bar:
            task = bar.add_task("HNSW graph", total=len(vectors))
            for start in range(0, len(vectors), HNSW_ADD_BATCH):
                batch = np.ascontiguousarray(vectors[start : start + HNSW_ADD_BATCH], np.float32)
                index.add(batch)
                bar.advance(task, len(batch))
        return cls(index)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> HNSWSearch:
        import faiss

        index = faiss.read_index(str(path))
        index.hnsw.efSearch = HNSW_EF_SEARCH  # a search setting: this kefu's, not the builder's
        return cls(index)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        scores, found = self.index.search(np.ascontiguousarray(query[None], np.float32), k)
        keep = found[0] >= 0  # a sparse corner of the graph can yield fewer than k
        return found[0][keep], scores[0][keep]


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
