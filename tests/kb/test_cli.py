"""`kefu kb build` and `kefu kb search` through the real command."""

import json

from tests.conftest import REPO, kefu

FAQ_ZH = REPO / "examples" / "acme_bank" / "faq_zh.csv"
GUIDE = "# Cards\nFreeze a lost card in the app.\n# Transfers\nTransfers abroad take two days.\n"


def test_build_then_search_in_english_and_chinese(write, tmp_path):
    guide = write("guide.md", GUIDE)
    broken = write("faq.csv", "id,question,answer\nx,What is the IBAN?,\n")
    out = tmp_path / "kb" / "acme"

    built = kefu("kb", "build", str(guide), str(FAQ_ZH), str(broken), "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "82 chunks from 3 sources" in built.stdout  # 2 sections + 80 entries
    assert "2 texts of 2 chunks embedded" in built.stdout and "problems: 1" in built.stdout
    assert "faq.csv:2: answer is empty" in built.stderr

    again = kefu("kb", "build", str(guide), str(FAQ_ZH), "--out", str(out))
    assert again.returncode == 0 and "0 texts of 0 chunks embedded" in again.stdout

    english = kefu("kb", "search", str(out), "how long does a transfer abroad take", "-k", "2")
    assert english.returncode == 0, english.stderr
    first_row = next(line for line in english.stdout.splitlines() if line.startswith("│ 1 "))
    assert "guide.md#2" in first_row and "Transfers" in first_row

    chinese = kefu("kb", "search", str(out), "补卡要多少钱", "-k", "2", "--json")
    hits = [json.loads(line) for line in chinese.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] == "replacement-card-fee-zh"
    assert hits[0]["dense"] is None and hits[0]["bm25"] > 0 and hits[0]["source"] == "faq_zh.csv"
    assert hits[0]["url"].endswith("?lang=zh")


def test_search_of_a_folder_that_is_no_knowledge_base_explains(tmp_path):
    result = kefu("kb", "search", str(tmp_path), "hello")
    assert result.returncode == 1 and "is not a knowledge base" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_chunk_size_is_explained(tmp_path):
    result = kefu(
        "kb", "build", str(FAQ_ZH), "--out", str(tmp_path / "kb"),
        "--max-words", "10", "--overlap-words", "10",
    )  # fmt: skip
    assert result.returncode == 1 and "overlap must be shorter than its chunk" in result.stderr
