"""`kefu data ingest`: raw files in, a clean, private, split data folder out.

    inputs ─ reader ─► normalise ─► redact PII ─► drop empty / merge turns ─► dedupe ─► split
                 └─► rejects.jsonl (file, line, reason, raw text — PII redacted there too)

The folder is written next to its final place and renamed into it at the end, so a failed run
never leaves half a data set behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import IO, Any

from kefu import __version__
from kefu.config import DataSource, SplitConfig
from kefu.console import progress
from kefu.data.normalise import count_scripts, language_of, normalise_text
from kefu.data.pii import PLACEHOLDER_PATTERN, Redactor
from kefu.data.readers import FORMATS, ReadOptions, SourceFile
from kefu.data.records import SPLITS, Record, Reject
from kefu.errors import KefuError
from kefu.files import replaced_folder


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths or glob patterns, in a stable order; a pattern matching none is an error."""
    files: dict[Path, None] = {}  # ordered and without repeats
    for pattern in patterns:
        matches = (
            sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise KefuError(
                f"input {pattern!r} matches no file; check the path (relative paths in a YAML file are relative to that file)"
            )
        files.update(dict.fromkeys(map(Path, matches)))
    return list(files)


def hash_split(key: str, split: SplitConfig) -> str:
    """train/valid/test from a hash of `key`: the same key lands in the same split on every run."""
    digest = hashlib.blake2b(f"{split.seed}:{key}".encode(), digest_size=8).digest()
    share = int.from_bytes(digest, "big") / 2**64
    if share < split.train:
        return "train"
    return "valid" if share < split.train + split.valid else "test"


def stratified_split(records: list[Record], split: SplitConfig) -> None:
    """Assign splits per label so each split keeps the label mix; records with a split keep it.

    When the source gives train and test but no valid split, valid is cut from train the same way,
    so model selection never has to look at the test set.
    """
    given = {r.split for r in records if r.split}
    cut_valid = "valid" not in given and "train" in given
    by_label: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record.split is None or (cut_valid and record.split == "train"):
            by_label[record.label].append(record)
    shares = split
    if cut_valid:
        valid_share = split.valid / (split.train + split.valid) if split.train + split.valid else 0
        shares = SplitConfig(train=1 - valid_share, valid=valid_share, test=0, seed=split.seed)

    def order(record: Record) -> bytes:
        # By content, not position: adding rows to a file does not move the others between splits.
        return hashlib.blake2b(
            f"{split.seed}:{record.dedupe_key()!r}".encode(), digest_size=8
        ).digest()

    for group in by_label.values():
        group.sort(key=order)
        n_valid = round(len(group) * shares.valid)
        n_test = round(len(group) * shares.test)
        for index, record in enumerate(group):
            record.split = (
                "valid" if index < n_valid else "test" if index < n_valid + n_test else "train"
            )


class SplitStats:
    """Counts for one split: records, turns, characters, languages (share of records), PII."""

    def __init__(self) -> None:
        self.records = 0
        self.turns = 0
        self.characters = 0
        self.languages: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()

    def add(self, record: Record, language: str, characters: int) -> None:
        self.records += 1
        self.turns += len(record.turns) if record.kind == "conversations" else 1
        self.characters += characters
        self.languages[language] += 1
        if record.kind != "conversations":
            self.labels[record.label] += 1

    def to_json(self) -> dict[str, Any]:
        known = self.languages["zh"] + self.languages["en"]
        return {
            "records": self.records,
            "turns": self.turns,
            "characters": self.characters,
            "share_zh": round(self.languages["zh"] / known, 4) if known else 0.0,
            "share_en": round(self.languages["en"] / known, 4) if known else 0.0,
            "languages": dict(sorted(self.languages.items())),
            "labels": len(self.labels),
            "pii": dict(sorted(self.pii.items())),
        }


class _Writer:
    """Writes records to their split files and rejects to rejects.jsonl, and counts both."""

    def __init__(self, folder: Path, reject_redactor: Redactor) -> None:
        self._open_files = contextlib.ExitStack()  # closed in __exit__

        def open_for_writing(name: str) -> IO[str]:
            return self._open_files.enter_context(open(folder / name, "w", encoding="utf-8"))

        self.files = {s: open_for_writing(f"{s}.jsonl") for s in SPLITS}
        self.rejects_file = open_for_writing("rejects.jsonl")
        self.reject_redactor = reject_redactor
        self.stats = {s: SplitStats() for s in SPLITS}
        self.rejects: Counter[str] = Counter()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._open_files.close()

    def record(self, record: Record, pii: Counter[str]) -> None:
        characters = chinese = latin = 0
        for text in record.texts():
            characters += len(text)
            if "[" in text:  # placeholders are not English words
                text = PLACEHOLDER_PATTERN.sub("", text)
            zh, en = count_scripts(text)
            chinese += zh
            latin += en
        language = language_of(chinese, latin)
        split = record.split or "train"
        self.stats[split].add(record, language, characters)
        self.stats[split].pii.update(pii)
        self.files[split].write(json.dumps(record.to_json(language), ensure_ascii=False) + "\n")

    def reject(self, reject: Reject) -> None:
        self.rejects[reject.code] += 1
        entry = reject.to_json()
        entry["raw"] = self.reject_redactor(entry["raw"])
        self.rejects_file.write(json.dumps(entry, ensure_ascii=False) + "\n")


class _Pipeline:
    """What happens to each item a reader yields, up to the writer."""

    def __init__(self, source: DataSource, writer: _Writer) -> None:
        self.source = source
        self.writer = writer
        redact = source.redact
        self.redactor = Redactor(redact.types, redact.allow) if redact.enabled else None
        self.counts: Counter[str] = Counter()
        self.seen: dict[bytes, tuple[str, str | None]] = {}  # content hash → (where, label)
        self.held: list[tuple[Record, Counter[str]]] = []  # labelled records wait for the split

    def fix(self, text: str) -> str:
        text = normalise_text(text, self.source.lowercase)
        return self.redactor(text) if self.redactor else text

    def take(self, item: Record | Reject) -> None:
        if isinstance(item, Reject):
            self.writer.reject(item)
            return
        self.counts["read"] += 1
        if self.redactor:
            self.redactor.counts.clear()
        item.clean(self.fix)
        pii = Counter(self.redactor.counts) if self.redactor else Counter()
        if item.kind == "conversations":
            self.counts["empty_turns_dropped"] += item.dropped_turns
            self.counts["turns_merged"] += item.merged_turns
        problem = item.problem()
        if problem:
            self.writer.reject(Reject(item.file, item.line, *problem, item.raw))
        elif not self._is_repeat(item):
            if item.kind == "conversations":
                item.split = hash_split(item.id, self.source.split)
                self.writer.record(item, pii)
            else:
                self.held.append((item, pii))

    def _is_repeat(self, item: Record) -> bool:
        """Whether `item` repeats an earlier one (dropped) or contradicts its label (rejected).

        Splits given by the source are kept as published, so benchmark test sets keep their size.
        """
        key = hashlib.blake2b(repr(item.dedupe_key()).encode(), digest_size=16).digest()
        label = getattr(item, "label", None)
        first = self.seen.setdefault(key, (f"{item.file}:{item.line}", label))
        if item.split is not None or first[0] == f"{item.file}:{item.line}":
            return False
        if label != first[1]:
            reason = f"same text as {first[0]} but labelled {label!r} here and {first[1]!r} there; fix one of them"
            self.writer.reject(Reject(item.file, item.line, "label_conflict", reason, item.raw))
            return True
        if self.source.dedupe:
            self.counts["duplicates"] += 1
            return True
        return False

    def finish(self) -> None:
        """Split the labelled records, now that all of them are known, and write them."""
        stratified_split([record for record, _ in self.held], self.source.split)
        for record, pii in self.held:
            self.writer.record(record, pii)


def ingest(source: DataSource, out_dir: str | Path, name: str | None = None) -> dict[str, Any]:
    """Read, clean, redact, dedupe and split `source` into `out_dir`; return its stats.

    Args:
        source: the data source (format, inputs and cleaning options).
        out_dir: the data folder to (re)create: train/valid/test.jsonl, stats.json, rejects.jsonl.
        name: the data set's name in stats.json (default: the folder's name).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / "stats.json").is_file() and any(out_dir.iterdir()):
        raise KefuError(
            f"{out_dir} exists and is not a kefu data folder; refusing to replace it. "
            "Choose a new folder for --out (it is created) or an earlier output of ingest."
        )
    fmt = FORMATS[source.format]
    files = expand_inputs(source.inputs)
    options = ReadOptions(dict(source.columns), dict(source.roles), source.encoding)
    started = time.perf_counter()
    with replaced_folder(out_dir) as staging:
        reject_redactor = Redactor(source.redact.types, source.redact.allow)
        with _Writer(staging, reject_redactor) as writer, progress("bytes") as bar:
            pipeline = _Pipeline(source, writer)
            task = bar.add_task("ingest", total=sum(f.stat().st_size for f in files))
            done = 0
            for path in files:
                src = SourceFile(path, source.encoding)
                bar.update(task, description=f"ingest {path.name}")
                for number, item in enumerate(fmt.read(src, options)):
                    if number % 512 == 0:
                        bar.update(task, completed=done + src.position)
                    pipeline.take(item)
                done += src.size
                bar.update(task, completed=done)
            pipeline.finish()
        counts = pipeline.counts
        stats = {
            "name": name or out_dir.name,
            "kind": fmt.kind,
            "format": source.format,
            "inputs": [str(f) for f in files],
            "kefu_version": __version__,
            "seconds": round(time.perf_counter() - started, 3),
            "records_read": counts["read"],
            "duplicates_removed": counts["duplicates"],
            "empty_turns_dropped": counts["empty_turns_dropped"],
            "turns_merged": counts["turns_merged"],
            "rejects": {"total": writer.rejects.total(), **dict(sorted(writer.rejects.items()))},
            "pii": dict(sorted(sum((s.pii for s in writer.stats.values()), Counter()).items())),
            "splits": {s: writer.stats[s].to_json() for s in SPLITS},
        }
        (staging / "stats.json").write_text(
            json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return stats
