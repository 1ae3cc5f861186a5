"""int8 quantization: exact save/load, small error, and a quantized run that works everywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from kefu.compress.quantize import METHODS, load_quantized, quantize, quantize_run
from kefu.config import DataSource
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.infer.engine import GenerationEngine
from kefu.infer.generate import SamplingConfig, stream
from kefu.models.checkpoint import load_run, save_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.text.tokenizer import ChatTokenizer, train_tokenizer
from tests.conftest import kefu
from tests.infer.conftest import CORPUS

TEXTS = CORPUS[:8]  # four support exchanges, English and Chinese
CHATS = [
    [{"role": "user", "content": TEXTS[i]}, {"role": "assistant", "content": TEXTS[i + 1]}]
    for i in range(0, len(TEXTS), 2)
]


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return train_tokenizer(TEXTS * 4, vocab_size=300)


def _gpt(tokenizer: ChatTokenizer) -> GPT:
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=128, n_layer=2, n_head=2, d_model=64
    )
    return GPT(config)  # tied embeddings, the default: int8-dynamic must untie them


def _lstm(tokenizer: ChatTokenizer) -> RecurrentLM:
    config = LSTMConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, d_embed=64, d_hidden=96, dropout=0.0
    )
    return RecurrentLM(config)


@pytest.fixture(scope="module", params=["gpt", "lstm"])
def trained(request, tokenizer, tmp_path_factory) -> Path:
    """A run folder of a tiny model that has learnt the four chats by heart (~5 s)."""
    torch.manual_seed(0)
    model = (_gpt if request.param == "gpt" else _lstm)(tokenizer)
    ids = [tokenizer.render(chat).ids for chat in CHATS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        loss = sum(
            F.cross_entropy(model(torch.tensor([s[:-1]]))[0], torch.tensor(s[1:])) for s in ids
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run = tmp_path_factory.mktemp(request.param) / "run"
    save_run(run, request.param, model.eval(), tokenizer, {"task": "chat"})
    return run


def mean_loss(model: torch.nn.Module, tokenizer: ChatTokenizer) -> float:
    with torch.inference_mode():
        losses = [
            F.cross_entropy(model(torch.tensor([s[:-1]]))[0], torch.tensor(s[1:])).item()
            for s in (tokenizer.render(chat).ids for chat in CHATS)
        ]
    return sum(losses) / len(losses)


def logits_of(model: torch.nn.Module, tokenizer: ChatTokenizer) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokenizer.render(CHATS[0]).ids]))[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_a_saved_quantized_run_loads_with_bit_identical_logits(trained, method, tmp_path):
    source = load_run(trained)
    quantize(source.model, method)  # the model right after quantizing, in memory
    made = quantize_run(trained, method, tmp_path / "int8")
    loaded = load_run(tmp_path / "int8")
    assert type(loaded.model) is type(source.model)  # still a GPT: the engine takes it
    if method == "int8-dynamic":  # no float Linear is left to compute in fp32
        assert not any(isinstance(layer, torch.nn.Linear) for layer in loaded.model.modules())
    assert torch.equal(
        logits_of(loaded.model, loaded.tokenizer), logits_of(source.model, source.tokenizer)
    )
    config = yaml.safe_load((tmp_path / "int8" / "config.yaml").read_text())
    assert config["quantized"] == {"method": method, "source": str(trained)}
    assert config["model"] == source.config["model"]
    assert (tmp_path / "int8" / "tokenizer.json").read_bytes() == (
        trained / "tokenizer.json"
    ).read_bytes()
    # int8 values are a quarter of float32's bytes; scales, norms and biases add a little.
    # (int8-dynamic stores a tied GPT's output layer apart from its embedding, hence less.)
    assert made.bytes_after < made.bytes_before / (2.5 if method == "int8-dynamic" else 3.5)


@pytest.mark.parametrize("method", list(METHODS))
def test_quantized_logits_and_loss_stay_close_to_float(trained, method):
    run = load_run(trained)
    float_logits, float_loss = (
        logits_of(run.model, run.tokenizer),
        mean_loss(run.model, run.tokenizer),
    )
    quantize(run.model, method)
    logits = logits_of(run.model, run.tokenizer)
    # Rounding a weight row to 255 levels errs by at most amax/254 per weight, ~0.7% of the
    # row's RMS for Gaussian-like rows: int8-weight stays near that. int8-dynamic also rounds
    # every layer input to 7 bits (fbgemm's reduce_range) with one step for the whole tensor,
    # set by its largest value: a few percent per layer for inputs with outliers (7% measured).
    relative = ((logits - float_logits).norm() / float_logits.norm()).item()
    assert relative < (0.01 if method == "int8-weight" else 0.1)
    assert (logits.argmax(-1) == float_logits.argmax(-1)).float().mean() >= 0.95
    # The budget for a quantized model is +2% perplexity.
    assert math.exp(mean_loss(run.model, run.tokenizer)) / math.exp(float_loss) < 1.02


@pytest.mark.parametrize("method", list(METHODS))
def test_engine_replies_equal_solo_generation_on_a_quantized_gpt(trained, tokenizer, method):
    """int8-weight computes in float: the engine's own parity tests hold as they are. int8-dynamic
    quantizes each layer's input with one scale for the whole batch, so a row's logits move a
    little with its neighbours: the greedy replies of a model that is sure of them still match."""
    if "gpt" not in trained.parent.name:
        pytest.skip("continuous batching is for GPTs")
    run = load_run(trained)
    quantize(run.model, method)
    config = SamplingConfig(max_new_tokens=64)
    prompts = [tokenizer.render(chat[:1], add_generation_prompt=True).ids for chat in CHATS]
    engine = GenerationEngine(run.model, tokenizer, max_batch=3)  # the rest wait for a row
    streams = [engine.stream(prompt, config) for prompt in prompts]
    replies = ["".join(s) for s in streams]
    for prompt, reply in zip(prompts, replies, strict=True):
        assert reply == "".join(stream(run.model, tokenizer, prompt, config))
    assert replies == [chat[1]["content"] for chat in CHATS]


def test_a_run_of_another_model_is_refused(tokenizer, tmp_path):
    save_file(quantize(_gpt(tokenizer), "int8-weight"), str(tmp_path / "w.safetensors"))
    with pytest.raises(KefuError, match=r"has no tensor 'rnn\.weight_ih_l0'"):
        load_quantized(_lstm(tokenizer), "int8-weight", tmp_path / "w.safetensors")


def numbered(chat: list[dict], number: int) -> list[dict]:
    """A chat made unique (ingest drops duplicates)."""
    return [{**turn, "content": f"{turn['content']} #{number}"} for turn in chat]


def test_quantize_evaluate_and_chat_from_the_command_line(tokenizer, tmp_path):
    lines = [
        json.dumps({"id": f"c{i}", "messages": numbered(CHATS[i % 4], i)}, ensure_ascii=False)
        for i in range(40)
    ]
    (tmp_path / "chats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(DataSource(format="messages", inputs=[str(tmp_path / "chats.jsonl")]), tmp_path / "data")
    torch.manual_seed(0)
    save_run(tmp_path / "run", "gpt", _gpt(tokenizer).eval(), tokenizer, {"task": "chat"})
    out = tmp_path / "int8"

    made = kefu(
        "compress", "quantize", str(tmp_path / "run"), "--method", "int8-dynamic", "--out", str(out)
    )
    assert made.returncode == 0, made.stderr
    assert f"wrote {out}" in made.stdout and "MB" in made.stdout
    evaluated = kefu(
        "eval",
        "lm",
        str(out),
        "--data",
        str(tmp_path / "data"),
        "--replies",
        "2",
        "--max-new-tokens",
        "4",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "perplexity" in evaluated.stdout
    talked = kefu("chat", str(out), "--max-new-tokens", "4", stdin="hello\n/exit\n")
    assert talked.returncode == 0, talked.stderr

    # Bad input gets the same KefuError (exit 1) from the command; in-process here, for speed.
    with pytest.raises(KefuError, match="valid methods: int8-dynamic, int8-weight"):
        quantize_run(tmp_path / "run", "int4", tmp_path / "int4")
    with pytest.raises(KefuError, match="already quantized"):
        quantize_run(out, "int8-weight", tmp_path / "twice")


def test_int8_dynamic_is_refused_on_a_gpu_before_anything_loads(tokenizer, tmp_path):
    with pytest.raises(KefuError, match="run on a CPU only"):
        load_quantized(_gpt(tokenizer), "int8-dynamic", tmp_path / "none.safetensors", "cuda")
