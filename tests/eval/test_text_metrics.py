"""Reply metrics: parity with sacrebleu, hand-computed ROUGE-L and distinct-n, and bad input."""

from __future__ import annotations

from itertools import combinations

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from kefu.eval.text_metrics import (
    _lcs_length,
    corpus_bleu,
    corpus_chrf,
    distinct_n,
    reply_metrics,
    rouge_l,
    words,
)

EN_HYPS = [
    "I have frozen your card and a new one is on its way.",
    "Please restart the app and try the transfer again.",
    "Your refund will arrive within five business days.",
]
EN_REFS = [
    "I have frozen your card, and a new card will arrive in 5-7 days.",
    "Please update the app and then try the transfer again.",
    "The refund arrives within 3 to 5 business days.",
]
ZH_HYPS = ["我的卡丢了", "请稍等，我帮您查询订单。", "转账失败的钱会在三天内退回。"]
ZH_REFS = [
    "我的银行卡丢了",
    "请稍等，我马上帮您查询订单状态。",
    "转账失败的款项会在三个工作日内退回。",
]


def test_bleu_and_chrf_equal_sacrebleu_on_english():
    assert corpus_bleu(EN_HYPS, EN_REFS) == sacrebleu.corpus_bleu(EN_HYPS, [EN_REFS]).score
    assert corpus_chrf(EN_HYPS, EN_REFS) == sacrebleu.corpus_chrf(EN_HYPS, [EN_REFS]).score
    assert 10 < corpus_bleu(EN_HYPS, EN_REFS) < 90  # a real partial match, not a degenerate 0/100


def test_chinese_bleu_uses_the_zh_tokenizer():
    zh = corpus_bleu(ZH_HYPS, ZH_REFS, language="zh")
    assert zh == sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score
    # 13a sees each clause as one word, so almost nothing matches; per-character tokens do.
    thirteen_a = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="13a").score
    assert zh > 20 and thirteen_a < 5


def test_auto_language_follows_most_references():
    assert corpus_bleu(ZH_HYPS, ZH_REFS, language="auto") == corpus_bleu(ZH_HYPS, ZH_REFS, "zh")
    assert corpus_bleu(EN_HYPS, EN_REFS, language="auto") == corpus_bleu(EN_HYPS, EN_REFS, "en")
    # Two of three references are Chinese, so the whole corpus is scored with the zh tokenizer.
    hyps, refs = [*ZH_HYPS[:2], EN_HYPS[0]], [*ZH_REFS[:2], EN_REFS[0]]
    assert (
        corpus_bleu(hyps, refs, "auto") == sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    )


def test_tokens_split_chinese_by_character_and_keep_latin_runs():
    assert words("订单A123已发货，App正常", "zh") == [
        "订",
        "单",
        "a123",
        "已",
        "发",
        "货",
        "app",
        "正",
        "常",
    ]
    assert words("Hello, World! It's 5pm.", "en") == ["hello", "world", "it", "s", "5pm"]
    assert words("订单A123", "auto") == ["订", "单", "a123"]
    assert words("Order A123", "auto") == ["order", "a123"]


def test_rouge_l_english_golden_value():
    # LCS "the cat on the mat" = 5 tokens of 6 on both sides: P = R = F = 5/6.
    score = rouge_l(["the cat sat on the mat"], ["the cat is on the mat"])
    assert score == pytest.approx(100 * 5 / 6)
    # Punctuation and case are ignored: LCS "your card frozen" = 3, P = 3/4, R = 3/5, F = 2/3.
    score = rouge_l(["Your card is frozen."], ["your card has been FROZEN!"])
    assert score == pytest.approx(100 * 2 / 3)


def test_rouge_l_is_the_mean_over_pairs():
    hyps = ["the cat sat on the mat", "Your card is frozen."]
    refs = ["the cat is on the mat", "your card has been FROZEN!"]
    assert rouge_l(hyps, refs) == pytest.approx(75.0)  # (5/6 + 2/3) / 2


def test_rouge_l_chinese_golden_values():
    # LCS 我的卡丢了 = 5 characters: P = 5/5, R = 5/7, F = 2 * 1 * 5/7 / (12/7) = 10/12.
    assert rouge_l(["我的卡丢了"], ["我的银行卡丢了"], "zh") == pytest.approx(100 * 10 / 12)
    # 订 单 a123 已 发 货 (6 tokens) inside 您 的 订 单 a123 已 发 货 (8): P = 1, R = 3/4, F = 6/7.
    hyp, ref = "订单A123已发货", "您的订单A123已发货"
    assert rouge_l([hyp], [ref], "auto") == pytest.approx(100 * 6 / 7)
    # Read as English the whole string is one word, and the two words differ.
    assert rouge_l([hyp], [ref], "en") == 0.0


