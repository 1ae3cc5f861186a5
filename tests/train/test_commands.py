"""`kefu train lm|chat`, `kefu eval lm`, `kefu chat` and `kefu export hf` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import kefu, write_chats

TINY_RECIPE = """kind: train
task: {task}
arch: gpt
gpt: {{context_length: 48, n_layer: 2, n_head: 2, d_model: 32}}
lstm: {{context_length: 48, n_layer: 1, d_embed: 32, d_hidden: 32, dropout: 0.0}}
tokenizer_vocab_size: 400
train: {{max_steps: 6, batch_size: 4, warmup_steps: 2, eval_every: 3, eval_batches: 2, lr: 0.01}}
"""


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chats")
    write_chats(folder)
    return folder


def recipe(folder: Path, task: str) -> Path:
    path = folder / f"{task}.yaml"
    path.write_text(TINY_RECIPE.format(task=task))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_with_ddp_match_one_process(chats, tmp_path):
    args = ["train", "lm", "--recipe", str(recipe(tmp_path, "lm")), "--data", str(chats / "data")]
    single = kefu(*args, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    torchrun = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "kefu",
    ]
    double = kefu(*args, "--out", str(tmp_path / "ddp"), module=torchrun)
    assert double.returncode == 0, double.stderr
    one, two = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert [m["step"] for m in one] == [m["step"] for m in two] == [3, 6]
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-4)


def test_train_resume_eval_chat_and_export_from_the_command_line(chats, tmp_path):
    run = tmp_path / "run"
    chat_recipe = recipe(tmp_path, "chat")
    first = kefu(
        "train",
        "chat",
        "--recipe",
        str(chat_recipe),
        "--data",
        str(chats / "data"),
        "--out",
        str(run),
        "--max-steps",
        "3",
    )
    assert first.returncode == 0, first.stderr
    assert "for 3 steps" in first.stdout
    again = kefu(
        "train",
        "chat",
        "--recipe",
        str(chat_recipe),
        "--data",
        str(chats / "data"),
        "--out",
        str(run),
    )
    assert (
        again.returncode == 1 and "already holds a run; continue it with --resume" in again.stderr
    )
    resumed = kefu(
        "train",
        "chat",
        "--recipe",
        str(chat_recipe),
        "--data",
        str(chats / "data"),
        "--out",
        str(run),
        "--resume",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [m["step"] for m in metrics(run)] == [3, 6]

    evaluated = kefu(
        "eval",
        "lm",
        str(run),
        "--data",
        str(chats / "data"),
        "--replies",
        "4",
        "--max-new-tokens",
        "8",
        "--baseline",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((run / "eval.json").read_text())
    assert report["perplexity"]["tokens"] > 0 and report["perplexity"]["bits_per_byte"] > 0
    assert report["replies"]["replies"] == 4 and report["nearest_reply_baseline"]["replies"] == 4
    assert (run / "report.md").is_file() and (run / "loss.png").stat().st_size > 1000

    talked = kefu("chat", str(run), "--max-new-tokens", "5", stdin="hello\n/reset\n你好\n/exit\n")
    assert talked.returncode == 0, talked.stderr
    assert talked.stdout.count("assistant>") == 2

    exported = kefu("export", "hf", str(run), str(tmp_path / "hf"))
    assert exported.returncode == 0 and (tmp_path / "hf" / "config.json").is_file()


def test_bad_inputs_give_clear_errors(chats, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: train\ntask: chat\ngpt: {n_layers: 2}\n")
    result = kefu(
        "train",
        "chat",
        "--recipe",
        str(bad),
        "--data",
        str(chats / "data"),
        "--out",
        str(tmp_path / "r"),
    )
    assert (
        result.returncode == 1
        and "gpt.n_layers: unknown key — did you mean 'n_layer'?" in result.stderr
    )
    result = kefu(
        "train", "chat", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")
    )
    assert result.returncode == 1 and "is not a kefu data folder" in result.stderr
    result = kefu(
        "train",
        "lm",
        "--recipe",
        str(recipe(tmp_path, "chat")),
        "--data",
        str(chats / "data"),
        "--out",
        str(tmp_path / "r"),
    )
    assert result.returncode == 1 and "is a recipe for `kefu train chat`" in result.stderr
    lstm = tmp_path / "lstm"
    made = kefu(
        "train",
        "lm",
        "--recipe",
        str(recipe(tmp_path, "lm")),
        "--arch",
        "lstm",
        "--data",
        str(chats / "data"),
        "--out",
        str(lstm),
        "--max-steps",
        "1",
    )
    assert made.returncode == 0, made.stderr
    result = kefu("export", "hf", str(lstm), str(tmp_path / "hf"))
    assert result.returncode == 1 and "'lstm'" in result.stderr and "Traceback" not in result.stderr
    result = kefu(
        "train",
        "lm",
        "--recipe",
        str(recipe(tmp_path, "lm")),
        "--arch",
        "gpt",
        "--data",
        str(chats / "data"),
        "--out",
        str(lstm),
        "--resume",
    )
    assert result.returncode == 1 and "resume it with --arch lstm" in result.stderr


def test_the_lstm_trains_evaluates_and_chats_from_the_command_line(chats, tmp_path):
    run = tmp_path / "lstm"
    made = kefu(
        "train",
        "chat",
        "--recipe",
        str(recipe(tmp_path, "chat")),
        "--arch",
        "lstm",
        "--data",
        str(chats / "data"),
        "--out",
        str(run),
    )
    assert made.returncode == 0, made.stderr
    assert "trained lstm" in made.stdout
    evaluated = kefu(
        "eval",
        "lm",
        str(run),
        "--data",
        str(chats / "data"),
        "--replies",
        "3",
        "--max-new-tokens",
        "6",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((run / "eval.json").read_text())["arch"] == "lstm"
    talked = kefu("chat", str(run), "--max-new-tokens", "4", stdin="where is my card?\n/exit\n")
    assert talked.returncode == 0 and talked.stdout.count("assistant>") == 1, talked.stderr


def test_chat_fine_tuning_starts_from_a_pretrained_run(chats, tmp_path):
    pretrained, tuned = tmp_path / "lm", tmp_path / "chat"
    args = ["--data", str(chats / "data"), "--max-steps", "3"]
    assert (
        kefu(
            "train", "lm", "--recipe", str(recipe(tmp_path, "lm")), "--out", str(pretrained), *args
        ).returncode
        == 0
    )
    made = kefu(
        "train",
        "chat",
        "--recipe",
        str(recipe(tmp_path, "chat")),
        "--init",
        str(pretrained),
        "--out",
        str(tuned),
        *args,
    )
    assert made.returncode == 0, made.stderr
    assert (tuned / "tokenizer.json").read_bytes() == (pretrained / "tokenizer.json").read_bytes()
    # It starts where pre-training ended: its first loss is below a fresh model's first loss.
    fresh = kefu(
        "train",
        "chat",
        "--recipe",
        str(recipe(tmp_path, "chat")),
        "--out",
        str(tmp_path / "fresh"),
        *args,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert metrics(tuned)[0]["train_loss"] < metrics(tmp_path / "fresh")[0]["train_loss"]
