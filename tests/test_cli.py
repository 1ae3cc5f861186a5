"""The real `kefu` command in a subprocess: exit codes, messages, outputs."""

import json

from tests.conftest import REPO, kefu


def test_help_lists_the_working_commands():
    result = kefu("--help")
    assert result.returncode == 0
    for command in ("init", "build", "config", "data", "tokenizer"):
        assert command in result.stdout
    assert "ingest" in kefu("data", "--help").stdout


def test_usage_error_exits_2():
    result = kefu("data", "ingest", "--no-such-flag")
    assert result.returncode == 2 and "No such option" in result.stderr


def test_bad_input_exits_1_with_one_paragraph_and_no_traceback(tmp_path):
    result = kefu(
        "data",
        "ingest",
        "--format",
        "messages",
        str(tmp_path / "missing.jsonl"),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: input") and "matches no file" in result.stderr
    assert "Traceback" not in result.stderr
    result = kefu(
        "data", "ingest", "--format", "whatsapp", "x.jsonl", "--out", str(tmp_path / "out")
    )
    assert (
        result.returncode == 1
        and "unknown format 'whatsapp'; valid formats: messages" in result.stderr
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: data\nformat: messages\ninputs: [x]\nsplitt: {}\n")
    result = kefu("config", "check", str(bad))
    assert (
        result.returncode == 1
        and f"{bad}:4: splitt: unknown key — did you mean 'split'?" in result.stderr
    )


def test_ingest_stats_and_tokenizer_from_the_command_line(tmp_path, write):
    rows = "ticket,sender,message\n1,customer,My number is 138-1234-5678\n1,agent,Thanks\n2,customer,hi\n2,agent,hello\n2,martian,??\n"
    export = write("export.csv", rows)
    out = tmp_path / "data"
    result = kefu(
        "-q",
        "data",
        "ingest",
        "-f",
        "csv",
        str(export),
        "-o",
        str(out),
        "--column",
        "conversation_id=ticket",
        "--column",
        "role=sender",
        "--column",
        "text=message",
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert (
        stats["records_read"] == 1
        and stats["pii"] == {"PHONE": 1}
        and stats["rejects"]["unknown_role"] == 1
    )
    assert "rejected 1 (unknown_role 1)" in result.stdout
    shown = kefu("data", "stats", str(out), "--json")
    assert json.loads(shown.stdout) == stats
    tok = tmp_path / "tok.json"
    result = kefu("-q", "tokenizer", "train", str(out), "--vocab-size", "300", "--out", str(tok))
    assert result.returncode == 0, result.stderr
    shown = kefu("tokenizer", "encode", str(tok), "我的电话 [PHONE]")
    assert "'[PHONE]'" in shown.stdout


def test_config_check_accepts_the_demo_project():
    result = kefu("config", "check", str(REPO / "examples" / "acme_bank" / "kefu.yaml"))
    assert result.returncode == 0 and "is a valid project config" in result.stdout


def test_init_then_build_then_nothing_to_redo(tmp_path):
    project = tmp_path / "shop"
    assert kefu("init", str(project)).returncode == 0
    assert "name: shop" in (project / "kefu.yaml").read_text()
    first = kefu("-q", "build", str(project))
    assert first.returncode == 0, first.stderr
    assert "rebuilt: data/conversations, data/intents, data/faq, tokenizer, kb;" in first.stdout
    # Five FAQ entries are searchable, but too few to calibrate direct answers on.
    assert (project / "build" / "kb" / "manifest.json").is_file()
    assert not (project / "build" / "kb" / "calibration.json").exists()
    conversations = [
        json.loads(line)
        for s in ("train", "valid", "test")
        for line in (project / "build/data/conversations" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert len(conversations) == 5 and "[PHONE]" in json.dumps(conversations, ensure_ascii=False)
    second = kefu("-q", "build", str(project))
    assert "rebuilt: nothing" in second.stdout
    with open(project / "data" / "intents.csv", "a", encoding="utf-8") as intents:
        intents.write("is my parcel lost,order_status\n")
    third = kefu("-q", "build", str(project))
    assert "rebuilt: data/intents, tokenizer;" in third.stdout
    again = kefu("init", str(project))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_init_never_overwrites_a_users_files(tmp_path):
    mine = tmp_path / "shop" / "data" / "faq.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("question,answer\nmine,mine\n")
    result = kefu("init", str(tmp_path / "shop"))
    assert result.returncode == 1 and "already has data/faq.csv" in result.stderr
    assert mine.read_text() == "question,answer\nmine,mine\n"
    assert not (tmp_path / "shop" / "kefu.yaml").exists()
