"""Language-aware tokens for BM25: jieba words for Chinese, lower-cased words for English.

Mixed text ("我的Visa卡被锁了") gets both: jieba keeps Latin runs whole, and they are lower-cased
like English words. Punctuation and white space are not tokens. Whether a text is Chinese decides
which side of the hybrid search applies (`language`), so it is worked out here too.
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


@functools.cache
def _jieba() -> Any:  # jieba ships no types
    """jieba with its dictionary loaded once, without the lines it prints to stderr on load."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tokens(text: str) -> list[str]:
    """The BM25 terms of `text`, in order, repeats kept (they are term frequencies)."""
    text = text.lower()
    if not _HAS_CJK.search(text):
        return _WORD.findall(text)
    words = _jieba().lcut(text)
    return [word for word in words if _WORD.fullmatch(word)]


def language(text: str) -> str:
    """`zh` when the text is mostly Chinese characters, `en` when mostly Latin, else `und`."""
    return language_of(*count_scripts(text))
