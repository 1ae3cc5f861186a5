import pytest

from kefu.assistant.sentiment import anger

ANGRY = 2.0  # HandoffConfig.anger's default


@pytest.mark.parametrize(
    "text",
    [
        "This is ridiculous, I am so angry",
        "Your app is useless!!!",
        "I am fed up with waiting",
        "worst bank ever",
        "你们这是什么破银行，气死我了",
        "太差劲了！！！",
        "我受够了",
        "什么垃圾银行，给我滚",
        "I've been scammed and you did nothing",
    ],
)
def test_angry_customers_reach_the_threshold(text: str) -> None:
    assert anger(text) >= ANGRY


@pytest.mark.parametrize(
    "text",
    [
        "my card has not arrived",
        "I am not angry, just asking about fees",
        "How do I complain about a shop?",  # one mild word alone
        "我的卡还没收到",
        "我不生气，只是想问一下",
        "WHERE IS MY CARD?",
        "How do I report a scam call?",
        "我收到一条垃圾短信，说我的卡被冻结了",
        "页面滚动不了，怎么办",
    ],
)
def test_calm_customers_stay_below(text: str) -> None:
    assert anger(text) < ANGRY


def test_shouting_adds_to_an_anger_word() -> None:
    assert anger("this is terrible") == 1.5
    assert anger("this is terrible!!!") == 2.0
    assert anger("THIS IS TERRIBLE!!!") == 3.0  # three capital words count as two at most
