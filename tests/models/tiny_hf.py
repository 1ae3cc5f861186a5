"""Tiny random Hugging Face models built on the spot (no hub): a Llama with kefu's tokenizer and
chat template, a GPT-2 without a template, and LoRA adapters of random weights on a base."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from kefu.console import quiet_transformers
from kefu.models.hf import HFCausalLM, HFChatTokenizer, LoRASettings, load_base, save_hf_run
from kefu.models.hf_export import CHAT_TEMPLATE, tokenizer_config
from kefu.text.tokenizer import train_tokenizer

CORPUS = [
    "Where is my card? It arrives in 5 days.",
    "我的银行卡丢了，怎么办？请耐心等待",
    "Thanks! You are welcome. [PHONE]",
] * 20


def _spread(model: torch.nn.Module) -> None:
    """Larger random matrices, so greedy choices are far from ties (norm gains stay 1)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.1)


def save_llama(folder: Path, seed: int = 0, template: str = CHAT_TEMPLATE) -> Path:
    """A random 2-layer Llama (hidden 64) with kefu's tokenizer and a chat template."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=tokenizer.end_of_turn_id,
        pad_token_id=tokenizer.pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _spread(model)
    with quiet_transformers():
        model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    described = tokenizer_config(tokenizer, 128) | {"chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(described))
    return folder


def save_gpt2(folder: Path) -> Path:
    """A random 2-layer GPT-2 whose tokenizer has no chat template (the plain format)."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.end_of_text_id,
        eos_token_id=tokenizer.end_of_text_id,
    )
    torch.manual_seed(1)
    model = GPT2LMHeadModel(config)
    _spread(model)
    with quiet_transformers():
        model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    described = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(described))
    return folder


def with_adapter(base: Path, seed: int) -> HFCausalLM:
    """The base with a LoRA adapter of random (non-zero) weights, as if trained."""
    model, _ = load_base(base)
    # Dropout too: a loaded adapter must follow the model's eval mode.
    model.add_lora(LoRASettings(rank=4, alpha=8, targets=["q_proj", "v_proj"], dropout=0.1))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def save_adapter_run(base: Path, folder: Path, seed: int) -> HFCausalLM:
    model = with_adapter(base, seed)
    save_hf_run(folder, model, HFChatTokenizer.load(base), {"kind": "train"})
    return model
