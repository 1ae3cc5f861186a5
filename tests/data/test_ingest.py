"""Ingestion end to end on small hand-made files in every format, good and malformed."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kefu.config import DataSource
from kefu.data.ingest import hash_split, ingest
from kefu.data.records import SPLITS
from kefu.errors import KefuError


def run(tmp_path: Path, fmt: str, inputs: list[Path], **options):
    out = tmp_path / "out"
    stats = ingest(DataSource(format=fmt, inputs=[str(p) for p in inputs], **options), out)
    records = [
        json.loads(line) for s in SPLITS for line in (out / f"{s}.jsonl").read_text().splitlines()
    ]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return stats, records, rejects


def messages_line(conv_id: str, *turns: tuple[str, str]) -> str:
    return json.dumps(
        {"id": conv_id, "messages": [{"role": r, "content": c} for r, c in turns]},
        ensure_ascii=False,
    )


def test_messages_cleans_redacts_merges_and_drops(tmp_path, write):
    path = write(
        "chat.jsonl",
        "\n".join(
            [
                messages_line(
                    "a",
                    ("system", "You are Acme's assistant."),
                    ("user", "ＨＥＬＬＯ my card is 4539 1488 0343 6467"),
                    ("user", "  and mail me at jo@example.com  "),
                    ("assistant", ""),
                    ("assistant", "Thanks! 🙏"),
                ),
                messages_line(
                    "b", ("user", "hi"), ("assistant", [{"type": "text", "text": "hello"}])
                ),
                "",
            ]
        ),
    )
    stats, records, rejects = run(tmp_path, "messages", [path])
    by_id = {r["id"]: r for r in records}
    assert by_id["a"]["messages"] == [
        {"role": "system", "content": "You are Acme's assistant."},
        {"role": "user", "content": "HELLO my card is [CARD]\nand mail me at [EMAIL]"},
        {"role": "assistant", "content": "Thanks! 🙏"},
    ]
    assert by_id["b"]["messages"][1]["content"] == "hello"
    assert by_id["a"]["language"] == "en"
    assert stats["pii"] == {"CARD": 1, "EMAIL": 1}
    assert (stats["empty_turns_dropped"], stats["turns_merged"], rejects) == (1, 1, [])


def test_malformed_lines_go_to_rejects_with_file_and_line(tmp_path, write):
    path = write(
        "chat.jsonl",
        "\n".join(
            [
                messages_line("ok", ("user", "hi"), ("assistant", "hello")),
                '{"messages": [{"role": "user", "content": "unterminated"}',
                '["not", "an", "object"]',
                '{"conversation": []}',
                messages_line("bad-role", ("user", "hi"), ("robot", "beep"), ("assistant", "x")),
                messages_line("no-answer", ("user", "hello?"), ("assistant", "   ")),
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": 42},
                            {"role": "assistant", "content": "x"},
                        ]
                    }
                ),
            ]
        ),
    )
    stats, records, rejects = run(tmp_path, "messages", [path])
    assert [r["id"] for r in records] == ["ok"]
    found = {(r["line"], r["code"]) for r in rejects}
    assert found == {
        (2, "bad_json"),
        (3, "bad_json"),
        (4, "missing_field"),
        (5, "unknown_role"),
        (6, "no_exchange"),
        (7, "bad_field"),
    }
    assert all(r["file"] == str(path) for r in rejects)
    unknown = next(r for r in rejects if r["code"] == "unknown_role")
    assert (
        "'robot'" in unknown["reason"]
        and "--role" in unknown["reason"]
        and '"beep"' in unknown["raw"]
    )
    assert stats["rejects"] == {
        "total": 6,
        "bad_field": 1,
        "bad_json": 2,
        "missing_field": 1,
        "no_exchange": 1,
        "unknown_role": 1,
    }


def test_rejected_raw_text_is_redacted_too(tmp_path, write):
    path = write("chat.jsonl", '{"messages": [{"role": "user", "content": "call 13812345678"}')
    _, _, rejects = run(tmp_path, "messages", [path])
    assert "13812345678" not in rejects[0]["raw"] and "[PHONE]" in rejects[0]["raw"]


def test_wrong_encoding_is_rejected_per_line_with_a_hint(tmp_path, write):
    good = messages_line("u", ("user", "你好"), ("assistant", "您好")) + "\n"
    gbk = (
        messages_line("g", ("user", "我的卡丢了"), ("assistant", "请冻结")).encode("gb18030")
        + b"\n"
    )
    path = write("mixed.jsonl", good.encode() + gbk)
    _, records, rejects = run(tmp_path, "messages", [path])
    assert [r["id"] for r in records] == ["u"]
    assert rejects[0]["line"] == 2 and rejects[0]["code"] == "encoding"
    assert "--encoding gb18030" in rejects[0]["reason"]
    _, records, _ = run(tmp_path, "messages", [write("all.jsonl", gbk)], encoding="gb18030")
    assert records[0]["messages"][0]["content"] == "我的卡丢了"


def test_empty_files_are_reported(tmp_path, write):
    for fmt, name in [
        ("messages", "e.jsonl"),
        ("csv", "e.csv"),
        ("intents", "e2.csv"),
        ("sharegpt", "e.json"),
    ]:
        path = write(name, "[]" if fmt == "sharegpt" else "")
        _, records, rejects = run(tmp_path, fmt, [path])
        assert records == [] and [r["code"] for r in rejects] == ["empty"], fmt


def test_sharegpt_json_array_gives_line_numbers(tmp_path, write):
    items = [
        {
            "id": "s1",
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
        },
        {
            "id": "s2",
            "conversations": [{"from": "human", "value": "x"}, {"from": "alien", "value": "y"}],
        },
    ]
    path = write("sg.json", "[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]\n")
    _, records, rejects = run(tmp_path, "sharegpt", [path])
    assert [r["messages"] for r in records] == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ]
    assert (rejects[0]["line"], rejects[0]["code"]) == (3, "unknown_role")
    jsonl = write("sg.jsonl", "\n".join(json.dumps(i) for i in items))
    _, records, _ = run(tmp_path, "sharegpt", [jsonl])
    assert len(records) == 1


HELPDESK = '''ticket,when,who,body
T1,2024-05-02T09:15:00Z,agent,"Hello, how can I help?"
T2,2024-05-02T10:00:00Z,客户,我的卡被吞了
T1,2024-05-02T09:14:00Z,customer,"My card, it's ""stuck"""
T1,2024-05-02T09:16:00Z,customer,Also
T1,2024-05-02T09:16:30Z,customer,"the ATM
at 5th street"
T1,2024-05-02T09:17:00Z,agent,Sorry to hear that.
T2,2024-05-02T10:01:00Z,客服,已为您冻结
T3,yesterday,customer,hi
T3,2024-05-02T11:00:00Z,agent,hello
T4,2024-05-02T11:00:00Z,customer
T5,2024-05-02T12:00:00Z,Alice,hi
T5,2024-05-02T12:01:00Z,customer,hi Alice
'''


def test_csv_export_sorted_by_time_merged_and_checked(tmp_path, write):
    path = write("export.csv", HELPDESK)
    columns = {"conversation_id": "ticket", "timestamp": "when", "role": "who", "text": "body"}
    _, records, rejects = run(tmp_path, "csv", [path], columns=columns)
    by_id = {r["id"]: r["messages"] for r in records}
    assert by_id["T1"] == [
        {"role": "user", "content": 'My card, it\'s "stuck"'},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Also\nthe ATM\nat 5th street"},
        {"role": "assistant", "content": "Sorry to hear that."},
    ]
    assert by_id["T2"] == [
        {"role": "user", "content": "我的卡被吞了"},
        {"role": "assistant", "content": "已为您冻结"},
    ]
    assert by_id.keys() == {"T1", "T2"}
    found = {(r["line"], r["code"]) for r in rejects}
    assert found == {(10, "bad_timestamp"), (12, "bad_row"), (13, "unknown_role")}
    _, records, _ = run(tmp_path, "csv", [path], columns=columns, roles={"Alice": "assistant"})
    assert "T5" in {r["id"] for r in records}


def test_csv_missing_column_names_the_option_to_fix_it(tmp_path, write):
    path = write("export.csv", HELPDESK)
    _, records, rejects = run(tmp_path, "csv", [path])
    assert records == []
    assert (
        rejects[0]["code"] == "missing_column"
        and "--column conversation_id=NAME" in rejects[0]["reason"]
    )


def test_star_taskmaster_crosswoz_readers(tmp_path, write):
    star = {
        "DialogueID": 7,
        "Events": [
            {"Agent": "UserGuide", "Action": "instruct", "Text": "Act confused"},
            {"Agent": "User", "Action": "utter", "Text": "I need a ride"},
            {"Agent": "Wizard", "Action": "request_suggestions", "Text": "where to"},
            {"Agent": "Wizard", "Action": "pick_suggestion", "Text": "Where would you like to go?"},
            {"Agent": "Wizard", "Action": "query", "Constraints": []},
            {"Agent": "User", "Action": "utter", "Text": "The airport"},
            {"Agent": "Wizard", "Action": "utter", "Text": "Booked."},
        ],
    }
    star_path = write("star.jsonl.gz", gzip.compress((json.dumps(star) + "\n").encode()))
    _, records, _ = run(tmp_path, "star", [star_path])
    assert records[0]["id"] == "star-7"
    assert [m["content"] for m in records[0]["messages"]] == [
        "I need a ride",
        "Where would you like to go?",
        "The airport",
        "Booked.",
    ]

    taskmaster = [
        {
            "conversation_id": "dlg-1",
            "utterances": [
                {"speaker": "user", "text": "one latte"},
                {"speaker": "assistant", "text": "anything else?"},
            ],
        }
    ]
    tm_path = write("data_00.json.gz", gzip.compress(json.dumps(taskmaster).encode()))
    _, records, _ = run(tmp_path, "taskmaster", [tm_path])
    assert records[0]["id"] == "dlg-1" and records[0]["messages"][1]["role"] == "assistant"

    crosswoz = {
        "11": {
            "messages": [
                {"role": "usr", "content": "推荐一家餐馆"},
                {"role": "sys", "content": "电话是010-65528888。"},
            ]
        }
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("val.json", json.dumps(crosswoz, ensure_ascii=False))
    cw_path = write("val.json.zip", buffer.getvalue())
    stats, records, _ = run(tmp_path, "crosswoz", [cw_path])
    assert records[0]["messages"][1]["content"] == "电话是[PHONE]。"
    assert (
        records[0]["language"] == "zh"
        and stats["splits"]["train"]["share_zh"]
        + stats["splits"]["valid"]["share_zh"]
        + stats["splits"]["test"]["share_zh"]
        > 0.99
    )


def test_duplicates_removed_and_split_is_by_conversation(tmp_path, write):
    lines = [
        messages_line(f"c{i}", ("user", f"question {i}"), ("assistant", "answer"))
        for i in range(300)
    ]
    lines.append(messages_line("copy", ("user", "question 5"), ("assistant", "answer")))
    stats, records, _ = run(tmp_path, "messages", [write("c.jsonl", "\n".join(lines))])
    assert stats["duplicates_removed"] == 1 and len(records) == 300
    sizes = {s: stats["splits"][s]["records"] for s in SPLITS}
    assert 210 <= sizes["train"] <= 270 and 15 <= sizes["valid"] <= 45 and 15 <= sizes["test"] <= 45
    # The split of a conversation depends on its id alone: the same on every run and file order.
    split_config = DataSource(format="messages", inputs=["x"]).split
    for split in SPLITS:
        out = tmp_path / "out" / f"{split}.jsonl"
        assert all(
            hash_split(json.loads(line)["id"], split_config) == split
            for line in out.read_text().splitlines()
        )
    shuffled = write("d.jsonl", "\n".join(reversed(lines)))
    again = ingest(DataSource(format="messages", inputs=[str(shuffled)]), tmp_path / "again")
    assert {s: again["splits"][s]["records"] for s in SPLITS} == sizes


def test_intents_are_split_stratified_by_label(tmp_path, write):
    rows = (
        ["text,label"]
        + [f"card question {i},card" for i in range(40)]
        + [f"loan question {i},loan" for i in range(20)]
    )
    rows += ["card question 1,card", "card question 2,loan"]
    stats, _, rejects = run(tmp_path, "intents", [write("intents.csv", "\n".join(rows))])
    per_split = Counter(
        (json.loads(line)["label"], split)
        for split in SPLITS
        for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()
    )
    assert per_split == {
        ("card", "train"): 32,
        ("card", "valid"): 4,
        ("card", "test"): 4,
        ("loan", "train"): 16,
        ("loan", "valid"): 2,
        ("loan", "test"): 2,
    }
    assert stats["duplicates_removed"] == 1
    assert [r["code"] for r in rejects] == ["label_conflict"] and "intents.csv:4" in rejects[0][
        "reason"
    ]


def test_split_named_files_are_kept_and_valid_is_cut_from_train(tmp_path, write):
    train = write(
        "train.csv", "text,category\n" + "\n".join(f"t{i},{'ab'[i % 2]}" for i in range(40))
    )
    test = write(
        "test.csv",
        "text,category\n" + "\n".join(f"x{i},{'ab'[i % 2]}" for i in range(10)) + "\nt1,b",
    )
    stats, _, _ = run(
        tmp_path,
        "intents",
        [train, test],
        columns={"label": "category"},
        split={"train": 0.8, "valid": 0.2, "test": 0.0},
    )
    assert {s: stats["splits"][s]["records"] for s in SPLITS} == {
        "train": 32,
        "valid": 8,
        "test": 11,
    }


def test_faq_fields_and_paraphrases(tmp_path, write):
    path = write(
        "faq.csv",
        'id,question,answer,category,url,paraphrases\nlost,I lost my card,"Freeze it in the app, then call +44 20 7946 0958.",card,https://x.example/lost,card gone | 卡丢了\n',
    )
    _, records, _ = run(tmp_path, "faq", [path])
    assert records == [
        {
            "id": "lost",
            "language": "en",
            "question": "I lost my card",
            "answer": "Freeze it in the app, then call [PHONE].",
            "category": "card",
            "url": "https://x.example/lost",
            "paraphrases": ["card gone", "卡丢了"],
        }
    ]


def test_a_failed_ingest_leaves_the_previous_folder_intact(tmp_path, write):
    good = write("good.jsonl", messages_line("a", ("user", "hi"), ("assistant", "hello")))
    run(tmp_path, "messages", [good])
    before = (tmp_path / "out" / "stats.json").read_text()
    with pytest.raises(KefuError, match="matches no file"):
        run(tmp_path, "messages", [tmp_path / "missing-*.jsonl"])
    assert (tmp_path / "out" / "stats.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "out"]


def test_an_output_folder_that_is_not_a_data_folder_is_never_replaced(tmp_path, write):
    good = write("good.jsonl", messages_line("a", ("user", "hi"), ("assistant", "hello")))
    precious = write("home/notes.txt", "do not delete")
    with pytest.raises(KefuError, match="is not a kefu data folder; refusing to replace it"):
        ingest(DataSource(format="messages", inputs=[str(good)]), precious.parent)
    assert precious.read_text() == "do not delete"


def test_json_files_are_read_as_an_array_or_as_lines_whatever_their_name(tmp_path, write):
    array = write("intents.json", json.dumps([{"q": "where is my card", "label": "card"}]))
    lines = write(
        "more.json", '{"q": "lost my pin", "label": "pin"}\n{"text": "no q", "label": "x"}\n'
    )
    _, records, rejects = run(tmp_path, "intents", [array, lines], columns={"text": "q"})
    assert sorted(r["text"] for r in records) == ["lost my pin", "where is my card"]
    assert [(r["file"], r["line"], r["code"]) for r in rejects] == [
        (str(lines), 2, "missing_field")
    ]
    assert "--column text=NAME" in rejects[0]["reason"] and "'q'" in rejects[0]["reason"]
    conversations = write(
        "chats.json", "[" + messages_line("x", ("user", "hi"), ("assistant", "yo")) + "]"
    )
    _, records, _ = run(tmp_path, "messages", [conversations])
    assert records[0]["id"] == "x"


def test_adding_rows_does_not_move_the_others_between_splits(tmp_path, write):
    def splits_of(out):
        return {
            json.loads(line)["text"]: split
            for split in SPLITS
            for line in (out / f"{split}.jsonl").read_text().splitlines()
        }

    rows = [f"question number {i},topic{i % 3}" for i in range(60)]
    ingest(
        DataSource(
            format="intents", inputs=[str(write("a.csv", "text,label\n" + "\n".join(rows)))]
        ),
        tmp_path / "a",
    )
    grown = ["a brand new question,topic0", *rows]
    ingest(
        DataSource(
            format="intents", inputs=[str(write("b.csv", "text,label\n" + "\n".join(grown)))]
        ),
        tmp_path / "b",
    )
    before, after = splits_of(tmp_path / "a"), splits_of(tmp_path / "b")
    moved = [text for text in before if before[text] != after[text]]
    # The new row takes a place in its label's ordering: at most one row shifts from valid to test
    # and one from test to train; the other 58 stay where they were.
    assert len(moved) <= 2


FILE_NAMES = {
    "messages": "x.jsonl",
    "sharegpt": "x.json",
    "csv": "x.csv",
    "star": "x.jsonl.gz",
    "taskmaster": "x.json.gz",
    "crosswoz": "x.json.zip",
    "intents": "x.csv",
    "faq": "x.jsonl",
    "spans": "x.json",
    "clinc150": "x.json",
}
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "role",
                    "content",
                    "conversations",
                    "from",
                    "value",
                    "Events",
                    "Agent",
                    "Action",
                    "Text",
                    "utterances",
                    "speaker",
                    "text",
                    "label",
                    "question",
                    "answer",
                    "entities",
                    "slots",
                    "span",
                    "start",
                    "end",
                    "type",
                    "intents",
                    "train",
                    "oos_test",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fmt=st.sampled_from(sorted(FILE_NAMES)),
    content=st.binary(max_size=600) | JSONISH.map(lambda v: json.dumps(v).encode()),
)
# Found by CI: a CLINC150 file with an unknown key and empty splits was read as nothing at all.
@example(fmt="clinc150", content=b'{"":null,"train":[]}')
def test_garbage_never_crashes_and_nothing_vanishes(tmp_path_factory, fmt, content):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / FILE_NAMES[fmt]
    if path.suffix == ".gz":
        content = gzip.compress(content)
    path.write_bytes(content)
    stats = ingest(DataSource(format=fmt, inputs=[str(path)]), folder / "out")
    written = sum(stats["splits"][s]["records"] for s in SPLITS)
    accounted = written + stats["duplicates_removed"] + stats["rejects"]["total"]
    assert accounted >= stats["records_read"] and (accounted > 0 or content.strip() == b"")


def test_spans_nlupp_and_kefu_forms_checked_against_the_text(tmp_path, write):
    nlupp = [
        {
            "text": "Send 20 pounds to Ann tomorrow",
            "intents": ["transfer"],
            "slots": {
                "amount_of_money": {"text": "20 pounds", "span": [5, 14]},
                "date": {"text": "tomorrow", "span": [22, 30]},
            },
        },
        {"text": "no slots here", "intents": ["deny"]},
        {"text": "bad offsets", "slots": {"date": {"text": "x", "span": [5, 40]}}},
        {"text": "wrong text", "slots": {"date": {"text": "nope", "span": [0, 5]}}},
    ]
    own = json.dumps(
        {
            "text": "block card 1234",
            "entities": [{"type": "card", "start": 11, "end": 15}],
            "split": "test",
        }
    )
    _, records, rejects = run(
        tmp_path,
        "spans",
        [write("fold0.json", json.dumps(nlupp, indent=1)), write("own.jsonl", own)],
    )
    by_text = {r["text"]: r for r in records}
    assert by_text["Send 20 pounds to Ann tomorrow"]["entities"] == [
        {"type": "amount_of_money", "start": 5, "end": 14, "text": "20 pounds"},
        {"type": "date", "start": 22, "end": 30, "text": "tomorrow"},
    ]
    assert by_text["no slots here"]["entities"] == [] and by_text["no slots here"]["intents"] == [
        "deny"
    ]
    assert by_text["block card 1234"]["entities"][0]["text"] == "1234"
    assert sorted((r["line"], r["code"]) for r in rejects) == [(30, "bad_span"), (42, "bad_span")]
    assert "0 <= start < end <= 11" in rejects[0]["reason"] + rejects[1]["reason"]
    assert "'nope' is not the text at 0:5, 'wrong'" in rejects[0]["reason"] + rejects[1]["reason"]


def test_cleaning_moves_spans_with_their_text_or_rejects_the_record(tmp_path, write):
    rows = [
        # full-width digits become ASCII and the double space collapses: the span moves left
        {"text": "Pay  ＄２０ to Bob", "entities": [{"type": "amount", "start": 5, "end": 8}]},
        # redaction replaces part of the span: it cannot be found again
        {
            "text": "call me on 415 555 0134 ext",
            "entities": [{"type": "ext", "start": 19, "end": 27}],
        },
    ]
    path = write("spans.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    _, records, rejects = run(tmp_path, "spans", [path])
    assert [(r["text"], r["entities"]) for r in records] == [
        ("Pay $20 to Bob", [{"type": "amount", "start": 4, "end": 7, "text": "$20"}])
    ]
    assert [r["code"] for r in rejects] == ["span_lost"] and "'0134 ext' at 19" in rejects[0][
        "reason"
    ]


def test_clinc150_splits_and_out_of_scope(tmp_path, write):
    data = {
        "train": [["what is my balance", "balance"], ["pay my bill", "pay_bill"], ["broken"]],
        "val": [["balance please", "balance"]],
        "oos_train": [["how tall is everest", "oos"]],
        "test": [["show my balance", "balance"]],
    }
    _, records, rejects = run(tmp_path, "clinc150", [write("data_full.json", json.dumps(data))])
    assert {(r["text"], r["label"]) for r in records} == {
        ("what is my balance", "balance"),
        ("pay my bill", "pay_bill"),
        ("balance please", "balance"),
        ("how tall is everest", "out_of_scope"),
        ("show my balance", "balance"),
    }
    assert [(r["code"], r["reason"]) for r in rejects] == [
        ("bad_row", "train[2]: expected [text, intent]")
    ]
