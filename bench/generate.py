"""Benchmark greedy decoding: kefu's cached decoding against transformers `generate()`, in one run.

One randomly initialised GPT (seed 0), and the same weights exported into `LlamaForCausalLM`
(kefu.models.hf_export). Each batch holds different random 64-token prompts; every run decodes
exactly `--new-tokens` greedy tokens per sequence:

- kefu cached:   `GPT.prefill` once, then `GPT.decode` one token per step with the KV cache.
                 (The loop is written here on prefill/decode rather than through
                 kefu.infer.generate, which stops at end-of-turn and detokenises as it goes.)
- HF generate:   `generate(do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True)`,
                 dynamic cache, eval mode; no eos token, so it never stops early.
- kefu uncached: `GPT(ids)` over the whole sequence every step, argmax of the last position.

Cached and HF tokens are checked to be identical (same weights, same computation), and so are
cached and uncached. Times cover the whole call (prefill included), the median of `--repeats`
runs after a warm-up; the three run in turn so a noisy neighbour slows all alike.
tokens/s = new tokens × batch / seconds; ms/step = seconds / new tokens.

The default size is the GPT of recipes/train/chat.yaml (4 layers, 256 wide, vocab 8000) with the
context stretched to prompt + new tokens (320): RoPE has no learned positions, so the weights are
the same. Targets: kefu cached ÷ HF generate >= 1.5 at batch 1, and kefu cached ÷ kefu uncached
>= 4 at 256 new tokens.

    .venv/bin/python bench/generate.py [--quick] [--size chat|gpt2-small] [--device cpu|cuda]
        [--dtype fp32|bf16] [--batch-sizes 1,8] [--new-tokens N] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig, LlamaForCausalLM

from kefu.models.gpt import GPT, GPTConfig
from kefu.models.hf_export import llama_config, llama_state_dict

TARGET_VS_HF = 1.5  # at batch 1
TARGET_VS_UNCACHED = 4.0  # at 256 new tokens
SIZES: dict[str, dict[str, int]] = {
    "chat": {"vocab_size": 8000, "context_length": 256, "n_layer": 4, "n_head": 4, "d_model": 256},
    "gpt2-small": {
        "vocab_size": 50304,
        "context_length": 1024,
        "n_layer": 12,
        "n_head": 12,
        "d_model": 768,
    },
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("kefu cached", "HF generate", "kefu uncached")
Decoder = Callable[[Tensor, int], Tensor]  # (prompts (B, P), new tokens) -> new ids (B, new)


def build(
    config: GPTConfig, device: torch.device, dtype: torch.dtype
) -> tuple[GPT, LlamaForCausalLM]:
    """kefu's GPT (seed 0) and the Llama holding the same weights, in eval mode."""
    torch.manual_seed(0)
    gpt = GPT(config)
    hf = LlamaForCausalLM(llama_config(config, None, eos_token_id=1, pad_token_id=0))
    missing, unexpected = hf.load_state_dict(llama_state_dict(gpt), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    return gpt.to(device, dtype).eval(), hf.to(device, dtype).eval()


def kefu_cached(model: GPT) -> Decoder:
    def decode(prompts: Tensor, new: int) -> Tensor:
        logits, cache = model.prefill(prompts.tolist(), new)  # (B, vocab)
        tokens = []
        for step in range(new):
            token = logits.argmax(dim=-1)  # (B,)
            tokens.append(token)
            if step < new - 1:  # the last token needs no forward pass, as in generate()
                logits = model.decode(token, cache)
        return torch.stack(tokens, dim=1)

    return decode


def hf_generate(model: LlamaForCausalLM) -> Decoder:
    def decode(prompts: Tensor, new: int) -> Tensor:
        # No eos token: min_new_tokens would otherwise mask it and change the greedy choice.
        settings = GenerationConfig(
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
        mask = torch.ones_like(prompts)
        out = model.generate(prompts, attention_mask=mask, generation_config=settings)
        return out[:, prompts.shape[1] :]

    return decode


def kefu_uncached(model: GPT) -> Decoder:
    @torch.no_grad()
    def decode(prompts: Tensor, new: int) -> Tensor:
        ids = prompts
        for _ in range(new):
            token = model(ids)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            ids = torch.cat((ids, token), dim=1)
        return ids[:, prompts.shape[1] :]

    return decode


def timed(decoder: Decoder, prompts: Tensor, new: int) -> tuple[float, Tensor]:
    cuda = prompts.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    tokens = decoder(prompts, new)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, tokens


def first_difference(a: Tensor, b: Tensor) -> str:
    """'identical', or where two (B, new) token grids first differ."""
    if torch.equal(a, b):
        return "identical"
    row, step = (a != b).nonzero()[0].tolist()
    return f"differ first at sequence {row}, new token {step}"


def show(rows: list[dict[str, Any]], setting: str) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ("batch", "impl", "seconds", "tokens/s", "ms/step", "cached ÷ this")
    table = Table(title="greedy decoding: kefu GPT vs transformers generate()")
    for column in columns:
        table.add_column(column, justify="left" if column == "impl" else "right")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        numbers = (f"{row['seconds']:.3f}", f"{row['rate']:,.0f}", f"{row['ms']:.2f}")
        table.add_row(str(row["batch"]), row["impl"], *numbers, ratio)
    console = Console(width=110)
    console.print(setting)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, one timed run")
    parser.add_argument("--size", choices=SIZES, default="chat", help="model shape")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights of both models")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, help="tokens to generate (default 256; quick 32)")
    parser.add_argument("--repeats", type=int, help="timed runs, median (default 3; quick 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    new = args.new_tokens or (32 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    shape = SIZES[args.size]
    config = GPTConfig(
        **shape | {"context_length": max(shape["context_length"], args.prompt + new)}
    )

    gpt, hf = build(config, device, dtype)
    decoders = {
        "kefu cached": kefu_cached(gpt),
        "HF generate": hf_generate(hf),
        "kefu uncached": kefu_uncached(gpt),
    }
    generator = torch.Generator().manual_seed(1)
    figures: dict[str, Any] = {
        "bench": "generate",
        "size": args.size,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "prompt_tokens": args.prompt,
        "new_tokens": new,
        "repeats": repeats,
    }
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        prompts = torch.randint(config.vocab_size, (batch, args.prompt), generator=generator)
        prompts = prompts.to(device)
        for decoder in decoders.values():  # warm-up: first-call allocations, lazy imports
            decoder(prompts, 4)
        seconds: dict[str, list[float]] = {name: [] for name in IMPLS}
        tokens: dict[str, Tensor] = {}
        for _ in range(repeats):
            for name in IMPLS:
                elapsed, tokens[name] = timed(decoders[name], prompts, new)
                seconds[name].append(elapsed)
        for name in IMPLS:
            assert tokens[name].shape == (batch, new), (name, tokens[name].shape)
            median = statistics.median(seconds[name])
            rate = new * batch / median
            row = {"batch": batch, "impl": name, "seconds": median, "rate": rate}
            rows.append(row | {"ms": 1e3 * median / new})
            key = f"b{batch}_{name.replace(' ', '_').lower()}"
            figures[f"{key}_tokens_per_s"] = round(rate, 1)
            figures[f"{key}_ms_per_step"] = round(1e3 * median / new, 3)
        cached = rows[-3]["rate"]
        for row, short in ((rows[-2], "hf"), (rows[-1], "uncached")):
            row["ratio"] = cached / row["rate"]
            figures[f"b{batch}_cached_vs_{short}"] = round(row["ratio"], 3)
        for name, short in (("HF generate", "hf"), ("kefu uncached", "uncached")):
            verdict = first_difference(tokens["kefu cached"], tokens[name])
            figures[f"b{batch}_tokens_{short}"] = verdict
            if verdict != "identical":
                print(f"warning: batch {batch}: kefu cached and {name} tokens {verdict}")

    setting = (
        f"{args.size} ({gpt.num_parameters() / 1e6:.1f}M parameters, random init), {args.dtype}, "
        f"{device}, {torch.get_num_threads()} threads; {args.prompt}-token prompts, {new} new "
        f"tokens, median of {repeats} run(s)"
    )
    show(rows, setting)
    vs_hf = figures.get("b1_cached_vs_hf")
    vs_uncached = min(figures[f"b{batch}_cached_vs_uncached"] for batch in batch_sizes)
    figures.update(
        target_vs_hf=TARGET_VS_HF,
        target_vs_uncached=TARGET_VS_UNCACHED,
        meets_target_vs_hf=None if vs_hf is None else vs_hf >= TARGET_VS_HF,
        # Recomputing costs grow with the sequence, so this target only means something at 256.
        meets_target_vs_uncached=vs_uncached >= TARGET_VS_UNCACHED if new >= 256 else None,
        tokens_identical=all(
            figures[f"b{batch}_tokens_{short}"] == "identical"
            for batch in batch_sizes
            for short in ("hf", "uncached")
        ),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
