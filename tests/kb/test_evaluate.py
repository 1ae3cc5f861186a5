"""Held-out questions, retrieval metrics, calibration and evaluation of a knowledge base."""

import json
import math
import shutil

import pytest

from kefu.errors import KefuError
from kefu.kb.evaluate import (
    Query,
    calibrate,
    evaluate_kb,
    paraphrase_queries,
    ranking_metrics,
    read_queries,
)
from kefu.kb.index import KBConfig, KnowledgeBase, build_kb

GUIDE = "# Cards\nFreeze a lost card in the app.\n# Transfers\nTransfers abroad take two days.\n"


def test_metrics_against_values_worked_out_by_hand():
    ranked = [["a", "b", "c"], ["x", "y", "a"], ["z"]]
    relevant = [{"a"}, {"a", "y"}, {"q"}]
    metrics = ranking_metrics(ranked, relevant)
    # Question 2: right at ranks 2 and 3, of an ideal 1 and 2.
    ndcg_2 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert metrics == pytest.approx({
        "recall@1": 1 / 3, "recall@5": 2 / 3, "recall@10": 2 / 3,
        "mrr": (1 + 1 / 2 + 0) / 3, "ndcg@10": (1 + ndcg_2 + 0) / 3, "queries": 3,
    })  # fmt: skip


@pytest.fixture
def guide_kb(write, tmp_path):
    build_kb([write("guide.md", GUIDE)], tmp_path / "kb", KBConfig(encoder=None))
    return KnowledgeBase.load(tmp_path / "kb")


def test_query_files_keep_the_good_rows_and_say_what_is_wrong_with_the_rest(write, guide_kb):
    csv = write(
        "q.csv",
        "query,ids\nhow long is a transfer,guide.md#2\n,guide.md#1\nlost card,\n"
        "frozen card,guide.md#9\nlost card again,guide.md#1 | guide.md#2\n",
    )
    queries, rejects = read_queries(csv, guide_kb)
    assert [(q.text, q.ids) for q in queries] == [
        ("how long is a transfer", {"guide.md#2"}),
        ("lost card again", {"guide.md#1", "guide.md#2"}),
    ]
    assert [(r.line, r.code) for r in rejects] == [
        (3, "bad_field"), (4, "bad_field"), (5, "unknown_id"),
    ]  # fmt: skip
    assert "'guide.md#9' is not in the knowledge base" in rejects[2].reason
    jsonl = write("q.jsonl", json.dumps({"query": "freeze", "ids": ["guide.md#1"]}) + "\n")
    assert read_queries(jsonl, guide_kb)[0] == [Query("freeze", {"guide.md#1"})]
    with pytest.raises(KefuError, match="no usable queries"):
        read_queries(write("bad.csv", "query,ids\nx,nope\n"), guide_kb)


def test_a_base_without_paraphrases_asks_for_a_query_file(guide_kb):
    with pytest.raises(KefuError, match=r"no FAQ paraphrases.*--queries"):
        paraphrase_queries(guide_kb)


def test_a_held_out_paraphrase_cannot_find_itself(acme):
    kb = KnowledgeBase.load(acme[0])
    queries = paraphrase_queries(kb)
    assert len(queries) == 480  # 160 entries × 3 paraphrases
    first = queries[0]  # "I can't find my card anywhere", the lost card's first paraphrase
    assert first.ids == {"lost-card-en"} and first.held_out == 1
    seen = kb.rankings(first.text)
    hidden = kb.rankings(first.text, held_out=first.held_out)
    assert seen.dense[0] == pytest.approx(1.0, abs=1e-5)  # its own text, word for word
    assert hidden.dense[0] < 0.9 and hidden.bm25[0] < seen.bm25[0]


def test_calibration_chooses_the_fusion_and_a_threshold_that_holds(acme, tmp_path):
    folder = tmp_path / "acme"
    shutil.copytree(acme[0], folder)
    kb = KnowledgeBase.load(folder)
    queries = paraphrase_queries(kb)
    before = evaluate_kb(kb, queries)
    calibration = calibrate(kb, queries, 0.9, "FAQ paraphrases")
    # The chosen fusion finds more first hits than the default (k=60, equal weights).
    assert calibration.figures["recall@1"] > before["hybrid"]["recall@1"] + 0.05
    assert 0 < calibration.threshold < 1 and 0.05 < calibration.figures["answer_rate"] < 0.9

    again = KnowledgeBase.load(folder)  # calibration.json is read back with the base
    assert again.fusion == calibration.fusion
    results = evaluate_kb(again, queries, tmp_path / "eval")
    assert results["hybrid"]["recall@1"] == pytest.approx(calibration.figures["recall@1"])
    answering = results["answering"]
    assert answering["precision"] >= 0.9 and answering["answer_rate"] == pytest.approx(
        calibration.figures["answer_rate"]
    )
    # MiniLM is English: Chinese questions are answered by BM25 alone, and less often.
    by_language = results["by_language"]
    assert by_language["en"]["queries"] == by_language["zh"]["queries"] == 240
    assert by_language["en"]["recall@5"] > 0.9 > by_language["zh"]["recall@5"] > 0.5
    assert "| hybrid, zh | 240 |" in (tmp_path / "eval" / "report.md").read_text()

    sure = again.lookup("I have lost my debit card, what should I do?")
    assert sure.hits[0].id == "lost-card-en" and sure.confident
    unsure = again.lookup("what is the weather like on Mars")
    assert unsure.confidence < calibration.threshold and not unsure.confident
