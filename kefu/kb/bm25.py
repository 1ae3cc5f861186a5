"""Okapi BM25 as one sparse matrix, so that scoring a query is a sum of a few columns.

Every document-term weight

    idf(t) · tf · (k1 + 1) / (tf + k1 · (1 − b + b · |d| / avgdl))

depends only on the corpus, so it is computed once at build time into a (documents × terms)
CSC matrix. A query's scores are then the sum of its terms' columns (a term asked twice counts
twice, as in rank_bm25): no Python loop over documents, and the matrix is saved as it is.

Two idf formulas are offered. `lucene`, the default, is log(1 + (N − n + 0.5) / (n + 0.5)) and is
never negative. `okapi` is rank_bm25's BM25Okapi: log((N − n + 0.5) / (n + 0.5)), where a term
in more than half the documents would score negative, so rank_bm25 replaces every negative idf
by `epsilon` times the mean idf of the vocabulary; it is here for parity with that reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from scipy import sparse

from kefu.config import StrictModel


class BM25Config(StrictModel):
    """BM25's parameters."""

    k1: float = Field(1.5, ge=0, description="How fast repeats of a term stop adding score.")
    b: float = Field(0.75, ge=0, le=1, description="How much long texts are penalised (0: none).")
    idf: Literal["lucene", "okapi"] = Field(
        "lucene", description="lucene (never negative) or okapi (rank_bm25's BM25Okapi)."
    )
    epsilon: float = Field(
        0.25, ge=0, description="okapi only: negative idfs become epsilon × the mean idf."
    )


class BM25:
    """Scores of a query against every document of a fixed corpus of token lists."""

    def __init__(self, weights: sparse.csc_matrix, vocabulary: dict[str, int]) -> None:
        self.weights = weights  # (documents, terms)
        self.vocabulary = vocabulary  # term → column
        # Each term's best weight in any document: their sum bounds a query's possible score.
        self.term_ceilings = weights.max(axis=0).toarray().ravel() if weights.nnz else np.zeros(0)

    @classmethod
    def build(cls, documents: list[list[str]], config: BM25Config | None = None) -> BM25:
        """Index `documents`, each a list of tokens (see `kefu.kb.text.tokens`)."""
        config = config or BM25Config()
        vocabulary: dict[str, int] = {}
        rows, columns, counts = [], [], []
        lengths = np.zeros(len(documents), dtype=np.float64)
        for row, document in enumerate(documents):
            lengths[row] = len(document)
            for term, count in Counter(document).items():
                rows.append(row)
                columns.append(vocabulary.setdefault(term, len(vocabulary)))
                counts.append(count)
        rows_, columns_ = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        tf = np.asarray(counts, dtype=np.float64)

        n_docs = len(documents)
        df = np.bincount(columns_, minlength=len(vocabulary)).astype(np.float64)
        if config.idf == "lucene":
            idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        else:
            idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
            floor = config.epsilon * idf.mean() if len(idf) else 0.0
            idf = np.where(idf < 0, floor, idf)
        average = lengths.mean() if n_docs and lengths.mean() > 0 else 1.0
        norm = config.k1 * (1 - config.b + config.b * lengths[rows_] / average)
        values = idf[columns_] * tf * (config.k1 + 1) / (tf + norm)
        weights = sparse.csc_matrix(
            (values.astype(np.float32), (rows_, columns_)), shape=(n_docs, len(vocabulary))
        )
        return cls(weights, vocabulary)

    def scores(self, query: list[str]) -> np.ndarray:
        """BM25 score of every document for the query tokens (unknown terms add nothing)."""
        counts = Counter(t for t in query if t in self.vocabulary)
        if not counts:
            return np.zeros(self.weights.shape[0], dtype=np.float32)
        columns = [self.vocabulary[t] for t in counts]
        repeats = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        return np.asarray(self.weights[:, columns] @ repeats).ravel()

    def ceiling(self, query: list[str]) -> float:
        """The most any document could score for `query`: the sum of its terms' best weights.

        A score divided by it is comparable across queries (0-1), which raw BM25 is not: a long
        query scores more than a short one however well either matches.
        """
        return float(
            sum(self.term_ceilings[self.vocabulary[t]] for t in query if t in self.vocabulary)
        )

    def save(self, path: Path) -> None:
        """Write the matrix and the vocabulary (terms in column order) to one .npz file."""
        terms = np.array(sorted(self.vocabulary, key=self.vocabulary.__getitem__), dtype=str)
        m = self.weights
        with open(path, "wb") as file:  # np.savez on a path would append ".npz" to temporaries
            np.savez(
                file, data=m.data, indices=m.indices, indptr=m.indptr, shape=m.shape, terms=terms
            )

    @classmethod
    def load(cls, path: Path) -> BM25:
        with np.load(path, allow_pickle=False) as arrays:
            weights = sparse.csc_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"])
            )
            terms = arrays["terms"].tolist()
        return cls(weights, {term: column for column, term in enumerate(terms)})
