"""How angry a customer sounds, from a lexicon, in English and Chinese.

A support assistant needs one decision from this — hand the conversation to a person or not — so
a transparent lexicon does: each anger word or phrase carries a weight, a negation just before
an English word cancels it ("not angry"), and shouting adds to the score (!!!, ？？, WORDS IN
CAPITALS). The score is the sum; `HandoffConfig.anger` is the hand-off threshold (2.0 by
default: one strong word, or a milder one said loudly).
"""

from __future__ import annotations

import re

# Weight 2: enough alone. Weight 1: needs company (another word or shouting). Words that are
# also everyday banking words stay out or come in phrases: "scam" (report a scam call),
# 垃圾 (垃圾短信, spam texts), 滚 (页面滚动, scrolling).
ENGLISH: dict[str, float] = {
    "angry": 2, "furious": 2, "outraged": 2, "livid": 2, "disgusted": 2, "disgusting": 2,
    "unacceptable": 2, "ridiculous": 2, "pathetic": 2, "useless": 2, "incompetent": 2,
    "scammed": 2, "a scam": 1, "fraudsters": 2, "worst": 2, "terrible": 1.5, "awful": 1.5,
    "horrible": 1.5, "rubbish": 1.5, "joke": 1, "annoyed": 1, "annoying": 1, "frustrated": 1,
    "frustrating": 1, "fed up": 2, "sick of": 2, "had enough": 2, "waste of time": 2,
    "complaint": 1, "complain": 1, "lawyer": 1.5, "sue": 1.5, "close my account": 1,
    "hate": 2, "damn": 1.5, "wtf": 2, "stupid": 2, "idiot": 2, "idiots": 2, "crap": 2,
    "shit": 2, "fuck": 2, "fucking": 2, "bloody": 1,
}  # fmt: skip
CHINESE: dict[str, float] = {
    "生气": 2, "气死": 2, "愤怒": 2, "恼火": 2, "火大": 2, "骗子": 2, "骗人": 2,
    "垃圾银行": 2, "真垃圾": 2, "太垃圾": 2, "垃圾服务": 2, "什么垃圾": 2,
    "太差": 2, "差劲": 2, "无语": 1.5, "离谱": 1.5, "过分": 1.5, "不像话": 2, "岂有此理": 2,
    "受够": 2, "投诉": 1, "举报": 1.5, "坑人": 2, "忽悠": 1.5, "什么破": 2, "破银行": 2,
    "烦死": 2, "混蛋": 2, "滚蛋": 2, "给我滚": 2, "有病": 2, "浪费时间": 2, "搞什么": 1.5, "失望": 1,
    "不满": 1, "太慢": 1, "没用": 1.5,
}  # fmt: skip
NEGATIONS = {"not", "no", "never", "isn't", "wasn't", "aren't", "don't", "didn't", "nothing"}
CHINESE_NEGATIONS = ("不", "没", "别")

_ENGLISH_PATTERN = re.compile(
    r"(?<![a-z])("
    + "|".join(sorted(map(re.escape, ENGLISH), key=len, reverse=True))
    + r")(?![a-z])"
)
_SHOUT = re.compile(r"[!！?？]{3,}|[!！]{2,}")
_CAPITAL_WORD = re.compile(r"\b[A-Z]{3,}\b")


def anger(text: str) -> float:
    """The anger score of one message: the weights of its anger terms, plus shouting."""
    lowered = text.lower()
    score = 0.0
    for match in _ENGLISH_PATTERN.finditer(lowered):
        before = lowered[: match.start()].split()[-2:]
        if not NEGATIONS.intersection(before):
            score += ENGLISH[match.group(1)]
    for term, weight in CHINESE.items():
        for found in re.finditer(re.escape(term), text):
            # 不生气 / 没生气: negated; but 不像话 and 不满 carry their own negation.
            if (
                term[0] in CHINESE_NEGATIONS
                or text[max(0, found.start() - 1)] not in CHINESE_NEGATIONS
            ):
                score += weight
    if score > 0:
        score += 0.5 * len(_SHOUT.findall(text)) + 0.5 * min(2, len(_CAPITAL_WORD.findall(text)))
    elif _SHOUT.search(text) and len(_CAPITAL_WORD.findall(text)) >= 2:
        score += 1.0  # "WHERE IS MY MONEY???" — shouting without an anger word
    return score
