"""Sections at headings with their title paths, and windows that overlap by exactly the overlap."""

import pytest
from pydantic import ValidationError

from kefu.kb.chunking import ChunkConfig, Section, chunk_text, split_html, split_markdown

MARKDOWN = """Welcome to Acme help.

# Cards
Cards are free.

```
# a comment in code, not a heading
```

## Lost card
Freeze it in the app.

### Abroad
Call us.

## Fees
None.

# Accounts ##
Open one online.
"""


def test_markdown_splits_at_headings_and_keeps_the_heading_chain():
    assert split_markdown(MARKDOWN) == [
        Section([], "Welcome to Acme help.", 1),
        Section(["Cards"], "Cards are free.\n\n```\n# a comment in code, not a heading\n```", 3),
        Section(["Cards", "Lost card"], "Freeze it in the app.", 10),
        Section(["Cards", "Lost card", "Abroad"], "Call us.", 13),
        Section(["Cards", "Fees"], "None.", 16),
        Section(["Accounts"], "Open one online.", 19),
    ]


def test_underlined_titles_are_headings_and_front_matter_is_not_content():
    text = (
        "---\ntitle: Help\n---\nIntro.\n\nCards\n=====\nFree.\n\nLost card\n---------\nFreeze it.\n"
    )
    assert split_markdown(text) == [
        Section([], "Intro.", 4),
        Section(["Cards"], "Free.", 6),
        Section(["Cards", "Lost card"], "Freeze it.", 10),
    ]


HTML = """<html><head><title>Help</title><style>h1 { color: red }</style></head>
<body><nav>Home</nav>
<h1>Cards</h1><p>Cards are <b>free</b>.</p>
<script>var h1 = "<h1>not a heading</h1>";</script>
<h2>Lost&nbsp;<em>card</em></h2><ul><li>Freeze it</li><li>Call us</li></ul>
<h1>Fees</h1><div>None.</div>
</body></html>"""


def test_html_is_stripped_by_a_parser_and_split_at_h1_to_h6():
    assert split_html(HTML) == [
        Section([], "Home", 1),
        Section(["Cards"], "Cards are free.", 3),
        Section(["Cards", "Lost card"], "Freeze it\n\nCall us", 5),
        Section(["Fees"], "None.", 6),
    ]


def test_english_is_chunked_by_words_with_the_overlap_repeated():
    config = ChunkConfig(max_words=4, overlap_words=1)
    text = "one two three four five six seven eight nine ten"
    assert chunk_text(text, config) == [
        "one two three four",
        "four five six seven",
        "seven eight nine ten",
    ]
    assert chunk_text("one two", config) == ["one two"]


def test_chinese_is_chunked_by_characters():
    config = ChunkConfig(max_chars=6, overlap_chars=2)
    assert chunk_text("请立即冻结卡片或拨打热线", config) == [
        "请立即冻结卡",
        "结卡片或拨打",
        "拨打热线",
    ]


def test_an_overlap_as_long_as_the_chunk_is_refused():
    with pytest.raises(ValidationError, match="overlap must be shorter"):
        ChunkConfig(max_words=10, overlap_words=10)
