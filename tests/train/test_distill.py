"""Knowledge distillation: the loss by hand, and tiny teachers distilled end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from kefu.config import DataSource
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.models.checkpoint import load_run
from kefu.nlu.intent import IntentRecipe, load_classifier, load_examples, train_intent
from kefu.text.tokenizer import train_tokenizer
from kefu.train.data import build_batches
from kefu.train.distill import (
    distill_generator,
    distill_intent,
    distillation_loss,
    teacher_kind,
)
from kefu.train.loop import IGNORE
from kefu.train.recipe import TrainRecipe
from kefu.train.run import run_training
from tests.conftest import kefu

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
TEACHER = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [5.0, -5.0, 0.0]])
TARGETS = torch.tensor([1, 2, IGNORE])  # the last row carries no loss


def by_hand(temperature: float, alpha: float) -> float:
    """The loss of STUDENT, TEACHER, TARGETS written out in plain floats."""

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(x / temperature) for x in row]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for s, t, y in zip(
        STUDENT.tolist()[:2], TEACHER.tolist()[:2], TARGETS.tolist()[:2], strict=True
    ):
        p, q = softmax(t), softmax(s)
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        ce = -math.log(math.exp(s[y]) / sum(math.exp(x) for x in s))
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
    return total


def test_the_loss_matches_a_hand_computation():
    loss = distillation_loss(STUDENT, TEACHER, TARGETS, temperature=2.0, alpha=0.5)
    assert float(loss) == pytest.approx(by_hand(2.0, 0.5), rel=1e-6)
    assert float(loss) == pytest.approx(0.609637, rel=1e-5)  # golden value
    assert float(distillation_loss(STUDENT, TEACHER, TARGETS, 3.0, 0.25)) == pytest.approx(
        by_hand(3.0, 0.25), rel=1e-6
    )


def test_the_loss_reduces_to_cross_entropy_and_to_kl():
    ce = F.cross_entropy(STUDENT, TARGETS, ignore_index=IGNORE, reduction="sum")
    assert torch.allclose(distillation_loss(STUDENT, TEACHER, TARGETS, 2.0, alpha=0.0), ce)
    kept = TARGETS != IGNORE
    kl = F.kl_div(
        F.log_softmax(STUDENT[kept], -1),
        F.log_softmax(TEACHER[kept], -1),
        log_target=True,
        reduction="sum",
    )
    assert torch.allclose(distillation_loss(STUDENT, TEACHER, TARGETS, 1.0, alpha=1.0), kl)
    # A student that already is the teacher has nothing left to learn from it, at any T.
    for temperature in (1.0, 2.0, 4.0):
        same = distillation_loss(TEACHER, TEACHER, TARGETS, temperature, alpha=1.0)
        assert abs(float(same)) < 1e-6
    # Language-model shapes (B, T, V) with ignored positions, and a teacher so sure that some
    # probabilities underflow to 0: still finite.
    logits = torch.randn(2, 3, 5, requires_grad=True)
    sure = torch.full((2, 3, 5), -1e4).index_fill(-1, torch.tensor([0]), 0.0)
    targets = torch.tensor([[0, 1, IGNORE], [IGNORE, 2, 3]])
    loss = distillation_loss(logits, sure, targets, 2.0, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[0, 2] == 0).all()  # no gradient from a position without a loss
    with pytest.raises(KefuError, match="temperature > 0"):
        distillation_loss(STUDENT, TEACHER, TARGETS, 0.0, 0.5)


# -- generators ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chats")
    lines = []
    for i in range(60):
        messages = [
            {"role": "user", "content": f"Where is my card number {i}? 卡在哪里"},
            {"role": "assistant", "content": f"Your card {i} arrives in {i % 7} days. 请耐心等待"},
        ]
        lines.append(json.dumps({"id": f"c{i}", "messages": messages}, ensure_ascii=False))
    (folder / "chats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(DataSource(format="messages", inputs=[str(folder / "chats.jsonl")]), folder / "data")
    return folder / "data"


def tiny_recipe(arch: str, steps: int, data: Path, **fields) -> TrainRecipe:
    return TrainRecipe.model_validate(
        {
            "kind": "train",
            "task": "lm",
            "arch": arch,
            "data": str(data),
            "gpt": {"context_length": 32, "n_layer": 2, "n_head": 2, "d_model": 48},
            "lstm": {"context_length": 32, "n_layer": 1, "d_embed": 16, "d_hidden": 24},
            "tokenizer_vocab_size": 400,
            "train": {
                "max_steps": steps,
                "batch_size": 8,
                "warmup_steps": 2,
                "eval_every": steps,
                "eval_batches": 2,
                "lr": 0.01,
            },
            **fields,
        }
    )


@pytest.fixture(scope="module")
def teacher(chats, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "gpt"
    run_training(tiny_recipe("gpt", 60, chats), run)
    return run


@torch.no_grad()
def kl_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, inputs, targets) -> float:
    kept = int((targets != IGNORE).sum())
    return float(distillation_loss(student(inputs), teacher(inputs), targets, 1.0, 1.0)) / kept


def test_a_generator_student_moves_towards_its_teacher(chats, teacher, tmp_path):
    recipe = tiny_recipe("lstm", 200, chats)
    summary = distill_generator(teacher, recipe, tmp_path / "student", temperature=1.0, alpha=1.0)
    taught = load_run(tmp_path / "student")
    assert taught.arch == "lstm" and teacher_kind(tmp_path / "student") == "generator"
    recorded = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())
    assert recorded["distilled_from"] == {
        "teacher": str(teacher),
        "kind": "generator",
        "temperature": 1.0,
        "alpha": 1.0,
    }
    guide = load_run(teacher)
    inputs, targets = build_batches("lm", chats, "valid", guide.tokenizer, 32, 0).batch(0, 8)
    torch.manual_seed(recipe.train.seed)  # the student as it started
    from kefu.models import build_model

    untrained = build_model("lstm", taught.model.config).eval()
    before = kl_to_teacher(untrained, guide.model, inputs, targets)
    after = kl_to_teacher(taught.model, guide.model, inputs, targets)
    # A student trained on the labels alone (alpha 0) learns the data, not the teacher: further.
    distill_generator(teacher, recipe, tmp_path / "alone", alpha=0.0)
    alone = kl_to_teacher(load_run(tmp_path / "alone").model, guide.model, inputs, targets)
    print(
        f"KL to the teacher: untrained {before:.3f}, distilled {after:.3f}, labels only {alone:.3f}"
    )
    assert after < 0.5 * before and after < alone, (before, after, alone)
    # The comparison: quality (perplexity) and speed of both, as JSON and Markdown.
    assert summary["quality"] == "perplexity" and summary["split"] == "test"
    assert summary["student"]["parameters"] < summary["teacher"]["parameters"]
    assert all(summary[m]["latency_ms"] > 0 for m in ("teacher", "student"))
    saved = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert saved["student"]["quality"] == pytest.approx(summary["student"]["quality"])
    assert "| student: lstm |" in (tmp_path / "student" / "distill.md").read_text()


def test_a_student_with_another_tokenizer_is_a_clear_error(chats, teacher, tmp_path):
    other = train_tokenizer(["completely different text 完全不同"] * 20, 300)
    other.save(tmp_path / "other.json")
    recipe = tiny_recipe("lstm", 5, chats, tokenizer=str(tmp_path / "other.json"))
    with pytest.raises(KefuError, match="not the teacher's") as error:
        distill_generator(teacher, recipe, tmp_path / "student")
    message = str(error.value)
    assert str(tmp_path / "other.json") in message and str(teacher / "tokenizer.json") in message
    assert "drop `tokenizer:`" in message and not (tmp_path / "student").exists()


# -- intent classifiers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def intents(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("intents")
    rows = ["text,label"]
    rows += [f"where is my new card it is day {i},card_delivery" for i in range(20)]
    rows += [f"I would like to borrow {i}000 dollars,loan_application" for i in range(20)]
    rows += [f"what is my balance on account {i},balance" for i in range(20)]
    (folder / "intents.csv").write_text("\n".join(rows), encoding="utf-8")
    ingest(DataSource(format="intents", inputs=[str(folder / "intents.csv")]), folder / "data")
    return folder / "data"


def cnn_recipe(steps: int, **fields) -> IntentRecipe:
    train = {"max_steps": steps, "batch_size": 8, "eval_every": steps // 2, "eval_batches": 2}
    return IntentRecipe(kind="intent", model="textcnn", train=train, **fields)


@pytest.fixture(scope="module")
def intent_teacher(intents, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("intent_teacher") / "run"
    train_intent(intents, run, cnn_recipe(60))
    return run


def test_an_intent_student_learns_from_soft_labels_and_loads(intents, intent_teacher, tmp_path):
    student = cnn_recipe(40, vocab_size=300)
    summary = distill_intent(intent_teacher, student, intents, tmp_path / "student", 2.0, 0.7)
    classifier = load_classifier(tmp_path / "student")
    assert classifier.description["distilled_from"]["teacher"] == str(intent_teacher)
    assert classifier.description["distilled_from"]["alpha"] == 0.7
    texts, gold = load_examples(intents, "test")
    assert [p.top[0][0] for p in classifier.predict(texts)] == gold
    # Calibrated on the valid split as usual (every valid query right here: no threshold needed).
    assert 0.0 <= classifier.threshold < 1.0
    assert summary["quality"] == "accuracy" and summary["student"]["quality"] == 1.0
    assert summary["teacher"]["model"] == summary["student"]["model"] == "textcnn"
    assert (tmp_path / "student" / "metrics.jsonl").exists()
    with pytest.raises(KefuError, match="one model"):
        distill_intent(
            intent_teacher, cnn_recipe(4, ensemble=[{"model": "textcnn"}]), intents, tmp_path / "x"
        )


def test_distill_from_the_command_line(intents, intent_teacher, teacher, tmp_path):
    recipe = tmp_path / "student.yaml"
    recipe.write_text(
        "kind: intent\nmodel: textcnn\nvocab_size: 300\n"
        "train: {max_steps: 30, batch_size: 8, eval_every: 15, eval_batches: 2}\n"
    )
    out = tmp_path / "student"
    done = kefu(
        "train", "distill", "--teacher", str(intent_teacher), "--student", str(recipe),
        "--data", str(intents), "--out", str(out), "--temperature", "3", "--alpha", "0.8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "student against teacher" in done.stdout and "accuracy on test" in done.stdout
    assert json.loads((out / "distill.json").read_text())["distilled_from"]["temperature"] == 3.0
    evaluated = kefu("eval", "intent", str(out), "--data", str(intents))
    assert evaluated.returncode == 0, evaluated.stderr
    # A generator teacher with an intent recipe: the kinds must match.
    wrong = kefu(
        "train", "distill", "--teacher", str(teacher), "--student", str(recipe),
        "--out", str(tmp_path / "wrong"),
    )  # fmt: skip
    assert wrong.returncode == 1 and "needs `kind: train`" in wrong.stderr
    # A generator student given another tokenizer: one paragraph that says both and what to do.
    other = train_tokenizer(["completely different text 完全不同"] * 20, 300)
    other.save(tmp_path / "other.json")
    lstm = tmp_path / "lstm.yaml"
    lstm.write_text(yaml.safe_dump(json.loads(tiny_recipe("lstm", 5, intents).model_dump_json())))
    mismatch = kefu(
        "train", "distill", "--teacher", str(teacher), "--student", str(lstm),
        "--tokenizer", str(tmp_path / "other.json"), "--out", str(tmp_path / "mismatch"),
    )  # fmt: skip
    assert mismatch.returncode == 1 and "Traceback" not in mismatch.stderr
    assert "is not the teacher's" in mismatch.stderr and "other.json" in mismatch.stderr
