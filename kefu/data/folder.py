"""Reading a data folder written by `kefu data ingest` (see kefu.data.records for the schema)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kefu.data.records import SPLITS
from kefu.errors import KefuError


def load_stats(data_dir: str | Path) -> dict[str, Any]:
    """The folder's stats.json; a folder without one is not a kefu data folder."""
    path = Path(data_dir) / "stats.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KefuError(
            f"{data_dir} is not a kefu data folder (it has no stats.json); create it with `kefu data ingest`"
        ) from None


def read_split(data_dir: str | Path, split: str = "train") -> Iterator[dict[str, Any]]:
    """The records of one split, in file order."""
    if split not in SPLITS:
        raise KefuError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    load_stats(data_dir)
    with open(Path(data_dir) / f"{split}.jsonl", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def record_texts(record: dict[str, Any]) -> Iterator[str]:
    """Every piece of text in a canonical record, whatever its kind."""
    for message in record.get("messages", ()):
        yield message["content"]
    for field in ("text", "question", "answer"):
        if field in record:
            yield record[field]
    yield from record.get("paraphrases", ())


def split_texts(data_dirs: list[str | Path], split: str = "train") -> Iterator[str]:
    """All text of one split across several data folders: what a tokenizer learns from."""
    for data_dir in data_dirs:
        for record in read_split(data_dir, split):
            yield from record_texts(record)
