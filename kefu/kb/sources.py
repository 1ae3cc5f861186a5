"""Knowledge sources → chunks: FAQ files, Markdown/HTML/plain-text documents, JSON record bases.

`LOADERS` is the registry by format name; `FORMAT_OF_SUFFIX` picks one from a file's extension.
Like the data readers, loaders never raise on bad input: what cannot be used becomes a `Reject`
with the source, the line where there is one, and what to do; the rest of the source (and every
other source) is still indexed.

Every chunk names its source by the path it was given as, relative (a file by its name, a file
found in a folder by the folder's name and its path inside), so a knowledge base can move.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kefu.data.normalise import normalise_text
from kefu.data.readers import ReadOptions, SourceFile, read_faq
from kefu.data.records import Reject
from kefu.kb.chunking import (
    ChunkConfig,
    Section,
    chunk_text,
    split_html,
    split_markdown,
    split_plain,
)


@dataclass
class Chunk:
    """One retrievable piece of knowledge and where it came from.

    For an FAQ entry `title_path` is [question] and `text` is the answer; queries are matched
    against the question and each paraphrase (`match_texts`). For documents and records they are
    matched against the title path and the text (a record: its name, and its passage).
    """

    id: str
    source: str  # the source's relative name, e.g. "faq_en.csv" or "docs/cards.md"
    kind: str  # "faq", "document" or "record"
    title_path: list[str]
    text: str
    line: int | None = None  # where in the source it starts, when the source has lines
    url: str = ""
    category: str = ""
    question: str = ""
    paraphrases: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return " > ".join(self.title_path) or self.source

    def match_texts(self) -> list[str]:
        """The texts a query is matched against; the chunk scores as the best of them.

        A record's name is a text of its own: a question that names a hotel must find that
        hotel first, not the many records that list it among their neighbours.
        """
        if self.kind == "faq":
            return [self.question, *self.paraphrases]
        if self.kind == "record":
            return [*self.title_path, self.text]
        return ["\n".join([*self.title_path, self.text])]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Chunk:
        return cls(**obj)


Loader = Callable[[SourceFile, ChunkConfig], Iterator[Chunk | Reject]]


def load_faq(src: SourceFile, chunking: ChunkConfig) -> Iterator[Chunk | Reject]:
    """FAQ CSV/JSONL (kefu's `faq` format): one chunk per entry, its id the entry's id."""
    options = ReadOptions(columns={}, roles={}, encoding=src.encoding)
    for item in read_faq(src, options):
        if isinstance(item, Reject):
            yield item
            continue
        # The title and answer are shown to customers: as written, punctuation included.
        title = normalise_text(item.question, keep_punctuation=True)
        answer = normalise_text(item.answer, keep_punctuation=True)
        item.clean(normalise_text)
        problem = item.problem()
        if problem:
            yield Reject(src.name, item.line, *problem, item.raw)
            continue
        yield Chunk(
            id=item.id,
            source=src.name,
            kind="faq",
            title_path=[title],
            text=answer,
            line=item.line,
            url=item.url,
            category=item.category,
            question=item.question,
            paraphrases=item.paraphrases,
        )


def _document_loader(split: Callable[[str], list[Section]], what: str) -> Loader:
    """A loader of documents that `split` cuts into sections; long sections are chunked."""

    def load(src: SourceFile, chunking: ChunkConfig) -> Iterator[Chunk | Reject]:
        text = src.text(src.read_bytes(), whole=f"the file is one {what} document")
        if isinstance(text, Reject):
            yield text
            return
        sections = split(text)
        if not sections:
            yield src.empty_reject()
        number = 0
        for section in sections:
            for piece in chunk_text(section.text, chunking):
                number += 1
                yield Chunk(f"{src.name}#{number}", src.name, "document", section.title_path,
                            piece, section.line)  # fmt: skip

    load.__doc__ = f"{what} documents, split at headings and chunked with overlap."
    return load


# Fields that usually name a record, when a record base gives no name of its own.
NAME_FIELDS = ("name", "名称", "title", "标题", "id")


def _records(data: Any) -> Iterator[tuple[str | None, Any]]:
    """(name, record) pairs of a record base: a list of records, a list of [name, record]
    pairs (as CrossWOZ's databases are) or an object of name → record."""
    if isinstance(data, dict):
        yield from data.items()
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
                yield item[0], item[1]
            else:
                yield None, item


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def passage(record: dict[str, Any]) -> str:
    """A record as one line of "field: value" pairs; empty fields are left out."""
    return "; ".join(
        f"{key}: {_value(value)}" for key, value in record.items() if value not in (None, "", [])
    )


def load_records(src: SourceFile, chunking: ChunkConfig) -> Iterator[Chunk | Reject]:
    """A JSON record base: one passage per record, with its field names."""
    text = src.text(src.read_bytes())
    if isinstance(text, Reject):
        yield text
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        reason = f"bad JSON: {err.msg} at column {err.colno}; fix the file, it is skipped"
        yield Reject(src.name, err.lineno, "bad_json", reason, text[err.pos : err.pos + 200])
        return
    if not isinstance(data, dict | list):
        reason = "expected a list of records or an object of name → record"
        yield Reject(src.name, 1, "bad_json", reason, text[:200])
        return
    seen: set[str] = set()
    for index, (key, record) in enumerate(_records(data)):
        if not isinstance(record, dict):
            where = f"record {key!r}" if key is not None else f"item {index + 1}"
            reason = f"{where} is a {type(record).__name__}, not an object of fields; it is skipped"
            yield Reject(src.name, None, "bad_record", reason, record)
            continue
        name = key or next((str(record[f]) for f in NAME_FIELDS if record.get(f)), None)
        name = name or f"record {index + 1}"
        chunk_id = f"{src.name}#{name}"
        if chunk_id in seen:  # two records of one name stay apart
            chunk_id = f"{chunk_id}~{index + 1}"
        seen.add(chunk_id)
        body = passage(record)
        if body:
            yield Chunk(chunk_id, src.name, "record", [name], body)
    if not seen:
        yield src.empty_reject()


def _looks_like_faq(data: bytes) -> bool:
    """Whether a .json file holds FAQ entries (its first object has a question and an answer)
    rather than a record base."""
    first = data.lstrip(b"\xef\xbb\xbf \t\r\n[")[:4096]
    return first.startswith(b"{") and b'"question"' in first and b'"answer"' in first


LOADERS: dict[str, Loader] = {
    "faq": load_faq,
    "markdown": _document_loader(split_markdown, "Markdown"),
    "html": _document_loader(split_html, "HTML"),
    "text": _document_loader(split_plain, "plain-text"),
    "records": load_records,
}
FORMAT_OF_SUFFIX = {
    ".csv": "faq",
    ".jsonl": "faq",
    ".json": "records",  # or "faq", by its content: see _looks_like_faq
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
}


@dataclass
class LoadedSource:
    """One source file's chunks and problems, and the hash that tells whether it changed."""

    name: str
    format: str
    sha256: str
    bytes: int
    chunks: list[Chunk]
    problems: list[Reject]


def find_sources(paths: list[Path]) -> Iterator[tuple[Path, str] | Reject]:
    """(file, relative name) for each given file and each known file inside given folders."""
    for path in paths:
        if path.is_dir():
            root = path.resolve().name
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                inside = file.relative_to(path)
                if file.suffix.lower() in FORMAT_OF_SUFFIX and not any(
                    part.startswith(".") for part in inside.parts
                ):
                    yield file, f"{root}/{inside.as_posix()}"
        elif path.exists():
            yield path, path.name
        else:
            # Named, not given in full: the index never holds a path of the building machine.
            yield Reject(path.name, None, "missing", "no such file or folder; it is skipped")


def load_source(path: Path, name: str, chunking: ChunkConfig, encoding: str) -> LoadedSource:
    """Read one source file into chunks; a file that cannot be read is one problem."""
    format = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if format is None:
        known = ", ".join(FORMAT_OF_SUFFIX)
        reason = f"unknown kind of source {path.suffix!r}; known file endings: {known}"
        return LoadedSource(name, "", "", 0, [], [Reject(name, None, "unknown_format", reason)])
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = f"cannot read the file: {err.strerror}; it is skipped"
        return LoadedSource(name, format, "", 0, [], [Reject(name, None, "unreadable", reason)])
    if format == "records" and _looks_like_faq(data):
        format = "faq"
    src = SourceFile(path, encoding)
    src.name = name  # rejects and chunks carry the relative name, never the full path
    chunks, problems = [], []
    for item in LOADERS[format](src, chunking):
        (problems if isinstance(item, Reject) else chunks).append(item)
    digest = hashlib.sha256(data).hexdigest()
    return LoadedSource(name, format, digest, len(data), chunks, problems)


def load_sources(
    paths: list[Path], chunking: ChunkConfig, encoding: str = "utf-8"
) -> tuple[list[LoadedSource], list[Reject]]:
    """Every source under `paths`, with chunk ids made unique: a repeated id is a problem at
    the later entry's line (the first keeps it)."""
    loaded, problems = [], []
    first_seen: dict[str, Chunk] = {}
    for found in find_sources(paths):
        if isinstance(found, Reject):
            problems.append(found)
            continue
        source = load_source(*found, chunking, encoding)
        kept = []
        for chunk in source.chunks:
            earlier = first_seen.setdefault(chunk.id, chunk)
            if earlier is chunk:
                kept.append(chunk)
                continue
            where = f"{earlier.source}:{earlier.line}" if earlier.line else earlier.source
            reason = f"id {chunk.id!r} is already used at {where}; give each entry its own id"
            source.problems.append(Reject(chunk.source, chunk.line, "duplicate_id", reason))
        source.chunks = kept
        loaded.append(source)
        problems.extend(source.problems)
    return loaded, problems
