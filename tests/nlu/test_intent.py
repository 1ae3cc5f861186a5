"""Intent models: calibration and metrics by hand, and the embed model end to end on real text."""

from __future__ import annotations

import pytest
import torch

from kefu.config import DataSource
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.nlu.intent import (
    OUT_OF_SCOPE,
    calibrate_threshold,
    check_labels,
    intent_metrics,
    load_examples,
    train_embed,
)
from kefu.train.loop import TrainConfig
from tests.conftest import REPO


def test_threshold_is_the_lowest_that_keeps_the_precision():
    confidence = torch.tensor([0.6, 0.9, 0.7, 0.8])
    correct = torch.tensor([True, True, False, True])
    # Sorted: 0.9 ✓, 0.8 ✓, 0.7 ✗, 0.6 ✓ → precision 1, 1, 2/3, 3/4 of the answers kept.
    assert calibrate_threshold(confidence, correct, 0.9) == pytest.approx(0.8)
    assert calibrate_threshold(confidence, correct, 0.7) == pytest.approx(0.6)
    assert calibrate_threshold(confidence, torch.tensor([False] * 4), 0.9) == 1.0


def test_metrics_the_clinc150_way():
    gold = ["card", "card", "loan", OUT_OF_SCOPE, OUT_OF_SCOPE]
    predicted = ["card", "loan", "loan", OUT_OF_SCOPE, "card"]
    metrics = intent_metrics(gold, predicted)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert metrics["out_of_scope_recall"] == pytest.approx(1 / 2)
    card = metrics["per_label"]["card"]
    assert (card["precision"], card["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    loan = metrics["per_label"]["loan"]
    assert (loan["precision"], loan["recall"], loan["f1"]) == (
        pytest.approx(1 / 2),
        1.0,
        pytest.approx(2 / 3),
    )


def test_data_no_classifier_can_learn_from_is_a_clear_error():
    with pytest.raises(KefuError, match="needs at least two"):
        check_labels(["card"] * 5, [], "valid")
    with pytest.raises(KefuError, match="labels never seen in training: lone"):
        check_labels(["card", "loan"], ["card", "lone"], "test")


@pytest.mark.slow
def test_embed_model_end_to_end_on_the_demo_intents(tmp_path):
    source = DataSource(
        format="intents", inputs=[str(REPO / "examples" / "acme_bank" / "intents_en.csv")]
    )
    ingest(source, tmp_path / "data")
    config = TrainConfig(
        max_steps=300,
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        eval_every=100,
        eval_batches=4,
        weight_decay=0.01,
    )
    classifier, info = train_embed(tmp_path / "data", tmp_path / "run", config, hidden=256)
    assert info["labels"] == 28 and 0.0 < classifier.threshold < 1.0
    texts, gold = load_examples(tmp_path / "data", "test")
    predictions = classifier.predict(texts)
    top1 = [p.top[0][0] for p in predictions]
    assert intent_metrics(gold, top1)["accuracy"] >= 0.80
    assert all(len(p.top) == 3 and p.top[0][1] >= p.top[1][1] for p in predictions)
    lost = classifier.predict(["I lost my debit card, please block it"])[0]
    assert lost.label == "card_lost_or_stolen"
    assert (tmp_path / "run" / "model.safetensors").is_file() and (
        tmp_path / "run" / "config.json"
    ).is_file()
