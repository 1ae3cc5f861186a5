"""Personal data found in support logs, replaced by typed placeholders before anything is stored.

Regular expressions find candidates; numbers are then validated the way their
issuers define them (Luhn for bank cards, the ISO 7064 MOD 11-2 check character and a real birth
date for Chinese resident IDs), so order numbers, tracking codes, dates and amounts that merely
look like personal data survive. A number-shaped candidate that fails validation is left whole
rather than searched again for a shorter match inside it: a 16-digit order number is not a phone
number either.

Every pattern refuses to start or end next to an ASCII letter or digit, so codes such as
"SF1400234567890" are not cut apart; Chinese characters around a match are fine
("手机13812345678，谢谢").
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Iterable, Iterator

PLACEHOLDERS: dict[str, str] = {
    "EMAIL": "[EMAIL]",
    "PHONE": "[PHONE]",
    "ID_NUMBER": "[ID_NUMBER]",
    "CARD": "[CARD]",
    "IP": "[IP]",
}
PII_TYPES = tuple(PLACEHOLDERS)
PLACEHOLDER_PATTERN = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))

_EDGE_BEFORE = r"(?<![0-9A-Za-z])"
_EDGE_AFTER = r"(?![0-9A-Za-z])"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

# Order matters: at one position the first pattern that matches wins.
_PATTERNS = {
    "EMAIL": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "ID_NUMBER": _EDGE_BEFORE + r"[0-9]{17}[0-9Xx]" + _EDGE_AFTER,
    "CARD": _EDGE_BEFORE
    + r"(?:[2-6][0-9]{12,18}"
    + r"|[2-6][0-9]{3}(?:[ -][0-9]{4}){3}(?:[ -][0-9]{1,3})?"
    + r"|[2-6][0-9]{3}(?:[ -][0-9]{4}){2}[ -][0-9]{1,4}"
    + r"|3[47][0-9]{2}[ -][0-9]{6}[ -][0-9]{5})"
    + _EDGE_AFTER,
    "PHONE_INTL": r"(?<![0-9A-Za-z+])\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}"
    + _EDGE_AFTER,
    "PHONE_CN_MOBILE": _EDGE_BEFORE
    + r"(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[0-9]{8}|[ -][0-9]{4}[ -][0-9]{4})"
    + _EDGE_AFTER,
    "PHONE_CN_LANDLINE": _EDGE_BEFORE + r"0[0-9]{2,3}[ -][0-9]{7,8}" + _EDGE_AFTER,
    "PHONE_NA": _EDGE_BEFORE
    + r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}"
    + _EDGE_AFTER,
    "IP": r"(?<![0-9A-Za-z.])" + rf"{_OCTET}(?:\.{_OCTET}){{3}}" + r"(?!\.?[0-9])(?![A-Za-z])",
}
_EMAILS = re.compile(f"(?P<EMAIL>{_PATTERNS['EMAIL']})")
_NUMBERS = re.compile("|".join(f"(?P<{n}>{p})" for n, p in _PATTERNS.items() if n != "EMAIL"))
_TYPE_OF_GROUP = {
    name: name.split("_")[0] if name.startswith("PHONE") else name for name in _PATTERNS
}
# Every number pattern above spans at least 7 characters of digits and separators.
_MAY_HOLD_NUMBER = re.compile(r"[0-9][0-9 .()+-]{5,}[0-9]").search
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_valid(digits: str) -> bool:
    """The bank-card checksum: doubling every second digit from the right sums to 0 mod 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def china_id_valid(number: str) -> bool:
    """An 18-character Chinese resident ID: a real birth date and the MOD 11-2 check character."""
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not 1900 <= born.year <= 2099:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def pii_type(match: re.Match[str]) -> str | None:
    """The type of personal data a candidate match is, once validated; None if it is not."""
    found = match.group()
    kind = _TYPE_OF_GROUP[match.lastgroup or ""]
    if kind == "ID_NUMBER" and not china_id_valid(found):
        kind = "CARD"  # 18 digits with a wrong ID check character may still be a card
    if kind == "CARD":
        digits = found.replace(" ", "").replace("-", "")
        if not (digits.isdigit() and digits[0] in "23456" and luhn_valid(digits)):
            return None
    if match.lastgroup == "PHONE_INTL" and not 8 <= sum(c.isdigit() for c in found) <= 15:
        return None
    return kind


def find_pii(text: str) -> Iterator[tuple[str, re.Match[str]]]:
    """(type, match) for each piece of personal data in `text`, as the Redactor sees them."""
    for pattern in (_EMAILS, _NUMBERS):
        for match in pattern.finditer(text):
            kind = pii_type(match)
            if kind is not None:
                yield kind, match


def _alnum_key(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


class Redactor:
    """Replaces personal data in text and counts what it replaced, by type.

    Args:
        types: which kinds to redact (default: all of PII_TYPES).
        allow: strings never redacted, such as the company's own hotline; compared on their
            letters and digits, so "+1 800 555 0100" also allows "1-800-555-0100".
    """

    def __init__(self, types: Iterable[str] = PII_TYPES, allow: Iterable[str] = ()) -> None:
        self.types = frozenset(types)
        self._allowed = [key for key in map(_alnum_key, allow) if key]
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        # Two passes, each only when it can match: most turns hold no "@" and no long number.
        if "@" in text:
            text = _EMAILS.sub(self._replace, text)
        if _MAY_HOLD_NUMBER(text):
            text = _NUMBERS.sub(self._replace, text)
        return text

    def _replace(self, match: re.Match[str]) -> str:
        kind = pii_type(match)
        if kind is None or kind not in self.types or self._is_allowed(match.group()):
            return match.group()
        self.counts[kind] += 1
        return PLACEHOLDERS[kind]

    def _is_allowed(self, found: str) -> bool:
        key = _alnum_key(found)
        return any(
            key.endswith(a) or a.endswith(key) for a in self._allowed if min(len(a), len(key)) >= 7
        )
