import json
from collections import Counter

import pytest

from kefu.data.pii import PII_TYPES, Redactor, china_id_valid, luhn_valid
from tests.conftest import FIXTURES

CASES = [
    json.loads(line)
    for line in (FIXTURES / "pii_cases.jsonl").read_text(encoding="utf-8").splitlines()
]


def test_fixture_is_large_and_bilingual():
    languages = Counter(case["lang"] for case in CASES)
    positives = sum(case["text"] != case["expected"] for case in CASES)
    assert len(CASES) >= 100 and languages["en"] >= 45 and languages["zh"] >= 45
    assert positives >= 60 and len(CASES) - positives >= 50


def test_precision_and_recall_on_the_hand_written_fixture():
    """Every placeholder expected is produced (recall) and nothing else is touched (precision)."""
    expected_items = produced_items = correct_items = 0
    failures = []
    for case in CASES:
        got = Redactor()(case["text"])
        want = [
            case["expected"].count(p)
            for p in ("[EMAIL]", "[PHONE]", "[ID_NUMBER]", "[CARD]", "[IP]")
        ]
        have = [got.count(p) for p in ("[EMAIL]", "[PHONE]", "[ID_NUMBER]", "[CARD]", "[IP]")]
        expected_items += sum(want)
        produced_items += sum(have)
        correct_items += sum(min(w, h) for w, h in zip(want, have, strict=True))
        if got != case["expected"]:
            failures.append(f"{case['note']}: {case['text']!r} -> {got!r}")
    precision = correct_items / produced_items
    recall = correct_items / expected_items
    assert (precision, recall) == (1.0, 1.0), "\n".join(failures)
    assert not failures, "\n".join(failures)


def test_counts_by_type_and_allow_list():
    redact = Redactor(allow=["+1 800 555 0100", "help@acmebank.example"])
    text = "Call 1-800-555-0100 or help@acmebank.example, not me at +1 415-555-0132 / jo@x.cn"
    assert (
        redact(text) == "Call 1-800-555-0100 or help@acmebank.example, not me at [PHONE] / [EMAIL]"
    )
    assert redact.counts == {"PHONE": 1, "EMAIL": 1}


def test_only_the_chosen_types_are_redacted():
    redact = Redactor(types=["EMAIL"])
    assert redact("a@b.com 13812345678") == "[EMAIL] 13812345678"


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4539148803436467", True),
        ("4539148803436468", False),
        ("79927398713", True),
        ("6011111111111117", True),
    ],
)
def test_luhn(number, valid):
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("11010519491231002X", True),  # the check character is X
        ("110105194912310021", False),  # wrong check character
        ("440524198001010013", True),
        ("110105194902300027", False),  # 30 February
    ],
)
def test_china_id(number, valid):
    assert china_id_valid(number) is valid


def test_types_are_the_documented_placeholders():
    assert PII_TYPES == ("EMAIL", "PHONE", "ID_NUMBER", "CARD", "IP")
