"""Rule-based entity extraction for support messages, in English and Chinese.

    "I paid $1,250.00 tomorrow? no, 昨天 with my card ending in 4821, order ORD-2024-000123"
      → amount {1250.0 USD} · date (relative to `today`) · card_last4 "4821" · order_id

Each extractor is a function from text to `Entity`s with character spans and a normalised
value; `EntityExtractor` runs them all and drops overlaps (the longer span wins). Order and
transaction ids differ between companies, so their patterns come from the project config.
Phone numbers and e-mails reuse the PII patterns, so what is redacted is also what is extracted.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kefu.data.pii import find_pii
from kefu.errors import KefuError


@dataclass(frozen=True)
class Entity:
    """A span of the text with its type and normalised value."""

    type: str
    text: str
    start: int
    end: int
    value: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "value": self.value,
        }


# Chinese numerals, for amounts and dates written out ("两千元", "三月十五号").
_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
_CN_NUMBER = "[零〇一二两三四五六七八九十百千万亿]+"


def chinese_number(text: str) -> int:
    """The value of a Chinese numeral such as 两千五百 (2500) or 十五 (15)."""
    total = section = digit = 0
    for char in text:
        if char in _CN_DIGITS:
            digit = _CN_DIGITS[char]
        elif char in ("万", "亿"):
            total += (section + digit) * _CN_UNITS[char]
            section = digit = 0
        else:
            section += (digit or 1) * _CN_UNITS[char]
            digit = 0
    return total + section + digit


def _number(text: str) -> float:
    text = text.replace(",", "").replace("，", "")
    return float(text) if re.fullmatch(r"[0-9.]+", text) else float(chinese_number(text))


_CURRENCY_WORDS = {
    "$": "USD",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "bucks": "USD",
    "us$": "USD",
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "£": "GBP",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
    "¥": "CNY",
    "￥": "CNY",
    "cny": "CNY",
    "rmb": "CNY",
    "元": "CNY",
    "块": "CNY",
    "块钱": "CNY",
    "人民币": "CNY",
    "yuan": "CNY",
    "hkd": "HKD",
    "港币": "HKD",
    "美元": "USD",
    "欧元": "EUR",
}
_NUMERAL = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_PREFIX = r"(?P<pre>us\$|\$|€|£|¥|￥|usd|eur|gbp|cny|rmb|hkd|人民币)\s?"
_SUFFIX = r"\s?(?P<suf>dollars?|bucks|euros?|pounds?|yuan|usd|eur|gbp|cny|rmb|hkd|块钱|元|块|美元|欧元|港币)"
_AMOUNT = re.compile(
    rf"(?<![0-9A-Za-z.]){_PREFIX}(?P<n1>{_NUMERAL})(?P<m1>万|k)?(?![0-9])"
    rf"|(?<![0-9A-Za-z.])(?P<n2>{_NUMERAL}|{_CN_NUMBER})(?P<m2>万|k)?{_SUFFIX}(?![a-z])",
    re.IGNORECASE,
)


def amounts(text: str) -> Iterator[Entity]:
    """Money with its currency: $1,250.00 · USD 50 · 20 euros · ¥3,000 · 3000元 · 两千块 · 5万元."""
    for match in _AMOUNT.finditer(text):
        number = match.group("n1") or match.group("n2")
        multiplier = (match.group("m1") or match.group("m2") or "").lower()
        currency = _CURRENCY_WORDS[(match.group("pre") or match.group("suf")).lower()]
        value = _number(number) * {"万": 10_000, "k": 1000}.get(multiplier, 1)
        yield Entity(
            "amount",
            match.group(),
            match.start(),
            match.end(),
            {"amount": value, "currency": currency},
        )


_WEEKDAYS_EN = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_WEEKDAYS_ZH = "一二三四五六日"
_MONTHS_EN = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_MONTH = "|".join([*_MONTHS_EN, *(m[:3] for m in _MONTHS_EN), "sept"])
_RELATIVE_DAYS = {
    "today": 0,
    "tonight": 0,
    "tomorrow": 1,
    "yesterday": -1,
    "day after tomorrow": 2,
    "day before yesterday": -2,
    "今天": 0,
    "今日": 0,
    "今晚": 0,
    "明天": 1,
    "明日": 1,
    "后天": 2,
    "大后天": 3,
    "昨天": -1,
    "昨日": -1,
    "前天": -2,
    "大前天": -3,
}
_DATE_PATTERNS = [
    (
        "iso",
        r"(?<![0-9])(?P<y>(?:19|20)[0-9]{2})[-/.](?P<m>[01]?[0-9])[-/.](?P<d>[0-3]?[0-9])(?![0-9])",
    ),
    (
        "zh_full",
        rf"(?P<y>(?:19|20)[0-9]{{2}})年(?P<m>[01]?[0-9]|{_CN_NUMBER})月(?P<d>[0-3]?[0-9]|{_CN_NUMBER})[日号]",
    ),
    ("zh_month_day", rf"(?P<m>[01]?[0-9]|{_CN_NUMBER})月(?P<d>[0-3]?[0-9]|{_CN_NUMBER})[日号]"),
    ("us", r"(?<![0-9/])(?P<m>[01]?[0-9])/(?P<d>[0-3]?[0-9])/(?P<y>(?:19|20)?[0-9]{2})(?![0-9/])"),
    (
        "month_day",
        rf"\b(?P<mon>{_MONTH})\.? (?P<d>[0-3]?[0-9])(?:st|nd|rd|th)?(?:,? (?P<y>(?:19|20)[0-9]{{2}}))?\b",
    ),
    (
        "day_month",
        rf"\b(?P<d>[0-3]?[0-9])(?:st|nd|rd|th)? (?:of )?(?P<mon>{_MONTH})\b(?:,? (?P<y>(?:19|20)[0-9]{{2}}))?",
    ),
    (
        "relative",
        r"\b(?:the )?(?:day after tomorrow|day before yesterday|today|tonight|tomorrow|yesterday)\b|大后天|大前天|今天|今日|今晚|明天|明日|后天|昨天|昨日|前天",
    ),
    ("in_days", r"\bin (?P<n>[0-9]+) days?\b|(?P<n2>[0-9]+|" + _CN_NUMBER + r")天(?:后|以后|之后)"),
    (
        "days_ago",
        r"\b(?P<n>[0-9]+) days? ago\b|(?P<n2>[0-9]+|" + _CN_NUMBER + r")天(?:前|以前|之前)",
    ),
    ("weekday_en", r"\b(?:(?P<rel>next|last|this) )?(?P<wd>" + "|".join(_WEEKDAYS_EN) + r")\b"),
    ("weekday_zh", r"(?P<rel>下|上|这|本)?(?:个)?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天])"),
]


def _month_number(value: str) -> int:
    if value.isdigit():
        return int(value)
    if value[0] in _CN_DIGITS or value[0] in _CN_UNITS:
        return chinese_number(value)
    return next(i for i, m in enumerate(_MONTHS_EN, 1) if m.startswith(value.lower()[:3]))


def _date_value(
    kind: str, groups: dict[str, str | None], today: datetime.date
) -> datetime.date | None:
    def field(name: str) -> str | None:
        # Each alternative's groups carry its name's suffix in the combined pattern.
        return groups.get(f"{name}_{kind}")

    if kind in ("iso", "zh_full", "zh_month_day", "us", "month_day", "day_month"):
        month = _month_number(field("m") or field("mon") or "")
        day = _month_number(field("d") or "")
        year_text = field("y")
        year = int(year_text) if year_text else today.year
        if year_text and len(year_text) == 2:
            year += 2000
        try:
            return datetime.date(year, month, day)
        except ValueError:
            return None
    if kind == "relative":
        phrase = groups[kind].lower().removeprefix("the ")
        return today + datetime.timedelta(days=_RELATIVE_DAYS[phrase])
    if kind in ("in_days", "days_ago"):
        n = field("n") or field("n2") or "0"
        days = int(n) if n.isdigit() else chinese_number(n)
        return today + datetime.timedelta(days=days if kind == "in_days" else -days)
    relation = (field("rel") or "").lower()
    weekday = field("wd").lower()  # type: ignore[union-attr]
    target = (
        _WEEKDAYS_EN.index(weekday)
        if kind == "weekday_en"
        else "一二三四五六日天".index(weekday) % 7
    )
    start_of_week = today - datetime.timedelta(days=today.weekday())
    if relation in ("next", "下"):
        return start_of_week + datetime.timedelta(days=7 + target)
    if relation in ("last", "上"):
        return start_of_week + datetime.timedelta(days=target - 7)
    if relation in ("this", "这", "本"):
        return start_of_week + datetime.timedelta(days=target)
    return today + datetime.timedelta(days=(target - today.weekday()) % 7)  # the coming one


def _prefixed_pattern() -> re.Pattern[str]:
    """The date patterns with every group renamed `<group>_<alternative>`, so they can share names."""
    parts = []
    for name, pattern in _DATE_PATTERNS:
        renamed = re.sub(r"\(\?P<(\w+)>", lambda m, n=name: f"(?P<{m.group(1)}_{n}>", pattern)
        parts.append(f"(?P<{name}>{renamed})")
    return re.compile("|".join(parts), re.IGNORECASE)


_DATES = _prefixed_pattern()


def dates(text: str, today: datetime.date | None = None) -> Iterator[Entity]:
    """Dates, absolute or relative to `today`: 2024-03-15 · 03/15/2024 · March 15 · tomorrow ·
    next Monday · in 3 days · 明天 · 下周一 · 3月15日 · 2024年3月15日 · 三天后. Value: ISO date."""
    today = today or datetime.date.today()
    for match in _DATES.finditer(text):
        kind = match.lastgroup or ""
        value = _date_value(kind, match.groupdict(), today)
        if value is not None:
            yield Entity("date", match.group(), match.start(), match.end(), value.isoformat())


_TIMES = re.compile(
    r"(?<![0-9:])(?P<h>[01]?[0-9]|2[0-3]):(?P<m>[0-5][0-9])(?:\s?(?P<ampm>am|pm|a\.m\.|p\.m\.))?(?![0-9:])"
    r"|\b(?P<h2>1[0-2]|0?[1-9])\s?(?P<ampm2>am|pm|a\.m\.|p\.m\.)"
    rf"|(?P<part>凌晨|早上|上午|中午|下午|傍晚|晚上)?(?P<h3>[0-9]{{1,2}}|{_CN_NUMBER})[点時时](?P<m3>半|[0-9]{{1,2}}分|{_CN_NUMBER}分)?",
    re.IGNORECASE,
)


def times(text: str) -> Iterator[Entity]:
    """Clock times: 14:30 · 3pm · 3:30 p.m. · 下午3点 · 晚上八点半. Value: "HH:MM"."""
    for match in _TIMES.finditer(text):
        g = match.groupdict()
        if g["h"] is not None:
            hour, minute, ampm = int(g["h"]), int(g["m"]), g["ampm"]
        elif g["h2"] is not None:
            hour, minute, ampm = int(g["h2"]), 0, g["ampm2"]
        else:
            hour = int(g["h3"]) if g["h3"].isdigit() else chinese_number(g["h3"])
            minutes = g["m3"] or ""
            minute = (
                30
                if minutes == "半"
                else (int(minutes[:-1]) if minutes[:-1].isdigit() else chinese_number(minutes[:-1]))
                if minutes
                else 0
            )
            ampm = "pm" if g["part"] in ("下午", "傍晚", "晚上") and hour < 12 else None
        if ampm and ampm.lower().startswith("p") and hour < 12:
            hour += 12
        if ampm and ampm.lower().startswith("a") and hour == 12:
            hour = 0
        if hour < 24 and minute < 60:
            yield Entity(
                "time", match.group(), match.start(), match.end(), f"{hour:02d}:{minute:02d}"
            )


_LAST_FOUR = re.compile(
    r"(?:ending (?:in|with)|ends (?:in|with)|last (?:4|four)(?: digits)?(?: (?:are|is))?:?|尾号(?:是|为)?|后四位(?:是|为)?)\s?(?P<digits>[0-9]{4})(?![0-9])",
    re.IGNORECASE,
)


def card_last_four(text: str) -> Iterator[Entity]:
    """The last four digits of a card: "card ending in 4821" · "last four 4821" · "尾号4821"."""
    for match in _LAST_FOUR.finditer(text):
        start, end = match.span("digits")
        yield Entity("card_last4", match.group("digits"), start, end, match.group("digits"))


def contacts(text: str) -> Iterator[Entity]:
    """Phone numbers and e-mail addresses, exactly as the PII redactor finds them."""
    for kind, match in find_pii(text):
        if kind in ("PHONE", "EMAIL"):
            found = match.group()
            value = found.lower() if kind == "EMAIL" else re.sub(r"[^0-9+]", "", found)
            yield Entity(kind.lower(), found, match.start(), match.end(), value)


EXTRACTORS: dict[str, Callable[..., Iterator[Entity]]] = {
    "amount": amounts,
    "date": dates,
    "time": times,
    "card_last4": card_last_four,
    "contact": contacts,
}


class EntityExtractor:
    """All rule extractors plus the project's own id patterns; overlaps resolved longest-first.

    Args:
        patterns: entity type → regular expression, e.g. {"order_id": r"ORD-\\d{4}-\\d{6}"}.
    """

    def __init__(self, patterns: dict[str, str] | None = None) -> None:
        self.patterns: dict[str, re.Pattern[str]] = {}
        for name, pattern in (patterns or {}).items():
            try:
                self.patterns[name] = re.compile(pattern)
            except re.error as err:
                raise KefuError(
                    f"entity pattern {name!r} is not a valid regular expression: {err}"
                ) from None

    def __call__(self, text: str, today: datetime.date | None = None) -> list[Entity]:
        found = [*dates(text, today)]
        for name, extract in EXTRACTORS.items():
            if name != "date":
                found += extract(text)
        for name, pattern in self.patterns.items():
            found += [
                Entity(name, m.group(), m.start(), m.end(), m.group())
                for m in pattern.finditer(text)
            ]
        # Project patterns first at equal length: a company's order id beats a generic number.
        found.sort(key=lambda e: (-(e.end - e.start), e.type not in self.patterns, e.start))
        kept: list[Entity] = []
        for entity in found:
            if all(entity.end <= k.start or entity.start >= k.end for k in kept):
                kept.append(entity)
        return sorted(kept, key=lambda e: e.start)
