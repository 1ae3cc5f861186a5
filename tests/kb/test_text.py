"""BM25 tokens: English words lower-cased, Chinese cut by jieba, mixed text both."""

from kefu.kb.text import language, tokens


def test_english_is_lower_cased_words_without_punctuation():
    assert tokens("How do I FREEZE my card? It's lost!") == [
        "how", "do", "i", "freeze", "my", "card", "it", "s", "lost",
    ]  # fmt: skip


def test_chinese_is_cut_into_words_and_the_words_inside_them_without_particles():
    assert tokens("银行卡丢了怎么办？") == ["银行", "银行卡", "丢", "怎么", "怎么办"]
    assert tokens("全聚德烤鸭店") == ["烤鸭", "全聚德", "烤鸭店", "全聚德烤鸭店"]


def test_mixed_text_keeps_latin_words_whole_and_lower_cased():
    assert tokens("我的Visa卡被锁了") == ["visa", "卡", "被", "锁"]


def test_language_follows_the_script_most_of_the_text_is_in():
    assert language("补卡要钱吗") == "zh"
    assert language("How much is a new card?") == "en"
    assert language("Acme App 怎么登录") == "zh"  # 4 Chinese characters (×3) outweigh 7 letters
    assert language("400-820-8820") == "und"