def test_rouge_l_empty_texts():
    assert rouge_l([""], [""]) == 100.0
    assert rouge_l(["..."], [""]) == 100.0  # punctuation alone has no tokens
    assert rouge_l(["hello"], [""]) == 0.0
    assert rouge_l([""], ["hello"]) == 0.0


def _brute_force_lcs(a: list[str], b: list[str]) -> int:
    """Longest subsequence of `a` that is also a subsequence of `b`, by trying them all."""

    def is_subsequence(small: tuple[str, ...], big: list[str]) -> bool:
        remaining = iter(big)
        return all(token in remaining for token in small)

    for size in range(len(a), 0, -1):
        if any(is_subsequence(sub, b) for sub in combinations(a, size)):
            return size
    return 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abc"), max_size=7),
    st.lists(st.sampled_from("abc"), max_size=7),
)
def test_lcs_matches_brute_force(a, b):
    assert _lcs_length(a, b) == _brute_force_lcs(a, b) == _lcs_length(b, a)


def test_distinct_n_golden_values():
    texts = ["the cat sat", "The cat ran."]
    # the cat sat the cat ran: 4 distinct of 6 unigrams.
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # (the cat) (cat sat) (the cat) (cat ran): 3 of 4; "sat the" crosses texts and is not counted.
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # 谢 谢 您 | 谢 谢: 2 distinct of 5 characters; bigrams 谢谢 谢您 谢谢: 2 of 3.
    assert distinct_n(["谢谢您", "谢谢"], 1, "zh") == pytest.approx(2 / 5)
    assert distinct_n(["谢谢您", "谢谢"], 2, "zh") == pytest.approx(2 / 3)


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n(["hi", "ok"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_identical_replies_score_100():
    assert corpus_bleu(EN_REFS, EN_REFS) == pytest.approx(100.0)
    assert corpus_chrf(EN_REFS, EN_REFS) == pytest.approx(100.0)
    assert rouge_l(EN_REFS, EN_REFS) == pytest.approx(100.0)
    assert corpus_bleu(ZH_REFS, ZH_REFS, "zh") == pytest.approx(100.0)
    assert rouge_l(ZH_REFS, ZH_REFS, "zh") == pytest.approx(100.0)


def test_unrelated_replies_score_near_zero():
    hyps, refs = ["Thank you!", "今天天气晴朗"], ["Reset PIN code.", "请重置您的密码"]
    assert corpus_bleu(hyps, refs) < 1
    assert corpus_chrf(hyps, refs) < 5
    assert rouge_l(hyps, refs, "auto") == 0.0


def test_reply_metrics_rounds_and_counts():
    metrics = reply_metrics(ZH_HYPS, ZH_REFS)
    assert set(metrics) == {"bleu", "chrf", "rouge_l", "distinct_1", "distinct_2", "replies"}
    assert metrics["replies"] == 3
    assert metrics["bleu"] == round(corpus_bleu(ZH_HYPS, ZH_REFS, "zh"), 2)
    assert metrics["chrf"] == round(corpus_chrf(ZH_HYPS, ZH_REFS), 2)
    assert metrics["rouge_l"] == round(rouge_l(ZH_HYPS, ZH_REFS, "zh"), 2)
    assert metrics["distinct_1"] == round(distinct_n(ZH_HYPS, 1, "zh"), 4)
    assert metrics["distinct_2"] == round(distinct_n(ZH_HYPS, 2, "zh"), 4)


@pytest.mark.parametrize("metric", [corpus_bleu, corpus_chrf, rouge_l, reply_metrics])
def test_mismatched_lengths_are_rejected(metric):
    with pytest.raises(ValueError, match="got 2 hypotheses but 1 references"):
        metric(["a b", "c d"], ["a b"])


@pytest.mark.parametrize("metric", [corpus_bleu, corpus_chrf, rouge_l, reply_metrics])
def test_empty_lists_are_rejected(metric):
    with pytest.raises(ValueError, match="got 0 hypotheses and 0 references"):
        metric([], [])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown language 'fr'; expected one of en, zh, auto"):
        rouge_l(["a"], ["a"], "fr")
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        distinct_n(["a b"], 0)
