from pathlib import Path

import pytest

from kefu.config import ConfigError, config_kinds, load_config
from tests.conftest import REPO

SHIPPED = sorted(
    [
        *REPO.glob("recipes/**/*.yaml"),
        *REPO.glob("examples/**/kefu.yaml"),
        *REPO.glob("kefu/templates/**/kefu.yaml"),
    ]
)


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 6


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, tuple(config_kinds().values()))


def test_relative_paths_are_anchored_at_the_file(tmp_path):
    path = tmp_path / "sub" / "r.yaml"
    path.parent.mkdir()
    path.write_text("kind: data\nformat: messages\ninputs: [chats/*.jsonl]\n")
    assert load_config(path).inputs == [str(tmp_path / "sub" / "chats" / "*.jsonl")]


def check_fails(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(str(path), "FILE")


def test_unknown_key_names_line_and_closest_key(tmp_path):
    message = check_fails(
        tmp_path,
        "kind: project\nname: demo\ndata:\n  chats:\n    format: messages\n    inputs: [a.jsonl]\n    redcat: {enabled: false}\n",
    )
    assert "FILE:7: data.chats.redcat: unknown key — did you mean 'redact'?" in message
    assert "Valid keys here: format, inputs, columns" in message


def test_bad_value_names_file_line_key_value_and_expectation(tmp_path):
    message = check_fails(
        tmp_path,
        "kind: project\nname: demo\nlanguages: [en, fr]\ndata:\n  chats:\n    format: whatsapp\n    inputs: [a.jsonl]\n    split: {train: 0.9, valid: 0.2, test: 0.1}\n",
    )
    assert "FILE:3: languages.1: Input should be 'en' or 'zh' (got 'fr')" in message
    assert (
        "FILE:6: data.chats.format: unknown format 'whatsapp'; valid formats: messages, sharegpt, csv"
        in message
    )
    assert "FILE:8: data.chats.split: train + valid + test must add up to 1, got 1.2" in message


def test_missing_keys_and_cross_references(tmp_path):
    assert "FILE:1: name: Field required" in check_fails(tmp_path, "kind: project\ndata: {}\n")
    message = check_fails(
        tmp_path,
        "kind: project\nname: demo\ndata:\n  chats: {format: messages, inputs: [a.jsonl]}\nknowledge_base:\n  sources: [faq]\n",
    )
    assert (
        "knowledge_base.sources names data set 'faq', which is not under `data`; defined data sets: chats"
        in message
    )


def test_unknown_column_field_for_the_format(tmp_path):
    message = check_fails(
        tmp_path, "kind: data\nformat: csv\ninputs: [x.csv]\ncolumns: {speaker: who}\n"
    )
    assert (
        "format 'csv' has no field 'speaker' to map; valid fields: conversation_id, role, text, timestamp"
        in message
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: data\nformat: [unclosed\n", "FILE:3:1: invalid YAML"),
        ("- just\n- a list\n", "expected a mapping of keys starting with `kind:`"),
        ("", "expected a mapping"),
        (
            "kind: model\n",
            "FILE:1: kind: 'model' is not a config kind; valid kinds: project, data, train",
        ),
    ],
)
def test_unreadable_files(tmp_path, text, expected):
    assert expected in check_fails(tmp_path, text)


def test_a_file_of_the_wrong_kind(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("kind: data\nformat: faq\ninputs: [faq.csv]\n")
    with pytest.raises(ConfigError, match="this command needs `kind: project`"):
        load_config(path, kind="project")


def test_an_entity_pattern_that_does_not_compile(tmp_path):
    message = check_fails(
        tmp_path,
        "kind: project\nname: demo\ndata: {}\nentities:\n  patterns: {order_id: 'ORD-(\\\\d+'}\n",
    )
    assert (
        "FILE:5: entities.patterns: pattern of 'order_id' is not a valid regular expression"
        in message
    )


def test_knowledge_base_paths_are_anchored_and_renamed_faq_columns_are_refused(tmp_path):
    path = tmp_path / "p" / "kefu.yaml"
    path.parent.mkdir()
    faq = "faq: {format: faq, inputs: [faq.csv]}"
    path.write_text(
        f"kind: project\nname: p\ndata:\n  {faq}\nknowledge_base:\n  sources: [faq]\n"
        "  documents: [help/]\n  queries: held_out.csv\n  precision: 0.95\n"
    )
    kb = load_config(path).knowledge_base
    assert kb.documents == [str(tmp_path / "p" / "help/")]
    assert kb.queries == str(tmp_path / "p" / "held_out.csv") and kb.precision == 0.95
    renamed = "faq: {format: faq, inputs: [faq.csv], columns: {question: q}}"
    message = check_fails(
        tmp_path, f"kind: project\nname: p\ndata:\n  {renamed}\nknowledge_base:\n  sources: [faq]\n"
    )
    assert "data set 'faq' renames columns" in message
