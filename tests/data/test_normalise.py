import pytest

from kefu.data.normalise import count_scripts, language_of, normalise_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ＡＴＭ机吞了我的卡１２３", "ATM机吞了我的卡123"),  # full-width ASCII to half-width
        ("你好，请问", "你好,请问"),  # NFKC folds the full-width comma too
        ("句号。保留", "句号。保留"),  # 。 has no half-width form and stays
        ("a\u3000\u00a0 b\t\tc", "a b c"),  # ideographic space, NBSP, tabs collapse
        ("zero\u200bwidth\ufeff marks\x07", "zerowidth marks"),  # invisible marks and controls go
        ("  line one  \r\n\r\n\r\n\r\n  line two ", "line one\n\nline two"),
        ("thanks 🙏😊 👍🏽", "thanks 🙏😊 👍🏽"),  # emoji and skin tones are kept
        ("family 👨\u200d👩\u200d👧", "family 👨\u200d👩\u200d👧"),  # ZWJ sequences too
        ("Keep Case", "Keep Case"),
    ],
)
def test_normalise(raw, clean):
    assert normalise_text(raw) == clean


def test_lowercase_is_opt_in():
    assert normalise_text("My PIN", lowercase=True) == "my pin"


def test_scripts_and_language():
    assert count_scripts("我的iPhone坏了") == (4, 6)
    assert language_of(*count_scripts("我的iPhone坏了")) == "zh"
    assert language_of(*count_scripts("Where is my card?")) == "en"
    assert language_of(*count_scripts("123 ?!")) == "und"


def test_text_shown_to_people_keeps_its_full_width_punctuation() -> None:
    text = "请冻结卡片（卡片 → 冻结），或拨打ＡＴＭ１２３热线：400？"
    assert normalise_text(text) == "请冻结卡片(卡片 → 冻结),或拨打ATM123热线:400?"
    # Full-width letters and digits still fold; the punctuation stays as the writer typed it.
    assert (
        normalise_text(text, keep_punctuation=True)
        == "请冻结卡片（卡片 → 冻结），或拨打ATM123热线：400？"
    )
