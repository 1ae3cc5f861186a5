"""Language-aware tokens for BM25: jieba words for Chinese, lower-cased words for English.

Mixed text ("我的Visa卡被锁了") gets both: jieba keeps Latin runs whole, and they are lower-cased
like English words. Punctuation and white space are not tokens. Whether a text is Chinese decides
which side of the hybrid search applies (`language`), so it is worked out here too.

Chinese is cut in jieba's search mode, which also yields the words inside a long word
(全聚德烤鸭店 → 全聚德, 烤鸭, 烤鸭店, 全聚德烤鸭店), so a question that names a shop
briefly still meets the record that names it in full. Chinese particles and pronouns (的, 吗, 我)
are dropped: in short texts such as record names their idf would outweigh the words that matter.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from kefu.data.normalise import count_scripts, language_of

# A token is a run of letters or digits; for CJK text jieba has already cut the runs into words.
_WORD = re.compile(r"\w+")
_HAS_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CHINESE_STOP_WORDS = frozenset([
    "的", "地", "得", "了", "着", "过", "吗", "呢", "吧", "啊", "呀", "哦", "嘛", "么",
    "是", "在", "和", "与", "及", "或", "也", "都", "就", "还", "又", "个", "请", "请问", "一下",
    "我", "你", "您", "他", "她", "它", "我们", "你们", "他们", "这", "那", "这个", "那个",
])  # fmt: skip


@functools.cache
def _jieba() -> Any:  # jieba ships no types
    """jieba with its dictionary loaded once, without the lines it prints to stderr on load."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokens(text: str) -> list[str]:
    """The BM25 terms of `text`, repeats kept (they are term frequencies)."""
    text = text.lower()
    if not _HAS_CJK.search(text):
        return _WORD.findall(text)
    words = _jieba().lcut_for_search(text)
    return [w for w in words if w not in CHINESE_STOP_WORDS and _WORD.fullmatch(w)]


def language(text: str) -> str:
    """`zh` when the text is mostly Chinese characters, `en` when mostly Latin, else `und`."""
    return language_of(*count_scripts(text))
