"""The Hugging Face export: same logits, same greedy text, same tokens and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from kefu.errors import KefuError
from kefu.models.checkpoint import save_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.models.hf_export import MARKER, export_hf, llama_state_dict
from kefu.models.lstm import LSTMConfig, RecurrentLM
from kefu.text.tokenizer import ChatTokenizer, train_tokenizer

# float32 on both sides; the only differences are summation order and RoPE angle rounding.
LOGITS_TOLERANCE = 1e-5

CORPUS = [
    "Hello, I lost my card yesterday. Can you freeze it?",
    "Sure, I have frozen your card. A new one arrives in 5-7 business days.",
    "我的银行卡丢了，怎么办？",
    "My phone is [PHONE] and e-mail [EMAIL] 😊",
] * 20

MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "我的银行卡丢了"},
    {"role": "assistant", "content": "Sure, I have frozen your card."},
    {"role": "user", "content": "Thanks! [PHONE]"},
]


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_gpt(tokenizer: ChatTokenizer, n_kv_head: int, tie: bool) -> GPT:
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=64,
        n_layer=2,
        n_head=4,
        n_kv_head=n_kv_head,
        d_model=32,
        rope_theta=500.0,  # not the default, so a RoPE base lost on the way shows
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    model = GPT(config)
    # Random norm gains (they start at 1) and larger weights, so every swapped or misplaced
    # tensor changes the logits, and greedy choices are far from ties.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
            else:
                nn.init.normal_(parameter, std=0.2)
    return model.eval()


@pytest.fixture(
    scope="module",
    params=[(4, True), (2, True), (4, False), (2, False)],
    ids=["mha-tied", "gqa-tied", "mha-untied", "gqa-untied"],
)
def exported(request, tokenizer, tmp_path_factory) -> tuple[GPT, Path]:
    n_kv_head, tie = request.param
    model = tiny_gpt(tokenizer, n_kv_head, tie)
    run_dir = tmp_path_factory.mktemp("run")
    save_run(run_dir, "gpt", model, tokenizer, recipe={})
    return model, export_hf(run_dir, run_dir.parent / f"{run_dir.name}-hf")


def test_logits_match(exported):
    model, out = exported
    hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(
        0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert ours.abs().max() > 1  # the check below means something
    assert (ours - theirs).abs().max().item() < LOGITS_TOLERANCE


def test_greedy_generation_matches(exported, tokenizer):
    model, out = exported
    hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    question = [{"role": "user", "content": "Can you freeze my card?"}]
    prompt = tokenizer.render(question, add_generation_prompt=True).ids
    expected: list[int] = []
    logits, cache = model.prefill([prompt], max_new_tokens=10)
    for _ in range(10):
        token = int(logits.argmax(-1))
        expected.append(token)
        if token == tokenizer.end_of_turn_id:  # where generate stops too
            break
        logits = model.decode(torch.tensor([token]), cache)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        generated = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
        )
    assert generated[0, len(prompt) :].tolist() == expected


def test_tokenizer_and_chat_template_match(exported, tokenizer):
    _, out = exported
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    for text in [*CORPUS[:4], "  spaces , and newlines\n\n", "混合 text 123.45元 [EMAIL]"]:
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        assert ids == tokenizer.encode(text)
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == tokenizer.end_of_turn_id
    assert hf_tokenizer.pad_token_id == tokenizer.pad_id
    for messages, prompt in [(MESSAGES, True), (MESSAGES[:3], False)]:
        rendered = tokenizer.render(messages, add_generation_prompt=prompt)
        result = hf_tokenizer.apply_chat_template(
            messages,
            tokenize=True,
            add_generation_prompt=prompt,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert result["input_ids"] == rendered.ids
        assert result["assistant_masks"] == rendered.assistant_mask
    unknown = [{"role": "tool", "content": "{}"}]
    with pytest.raises(KefuError, match="unknown role 'tool'"):
        tokenizer.render(unknown)
    with pytest.raises(Exception, match="unknown role tool"):  # jinja2's TemplateError
        hf_tokenizer.apply_chat_template(unknown, tokenize=False)


def test_generation_config_stops_at_end_of_turn(exported, tokenizer):
    _, out = exported
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.end_of_turn_id
    assert generation["pad_token_id"] == tokenizer.pad_id


def test_tied_export_stores_one_embedding(tokenizer):
    model = tiny_gpt(tokenizer, 4, tie=True)
    assert "lm_head.weight" not in llama_state_dict(model)
    assert "model.embed_tokens.weight" in llama_state_dict(model)


def test_reexport_replaces_an_earlier_export_but_nothing_else(tokenizer, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "hf"
    save_run(run_dir, "gpt", tiny_gpt(tokenizer, 2, tie=True), tokenizer, recipe={})
    export_hf(run_dir, out)
    export_hf(run_dir, out)
    assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no staging left over

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(KefuError, match="not empty"):
        export_hf(run_dir, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_lstm_run_is_refused(tokenizer, tmp_path):
    model = RecurrentLM(LSTMConfig(vocab_size=tokenizer.vocab_size, d_embed=16, d_hidden=16))
    save_run(tmp_path / "run", "lstm", model, tokenizer, recipe={})
    with pytest.raises(KefuError, match="lstm"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
