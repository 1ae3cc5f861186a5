"""The learned tagger: BIO tags and spans by hand, metrics by hand, and a small end to end run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kefu.config import DataSource
from kefu.data.ingest import ingest
from kefu.models.encoder import pretrained_tokenizer
from kefu.nlu.tagger import (
    Encoded,
    TaggerRecipe,
    bio_targets,
    decode_spans,
    load_spans,
    load_tagger,
    multilabel_metrics,
    span_metrics,
    train_tagger,
)
from kefu.train.loop import IGNORE
from tests.conftest import kefu

TAGS = ["O", "B-amount", "I-amount", "B-date", "I-date", "B-time", "I-time"]


def test_spans_become_bio_tags_on_word_pieces_and_back():
    text = "Send 20 pounds to Ann tomorrow at 5pm"
    record = {
        "text": text,
        "entities": [
            {"type": "amount", "start": 5, "end": 14},
            {"type": "date", "start": 22, "end": 30},
            {"type": "time", "start": 34, "end": 37},
        ],
    }
    encoded = Encoded(pretrained_tokenizer("all-MiniLM-L6-v2"), [text], 32)
    targets = bio_targets(encoded, [record], TAGS)[0].tolist()
    # [CLS] send 20 pounds to ann tomorrow at 5 ##pm [SEP]
    assert targets == [IGNORE, 0, 1, 2, 0, 0, 3, 0, 5, 6, IGNORE]
    spans = decode_spans(text, encoded.offsets[0], encoded.is_piece[0], targets, TAGS)
    assert [(e.type, e.text, e.start, e.end) for e in spans] == [
        ("amount", "20 pounds", 5, 14),
        ("date", "tomorrow", 22, 30),
        ("time", "5pm", 34, 37),
    ]


def test_an_inside_tag_of_another_type_opens_a_new_span():
    text = "Send 20 pounds"
    encoded = Encoded(pretrained_tokenizer("all-MiniLM-L6-v2"), [text], 16)
    tags = [IGNORE, 0, 2, 4, IGNORE]  # send O, 20 I-amount, pounds I-date
    spans = decode_spans(text, encoded.offsets[0], encoded.is_piece[0], tags, TAGS)
    assert [(e.type, e.text) for e in spans] == [("amount", "20"), ("date", "pounds")]


def test_span_metrics_need_the_exact_span_and_type():
    gold = [[("date", 0, 5), ("amount", 7, 9)], [("time", 3, 6)]]
    found = [[("date", 0, 5), ("amount", 7, 10)], [("date", 3, 6)]]
    metrics = span_metrics(gold, found)
    # tp 1 (date); fp 2 (amount 7-10, date 3-6); fn 2 (amount 7-9, time 3-6)
    assert (metrics["precision"], metrics["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert metrics["per_type"]["date"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert metrics["per_type"]["time"]["f1"] == 0.0


def test_multilabel_micro_f1_counts_each_intent_of_each_example():
    metrics = multilabel_metrics([["change", "card"], ["pin"]], [["card"], ["pin", "new"]])
    # tp 2 (card, pin), fp 1 (new), fn 1 (change)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
    )
    assert metrics["exact_match"] == 0.0


def transfers(count: int, seed: int) -> list[dict]:
    """Money transfers and card blocks with amounts, names and days, annotated."""
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Chen Wei", "Dana", "Emeka", "Farah", "Goran", "Hiro"]
    days = ["tomorrow", "on Monday", "next Friday", "today", "on the 3rd"]
    rows = []
    for _ in range(count):
        amount, name, day = f"{rng.randint(2, 900)} dollars", rng.choice(names), rng.choice(days)
        if rng.random() < 0.5:
            head = "please send "
            text = f"{head}{amount} to {name} {day}"
            intents = ["transfer"]
        else:
            head = "block my card and send "
            text = f"{head}{amount} to {name} {day}"
            intents = ["transfer", "block_card"]
        a = len(head)
        n = text.index(name, a + len(amount))
        d = text.rindex(day)
        rows.append(
            {
                "text": text,
                "intents": intents,
                "entities": [
                    {"type": "amount", "start": a, "end": a + len(amount)},
                    {"type": "person", "start": n, "end": n + len(name)},
                    {"type": "date", "start": d, "end": d + len(day)},
                ],
            }
        )
    return rows


@pytest.mark.slow
def test_tagger_learns_spans_and_intents_end_to_end(tmp_path, write):
    rows = [dict(r, split="train") for r in transfers(160, 0)]
    rows += [dict(r, split="valid") for r in transfers(24, 1)]
    rows += [dict(r, split="test") for r in transfers(40, 2)]
    path = write("spans.jsonl", "\n".join(json.dumps(r) for r in rows))
    ingest(DataSource(format="spans", inputs=[str(path)]), tmp_path / "data")
    recipe = TaggerRecipe(
        kind="entities",
        train={
            "max_steps": 80,
            "batch_size": 16,
            "warmup_steps": 8,
            "eval_every": 40,
            "eval_batches": 2,
            "precision": "fp32",
        },
    )
    tagger = train_tagger(
        load_spans(tmp_path / "data", "train"),
        load_spans(tmp_path / "data", "valid"),
        tmp_path / "run",
        recipe,
    )
    test = load_spans(tmp_path / "data", "test")
    entities, intents = tagger.predict(["please send 45 dollars to Goran on Monday"])[0]
    assert [(e.type, e.text) for e in entities] == [
        ("amount", "45 dollars"),
        ("person", "Goran"),
        ("date", "on Monday"),
    ]
    assert set(intents) == {"transfer"}
    evaluated = kefu("eval", "entities", str(tmp_path / "run"), "--data", str(tmp_path / "data"))
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["examples"] == len(test) == 40
    assert results["entities"]["f1"] >= 0.95 and results["intents"]["f1"] >= 0.95
    again = load_tagger(tmp_path / "run")
    texts = [r["text"] for r in test[:5]]
    assert [[(e.type, e.start, e.end) for e in found] for found, _ in again.predict(texts)] == [
        [(e.type, e.start, e.end) for e in found] for found, _ in tagger.predict(texts)
    ]


def test_rule_extractors_scored_from_the_command_line_in_both_languages(tmp_path, write):
    rows = [
        {"text": "I paid $20 yesterday", "entities": [{"type": "amount", "start": 7, "end": 10}]},
        {"text": "我昨天转了100元", "entities": [{"type": "amount", "start": 5, "end": 9}]},
        {
            "text": "card ending in 4821",
            "entities": [{"type": "card_last4", "start": 15, "end": 19}],
        },
        {"text": "no entity here at all", "entities": [{"type": "amount", "start": 0, "end": 2}]},
    ]
    path = write(
        "spans.jsonl",
        "\n".join(json.dumps(dict(r, split="test"), ensure_ascii=False) for r in rows),
    )
    assert (
        kefu("data", "ingest", "-f", "spans", str(path), "-o", str(tmp_path / "data")).returncode
        == 0
    )
    scored = kefu(
        "eval",
        "entities",
        "--rules",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "ev"),
    )
    assert scored.returncode == 0, scored.stderr
    results = json.loads((tmp_path / "ev" / "eval.json").read_text())
    # rules also find the two dates nobody annotated here: 3 right, 2 extra, 1 missed
    per_type = results["entities"]["per_type"]
    assert (per_type["amount"]["precision"], per_type["amount"]["recall"]) == (
        1.0,
        pytest.approx(2 / 3),
    )
    assert per_type["card_last4"]["f1"] == 1.0 and per_type["date"]["precision"] == 0.0
    assert "'no'" in (tmp_path / "ev" / "report.md").read_text()  # the most missed span is listed
    neither = kefu("eval", "entities", "--data", str(tmp_path / "data"))
    assert neither.returncode == 1 and "or --rules" in neither.stderr


def test_tagger_refuses_data_without_spans_or_with_unseen_types(tmp_path):
    from kefu.errors import KefuError

    recipe = TaggerRecipe(kind="entities")
    with pytest.raises(KefuError, match="no entities"):
        train_tagger([{"text": "hi", "entities": []}], [], tmp_path, recipe)
    seen = [{"text": "pay 5", "entities": [{"type": "amount", "start": 4, "end": 5}]}]
    unseen = [{"text": "on monday", "entities": [{"type": "date", "start": 3, "end": 9}]}]
    with pytest.raises(KefuError, match="never seen in training: date"):
        train_tagger(seen, unseen, tmp_path, recipe)


def test_features_keep_ignore_on_padding():
    encoded = Encoded(pretrained_tokenizer("all-MiniLM-L6-v2"), ["hi", "a longer text here"], 16)
    targets = bio_targets(encoded, [{"entities": []}, {"entities": []}], TAGS)
    assert targets[0].tolist().count(IGNORE) == int((encoded.features[0, 1] == 0).sum()) + 2
    assert torch.equal(
        encoded.is_piece[0],
        torch.tensor([False, True] + [False] * (encoded.features.shape[-1] - 2)),
    )


def test_run_folders_of_the_wrong_kind_are_clear_errors(tmp_path):
    from kefu.errors import KefuError
    from kefu.nlu.intent import load_classifier

    with pytest.raises(KefuError, match=r"no config.json.*`kefu train entities`"):
        load_tagger(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "intent", "model": "embed"}')
    with pytest.raises(KefuError, match=r"does not describe a kefu tagger model .kind: 'intent'"):
        load_tagger(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "intent", "model": "bert"}')
    with pytest.raises(KefuError, match="model 'bert' is none of embed, textcnn, finetune"):
        load_classifier(tmp_path)
