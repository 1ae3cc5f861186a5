"""Benchmark training throughput of kefu's GPT against transformers' `LlamaForCausalLM`, in one run.

Both models come from the same config (kefu.models.hf_export.llama_config) and start from the
same weights (llama_state_dict); a fp32 loss on one batch is checked to agree before timing.
Each step is a full training step on the same random batch: forward (under bf16 autocast for
the bf16 rows), fp32 cross-entropy, backward, AdamW step (fused when available, same lr and
betas). HF runs with `use_cache=False` and its default (SDPA) attention, the way one trains it.
Steps of the two models alternate, so a noisy neighbour slows both alike; warm-up steps are
excluded and the median step time counts. tokens/s = batch × context / median step time.

Sizes: "chat" is the GPT of recipes/train/chat.yaml (4 layers, 256 wide, 4 heads, context 256,
vocab 8000); "gpt2-small" is the GPU reference size of ../shared/BENCHMARKS.md (12 layers, 768
wide, 12 heads, context 1024, vocab 50304). On CUDA the table adds MFU: (6·N + 12·n_layer·
d_model·T) FLOPs per token against --peak-tflops, N counting the tied output matrix once.
Target: kefu ÷ HF >= 1.2 tokens/s at every dtype. `--compile` adds both models under
torch.compile (the same modules, so the same weights). `--profile` prints the top ops of both.

    .venv/bin/python bench/train_throughput.py [--quick] [--size chat|gpt2-small]
        [--device cpu|cuda] [--batch N] [--context T] [--steps N] [--dtypes fp32,bf16]
        [--threads N] [--compile] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from kefu.models.gpt import GPT, GPTConfig
from kefu.models.hf_export import llama_config, llama_state_dict

TARGET = 1.2
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
PAIRS = [("kefu", "HF")]
COMPILED_PAIR = ("kefu compiled", "HF compiled")
Forward = Callable[[Tensor], Tensor]


def build(config: GPTConfig, device: torch.device) -> tuple[GPT, LlamaForCausalLM]:
    """kefu's GPT (seed 0) and the Llama holding the same weights, both fp32 on `device`."""
    torch.manual_seed(0)
    gpt = GPT(config)
    hf = LlamaForCausalLM(llama_config(config, None, eos_token_id=1, pad_token_id=0))
    missing, unexpected = hf.load_state_dict(llama_state_dict(gpt), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    return gpt.to(device).train(), hf.to(device).train()


def optimizer(model: nn.Module, lr: float) -> tuple[torch.optim.AdamW, bool]:
    """AdamW as kefu's training loop builds it: fused where the device has the kernels."""
    settings: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **settings), True
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), **settings), False


