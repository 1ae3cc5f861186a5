"""The canonical records every reader produces and every later stage consumes.

A data folder written by `kefu data ingest` holds one kind of record, one JSON object a line:

- conversations: {"id", "language", "messages": [{"role", "content"}, ...]}
  with roles `system`, `user`, `assistant`; no empty turns; consecutive turns of one role merged.
- intents:       {"id", "language", "text", "label"}
- faq:           {"id", "language", "question", "answer", "category", "url", "paraphrases"}
- spans:         {"id", "language", "text", "entities": [{"type", "start", "end", "text"}],
                  "intents": [...]}  character offsets into `text`, end exclusive

Records that cannot be read become `Reject`s, written to `rejects.jsonl` with where and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

SPLITS = ("train", "valid", "test")


@dataclass(slots=True)
class Reject:
    """Input that could not be used: where it was, why, and the raw text."""

    file: str
    line: int | None
    code: str  # short machine-readable reason, counted in stats.json
    reason: str  # what was wrong and what to do, for a person
    raw: Any = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_json(self) -> dict[str, Any]:
        raw = self.raw if isinstance(self.raw, str) else json.dumps(self.raw, ensure_ascii=False)
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "reason": self.reason,
            "raw": raw,
        }


@dataclass(slots=True)
class Turn:
    role: str
    content: str


@dataclass(slots=True)
class Conversation:
    """A support conversation. `file`/`line` point at where it starts in the input."""

    kind: ClassVar[str] = "conversations"
    id: str
    turns: list[Turn]
    file: str
    line: int | None
    raw: Any = None
    split: str | None = None
    dropped_turns: int = field(default=0)
    merged_turns: int = field(default=0)

    def clean(self, fix: Callable[[str], str]) -> None:
        """Apply `fix` to every turn, drop turns left empty, merge consecutive same-role turns."""
        kept: list[Turn] = []
        for turn in self.turns:
            content = fix(turn.content)
            if not content:
                self.dropped_turns += 1
            elif kept and kept[-1].role == turn.role:
                kept[-1].content += "\n" + content
                self.merged_turns += 1
            else:
                kept.append(Turn(turn.role, content))
        self.turns = kept

    def problem(self) -> tuple[str, str] | None:
        roles = {turn.role for turn in self.turns}
        if "user" not in roles or "assistant" not in roles:
            return (
                "no_exchange",
                "conversation has no user turn or no assistant turn once empty turns are dropped",
            )
        return None

    def texts(self) -> Iterator[str]:
        for turn in self.turns:
            yield turn.content

    def dedupe_key(self) -> tuple:
        return tuple((turn.role, turn.content) for turn in self.turns)

    def to_json(self, language: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": language,
            "messages": [{"role": t.role, "content": t.content} for t in self.turns],
        }


@dataclass(slots=True)
class IntentExample:
    """A customer utterance labelled with its intent."""

    kind: ClassVar[str] = "intents"
    id: str
    text: str
    label: str
    file: str
    line: int | None
    raw: Any = None
    split: str | None = None

    def clean(self, fix: Callable[[str], str]) -> None:
        self.text = fix(self.text)
        self.label = self.label.strip()

    def problem(self) -> tuple[str, str] | None:
        if not self.text:
            return "empty", "text is empty"
        if not self.label:
            return "empty", "label is empty"
        return None

    def texts(self) -> Iterator[str]:
        yield self.text

    def dedupe_key(self) -> tuple:
        return (self.text,)

    def to_json(self, language: str) -> dict[str, Any]:
        return {"id": self.id, "language": language, "text": self.text, "label": self.label}


@dataclass(slots=True)
class FaqEntry:
    """A question with its official answer, and the other ways customers ask it."""

    kind: ClassVar[str] = "faq"
    id: str
    question: str
    answer: str
    category: str
    url: str
    paraphrases: list[str]
    file: str
    line: int | None
    raw: Any = None
    split: str | None = None

    @property
    def label(self) -> str:
        return self.category

    def clean(self, fix: Callable[[str], str]) -> None:
        self.question = fix(self.question)
        self.answer = fix(self.answer)
        self.category = self.category.strip()
        self.url = self.url.strip()
        self.paraphrases = [p for p in map(fix, self.paraphrases) if p]

    def problem(self) -> tuple[str, str] | None:
        if not self.question:
            return "empty", "question is empty"
        if not self.answer:
            return "empty", "answer is empty"
        return None

    def texts(self) -> Iterator[str]:
        yield self.question
        yield self.answer
        yield from self.paraphrases

    def dedupe_key(self) -> tuple:
        return (self.question,)

    def to_json(self, language: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": language,
            "question": self.question,
            "answer": self.answer,
            "category": self.category,
            "url": self.url,
            "paraphrases": self.paraphrases,
        }


@dataclass(slots=True)
class Span:
    type: str
    start: int
    end: int
    text: str


@dataclass(slots=True)
class SpanExample:
    """An utterance with entity spans (character offsets) and the intents that apply (any number).

    Cleaning must keep the offsets true: the text is cleaned whole, then each span's cleaned text
    is found again at the same occurrence; a span that cleaning changed beyond finding is a
    problem (the record is rejected with the span named), never a silently shifted offset.
    """

    kind: ClassVar[str] = "spans"
    id: str
    text: str
    entities: list[Span]
    intents: list[str]
    file: str
    line: int | None
    raw: Any = None
    split: str | None = None
    lost: str | None = None

    @property
    def label(self) -> str:  # for the stratified split and label conflicts
        return "+".join(sorted(self.intents))

    def clean(self, fix: Callable[[str], str]) -> None:
        cleaned = fix(self.text)
        if cleaned != self.text:
            moved = []
            for span in self.entities:
                before = self.text[: span.start].count(span.text)  # which occurrence it is
                found = _nth(cleaned, fix(span.text), before)
                if found is None:
                    self.lost = f"span {span.type} {span.text!r} at {span.start}"
                    return
                moved.append(Span(span.type, found, found + len(fix(span.text)), fix(span.text)))
            self.entities = moved
        self.text = cleaned
        self.intents = [i.strip() for i in self.intents if i.strip()]

    def problem(self) -> tuple[str, str] | None:
        if not self.text:
            return "empty", "text is empty"
        if self.lost:
            return (
                "span_lost",
                f"cleaning changed the text under {self.lost}; fix the text or turn the "
                "cleaning step off (e.g. redact: {enabled: false})",
            )
        return None

    def texts(self) -> Iterator[str]:
        yield self.text

    def dedupe_key(self) -> tuple:
        return (self.text,)

    def to_json(self, language: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": language,
            "text": self.text,
            "entities": [
                {"type": e.type, "start": e.start, "end": e.end, "text": e.text}
                for e in self.entities
            ],
            "intents": self.intents,
        }


def _nth(text: str, piece: str, n: int) -> int | None:
    """Where the n-th (from 0) occurrence of `piece` starts in `text`, if there is one."""
    start = -1
    for _ in range(n + 1):
        start = text.find(piece, start + 1)
        if start < 0 or not piece:
            return None
    return start


Record = Conversation | IntentExample | FaqEntry | SpanExample
