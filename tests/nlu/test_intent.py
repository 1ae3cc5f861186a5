"""Intent models: calibration and metrics by hand, and the embed model end to end on real text."""

from __future__ import annotations

import json

import pytest
import torch

from kefu.config import ConfigError, DataSource, load_config
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.nlu.intent import (
    OUT_OF_SCOPE,
    FineTunedEncoder,
    IntentRecipe,
    check_labels,
    intent_metrics,
    load_classifier,
    load_examples,
    train_intent,
)
from tests.conftest import REPO, kefu


def demo_intents(folder, language: str) -> None:
    intents = REPO / "examples" / "acme_bank" / f"intents_{language}.csv"
    ingest(DataSource(format="intents", inputs=[str(intents)]), folder)


def recipe(model: str, steps: int, batch_size: int = 32, **settings) -> IntentRecipe:
    train = {
        "max_steps": steps,
        "batch_size": batch_size,
        "warmup_steps": steps // 10,
        "eval_every": max(1, steps // 3),
        "eval_batches": 4,
        "precision": "fp32",
    }
    return IntentRecipe(kind="intent", model=model, train=train, **settings)


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
    demo_intents(tmp_path / "data", "en")
    classifier, info = train_intent(
        tmp_path / "data", tmp_path / "run", recipe("embed", 300, hidden=256)
    )
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


@pytest.mark.slow
def test_train_eval_and_nlu_from_the_command_line(tmp_path, write):
    rows = ["text,label"] + [f"where is my card {i},card_delivery" for i in range(20)]
    rows += [f"I want a loan of {i}000 dollars,loan_application" for i in range(20)]
    rows += [f"what's the weather like on day {i},out_of_scope" for i in range(20)]
    write("intents.csv", "\n".join(rows))
    assert (
        kefu(
            "data",
            "ingest",
            "-f",
            "intents",
            str(tmp_path / "intents.csv"),
            "-o",
            str(tmp_path / "data"),
        ).returncode
        == 0
    )
    trained = kefu(
        "train",
        "intent",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "120",
    )
    assert trained.returncode == 0, trained.stderr
    evaluated = kefu("eval", "intent", str(tmp_path / "run"), "--data", str(tmp_path / "data"))
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["accuracy_without_threshold"] == 1.0 and results["out_of_scope_recall"] == 1.0
    assert (tmp_path / "run" / "report.md").is_file() and (
        tmp_path / "run" / "confusion.png"
    ).is_file()
    said = kefu("nlu", str(tmp_path / "run"), "my card ending in 4821 has not arrived, I paid $20")
    assert said.returncode == 0, said.stderr
    assert (
        "intent: card_delivery" in said.stdout
        and "card_last4 '4821'" in said.stdout
        and "'amount': 20.0" in said.stdout
    )
    wrong = kefu(
        "train",
        "intent",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "r2"),
        "--model",
        "bert",
    )
    assert wrong.returncode == 1 and "'embed', 'textcnn' or 'finetune'" in wrong.stderr


@pytest.mark.slow
def test_textcnn_learns_the_chinese_demo_intents(tmp_path):
    demo_intents(tmp_path / "data", "zh")
    classifier, info = train_intent(tmp_path / "data", tmp_path / "run", recipe("textcnn", 400))
    texts, gold = load_examples(tmp_path / "data", "test")
    accuracy = intent_metrics(gold, [p.top[0][0] for p in classifier.predict(texts)])["accuracy"]
    print(f"TextCNN accuracy on the Chinese demo intents: {accuracy:.3f}")
    assert info["labels"] == 28 and accuracy >= 0.45  # 28 intents from 410 examples; chance is 0.04
    again = load_classifier(
        tmp_path / "run"
    )  # saved with its tokenizer: same answers after loading
    assert [p.top for p in again.predict(texts[:5])] == [
        p.top for p in classifier.predict(texts[:5])
    ]


