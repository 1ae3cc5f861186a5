"""BM25: a value worked out by hand, parity with rank_bm25, and the saved index."""

import math

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from kefu.kb.bm25 import BM25, BM25Config


def test_scores_match_a_hand_computed_value():
    documents = [["a", "b"], ["a", "c", "c"], ["d"]]  # N = 3, average length 2
    idf_a = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # 0.4700036: "a" is in 2 documents
    idf_c = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # 0.9808293
    norm = 1.5 * (1 - 0.75 + 0.75 * 3 / 2)  # k1 (1 - b + b |d| / avgdl) for the 3-token document
    expected = idf_a * 1 * 2.5 / (1 + norm) + idf_c * 2 * 2.5 / (2 + norm)
    assert expected == pytest.approx(1.5908509, rel=1e-7)

    scores = BM25.build(documents).scores(["a", "c"])
    assert scores.tolist() == pytest.approx([idf_a, expected, 0.0], rel=1e-6)


def test_a_query_term_given_twice_counts_twice_and_unknown_terms_add_nothing():
    index = BM25.build([["a", "b"], ["a", "c", "c"], ["d"]])
    once, twice = index.scores(["c"]), index.scores(["c", "c", "zzz"])
    assert twice == pytest.approx(2 * once)
    assert index.scores(["zzz"]).tolist() == [0.0, 0.0, 0.0]


CORPUS = [
    "how do i freeze my card",
    "my card was stolen what now",
    "how long does a transfer take",
    "is there a fee for a new card",
    "card card card",
    "open an account",
    "what is the fee for an international transfer",
]


@pytest.mark.parametrize(
    "query",
    ["card", "freeze my card", "transfer fee", "what is a fee", "card card", "unknown words"],
)
def test_okapi_idf_matches_rank_bm25(query):
    documents = [text.split() for text in CORPUS]
    reference = BM25Okapi(documents)  # k1 1.5, b 0.75, epsilon 0.25, as BM25Config
    ours = BM25.build(documents, BM25Config(idf="okapi"))
    expected = reference.get_scores(query.split())
    assert ours.scores(query.split()) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lucene_idf_stays_positive_where_okapi_floors_it():
    # "card" is in 4 of 7 documents: okapi's idf would be negative and is floored; lucene's is not.
    documents = [text.split() for text in CORPUS]
    lucene = BM25.build(documents).scores(["card"])
    assert (lucene[[0, 1, 3, 4]] > 0).all() and (lucene[[2, 5, 6]] == 0).all()


def test_saved_index_gives_the_same_scores(tmp_path):
    index = BM25.build([text.split() for text in CORPUS])
    index.save(tmp_path / "bm25.npz")
    loaded = BM25.load(tmp_path / "bm25.npz")
    assert loaded.vocabulary == index.vocabulary
    np.testing.assert_array_equal(loaded.scores(["fee", "card"]), index.scores(["fee", "card"]))


def test_the_ceiling_bounds_every_score_and_is_reached_by_the_best_document_of_one_term():
    documents = [["lost", "card"], ["card", "fee", "card"], ["transfer", "abroad", "fee"]]
    bm25 = BM25.build(documents)
    for query in (["card"], ["card", "fee"], ["lost", "card", "abroad"], ["unknown"]):
        assert bm25.scores(query).max(initial=0.0) <= bm25.ceiling(query) + 1e-6
    assert bm25.ceiling(["card"]) == pytest.approx(float(bm25.scores(["card"]).max()))
    assert bm25.ceiling(["unknown"]) == 0.0
