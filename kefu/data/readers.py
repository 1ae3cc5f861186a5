"""One reader per input format. Each turns a file into canonical records and `Reject`s.

Readers never raise on bad input: a row or line that cannot be used becomes a `Reject` with the
file, the line and the reason, and reading goes on. `FORMATS` is the registry by the name a user
writes in `--format` or in YAML.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gzip
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kefu.data.records import (
    Conversation,
    FaqEntry,
    IntentExample,
    Record,
    Reject,
    Span,
    SpanExample,
    Turn,
)

Item = Record | Reject

# Speaker names seen in helpdesk, WeChat and chatbot exports, matched case-insensitively.
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    **dict.fromkeys(
        ["user", "human", "customer", "client", "visitor", "guest", "用户", "顾客", "客户", "买家"],
        "user",
    ),
    **dict.fromkeys(
        [
            "assistant",
            "agent",
            "wizard",
            "bot",
            "gpt",
            "chatgpt",
            "model",
            "support",
            "staff",
            "operator",
            "客服",
            "坐席",
            "人工客服",
            "商家",
            "助手",
        ],
        "assistant",
    ),
}
# Roles of the OpenAI format that carry no customer-visible text.
SKIPPED_ROLES = frozenset({"tool", "function", "developer", "ipython"})
SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}


@dataclass
class ReadOptions:
    """What a user can tell a reader about their files."""

    columns: dict[str, str]  # canonical field → column name in the source
    roles: dict[str, str]  # extra speaker name → role
    encoding: str = "utf-8"

    def role_of(self, speaker: Any) -> str | None:
        name = str(speaker).strip()
        return self.roles.get(name) or ROLE_ALIASES.get(name.lower())


class SourceFile:
    """An input file opened for reading: gzip transparently, decoding errors reported per line.

    `position` is how many bytes of the file (compressed, if it is) have been read, for
    progress bars with an ETA.
    """

    def __init__(self, path: Path, encoding: str = "utf-8") -> None:
        self.path = path
        self.name = str(path)
        self.encoding = encoding
        self.size = path.stat().st_size
        self._raw: io.BufferedReader | None = None

    @property
    def position(self) -> int:
        return self._raw.tell() if self._raw and not self._raw.closed else 0

    @contextlib.contextmanager
    def _open(self) -> Iterator[io.BufferedIOBase]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            if self.path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw) as stream:
                    yield stream
            else:
                yield raw

    def lines(self) -> Iterator[tuple[int, str | Reject]]:
        """(line number, text with its newline) for each line; undecodable lines as Rejects."""
        with self._open() as stream:
            for number, raw in enumerate(stream, start=1):
                try:
                    text = raw.decode(self.encoding)
                except UnicodeDecodeError as err:
                    yield number, self._decode_reject(number, raw, err)
                    continue
                if number == 1:
                    text = text.removeprefix("\ufeff")
                yield number, text

    def starts_with(self, prefix: bytes) -> bool:
        """Whether the first bytes after any BOM and white space are `prefix`."""
        with self._open() as stream:
            head = stream.read(4096)
        return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(prefix)

    def read_bytes(self) -> bytes:
        with self._open() as stream:
            return stream.read()

    def text(self, data: bytes, whole: str = "the file is one JSON document") -> str | Reject:
        """The whole file decoded, for formats that are one document (`whole` says which, in
        the reason of the Reject for an undecodable file)."""
        try:
            return data.decode(self.encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            bad = data.split(b"\n")[line - 1]
            reject = self._decode_reject(line, bad, err)
            reject.reason += f"; {whole}, so all of it is skipped"
            return reject

    def _decode_reject(self, line: int, raw: bytes, err: UnicodeDecodeError) -> Reject:
        hint = f"pass the file's real encoding with --encoding (it is not {self.encoding})"
        if self.encoding.lower() not in ("gb18030", "gbk", "gb2312"):
            try:
                raw.decode("gb18030")  # what Chinese Windows tools export by default
                hint = "it looks like gb18030 (GBK): pass --encoding gb18030"
            except UnicodeDecodeError:
                pass
        reason = f"line is not valid {self.encoding} ({err.reason} at byte {err.start}); {hint}"
        return Reject(self.name, line, "encoding", reason, raw.decode(self.encoding, "replace"))

    def empty_reject(self) -> Reject:
        return Reject(self.name, None, "empty", "file has no records", "")


def _join_content(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of OpenAI's list-of-parts form."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return "\n".join(parts)
    return None


def _jsonl_objects(src: SourceFile) -> Iterator[tuple[int, dict[str, Any]] | Reject]:
    """Each non-blank line of a JSON Lines file parsed as an object."""
    empty = True
    for number, line in src.lines():
        if isinstance(line, Reject):
            yield line
            continue
        if not line.strip():
            continue
        empty = False
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            reason = f"bad JSON: {err.msg} at column {err.colno}"
            yield Reject(src.name, number, "bad_json", reason, line.rstrip("\n"))
            continue
        if not isinstance(obj, dict):
            reason = f"expected a JSON object on this line, got {type(obj).__name__}"
            yield Reject(src.name, number, "bad_json", reason, line.rstrip("\n"))
            continue
        yield number, obj
    if empty:
        yield src.empty_reject()


_BETWEEN_ITEMS = re.compile(r"[\s,]*")


def _json_array_items(src: SourceFile, text: str) -> Iterator[tuple[int, Any] | Reject]:
    """The items of a top-level JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    position = _BETWEEN_ITEMS.match(text).end()
    if not text.startswith("[", position):
        yield Reject(src.name, 1, "bad_json", "expected a JSON array of conversations", text[:200])
        return
    line, count = text.count("\n", 0, position) + 1, 0
    position += 1  # past the "["
    while True:
        skipped_to = _BETWEEN_ITEMS.match(text, position).end()
        line += text.count("\n", position, skipped_to)
        position = skipped_to
        if position >= len(text) or text[position] == "]":
            break
        try:
            item, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            reason = f"bad JSON: {err.msg} at line {err.lineno} column {err.colno}; the rest of the file is skipped"
            yield Reject(src.name, err.lineno, "bad_json", reason, text[err.pos : err.pos + 200])
            return
        count += 1
        yield line, item
        line += text.count("\n", position, end)
        position = end
    if count == 0:
        yield src.empty_reject()


