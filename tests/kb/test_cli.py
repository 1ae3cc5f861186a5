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


def test_calibrate_then_evaluate_with_a_query_file(write, tmp_path):
    out = tmp_path / "kb"
    assert kefu("kb", "build", str(FAQ_ZH), "--out", str(out)).returncode == 0
    queries = write(
        "held_out.csv",
        "query,ids\n" + "".join(f"{q},{i}\n" for q, i in HELD_OUT_ZH) + "卡丢了,no-such-id\n",
    )
    calibrated = kefu("kb", "calibrate", str(out), "--queries", str(queries))
    assert calibrated.returncode == 0, calibrated.stderr
    assert f"calibrated on {len(HELD_OUT_ZH)} questions (held_out.csv)" in calibrated.stdout
    assert (
        f"held_out.csv:{len(HELD_OUT_ZH) + 2}: id 'no-such-id' is not in the knowledge base"
        in calibrated.stderr
    )
    assert json.loads((out / "calibration.json").read_text())["queries"] == "held_out.csv"

    evaluated = kefu("eval", "kb", str(out), "--queries", str(queries))
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((out / "eval" / "eval.json").read_text())
    assert results["queries"] == len(HELD_OUT_ZH) and results["dense"] is None
    assert results["hybrid"] == results["bm25"]  # Chinese: BM25 alone
    assert results["answering"]["precision"] >= 0.9
    assert "direct answers:" in evaluated.stdout and "hybrid, zh" in evaluated.stdout

    searched = kefu("kb", "search", str(out), "补卡要多少钱", "-k", "1")
    assert "confidence of the first hit" in searched.stderr

    rebuilt = kefu("kb", "build", str(FAQ_ZH), "--out", str(out))
    assert "needs its answer threshold again" in rebuilt.stderr
    assert not (out / "calibration.json").exists()


def test_eval_of_a_base_without_paraphrases_explains(write, tmp_path):
    out = tmp_path / "kb"
    assert kefu("kb", "build", str(write("guide.md", GUIDE)), "--out", str(out)).returncode == 0
    result = kefu("eval", "kb", str(out))
    assert (
        result.returncode == 1 and "--queries" in result.stderr and "Traceback" not in result.stderr
    )


# Customer wordings written for this test, not taken from the FAQ: 2-3 per entry.
HELD_OUT_ZH = [
    ("我的银行卡不见了怎么办", "lost-card-zh"),
    ("卡丢了要怎么挂失", "lost-card-zh"),
    ("钱包被人偷了，卡也在里面", "stolen-card-zh"),
    ("卡被偷了会被盗刷吗", "stolen-card-zh"),
    ("卡冻结了还能解冻吗", "unfreeze-card-zh"),
    ("找回了冻结的卡，怎么恢复", "unfreeze-card-zh"),
    ("补卡要多少钱", "replacement-card-fee-zh"),
    ("重新办卡收费吗", "replacement-card-fee-zh"),
    ("收到新卡了，怎么开通", "activate-card-zh"),
    ("能不能在取款机上激活", "activate-card-atm-zh"),
    ("激活总是不成功", "activation-not-working-zh"),
    ("刷卡失败是什么原因", "card-declined-zh"),
    ("网上买东西付不了款", "online-payment-declined-zh"),
    ("出国刷卡被拒了", "card-declined-abroad-zh"),
    ("卡多长时间能收到", "card-delivery-time-zh"),
    ("一个星期了卡还没到", "card-not-arrived-zh"),
    ("卡可以寄到公司吗", "card-delivery-address-zh"),
    ("忘记密码了怎么办", "forgot-pin-zh"),
    ("我想换个密码", "change-pin-zh"),
    ("密码被锁住了", "pin-locked-zh"),
    ("怎么看卡里还有多少钱", "check-balance-zh"),
    ("有一笔消费不是我花的", "unrecognised-transaction-zh"),
    ("同一笔钱扣了两次", "duplicate-charge-zh"),
    ("转账转失败了钱去哪了", "transfer-failed-zh"),
]
