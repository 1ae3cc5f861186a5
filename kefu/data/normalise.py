"""Text normalisation applied to every field kefu ingests.

NFKC folds full-width ASCII (ＡＴＭ１２３) to half-width and compatibility forms to their plain
letters, so the same words tokenize the same way whatever the customer's keyboard produced.
Emoji and Chinese punctuation such as 。 survive; control characters and invisible marks do not.
"""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls except tab and newline, DEL, and invisible marks that only break matching.
# The zero-width joiner (U+200D) stays: it holds multi-part emoji together.
_INVISIBLE = dict.fromkeys(
    [
        *range(0x00, 0x09),
        0x0B,
        0x0C,
        *range(0x0E, 0x20),
        *range(0x7F, 0xA0),
        0x200B,
        0x200E,
        0x200F,
        0x2060,
        0xFEFF,
    ]
)
# Runs of two or more spaces, or any single space that is not a plain one (tab, NBSP, U+3000):
# plain single spaces, the common case, are not touched, which keeps this fast.
_SPACES = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


# Full-width punctuation (，：？！（）…): NFKC turns it into ASCII, which is right for matching
# and wrong for a Chinese answer shown to a customer.
_FULLWIDTH_PUNCTUATION = re.compile(r"([\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65])")


def normalise_text(text: str, lowercase: bool = False, keep_punctuation: bool = False) -> str:
    """NFKC, controls removed, runs of spaces collapsed, at most one blank line, trimmed.

    Args:
        keep_punctuation: leave full-width punctuation as it is (text shown to people).
    """
    if not unicodedata.is_normalized("NFKC", text):
        if keep_punctuation:
            parts = _FULLWIDTH_PUNCTUATION.split(text)  # odd indexes: the punctuation
            text = "".join(
                part if n % 2 else unicodedata.normalize("NFKC", part)
                for n, part in enumerate(parts)
            )
        else:
            text = unicodedata.normalize("NFKC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # The checks in front skip work that cannot change the text, which is most of the time.
    if not text.isprintable():  # false for any control or format character (and newlines)
        text = text.translate(_INVISIBLE)
    if not text.isascii() or "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _BLANK_LINES.sub("\n\n", _SPACE_AROUND_NEWLINE.sub("\n", text))
    text = text.strip()
    return text.lower() if lowercase else text


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NOT_LATIN_BYTES = bytes(b for b in range(256) if not chr(b).isascii() or not chr(b).isalpha())


def count_scripts(text: str) -> tuple[int, int]:
    """(Chinese characters, Latin letters) in `text`: what the language shares are made of."""
    # In UTF-8 every byte of a non-ASCII character is >= 0x80, so ASCII letter bytes are letters.
    latin = len(text.encode().translate(None, _NOT_LATIN_BYTES))
    if text.isascii():
        return 0, latin
    return len(_CJK.findall(text)), latin


def language_of(chinese: int, latin: int) -> str:
    """`zh`, `en` or `und`: one Chinese character carries about as much as three Latin letters."""
    if chinese == 0 and latin == 0:
        return "und"
    return "zh" if chinese * 3 >= latin else "en"