def _objects(src: SourceFile) -> Iterator[tuple[int, dict[str, Any]] | Reject]:
    """The objects of a JSON Lines file or of a file holding one JSON array, whatever its name."""
    if not src.starts_with(b"["):
        yield from _jsonl_objects(src)
        return
    text = src.text(src.read_bytes())
    if isinstance(text, Reject):
        yield text
        return
    for found in _json_array_items(src, text):
        if isinstance(found, tuple) and not isinstance(found[1], dict):
            yield Reject(src.name, found[0], "bad_json", "expected a JSON object", found[1])
        else:
            yield found


def _conversation(
    src: SourceFile,
    line: int | None,
    conv_id: str,
    pairs: list[tuple[Any, Any]],
    options: ReadOptions,
    raw: Any,
) -> Conversation | Reject:
    """Build a conversation from (speaker, text) pairs, or reject it naming the bad turn."""
    turns = []
    for index, (speaker, content) in enumerate(pairs, start=1):
        if str(speaker).lower() in SKIPPED_ROLES:
            continue
        role = options.role_of(speaker)
        if role is None:
            reason = (
                f"turn {index} has unknown role {speaker!r}; known roles: system, user, assistant "
                "and their aliases (customer, agent, human, gpt, 客服 …); map others with --role NAME=ROLE"
            )
            return Reject(src.name, line, "unknown_role", reason, raw)
        text = _join_content(content)
        if text is None:
            reason = f"turn {index} content must be text, got {type(content).__name__}"
            return Reject(src.name, line, "bad_field", reason, raw)
        turns.append(Turn(role, text))
    return Conversation(conv_id, turns, src.name, line, raw)


def _turn_list(
    src: SourceFile, line: int | None, obj: Any, key: str, speaker: str
) -> list[dict[str, Any]] | Reject:
    """The list of turns `obj[key]`, each an object naming its `speaker`, or why not."""
    turns = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(turns, list):
        what = "missing" if turns is None else f"a {type(turns).__name__}, not a list"
        return Reject(src.name, line, "missing_field", f"field {key!r} is {what}", obj)
    for index, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or speaker not in turn:
            reason = f"{key} item {index} has no {speaker!r}"
            return Reject(src.name, line, "missing_field", reason, obj)
    return turns


