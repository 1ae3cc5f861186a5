"""`kefu eval compare`: every figure checked against the thing it claims to be, on tiny runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kefu.config import DataSource
from kefu.data.folder import read_split
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.eval.compare import (
    LM,
    CompareSettings,
    compare_runs,
    folder_bytes,
    random_prompts,
    relies_on,
    time_decoding,
)
from kefu.eval.lm import evaluate_lm
from kefu.models.checkpoint import load_run, save_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.nlu.intent import IntentRecipe, evaluate_intent, load_classifier, train_intent
from kefu.text.tokenizer import train_tokenizer
from tests.conftest import REPO, kefu

FAST = CompareSettings(prompt_tokens=8, new_tokens=6, repeats=1, queries=4)
LM_OPTIONS = ["--prompt-tokens", "8", "--new-tokens", "6", "--repeats", "1"]


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chats")
    lines = [
        json.dumps(
            {
                "id": f"c{i}",
                "messages": [
                    {"role": "user", "content": f"Where is my card {i}? 卡在哪里"},
                    {"role": "assistant", "content": f"Your card {i} arrives in 5 days. 请稍等"},
                ],
            },
            ensure_ascii=False,
        )
        for i in range(40)
    ]
    (folder / "chats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(
        DataSource(
            format="messages",
            inputs=[str(folder / "chats.jsonl")],
            split={"train": 0.5, "valid": 0.0, "test": 0.5},
        ),
        folder / "data",
    )
    return folder / "data"


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory, chats) -> dict[str, Path]:
    """A tiny GPT and a tiny LSTM (random weights, seed 0) sharing one tokenizer."""
    folder = tmp_path_factory.mktemp("lm_runs")
    texts = [m["content"] for r in read_split(chats, "train") for m in r["messages"]]
    tokenizer = train_tokenizer(texts * 5, vocab_size=300)
    torch.manual_seed(0)
    gpt = GPT(
        GPTConfig(
            vocab_size=tokenizer.vocab_size, context_length=48, n_layer=1, n_head=2, d_model=16
        )
    )
    lstm = RecurrentLM(
        LSTMConfig(
            vocab_size=tokenizer.vocab_size,
            context_length=48,
            n_layer=1,
            d_embed=16,
            d_hidden=24,
            dropout=0.0,
        )
    )
    runs = {"gpt": folder / "gpt", "lstm": folder / "lstm"}
    save_run(runs["gpt"], "gpt", gpt, tokenizer, {"task": "chat"})
    save_run(runs["lstm"], "lstm", lstm, tokenizer, {"task": "chat"})
    # What training and evaluation leave beside the model must not count as its size.
    (runs["gpt"] / "checkpoint").mkdir()
    (runs["gpt"] / "checkpoint" / "trainer.pt").write_bytes(b"x" * 5000)
    (runs["gpt"] / "report.md").write_text("# an old report\n")
    return runs


@pytest.fixture(scope="module")
def lm_compared(tmp_path_factory, lm_runs, chats) -> dict:
    out = tmp_path_factory.mktemp("compare")
    return compare_runs([lm_runs["gpt"], lm_runs["lstm"]], chats, "test", out, FAST)


def test_parameters_and_size_are_the_models_and_its_files(lm_compared, lm_runs):
    gpt, lstm = lm_compared["runs"]
    assert (gpt["name"], lstm["name"]) == ("gpt", "lstm")
    for row in (gpt, lstm):
        run = load_run(row["run"])
        assert row["parameters"] == run.model.num_parameters()
        model_files = ("model.safetensors", "config.yaml", "tokenizer.json")
        assert row["size_bytes"] == sum((run.path / f).stat().st_size for f in model_files)
        assert sorted(row["files"]) == sorted(model_files)
        assert row["relies_on"] == []
    assert gpt["ratios"]["size"] == 1.0
    assert lstm["ratios"]["size"] == pytest.approx(lstm["size_bytes"] / gpt["size_bytes"])


def test_perplexity_is_what_eval_lm_reports(lm_compared, lm_runs, chats, tmp_path):
    for row, name in zip(lm_compared["runs"], ("gpt", "lstm"), strict=True):
        expected = evaluate_lm(load_run(lm_runs[name]), chats, "test", replies=0, out_dir=tmp_path)
        assert row["quality"] == pytest.approx(expected["perplexity"]["perplexity"], rel=1e-6)
        assert row["bits_per_byte"] == pytest.approx(
            expected["perplexity"]["bits_per_byte"], rel=1e-6
        )
    gpt, lstm = lm_compared["runs"]
    assert lstm["ratios"]["quality"] == pytest.approx(lstm["quality"] / gpt["quality"])


def test_speed_figures_and_the_settings_they_were_taken_with(lm_compared):
    assert lm_compared["threads"] == 1 == torch.get_num_threads()
    assert (lm_compared["prompt_tokens"], lm_compared["new_tokens"], lm_compared["batch"]) == (
        8,
        6,
        16,
    )
    for row in lm_compared["runs"]:
        assert row["latency_ms"] > 0 and row["prefill_ms"] > 0 and row["throughput"] > 0
        assert row["ratios"]["latency"] == pytest.approx(
            row["latency_ms"] / lm_compared["runs"][0]["latency_ms"]
        )


def test_reports_are_written(lm_compared):
    out = Path(lm_compared["runs"][0]["report"]).parents[2]
    assert json.loads((out / "compare.json").read_text()) == json.loads(json.dumps(lm_compared))
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "compare.md").read_text()
    assert "| gpt | gpt |" in table and "| lstm | lstm |" in table and "1 thread(s)" in table
    assert "![comparison](compare.png)" in table
    assert all(Path(row["report"]).is_file() for row in lm_compared["runs"])


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_timed_decoding_is_greedy_decoding(lm_runs, arch):
    """The timed loop reads the KV cache right: its tokens are those of recomputing everything."""
    model = load_run(lm_runs[arch]).model
    prompts = random_prompts(model.config.vocab_size, 3, 8)
    timing = time_decoding(model, prompts, 6)
    ids = torch.tensor(prompts)
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat((ids, model(ids)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(timing.tokens, ids[:, 8:])
    assert timing.prefill_s > 0 and timing.decode_s > 0


def test_an_adapter_counts_its_own_files_and_names_its_base(lm_runs, chats, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(
        lm_runs["gpt"], adapter, ignore=shutil.ignore_patterns("checkpoint", "report.md")
    )
    config = yaml.safe_load((adapter / "config.yaml").read_text())
    (adapter / "config.yaml").write_text(yaml.safe_dump({**config, "base": str(lm_runs["lstm"])}))
    (row,) = compare_runs([adapter], chats, "test", tmp_path / "out", FAST)["runs"]
    assert row["relies_on"] == [
        {"name": str(lm_runs["lstm"]), "bytes": folder_bytes(lm_runs["lstm"])}
    ]
    assert row["size_bytes"] == folder_bytes(adapter)


def test_a_lora_run_of_arch_hf_names_the_base_under_model(tmp_path):
    """hf LoRA runs keep their base in `model: {base, lora}` (kefu.models.hf); a full
    fine-tune records where it started but holds the whole model, so it relies on nothing."""
    for lora, needs in (({"rank": 4}, [{"name": "org/base", "bytes": None}]), (None, [])):
        run = tmp_path / f"lora-{lora is not None}"
        run.mkdir()
        described = {"arch": "hf", "model": {"base": "org/base", "lora": lora}}
        (run / "config.yaml").write_text(yaml.safe_dump(described))
        assert relies_on(run, LM) == needs


def test_a_context_too_short_for_the_timed_decoding_is_a_clear_error(lm_runs, chats, tmp_path):
    settings = CompareSettings(prompt_tokens=40, new_tokens=20, repeats=1)
    with pytest.raises(KefuError, match=r"gpt: a prompt of 40 tokens plus 20 new tokens exceeds"):
        compare_runs([lm_runs["gpt"]], chats, "test", tmp_path, settings)
    assert not (tmp_path / "runs").exists()  # found before its evaluation ran


@pytest.fixture(scope="module")
def intents(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("intents") / "data"
    csv = REPO / "examples" / "acme_bank" / "intents_en.csv"
    ingest(DataSource(format="intents", inputs=[str(csv)]), folder)
    return folder


@pytest.fixture(scope="module")
def intent_runs(tmp_path_factory, intents) -> list[Path]:
    """Two TextCNNs, one trained four times as long: quick, and their accuracies differ."""
    folder = tmp_path_factory.mktemp("intent_runs")
    runs = []
    for steps in (10, 40):
        train = {
            "max_steps": steps,
            "batch_size": 16,
            "warmup_steps": 2,
            "eval_every": steps,
            "eval_batches": 2,
        }
        recipe = IntentRecipe(kind="intent", model="textcnn", train=train)
        train_intent(intents, folder / f"cnn{steps}", recipe)
        runs.append(folder / f"cnn{steps}")
    return runs


def test_intent_runs_give_the_accuracy_eval_intent_gives(intent_runs, intents, tmp_path):
    compared = compare_runs(intent_runs, intents, "test", tmp_path / "out", FAST)
    assert compared["quality"] == "accuracy" and compared["queries"] == 4
    for row, run in zip(compared["runs"], intent_runs, strict=True):
        classifier = load_classifier(run)
        expected = evaluate_intent(classifier, intents, "test", tmp_path / run.name)
        assert row["quality"] == expected["accuracy"]
        assert row["top1_accuracy"] == expected["accuracy_without_threshold"]
        assert row["parameters"] == sum(p.numel() for p in classifier.network.parameters())
        assert row["model"] == "textcnn" and row["latency_ms"] > 0 and row["throughput"] > 0
        assert row["size_bytes"] == sum(
            (run / f).stat().st_size for f in ("model.safetensors", "config.json", "tokenizer.json")
        )
    assert "| cnn10 | textcnn |" in (tmp_path / "out" / "compare.md").read_text()


def test_runs_of_different_tasks_are_a_clear_error(lm_runs, intent_runs, chats, tmp_path):
    with pytest.raises(KefuError) as caught:
        compare_runs(
            [lm_runs["gpt"], intent_runs[0], lm_runs["lstm"]], chats, "test", tmp_path, FAST
        )
    message = str(caught.value)
    assert f"language models: {lm_runs['gpt']}, {lm_runs['lstm']}" in message
    assert f"intent classifiers: {intent_runs[0]}" in message
    assert not (tmp_path / "compare.md").exists()


def test_a_folder_that_is_no_run_is_a_clear_error(chats, tmp_path):
    with pytest.raises(KefuError, match=r"not a run folder: no config\.yaml"):
        compare_runs([tmp_path], chats, "test", tmp_path / "out", FAST)


def test_the_command_end_to_end(lm_runs, lm_compared, intent_runs, chats, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "compare", str(lm_runs["gpt"]), str(lm_runs["lstm"]), "--data", str(chats)]
    done = kefu(*args, "--out", str(out), "--threads", "1", *LM_OPTIONS, "--limit", "5")
    assert done.returncode == 0, done.stderr
    assert "1 thread(s)" in done.stdout and "ms/token (b1)" in done.stdout
    assert "8-token prompts, 6 new tokens" in done.stdout
    assert {"compare.md", "compare.json", "compare.png"} <= {p.name for p in out.iterdir()}
    figures = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in figures["runs"]] == ["gpt", "lstm"]
    # --limit 5: five of the test split's conversations scored, not all of them
    assert 0 < figures["runs"][0]["tokens_scored"] < lm_compared["runs"][0]["tokens_scored"]
    mixed = kefu("eval", "compare", str(lm_runs["gpt"]), str(intent_runs[0]), "--data", str(chats))
    assert mixed.returncode == 1
    assert "intent classifiers" in mixed.stderr and "Traceback" not in mixed.stderr
