"""Rule entity extractors on hand-written English and Chinese support messages."""

from __future__ import annotations

import datetime

import pytest

from kefu.errors import KefuError
from kefu.nlu.entities import EntityExtractor, chinese_number

TODAY = datetime.date(2024, 3, 13)  # a Wednesday
extract = EntityExtractor({"order_id": r"ORD-\d{4}-\d{6}", "transaction_id": r"TX-\d{8}-\d{4}"})


def found(text: str) -> list[tuple[str, str, object]]:
    return [(e.type, e.text, e.value) for e in extract(text, TODAY)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "I paid $1,250.00 yesterday with my card ending in 4821, order ORD-2024-000123",
            [
                ("amount", "$1,250.00", {"amount": 1250.0, "currency": "USD"}),
                ("date", "yesterday", "2024-03-12"),
                ("card_last4", "4821", "4821"),
                ("order_id", "ORD-2024-000123", "ORD-2024-000123"),
            ],
        ),
        (
            "transfer ref TX-20240312-0087 of USD 12,345.67 failed, and 20 euros too",
            [
                ("transaction_id", "TX-20240312-0087", "TX-20240312-0087"),
                ("amount", "USD 12,345.67", {"amount": 12345.67, "currency": "USD"}),
                ("amount", "20 euros", {"amount": 20.0, "currency": "EUR"}),
            ],
        ),
        (
            "call me at (415) 555-0132 or Jo@Example.com tomorrow at 3:30 pm",
            [
                ("phone", "(415) 555-0132", "4155550132"),
                ("email", "Jo@Example.com", "jo@example.com"),
                ("date", "tomorrow", "2024-03-14"),
                ("time", "3:30 pm", "15:30"),
            ],
        ),
        (
            "next Monday, in 3 days, 2024-03-15, March 15th 2024, 15 March or 03/15/2024?",
            [
                ("date", "next Monday", "2024-03-18"),
                ("date", "in 3 days", "2024-03-16"),
                ("date", "2024-03-15", "2024-03-15"),
                ("date", "March 15th 2024", "2024-03-15"),
                ("date", "15 March", "2024-03-15"),
                ("date", "03/15/2024", "2024-03-15"),
            ],
        ),
        (
            "我昨天转了两千块，尾号是1234的卡，下周一能到吗？",
            [
                ("date", "昨天", "2024-03-12"),
                ("amount", "两千块", {"amount": 2000.0, "currency": "CNY"}),
                ("card_last4", "1234", "1234"),
                ("date", "下周一", "2024-03-18"),
            ],
        ),
        (
            "能贷5万元吗？手机13812345678，下午3点半或者晚上八点都行",
            [
                ("amount", "5万元", {"amount": 50000.0, "currency": "CNY"}),
                ("phone", "13812345678", "13812345678"),
                ("time", "下午3点半", "15:30"),
                ("time", "晚上八点", "20:00"),
            ],
        ),
        (
            "3月15日、2024年3月15日、三天后、两天前、周五、这周日、¥3,000.50",
            [
                ("date", "3月15日", "2024-03-15"),
                ("date", "2024年3月15日", "2024-03-15"),
                ("date", "三天后", "2024-03-16"),
                ("date", "两天前", "2024-03-11"),
                ("date", "周五", "2024-03-15"),
                ("date", "这周日", "2024-03-17"),
                ("amount", "¥3,000.50", {"amount": 3000.5, "currency": "CNY"}),
            ],
        ),
    ],
)
def test_entities_in_english_and_chinese(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "my card 4539 1488 0343 6467 was charged",  # a full card number is not "last four"
        "order 20240315 shipped 5 days late",  # no separators: an id, not a date; no "in"
        "the app is on version 2.3.1",
        "订单号202403150087",
        "I waited 45 minutes",
    ],
)
def test_lookalikes_are_not_entities(text):
    assert found(text) == []


def test_spans_point_into_the_text():
    text = "Refund 20 euros by Friday please"
    for entity in extract(text, TODAY):
        assert text[entity.start : entity.end] == entity.text


def test_chinese_numerals():
    assert [chinese_number(t) for t in ("十五", "两千五百", "三万", "一百零八", "二十")] == [
        15,
        2500,
        30000,
        108,
        20,
    ]


def test_a_bad_project_pattern_is_a_clear_error():
    with pytest.raises(
        KefuError, match="entity pattern 'order_id' is not a valid regular expression"
    ):
        EntityExtractor({"order_id": "ORD-(\\d+"})
