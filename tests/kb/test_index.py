"""The knowledge base folder: built from the demo FAQ, searched in English and Chinese,
rebuilt incrementally, moved, and built past broken sources."""

import json
import shutil

import numpy as np
import pytest

from kefu.errors import KefuError
from kefu.kb.index import FusionConfig, KBConfig, KnowledgeBase, build_kb
from tests.conftest import REPO


def test_the_build_counts_every_entry_and_embeds_only_the_english_texts(acme):
    folder, report = acme
    # 80 entries a language, each one question and three paraphrases.
    assert (report.sources, report.chunks, report.texts) == (2, 160, 640)
    assert report.vectors == report.embedded == 320 and report.reembedded_chunks == 80
    assert report.problems == []
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encoder"] == "all-MiniLM-L6-v2" and manifest["embedding_dim"] == 384
    assert [s["source"] for s in manifest["sources"]] == ["faq_en.csv", "faq_zh.csv"]
    assert manifest["counts"]["chunks"] == 160 and len(manifest["sources"][0]["sha256"]) == 64
    assert manifest["build_seconds"] > 0 and manifest["built_at"].endswith("+00:00")
    vectors = np.load(folder / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (320, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(320), abs=1e-5)


@pytest.mark.parametrize(
    ("query", "entry"),
    [
        ("Somebody took my purse and my Acme card was inside", "stolen-card-en"),
        ("my bank card has gone missing", "lost-card-en"),
    ],
)
def test_a_paraphrased_english_question_finds_its_entry_first(acme, query, entry):
    [first, *_] = KnowledgeBase.load(acme[0]).search(query, k=5)
    assert first.id == entry and first.source == "faq_en.csv"
    assert first.bm25 > 0 and first.dense > 0.6  # both sides found it
    assert first.url.startswith("https://www.acmebank.example/help/")


def test_a_chinese_question_is_answered_by_bm25_alone(acme):
    kb = KnowledgeBase.load(acme[0])
    assert not kb.uses_dense("我的银行卡找不到了，怎么办")
    hits = kb.search("我的银行卡找不到了，怎么办", k=3)
    assert hits[0].id == "lost-card-zh" and hits[0].title == "银行卡丢了怎么办？"
    assert all(hit.dense is None for hit in hits)
    # With one ranking the fused score is 1 / (60 + rank).
    assert [hit.fused for hit in hits] == pytest.approx([1 / 61, 1 / 62, 1 / 63])


def test_fusion_weights_change_what_comes_first(acme):
    kb = KnowledgeBase.load(acme[0])
    bm25_only = kb.search("card", k=1, fusion=FusionConfig(dense_weight=0))[0]
    assert bm25_only.fused == pytest.approx(1 / 61)


def test_the_folder_moved_elsewhere_still_loads_and_searches(acme, tmp_path):
    folder, _ = acme
    moved = tmp_path / "elsewhere" / "kb"
    shutil.copytree(folder, moved)
    for path in moved.iterdir():
        text = path.read_bytes()
        assert str(folder.parent).encode() not in text and str(REPO).encode() not in text
    before = [
        h.id for h in KnowledgeBase.load(folder).search("do I pay for a new card if I lose mine")
    ]
    after = [
        h.id for h in KnowledgeBase.load(moved).search("do I pay for a new card if I lose mine")
    ]
    assert after == before and after[0] == "replacement-card-fee-en"


GUIDE = """# Cards
Freeze a lost card in the app.
# Transfers
Transfers abroad take two days.
# Accounts
Open an account online in ten minutes.
"""


def test_a_rebuild_embeds_only_what_changed(write, tmp_path):
    guide, out = write("guide.md", GUIDE), tmp_path / "kb"
    first = build_kb([guide], out)
    assert (first.chunks, first.embedded, first.reembedded_chunks) == (3, 3, 3)
    vectors = np.load(out / "vectors.npy")

    again = build_kb([guide], out)
    assert (again.embedded, again.reembedded_chunks) == (0, 0)

    write("guide.md", GUIDE.replace("two days", "three days"))
    changed = build_kb([guide], out)
    assert (changed.chunks, changed.embedded, changed.reembedded_chunks) == (3, 1, 1)
    updated = np.load(out / "vectors.npy")
    np.testing.assert_array_equal(updated[[0, 2]], vectors[[0, 2]])
    assert not np.allclose(updated[1], vectors[1])
    assert KnowledgeBase.load(out).search("how long do transfers abroad take")[0].chunk.text == (
        "Transfers abroad take three days."
    )


def test_broken_sources_are_listed_in_the_folder_and_the_rest_is_searchable(write, tmp_path):
    faq = write("faq.csv", "id,question,answer\nfee,Is there a fee?,No.\nfee,Fee again?,Yes.\n")
    broken = write("old.md", "# 旧\n".encode("gb18030"))
    report = build_kb([faq, broken], tmp_path / "kb", KBConfig(encoder=None))
    assert [(p.file, p.line, p.code) for p in report.problems] == [
        ("faq.csv", 3, "duplicate_id"),
        ("old.md", 1, "encoding"),
    ]
    lines = (tmp_path / "kb" / "problems.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == ["faq.csv", "old.md"]
    assert KnowledgeBase.load(tmp_path / "kb").search("fee")[0].id == "fee"


def test_nothing_to_index_is_an_error_that_says_why(write, tmp_path):
    with pytest.raises(KefuError, match=r"no knowledge found .*empty.csv:1: .*'question'"):
        build_kb([write("empty.csv", "q,a\nx,y\n")], tmp_path / "kb")
    with pytest.raises(KefuError, match="is not a knowledge base"):
        KnowledgeBase.load(tmp_path / "nothing")


def test_crosswoz_attractions_are_found_by_name_in_chinese(shared_data, tmp_path):
    database = shared_data / "crosswoz" / "database" / "attraction_db.json"
    report = build_kb([database], tmp_path / "kb")
    assert report.chunks == 465 and report.vectors == 0  # Chinese: BM25 only, nothing embedded
    hits = KnowledgeBase.load(tmp_path / "kb").search("故宫的门票多少钱？", k=3)
    assert hits[0].id == "attraction_db.json#故宫" and "门票: 60" in hits[0].chunk.text


def test_dense_languages_default_to_what_the_encoder_suits():
    assert KBConfig().dense_languages == ["en"]  # the packaged MiniLM is English only
    assert KBConfig(encoder="models/bge-small-zh").dense_languages == ["en", "zh"]
    assert KBConfig(encoder="models/x", dense_languages=["zh"]).dense_languages == ["zh"]


def test_a_folder_that_is_not_a_knowledge_base_is_never_replaced(write, tmp_path):
    doc = write("docs/cards.md", "# Cards\nFree.\n")
    with pytest.raises(KefuError, match="is not a knowledge base, so it is not replaced"):
        build_kb([doc], tmp_path / "docs")
    assert doc.read_text() == "# Cards\nFree.\n"


def test_the_encoder_folder_can_be_given_again_where_the_base_is_loaded(acme):
    kb = KnowledgeBase.load(acme[0], encoder="/opt/models/minilm")
    assert kb.config.encoder == "/opt/models/minilm"


def test_an_exact_faq_question_is_answered_with_full_confidence(acme):
    kb = KnowledgeBase.load(acme[0])  # uncalibrated: nothing else is ever confident
    assert kb.lookup("my bank card has gone missing").confident is False
    # Case, spaces and punctuation do not matter; a paraphrase listed in the FAQ counts too.
    for question, entry in [
        ("i lost my debit card what should i do", "lost-card-en"),
        ("银行卡丢了怎么办", "lost-card-zh"),
        ("Someone stole my card!", "stolen-card-en"),
    ]:
        found = kb.lookup(question, k=3)
        assert (found.hits[0].id, found.confidence, found.confident) == (entry, 1.0, True)
        assert len({hit.id for hit in found.hits}) == 3


def test_a_chinese_faq_answer_keeps_its_punctuation_for_the_customer(acme):
    kb = KnowledgeBase.load(acme[0])
    answer = next(chunk for chunk in kb.chunks if chunk.id == "lost-card-zh").text
    assert answer.startswith("请立即在Acme Mobile App中冻结卡片（卡片 → 冻结卡片），")