def _read_turn_lists(
    src: SourceFile, options: ReadOptions, id_key: str, key: str, speaker: str, text: str
) -> Iterator[Item]:
    """Conversations stored as objects with a list of {speaker, text} turns."""
    for found in _objects(src):
        if isinstance(found, Reject):
            yield found
            continue
        line, obj = found
        turns = _turn_list(src, line, obj, key, speaker)
        if isinstance(turns, Reject):
            yield turns
            continue
        pairs = [(turn[speaker], turn.get(text)) for turn in turns]
        conv_id = str(obj.get(id_key) or f"{src.path.name}:{line}")
        yield _conversation(src, line, conv_id, pairs, options, obj)


def read_messages(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """The OpenAI chat format, {"id"?, "messages": [{"role", "content"}]}: JSONL or a JSON array."""
    return _read_turn_lists(src, options, "id", "messages", "role", "content")


def read_sharegpt(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """ShareGPT, {"id"?, "conversations": [{"from": "human"|"gpt"|…, "value"}]}: JSON or JSONL."""
    return _read_turn_lists(src, options, "id", "conversations", "from", "value")


def read_taskmaster(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """Taskmaster(-4): a JSON array of {"conversation_id", "utterances": [{"speaker", "text"}]}."""
    return _read_turn_lists(src, options, "conversation_id", "utterances", "speaker", "text")


# STAR events that reached the other side: the wizard either typed or picked a suggestion.
_STAR_SENT = {
    ("User", "utter"): "user",
    ("Wizard", "utter"): "assistant",
    ("Wizard", "pick_suggestion"): "assistant",
}


def read_star(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """STAR dialogues: the User's utterances and the Wizard's sent messages."""
    for found in _objects(src):
        if isinstance(found, Reject):
            yield found
            continue
        line, obj = found
        events = _turn_list(src, line, obj, "Events", "Agent")
        if isinstance(events, Reject):
            yield events
            continue
        sent = ((_STAR_SENT.get((e["Agent"], e.get("Action"))), e.get("Text")) for e in events)
        pairs = [(role, text) for role, text in sent if role]
        yield _conversation(src, line, f"star-{obj.get('DialogueID', line)}", pairs, options, obj)


def _json_document(src: SourceFile, data: bytes | None = None) -> Any:
    """The one JSON document a file (or `data` read from it) holds, or the Reject that says why
    it cannot be read."""
    text = src.text(src.read_bytes() if data is None else data)
    if isinstance(text, Reject):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return Reject(
            src.name, err.lineno, "bad_json", f"bad JSON: {err.msg}", text[err.pos : err.pos + 200]
        )


def read_crosswoz(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """CrossWOZ: {dialogue id: {"messages": [{"role": "usr"|"sys", "content"}]}}, zipped or not."""
    data = src.read_bytes()
    if src.path.suffix == ".zip":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [n for n in archive.namelist() if n.endswith(".json")]
                data = archive.read(members[0]) if members else b""
        except zipfile.BadZipFile as err:
            yield Reject(src.name, None, "bad_file", f"not a readable zip file: {err}", "")
            return
        if not data:
            yield Reject(src.name, None, "empty", "the zip file holds no .json file", "")
            return
    dialogues = _json_document(src, data)
    if isinstance(dialogues, Reject):
        yield dialogues
        return
    if not isinstance(dialogues, dict) or not dialogues:
        yield Reject(src.name, None, "empty", "expected a non-empty object of dialogues by id", "")
        return
    speakers = {"usr": "user", "sys": "assistant"}
    for key, dialogue in dialogues.items():
        messages = _turn_list(src, None, dialogue, "messages", "role")
        if isinstance(messages, Reject):
            messages.reason = f"dialogue {key}: {messages.reason}"
            yield messages
            continue
        pairs = [(speakers.get(m["role"], m["role"]), m.get("content")) for m in messages]
        yield _conversation(src, None, f"crosswoz-{key}", pairs, options, {"id": key, **dialogue})


def _timestamp(value: str) -> float | None:
    """Seconds since the epoch from ISO 8601, common export formats, or epoch (s or ms)."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number / 1000 if number > 1e11 else number
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        for layout in (
            "%Y/%m/%d %H:%M:%S",
            "%Y/%m/%d %H:%M",
            "%m/%d/%Y %H:%M:%S",
            "%m/%d/%Y %H:%M",
        ):
            try:
                moment = datetime.datetime.strptime(value, layout)
                break
            except ValueError:
                continue
        else:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


# Helpdesk exports can hold long pasted logs in one cell; the csv module's default is 128 KiB.
csv.field_size_limit(16 * 1024 * 1024)


def _csv_rows(
    src: SourceFile, options: ReadOptions, required: tuple[str, ...], optional: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str], list[str]] | Reject]:
    """Rows of a CSV file with a header, as {canonical field: value}, with their first line."""
    pending: list[Reject] = []
    last_line = 0

    def decoded_lines() -> Iterator[str]:
        nonlocal last_line
        for number, line in src.lines():
            last_line = number
            if isinstance(line, Reject):
                pending.append(line)
            else:
                yield line

    reader = csv.reader(decoded_lines())
    try:
        header = next(reader)
    except StopIteration:
        yield from pending
        yield src.empty_reject()
        return
    except csv.Error as err:
        yield Reject(src.name, last_line, "bad_csv", f"unreadable CSV header: {err}", "")
        return
    yield from pending
    pending.clear()
    index_of = {name.strip().lower(): i for i, name in enumerate(header)}
    columns: dict[str, int] = {}
    for field in required + optional:
        column = options.columns.get(field, field)
        if column.lower() in index_of:
            columns[field] = index_of[column.lower()]
        elif field in required:
            reason = (
                f"column {column!r} (the {field!r} field) is not in the header {header}; "
                f"name the right column with --column {field}=NAME"
            )
            yield Reject(src.name, 1, "missing_column", reason, ",".join(header))
            return
    start, rows = last_line + 1, 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            yield Reject(src.name, start, "bad_csv", f"unreadable CSV row: {err}", "")
            start = last_line + 1
            continue
        yield from pending
        pending.clear()
        if row:
            rows += 1
            if len(row) != len(header):
                reason = f"expected {len(header)} columns as in the header, got {len(row)}"
                yield Reject(src.name, start, "bad_row", reason, ",".join(row))
            else:
                yield start, {field: row[i] for field, i in columns.items()}, row
        start = last_line + 1
    yield from pending
    if rows == 0:
        yield src.empty_reject()


CSV_CONVERSATION_FIELDS = ("conversation_id", "role", "text")


def read_csv(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """A helpdesk transcript export: one row per message, grouped into conversations.

    Turns are ordered by the timestamp column when there is one (file order breaks ties and is
    used when there is none); unreadable timestamps or unknown speakers reject the conversation.
    """
    conversations: dict[str, list[tuple[float, int, int, str, str, str]]] = {}
    problems: dict[str, Reject] = {}
    for found in _csv_rows(src, options, CSV_CONVERSATION_FIELDS, ("timestamp",)):
        if isinstance(found, Reject):
            yield found
            continue
        line, row, raw = found
        conv_id = row["conversation_id"].strip()
        if not conv_id:
            yield Reject(src.name, line, "empty", "conversation id is empty", ",".join(raw))
            continue
        moment = _timestamp(row["timestamp"]) if "timestamp" in row else 0.0
        if moment is None and conv_id not in problems:
            reason = f"timestamp {row['timestamp']!r} not understood; use ISO 8601 (2024-05-02T09:14:03Z) or epoch seconds"
            problems[conv_id] = Reject(src.name, line, "bad_timestamp", reason)
        turns = conversations.setdefault(conv_id, [])
        turns.append((moment or 0.0, len(turns), line, row["role"], row["text"], ",".join(raw)))
    for conv_id, rows in conversations.items():
        rows.sort()
        raw = [r[5] for r in sorted(rows, key=lambda r: r[2])]
        if conv_id in problems:
            problems[conv_id].raw = raw
            yield problems[conv_id]
            continue
        pairs = [(r[3], r[4]) for r in rows]
        yield _conversation(src, min(r[2] for r in rows), conv_id, pairs, options, raw)


def labelled_rows(
    src: SourceFile, options: ReadOptions, required: tuple[str, ...], optional: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any], Any] | Reject]:
    """Rows of a labelled file, CSV or JSON Lines by its extension, as {field: value}."""
    if src.path.name.removesuffix(".gz").endswith((".jsonl", ".json")):
        for found in _objects(src):
            if isinstance(found, Reject):
                yield found
                continue
            line, obj = found
            row = {
                f: obj[options.columns.get(f, f)]
                for f in required + optional
                if options.columns.get(f, f) in obj
            }
            missing = [f for f in required if f not in row]
            if missing:
                key = options.columns.get(missing[0], missing[0])
                reason = (
                    f"key {key!r} is missing; name the right key with --column {missing[0]}=NAME"
                )
                yield Reject(src.name, line, "missing_field", reason, obj)
                continue
            yield line, row, obj
    else:
        for found in _csv_rows(src, options, required, optional):
            yield found if isinstance(found, Reject) else (found[0], found[1], ",".join(found[2]))


def _split_of(src: SourceFile, row: dict[str, Any], line: int) -> str | Reject | None:
    """A row's split from its `split` field or, failing that, from the file name (train.csv)."""
    name = str(row.get("split") or "").strip().lower()
    if name:
        if name not in SPLIT_NAMES:
            reason = f"split {name!r} unknown; use one of {', '.join(SPLIT_NAMES)}"
            return Reject(src.name, line, "bad_field", reason, row)
        return SPLIT_NAMES[name]
    stem = src.path.name.split(".")[0].lower()
    return SPLIT_NAMES.get(stem)


INTENT_FIELDS = ("text", "label")


def read_intents(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """Labelled utterances: CSV with a header, or JSON Lines, with `text` and `label`."""
    for found in labelled_rows(src, options, INTENT_FIELDS, ("split",)):
        if isinstance(found, Reject):
            yield found
            continue
        line, row, raw = found
        split = _split_of(src, row, line)
        if isinstance(split, Reject):
            yield split
            continue
        yield IntentExample(
            f"{src.path.name}:{line}",
            str(row["text"]),
            str(row["label"]),
            src.name,
            line,
            raw,
            split,
        )


def _spans(text: str, obj: dict[str, Any]) -> list[Span] | str:
    """The entity spans of a spans record (kefu's `entities` list or NLU++'s `slots` object),
    checked against the text, or what is wrong with them."""
    listed = obj.get("entities")
    if listed is None and isinstance(obj.get("slots"), dict):  # NLU++: {name: {"span": [s, e]}}
        listed = []
        for name, slot in obj["slots"].items():
            span = slot.get("span") if isinstance(slot, dict) else None
            if not (isinstance(span, list) and len(span) == 2):
                return f'slot {name!r}: expected {{"span": [start, end]}}'
            listed.append(
                {"type": name, "start": span[0], "end": span[1], "text": slot.get("text")}
            )
    if listed is not None and not isinstance(listed, list):
        return "`entities` must be a list of {type, start, end}"
    spans = []
    for number, entity in enumerate(listed or []):
        where = f"entity {number + 1}"
        if not isinstance(entity, dict):
            return f"{where}: expected {{type, start, end}}"
        kind, start, end = entity.get("type"), entity.get("start"), entity.get("end")
        if not isinstance(kind, str) or not kind.strip():
            return f"{where}: `type` must be a non-empty string"
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            return f"{where} ({kind}): start {start!r} and end {end!r} must satisfy 0 <= start < end <= {len(text)}"
        given = entity.get("text")
        if given is not None and given != text[start:end]:
            return f"{where} ({kind}): its text {given!r} is not the text at {start}:{end}, {text[start:end]!r}"
        spans.append(Span(kind.strip(), start, end, text[start:end]))
    return spans


def read_spans(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """Utterances with entity spans and optional intents: JSON Lines or a JSON array of
    {"text", "entities": [{"type", "start", "end"}], "intents"?: [...], "split"?} — or NLU++'s
    files as they are ({"text", "intents", "slots": {name: {"text", "span": [start, end]}}})."""
    for found in _objects(src):
        if isinstance(found, Reject):
            yield found
            continue
        line, obj = found
        text = obj.get(options.columns.get("text", "text"))
        if not isinstance(text, str):
            yield Reject(
                src.name, line, "missing_field", "key 'text' is missing or not a string", obj
            )
            continue
        spans = _spans(text, obj)
        intents = obj.get("intents") or []
        if isinstance(spans, str) or not isinstance(intents, list):
            reason = spans if isinstance(spans, str) else "`intents` must be a list of names"
            yield Reject(src.name, line, "bad_span", reason, obj)
            continue
        split = _split_of(src, {"split": obj["split"]} if "split" in obj else {}, line)
        if isinstance(split, Reject):
            yield split
            continue
        record_id = str(obj.get("id", f"{src.path.name}:{line}"))
        yield SpanExample(
            record_id, text, spans, [str(i) for i in intents], src.name, line, obj, split
        )


CLINC_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def read_clinc150(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """CLINC150's data_*.json: {"train"|"val"|"test": [[text, intent], …]}, and the same keys
    with an "oos_" prefix for out-of-scope queries, which get the label out_of_scope."""
    data = _json_document(src)
    if isinstance(data, Reject):
        yield data
        return
    keys = (
        [k for k in data if k.removeprefix("oos_") in CLINC_SPLITS]
        if isinstance(data, dict)
        else []
    )
    if not keys or not any(data[k] for k in keys):
        yield Reject(
            src.name, None, "empty", 'expected CLINC150\'s {"train": [[text, intent], …], …}', ""
        )
        return
    for key in data.keys() - keys:
        known = ", ".join(f"{k}, oos_{k}" for k in CLINC_SPLITS)
        yield Reject(
            src.name, None, "bad_row", f"unknown key {key!r}; CLINC150 has {known}", data[key]
        )
    for key in keys:
        split = CLINC_SPLITS[key.removeprefix("oos_")]
        if not isinstance(data[key], list):
            yield Reject(
                src.name, None, "bad_row", f"{key}: expected a list of [text, intent]", data[key]
            )
            continue
        for index, pair in enumerate(data[key]):
            where = f"{key}[{index}]"
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
            ):
                yield Reject(src.name, None, "bad_row", f"{where}: expected [text, intent]", pair)
                continue
            label = "out_of_scope" if key.startswith("oos_") else pair[1]
            yield IntentExample(f"clinc150-{where}", pair[0], label, src.name, None, pair, split)


FAQ_FIELDS = ("question", "answer")
FAQ_OPTIONAL = ("id", "category", "url", "paraphrases", "split")


def read_faq(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """FAQ entries: `question`, `answer`, optional `id`, `category`, `url`, `paraphrases`.

    In CSV, paraphrases are one cell separated by " | "; in JSON Lines, a list or that string.
    """
    for found in labelled_rows(src, options, FAQ_FIELDS, FAQ_OPTIONAL):
        if isinstance(found, Reject):
            yield found
            continue
        line, row, raw = found
        split = _split_of(src, row, line)
        if isinstance(split, Reject):
            yield split
            continue
        paraphrases = row.get("paraphrases") or []
        if isinstance(paraphrases, str):
            paraphrases = paraphrases.split(" | ")
        yield FaqEntry(
            str(row.get("id") or f"{src.path.name}:{line}").strip(),
            str(row["question"]),
            str(row["answer"]),
            str(row.get("category") or ""),
            str(row.get("url") or ""),
            [str(p) for p in paraphrases],
            src.name,
            line,
            raw,
            split,
        )


@dataclass(frozen=True)
class Format:
    """An input format: what it holds, how to read it, and which fields `--column` may map."""

    kind: str
    read: Callable[[SourceFile, ReadOptions], Iterator[Item]]
    fields: tuple[str, ...]
    description: str


FORMATS: dict[str, Format] = {
    "messages": Format("conversations", read_messages, (), "JSONL, OpenAI chat format"),
    "sharegpt": Format("conversations", read_sharegpt, (), "ShareGPT JSON or JSONL"),
    "csv": Format(
        "conversations", read_csv, (*CSV_CONVERSATION_FIELDS, "timestamp"), "helpdesk CSV export"
    ),
    "star": Format("conversations", read_star, (), "STAR dialogues.jsonl(.gz)"),
    "taskmaster": Format("conversations", read_taskmaster, (), "Taskmaster JSON(.gz)"),
    "crosswoz": Format("conversations", read_crosswoz, (), "CrossWOZ JSON (.zip)"),
    "intents": Format("intents", read_intents, (*INTENT_FIELDS, "split"), "CSV/JSONL text,label"),
    "clinc150": Format("intents", read_clinc150, (), "CLINC150 data_*.json"),
    "spans": Format("spans", read_spans, (), "JSON(L) text with entity spans; NLU++"),
    "faq": Format("faq", read_faq, (*FAQ_FIELDS, *FAQ_OPTIONAL), "CSV/JSONL question,answer"),
}