def loss_of(forward: Forward, inputs: Tensor, targets: Tensor, bf16: bool) -> Tensor:
    """Mean cross-entropy, computed in fp32 outside autocast as kefu.train.loop does."""
    autocast = torch.autocast(inputs.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        logits = forward(inputs)  # (B, T, vocab)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train_step(
    forward: Forward, opt: torch.optim.Optimizer, inputs: Tensor, targets: Tensor, bf16: bool
) -> None:
    loss_of(forward, inputs, targets, bf16).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(
    steps: dict[str, Callable[[], None]], warmup: int, timed: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each timed step per implementation; the order alternates step by step."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for index in range(warmup + timed):
        for name in names if index % 2 == 0 else names[::-1]:
            sync(device)
            started = time.perf_counter()
            steps[name]()
            sync(device)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def profile(steps: dict[str, Callable[[], None]], device: torch.device, rows: int = 15) -> None:
    """Print each implementation's top ops by self time over three steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, step in steps.items():
        with profiler(activities=activities) as prof:
            for _ in range(3):
                step()
            sync(device)
        print(f"\n{name}: top ops by self time over 3 steps")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def flops_per_token(model: GPT, context: int) -> int:
    """6·N + 12·n_layer·d_model·T (PaLM appendix B); the embedding lookup costs no FLOPs but a
    tied output matrix does, so N counts the shared matrix once, an untied embedding not at all."""
    c = model.config
    n = model.num_parameters() - (0 if c.tie_embeddings else model.embed.weight.numel())
    return 6 * n + 12 * c.n_layer * c.d_model * context


def show(rows: list[dict[str, Any]], setting: str, cuda: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ["impl", "dtype", "tokens/s", "ms/step", "kefu ÷ HF"] + (["MFU"] if cuda else [])
    table = Table(title="training: kefu GPT vs LlamaForCausalLM")
    for column in columns:
        table.add_column(column, justify="left" if column in ("impl", "dtype") else "right")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        cells = [row["impl"], row["dtype"], f"{row['rate']:,.0f}", f"{row['ms']:.1f}", ratio]
        table.add_row(*cells, *([f"{row['mfu']:.3f}"] if cuda else []))
    console = Console(width=110)
    console.print(setting)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 x 128, 2 + 5 steps")
    parser.add_argument("--size", choices=SIZES, default="chat", help="model shape")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, help="sequences per step (default 8; quick 4)")
    parser.add_argument(
        "--context", type=int, help="tokens per sequence (default: the size's; quick 128)"
    )
    parser.add_argument("--steps", type=int, help="timed steps (default 20; quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; quick 2)")
    parser.add_argument("--dtypes", help="comma-separated fp32,bf16 (default: both; CUDA bf16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate for both")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="for MFU (CUDA only)")
    parser.add_argument("--profile", action="store_true", help="print top ops of both models")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's own)")
    parser.add_argument("--compile", action="store_true", help="also time both under torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    config = GPTConfig(**SIZES[args.size])
    batch = args.batch or (4 if args.quick else 8)
    context = args.context or (min(128, config.context_length) if args.quick else None)
    context = min(context or config.context_length, config.context_length)
    timed = args.steps or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    dtypes = (args.dtypes or ("bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    if set(dtypes) - {"fp32", "bf16"}:
        parser.error(f"--dtypes takes fp32 and bf16, not {args.dtypes}")

    gpt, hf = build(config, device)
    forwards: dict[str, Forward] = {
        "kefu": gpt,
        "HF": lambda ids: hf(input_ids=ids, use_cache=False).logits,
    }
    pairs = PAIRS + ([COMPILED_PAIR] if args.compile else [])
    if args.compile:  # the same modules compiled: they share weights and optimizer state
        compiled_hf = torch.compile(hf)
        forwards[COMPILED_PAIR[0]] = torch.compile(gpt)
        forwards[COMPILED_PAIR[1]] = lambda ids: compiled_hf(input_ids=ids, use_cache=False).logits
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(config.vocab_size, (batch, context + 1), generator=generator)
    inputs, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    with torch.no_grad():  # same weights, same computation: the fp32 losses agree
        losses = {name: float(loss_of(f, inputs, targets, False)) for name, f in forwards.items()}
    assert abs(losses["kefu"] - losses["HF"]) < 1e-4, losses

    optimizers = {"kefu": optimizer(gpt, args.lr), "HF": optimizer(hf, args.lr)}
    for kefu_name, hf_name in pairs[1:]:
        optimizers[kefu_name], optimizers[hf_name] = optimizers["kefu"], optimizers["HF"]
    fused = all(is_fused for _, is_fused in optimizers.values())
    flops = flops_per_token(gpt, context)
    figures: dict[str, Any] = {
        "bench": "train_throughput",
        "size": args.size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "context": context,
        "timed_steps": timed,
        "parameters": gpt.num_parameters(),
        "hf_attention": hf.config._attn_implementation,
        "fused_adamw": fused,
        "initial_loss": round(losses["kefu"], 5),
        "initial_loss_diff": abs(losses["kefu"] - losses["HF"]),
    }
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        bf16 = dtype == "bf16"
        names = [name for pair in pairs for name in pair]
        steps = {
            name: partial(train_step, forwards[name], optimizers[name][0], inputs, targets, bf16)
            for name in names
        }
        seconds = time_steps(steps, warmup, timed, device)
        for kefu_name, hf_name in pairs:
            for name in (kefu_name, hf_name):
                step_s = statistics.median(seconds[name])
                rate = batch * context / step_s
                mfu = rate * flops / (args.peak_tflops * 1e12)
                rows.append(
                    {"impl": name, "dtype": dtype, "rate": rate, "ms": 1e3 * step_s, "mfu": mfu}
                )
                key = f"{dtype}_{name.lower().replace(' ', '_')}"
                figures[f"{key}_tokens_per_s"] = round(rate)
                figures[f"{key}_ms_per_step"] = round(1e3 * step_s, 2)
                if device.type == "cuda":
                    figures[f"{key}_mfu"] = round(mfu, 4)
            rows[-2]["ratio"] = rows[-2]["rate"] / rows[-1]["rate"]  # shown on the kefu row
            suffix = "_compiled" if kefu_name != "kefu" else ""
            figures[f"{dtype}_kefu_vs_hf{suffix}"] = round(rows[-2]["ratio"], 3)
        if args.profile:
            profile(steps, device)

    setting = (
        f"{args.size} ({gpt.num_parameters() / 1e6:.1f}M parameters), batch {batch} x {context}, "
        f"{device}, {torch.get_num_threads()} threads, {'fused' if fused else 'unfused'} AdamW, "
        f"median of {timed} steps after {warmup}"
    )
    show(rows, setting, device.type == "cuda")
    worst = min(v for k, v in figures.items() if "_kefu_vs_hf" in k)
    figures.update(target_ratio=TARGET, meets_target=worst >= TARGET)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