def card_or_loan(tmp_path, write) -> None:
    rows = ["text,label"] + [f"where is my new card it is day {i},card_delivery" for i in range(16)]
    rows += [f"I would like to borrow {i}000 dollars,loan_application" for i in range(16)]
    write("intents.csv", "\n".join(rows))
    ingest(DataSource(format="intents", inputs=[str(tmp_path / "intents.csv")]), tmp_path / "data")


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"train": {"lr": 5e-5}},
        {"head": "cosine", "train": {"lr": 5e-5}},
        {"lora": {"rank": 4}, "train": {"lr": 1e-3}},
    ],
)
def test_finetuned_encoder_learns_and_reloads(tmp_path, write, settings):
    card_or_loan(tmp_path, write)
    chosen = recipe(
        "finetune", 30, batch_size=8, **{k: v for k, v in settings.items() if k != "train"}
    )
    chosen.train.lr = settings["train"]["lr"]
    classifier, _ = train_intent(tmp_path / "data", tmp_path / "run", chosen)
    texts, gold = load_examples(tmp_path / "data", "test")
    assert [p.top[0][0] for p in classifier.predict(texts)] == gold
    again = load_classifier(tmp_path / "run")  # LoRA adapters were merged: a plain encoder loads
    assert [p.top for p in again.predict(texts)] == [p.top for p in classifier.predict(texts)]
    # The word-embedding table is not trained unless the recipe asks for it.
    pretrained = FineTunedEncoder("all-MiniLM-L6-v2", 2).encoder.get_input_embeddings().weight
    assert torch.equal(again.network.encoder.get_input_embeddings().weight, pretrained)


def test_an_ensemble_averages_its_members_and_reloads(tmp_path, write):
    card_or_loan(tmp_path, write)
    textcnn = {"model": "textcnn", "train": {"max_steps": 40, "batch_size": 8, "eval_every": 20}}
    chosen = recipe("embed", 40, batch_size=8, ensemble=[textcnn])
    classifier, _ = train_intent(tmp_path / "data", tmp_path / "run", chosen)
    embed, cnn = classifier.network.members
    texts, gold = load_examples(tmp_path / "data", "test")
    features = classifier.featurize(texts)  # sentence embeddings for one, token ids for the other
    with torch.no_grad():
        mean = (embed(features[0]).softmax(-1) + cnn(features[1]).softmax(-1)) / 2
    confidence = [p.confidence for p in classifier.predict_features(features, top_k=1)]
    assert torch.allclose(torch.tensor(confidence), mean.max(-1).values, atol=1e-6)
    assert [p.top[0][0] for p in classifier.predict(texts)] == gold
    # Each member trained in its own folder; the TextCNN's tokenizer is kept there.
    assert (tmp_path / "run" / "member1" / "tokenizer.json").exists()
    assert (tmp_path / "run" / "member0" / "metrics.jsonl").exists()
    again = load_classifier(tmp_path / "run")
    assert [p.top for p in again.predict(texts)] == [p.top for p in classifier.predict(texts)]


def test_recipes_start_from_the_models_defaults(write):
    path = write("intent.yaml", "kind: intent\nmodel: finetune\ntrain:\n  max_steps: 10\n")
    loaded = load_config(path, kind="intent")
    assert (loaded.train.max_steps, loaded.train.lr, loaded.train.label_smoothing) == (
        10,
        1e-4,
        0.1,
    )
    embed = IntentRecipe(kind="intent", model="embed")
    assert (embed.train.lr, embed.train.batch_size) == (3e-3, 64)
    # Each model of an ensemble starts from its own defaults, and is checked like the first.
    path = write("ensemble.yaml", "kind: intent\nmodel: finetune\nensemble:\n  - model: embed\n")
    member = load_config(path, kind="intent").ensemble[0]
    assert (member.model, member.train.lr, member.train.batch_size) == ("embed", 3e-3, 64)
    bad_member = write("member.yaml", "kind: intent\nensemble:\n  - model: embed\n    hiden: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad_member, kind="intent")
    assert "member.yaml:4: ensemble.0.hiden: unknown key" in str(err.value)
    bad = write("bad.yaml", "kind: intent\nmodel: bert\nlora:\n  rank: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, kind="intent")
    assert "bad.yaml:2" in str(err.value) and "'embed', 'textcnn' or 'finetune'" in str(err.value)
    assert "bad.yaml:4" in str(err.value) and "lora.rank" in str(err.value)


def test_cosine_head_starts_as_a_nearest_centroid_classifier():
    from kefu.nlu.intent import encoder_features

    texts = ["where is my card", "my card has not come", "I want a loan", "can I borrow money"]
    targets = [0, 0, 1, 1]
    network = FineTunedEncoder("all-MiniLM-L6-v2", 2, "cosine").eval()
    features = encoder_features("all-MiniLM-L6-v2", 32)([*texts, "lend me 500 dollars"])
    network.start_at_centroids(features[:4], targets)
    with torch.no_grad():
        unit = torch.nn.functional.normalize(network.pooled(features), dim=-1)
        centroids = torch.stack([unit[:2].mean(0), unit[2:4].mean(0)])
        expected = 20.0 * unit @ torch.nn.functional.normalize(centroids, dim=-1).T
        assert torch.allclose(network(features), expected, atol=1e-5)
    assert network(features).argmax(-1).tolist() == [0, 0, 1, 1, 1]
