"""Dense retrieval: unit-length sentence vectors, searched exactly or on an HNSW graph.

Vectors are unit length, so the inner product is the cosine similarity and one matrix-vector
product scores the whole base: at 10k vectors of 384 floats that is ~4M multiply-adds, about a
millisecond, so exact search is both the simplest and fast enough for most support knowledge
bases. It reads every vector for every query, though, so its time grows with the base (15 ms at
170k vectors on two cores); for large bases `HNSWSearch`, a faiss graph, visits only a few
thousand vectors and finds nearly the same neighbours. Both implement `VectorSearch`.
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
        import torch

        self.vectors = vectors  # (N, dim) float32, unit rows
        # The product runs on torch's threads, those that have just embedded the query: numpy's
        # BLAS threads would wake up beside them and fight them for the cores (hybrid search at
        # 16k vectors on two cores: 28 ms a query with numpy's product, 19 ms with torch's).
        self._matrix = torch.from_numpy(vectors)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        scores = (self._matrix @ torch.from_numpy(query)).numpy()  # (N,)
        k = min(k, len(scores))
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]  # the best k, unordered
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]


# HNSW settings, measured with bench/retrieval.py's 100k-chunk base (166,857 MiniLM vectors of
# real utterances, 400 held-out queries) on two cores: efConstruction 200 lifts recall@10 at
# efSearch 64 from 0.978 (100) to 0.989 and takes 47 s instead of 21 s to link, little beside
# the quarter of an hour of embedding; M 16 needs a wider search for the same recall, M 48 adds
# nothing over 32. Search: 0.18 ms a query at k=10 (exact search: 15 ms).
HNSW_LINKS = 32  # faiss's M: neighbours kept per vector (level 0 keeps twice as many)
HNSW_EF_CONSTRUCTION = 200  # candidates weighed when a vector is linked in
HNSW_EF_SEARCH = 64  # candidates kept while searching, at least k: recall@10 0.989


class HNSWSearch:
    """Approximate search on a faiss HNSW graph of the vectors (inner product = cosine).

    Linking the graph takes about a minute at 170k vectors, so `kefu kb build` does it once
    and saves it beside the vectors (`save`); `load` reads it back in about a second, and the
    file is the same on any machine.
    """

    def __init__(self, index: Any) -> None:  # a faiss.IndexHNSWFlat; faiss ships no types
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray) -> HNSWSearch:
        """A graph of `vectors` (N, dim) float32 unit rows.

        They are added in one call: faiss then links every vector of the upper levels before
        the rest, a better graph than batches give (efConstruction 100: recall@10 0.975 in
        batches of 10k, 0.978 in one).
        """
        import faiss

        from kefu.console import note

        note(f"linking {len(vectors):,} vectors into an HNSW graph")
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> HNSWSearch:
        import faiss

        return cls(faiss.read_index(str(path)))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        k = min(k, self.index.ntotal)
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        # faiss keeps efSearch candidates however many are asked for, so a deep ask (hybrid
        # search asks for 401) needs a search as wide: efSearch 64 finds 0.56 of the exact 401.
        wide = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
        scores, found = self.index.search(
            np.ascontiguousarray(query[None], np.float32), k, params=wide
        )
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
