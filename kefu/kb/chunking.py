"""Documents → sections at their headings → chunks of a bounded size that overlap.

A section keeps its title path, the chain of headings above it ("Cards > Lost card"), so a
chunk cut from the middle of a long section still says what it is about. Long sections are cut
into windows that overlap, so a sentence cut at a window's edge is whole in the next one:
English by words, Chinese by characters (it has no spaces to count words by).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from pydantic import Field, model_validator

from kefu.config import StrictModel
from kefu.data.normalise import normalise_text
from kefu.kb.text import language


class ChunkConfig(StrictModel):
    """How long sections are cut into chunks."""

    max_words: int = Field(200, ge=1, description="Longest English chunk, in words.")
    overlap_words: int = Field(40, ge=0, description="Words shared by neighbouring chunks.")
    max_chars: int = Field(300, ge=1, description="Longest Chinese chunk, in characters.")
    overlap_chars: int = Field(60, ge=0, description="Characters shared by neighbouring chunks.")

    @model_validator(mode="after")
    def _overlap_shorter(self) -> ChunkConfig:
        if self.overlap_words >= self.max_words or self.overlap_chars >= self.max_chars:
            raise ValueError("an overlap must be shorter than its chunk (overlap < max)")
        return self


@dataclass
class Section:
    """The text under one heading, with the headings above it; `line` is where it starts."""

    title_path: list[str]
    text: str
    line: int = 1


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")  # a "Setext" heading: its title is the line above
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)  # YAML metadata, not content


def _nest(path: list[tuple[int, str]], level: int, title: str) -> list[tuple[int, str]]:
    """The heading chain once a heading of `level` is met: deeper or equal headings end."""
    return [*[(lv, t) for lv, t in path if lv < level], (level, title)]


def split_markdown(text: str) -> list[Section]:
    """Sections of a Markdown document at its headings (`# Title` and underlined titles);
    code fences and YAML front matter are respected."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    front = _FRONT_MATTER.match(text)
    skipped = front.group().count("\n") if front else 0
    start, in_fence = skipped + 1, False

    def close() -> None:
        body = normalise_text("\n".join(lines))
        if body:
            sections.append(Section([t for _, t in path], body, start))

    for number, line in enumerate(text[front.end() if front else 0 :].splitlines(), skipped + 1):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        underline = (
            None if in_fence or not lines or not lines[-1].strip() else _UNDERLINE.match(line)
        )
        if heading:
            close()
            path = _nest(path, len(heading.group(1)), normalise_text(heading.group(2)))
            lines, start = [], number
        elif underline:
            title = lines.pop()
            close()
            level = 1 if underline.group(1)[0] == "=" else 2
            path = _nest(path, level, normalise_text(title))
            lines, start = [], number - 1
        else:
            lines.append(line)
    close()
    return sections


# Tags whose text is never shown to a reader.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "head", "svg"})
# Tags that end a line of text, so words on either side do not run together.
_BLOCKS = frozenset([
    "p", "div", "br", "hr", "li", "ul", "ol", "dd", "dt", "tr", "td", "th", "table", "pre",
    "section", "article", "header", "footer", "nav", "blockquote",
])  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HtmlSections(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.start = 1
        self.hidden = 0  # depth inside hidden tags
        self.heading: list[str] | None = None  # text of the heading being read

    def close_section(self) -> None:
        body = normalise_text("".join(self.parts))
        if body:
            self.sections.append(Section([t for _, t in self.path], body, self.start))
        self.parts = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _HEADINGS and not self.hidden:
            self.close_section()
            self.heading, self.start = [], self.getpos()[0]
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _HEADINGS and self.heading is not None:
            title = normalise_text(" ".join("".join(self.heading).split()))
            self.path = _nest(self.path, _HEADINGS[tag], title)
            self.heading = None
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        (self.heading if self.heading is not None else self.parts).append(data)


def split_html(text: str) -> list[Section]:
    """Sections of an HTML page at its <h1>–<h6>; scripts, styles and <head> are dropped."""
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser.close_section()
    return parser.sections


def split_plain(text: str) -> list[Section]:
    """A plain-text document is one section without headings."""
    body = normalise_text(text)
    return [Section([], body)] if body else []


def _windows(count: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` over `count` items, each sharing `overlap` with
    the one before; the last ends at `count`."""
    spans, start = [], 0
    while True:
        end = min(start + size, count)
        spans.append((start, end))
        if end == count:
            return spans
        start = end - overlap


def chunk_text(text: str, config: ChunkConfig) -> list[str]:
    """`text` cut into overlapping windows: of words for English, of characters for Chinese."""
    if language(text) == "zh":
        flat = " ".join(text.split())
        spans = _windows(len(flat), config.max_chars, config.overlap_chars)
        return [flat[start:end].strip() for start, end in spans]
    words = text.split()
    spans = _windows(len(words), config.max_words, config.overlap_words)
    return [" ".join(words[start:end]) for start, end in spans]
