"""Export a kefu GPT run as a Hugging Face `LlamaForCausalLM` folder.

The GPT is laid out exactly like Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU, no
biases), so its weights only need renaming and splitting. Once exported, anything that loads or
serves Llama models (transformers, vLLM, TGI, llama.cpp's converter...) can run a kefu model, with
its tokenizer and chat template, without knowing kefu exists.

    kefu (runs/<name>/model.safetensors)      Hugging Face (LlamaForCausalLM)
    embed.weight                              model.embed_tokens.weight
    blocks.i.attention_norm.weight            model.layers.i.input_layernorm.weight
    blocks.i.attention.qkv.weight             model.layers.i.self_attn.{q,k,v}_proj.weight  (split)
    blocks.i.attention.out.weight             model.layers.i.self_attn.o_proj.weight
    blocks.i.mlp_norm.weight                  model.layers.i.post_attention_layernorm.weight
    blocks.i.mlp.gate_up.weight               model.layers.i.mlp.{gate,up}_proj.weight  (halves)
    blocks.i.mlp.down.weight                  model.layers.i.mlp.down_proj.weight
    norm.weight                               model.norm.weight
    lm_head.weight                            lm_head.weight  (absent when tied to the embedding)

The tokenizer goes along as `tokenizer.json` with a `tokenizer_config.json` whose Jinja chat
template renders like `ChatTokenizer.render`. One difference is unavoidable: a Jinja template
renders to text before tokenizing, so role tokens *typed* inside a message become control tokens
there, while `ChatTokenizer` encodes them as plain text. Servers that take untrusted text should
strip `<|...|>` tokens from messages first.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from kefu import __version__
from kefu.console import quiet_transformers
from kefu.errors import KefuError
from kefu.files import replaced_folder
from kefu.models.checkpoint import load_run
from kefu.models.gpt import GPT, GPTConfig
from kefu.text.tokenizer import END_OF_TURN, PAD, ROLE_TOKENS, ChatTokenizer

# Written into every export: it tells a later export that the folder may be replaced.
MARKER = "kefu_export.json"

# Renders exactly like ChatTokenizer.render: <|role|>content<|end|> per message, nothing between.
# The {% generation %} block marks what render's assistant_mask marks (the reply and its <|end|>),
# for `apply_chat_template(..., return_assistant_tokens_mask=True)`.
CHAT_TEMPLATE = (
    "{%- set role_tokens = " + json.dumps(ROLE_TOKENS) + " -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in role_tokens -%}"
    "{{- raise_exception('unknown role ' + message['role'] + ' in a message; roles are "
    + ", ".join(ROLE_TOKENS)
    + "') -}}"
    "{%- endif -%}"
    "{{- role_tokens[message['role']] -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '" + END_OF_TURN + "' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '" + END_OF_TURN + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ROLE_TOKENS["assistant"] + "' -}}{%- endif -%}"
)


def llama_config(
    config: GPTConfig, bos_token_id: int | None, eos_token_id: int, pad_token_id: int
) -> LlamaConfig:
    """The `LlamaConfig` of the same architecture as `config`, with the given special token ids."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.context_length,
        rms_norm_eps=config.norm_eps,
        # transformers 5 keeps the RoPE base here; plain "default" RoPE is what the GPT computes.
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def llama_state_dict(model: GPT) -> dict[str, Tensor]:
    """The GPT's weights under `LlamaForCausalLM` names (see the table at the top of the module).

    The tensors are copies, so the dict can go straight to safetensors. `lm_head.weight` is left
    out when it is tied to the embedding, as in Hugging Face checkpoints.
    """
    c = model.config
    q_width, kv_width = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    weights = {"model.embed_tokens.weight": model.embed.weight}
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}"
        q, k, v = block.attention.qkv.weight.split((q_width, kv_width, kv_width), dim=0)
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)
        weights |= {
            f"{prefix}.input_layernorm.weight": block.attention_norm.weight,
            f"{prefix}.self_attn.q_proj.weight": q,
            f"{prefix}.self_attn.k_proj.weight": k,
            f"{prefix}.self_attn.v_proj.weight": v,
            f"{prefix}.self_attn.o_proj.weight": block.attention.out.weight,
            f"{prefix}.post_attention_layernorm.weight": block.mlp_norm.weight,
            f"{prefix}.mlp.gate_proj.weight": gate,
            f"{prefix}.mlp.up_proj.weight": up,
            f"{prefix}.mlp.down_proj.weight": block.mlp.down.weight,
        }
    weights["model.norm.weight"] = model.norm.weight
    if not c.tie_embeddings:
        weights["lm_head.weight"] = model.lm_head.weight
    return {name: tensor.detach().clone().contiguous() for name, tensor in weights.items()}


def tokenizer_config(tokenizer: ChatTokenizer, context_length: int) -> dict:
    """`tokenizer_config.json` for `AutoTokenizer`: fast tokenizer, special tokens, chat template.

    No BOS token: kefu never starts a sequence with one (a chat starts with its first role
    token), and declaring one invites engines to prepend a token the model never saw there.
    """
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": END_OF_TURN,
        "pad_token": PAD,
        "unk_token": None,
        "model_max_length": context_length,
        # Byte-level BPE decodes exactly; "clean-up" would eat spaces before punctuation.
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def export_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a GPT run as a Hugging Face Llama folder (weights, config, tokenizer) in `out_dir`.

    The folder is built beside `out_dir` and moved into place when complete (kefu.files). An
    existing `out_dir` is replaced only when it is empty or an earlier export.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_replaceable(out_dir)
    run = load_run(run_dir, arch="gpt")
    if "quantized" in run.config and run.config["quantized"]["method"] == "int8-dynamic":
        raise KefuError(
            f"{run_dir} computes in int8 (fbgemm), which Llama engines cannot load; export its "
            f"source run, {run.config['quantized']['source']}, and quantize in the engine"
        )
    model, tokenizer = run.model, run.tokenizer
    config: GPTConfig = model.config
    if tokenizer.vocab_size > config.vocab_size:
        raise KefuError(
            f"{run_dir}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}; the run folder mixes files of two runs"
        )

    hf_config = llama_config(config, None, tokenizer.end_of_turn_id, tokenizer.pad_id)
    hf_model = LlamaForCausalLM(hf_config)
    missing, unexpected = hf_model.load_state_dict(llama_state_dict(model), strict=False)
    # The tied lm_head shares the embedding's tensor, so a tied export has no separate copy.
    allowed_missing = {"lm_head.weight"} if config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise RuntimeError(  # the GPT's layout drifted from this module's table: a kefu bug
            f"the GPT's weights do not map onto LlamaForCausalLM (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); update kefu.models.hf_export"
        )
    hf_model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.end_of_turn_id, pad_token_id=tokenizer.pad_id
    )

    with replaced_folder(out_dir) as staging:
        with quiet_transformers():
            hf_model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save(staging / "tokenizer.json")
        _write_json(
            staging / "tokenizer_config.json", tokenizer_config(tokenizer, config.context_length)
        )
        _write_json(
            staging / MARKER,
            {"kefu_version": __version__, "source_run": str(run_dir.resolve())},
        )
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.is_file():
        raise KefuError(f"{out_dir} is a file; give a folder to export into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise KefuError(
            f"{out_dir} is not empty and holds no earlier kefu export ({MARKER}); "
            "export into a new or empty folder, or remove it first"
        )


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
