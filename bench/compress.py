"""Benchmark compression: int8, pruning, distillation and LoRA against the models they start from.

Three sections, each measuring kefu's compressed models beside their reference in one run
(`kefu eval compare` does the measuring: every run loaded together, timed in turn, one thread):

gpt      A GPT (d_model 768, 4 layers; int8 pays off from about d 512) trained briefly on STAR
         conversations (../shared/data/star; the demo's dialogues when absent). Reference: the
         fp32 model. Compared: int8-dynamic, int8-weight, magnitude pruning 50%, structured
         pruning 50% with and without a short recovery fine-tune. Latency is ms per generated
         token at batch 1 (64-token prompts), throughput tokens/s at batch 16, quality perplexity
         on the test split. Target: int8 decoding >= 2x fp32 at batch 1, perplexity within +2%.
intent   BANKING77 (../shared/data/banking77). Reference: the teacher, frozen MiniLM + MLP head
         (`embed`). Compared: a TextCNN trained on the labels alone, and the same TextCNN
         distilled from the teacher (T=2, alpha=0.5). Latency is ms per query at batch 1.
         Target: the distilled student >= 3x faster, keeping >= 95% of the teacher's accuracy
         (top-1, as BANKING77 results are published).
lora     A random Llama base (hidden 768, 6 layers, vocab 8000) with two rank-8 LoRA adapters
         on q_proj and v_proj. Size: adapter file ÷ base weights. Switching: the server picks a
         request's adapter before each of its decoding steps when requests of several adapters
         share the base, so a 16-token reply pays at most 16 switches (`HFCausalLM.use_adapter`,
         timed alone, against peft's own `set_adapter`); end to end, a 16-token greedy reply
         switched away and back before every step against the same reply without switching.
         Targets: adapter <= 2% of the base; a reply's switches add < 5 ms.

    .venv/bin/python bench/compress.py [--quick] [--sections gpt,intent,lora] [--data DIR]
        [--work DIR] [--threads N]

The last line printed is JSON with every figure and whether each target was met.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kefu.compress.prune import prune_run
from kefu.compress.quantize import quantize_run
from kefu.config import DataSource
from kefu.console import quiet_transformers, settings
from kefu.data.folder import split_texts
from kefu.data.ingest import ingest
from kefu.eval.compare import CompareSettings, compare_runs, markdown
from kefu.text.tokenizer import train_tokenizer
from kefu.train.recipe import TrainRecipe
from kefu.train.run import run_training

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEMO = Path(__file__).resolve().parents[1] / "examples" / "acme_bank"
TARGETS = {
    "int8_speedup": 2.0,  # fp32 ms/token ÷ int8 ms/token at batch 1, at least
    "int8_perplexity_increase": 0.02,  # at most
    "student_speedup": 3.0,  # teacher ms/query ÷ student's, at least
    "student_accuracy_share": 0.95,  # student top-1 ÷ teacher top-1, at least
    "adapter_share": 0.02,  # adapter bytes ÷ base weight bytes, at most
    "switch_ms": 5.0,  # added to a reply by switching adapters, at most
}


def show(title: str, results: dict[str, Any]) -> None:
    print(f"\n## {title}\n")
    print(markdown(results))


# -- gpt: int8 and pruning ----------------------------------------------------------------


def conversations(data: Path, work: Path) -> Path:
    """STAR's conversations, or the demo's when the shared data is absent."""
    star = data / "star" / "dialogues.jsonl.gz"
    if star.is_file():
        source = DataSource(format="star", inputs=[str(star)])
    else:
        print(f"{star} is absent: training on the demo's dialogues instead")
        inputs = [str(DEMO / f"dialogues_{language}.jsonl") for language in ("en", "zh")]
        source = DataSource(format="messages", inputs=inputs)
    ingest(source, work / "conversations")
    return work / "conversations"


def gpt_section(data: Path, work: Path, quick: bool, threads: int) -> dict[str, Any]:
    folder = conversations(data, work)
    tokenizer = work / "tokenizer.json"
    train_tokenizer(split_texts([folder]), 8000).save(tokenizer)
    steps = 10 if quick else 80
    recipe = TrainRecipe.model_validate(
        {
            "kind": "train",
            "task": "chat",
            "arch": "gpt",
            "gpt": {"context_length": 128, "n_layer": 4, "n_head": 12, "d_model": 768},
            "data": str(folder),
            "tokenizer": str(tokenizer),
            "train": {
                "max_steps": steps,
                "batch_size": 8,
                "lr": 1e-3,
                "warmup_steps": steps // 10,
                "eval_every": steps,
                "eval_batches": 4,
            },
        }
    )
    fp32 = work / "gpt-fp32"
    started = time.perf_counter()
    run_training(recipe, fp32)
    print(f"trained the fp32 GPT for {steps} steps in {time.perf_counter() - started:.0f} s")
    runs = [fp32]
    for method in ("int8-dynamic", "int8-weight"):
        runs.append(quantize_run(fp32, method, work / f"gpt-{method}").path)
    for method, sparsity, recover in (
        ("magnitude", 0.5, 0),
        ("structured", 0.5, 0),
        ("structured", 0.5, 4 if quick else 30),
    ):
        name = f"gpt-{method}-{sparsity:g}" + (f"-recovered{recover}" if recover else "")
        runs.append(prune_run(fp32, work / name, method, sparsity, recover_steps=recover).run_dir)
    measure = CompareSettings(
        threads=threads,
        prompt_tokens=64,
        new_tokens=16 if quick else 32,
        repeats=1 if quick else 3,
        limit=40 if quick else 300,
    )
    results = compare_runs(runs, folder, "test", work / "compare-gpt", measure)
    show("GPT: int8 and pruning against fp32", results)
    reference, dynamic = results["runs"][0], results["runs"][1]
    speedup = reference["latency_ms"] / dynamic["latency_ms"]
    increase = dynamic["quality"] / reference["quality"] - 1
    print(
        f"int8-dynamic: {speedup:.2f}x faster per token at batch 1 (target >= "
        f"{TARGETS['int8_speedup']}x), perplexity {increase:+.2%} (target <= "
        f"+{TARGETS['int8_perplexity_increase']:.0%})"
    )
    return {
        "runs": results["runs"],
        "int8_speedup": speedup,
        "int8_perplexity_increase": increase,
        "met": speedup >= TARGETS["int8_speedup"]
        and increase <= TARGETS["int8_perplexity_increase"],
    }


# -- intent: distillation -----------------------------------------------------------------


def intent_section(data: Path, work: Path, quick: bool, threads: int) -> dict[str, Any]:
    from intent import banking77  # bench/intent.py: BANKING77 as its published results use it

    from kefu.models.encoder import SentenceEncoder
    from kefu.nlu.intent import IntentRecipe, train_intent
    from kefu.train.distill import distill_intent

    if not (data / "banking77" / "train.csv").is_file():
        print(f"{data / 'banking77'} is absent: skipping the intent section")
        return {"skipped": "no BANKING77"}
    folder = banking77(data, work)
    encoder = SentenceEncoder()
    steps = {"train": {"max_steps": 300}} if quick else {}
    teacher = work / "intent-teacher-embed"
    train_intent(folder, teacher, IntentRecipe(kind="intent", model="embed", **steps), encoder)
    student = IntentRecipe(kind="intent", model="textcnn", **steps)
    plain, distilled = work / "intent-textcnn", work / "intent-textcnn-distilled"
    train_intent(folder, plain, student)
    distill_intent(teacher, student, folder, distilled, encoder=encoder)
    measure = CompareSettings(threads=threads, queries=64, repeats=1 if quick else 3)
    results = compare_runs(
        [teacher, plain, distilled], folder, "test", work / "compare-intent", measure
    )
    show("BANKING77: a distilled TextCNN against its MiniLM teacher", results)
    teacher_row, plain_row, student_row = results["runs"]
    speedup = teacher_row["latency_ms"] / student_row["latency_ms"]
    share = student_row["top1_accuracy"] / teacher_row["top1_accuracy"]
    print(
        f"top-1 accuracy: teacher {teacher_row['top1_accuracy']:.2%}, TextCNN alone "
        f"{plain_row['top1_accuracy']:.2%}, distilled {student_row['top1_accuracy']:.2%} "
        f"({share:.1%} of the teacher's; target >= {TARGETS['student_accuracy_share']:.0%}); "
        f"the student is {speedup:.1f}x faster (target >= {TARGETS['student_speedup']}x)"
    )
    return {
        "runs": results["runs"],
        "student_speedup": speedup,
        "student_accuracy_share": share,
        "met": speedup >= TARGETS["student_speedup"] and share >= TARGETS["student_accuracy_share"],
    }


# -- lora: adapter size and switching -----------------------------------------------------


def lora_section(work: Path, quick: bool, threads: int) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kefu.infer.generate import SamplingConfig, stream
    from kefu.models.hf import LoRASettings, load_base, save_hf_run

    torch.set_num_threads(threads)
    vocab = 8000
    base = work / "llama-base"
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=12,
        max_position_embeddings=512,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    with quiet_transformers():
        LlamaForCausalLM(config).save_pretrained(base)
    tokenizer_source = work / "tokenizer.json"
    if not tokenizer_source.is_file():
        train_tokenizer(["Where is my card? It arrives in 5 days."] * 50, 400).save(
            tokenizer_source
        )
    shutil.copy(tokenizer_source, base / "tokenizer.json")
    (base / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"})
    )
    adapters = []
    for seed in (1, 2):
        model, tokenizer = load_base(base)
        model.add_lora(LoRASettings(rank=8, alpha=16, targets=["q_proj", "v_proj"]))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        save_hf_run(work / f"adapter-{seed}", model, tokenizer, {"kind": "train"})
        adapters.append(work / f"adapter-{seed}")
    base_bytes = (base / "model.safetensors").stat().st_size
    adapter_bytes = (adapters[0] / "adapter" / "adapter_model.safetensors").stat().st_size

    model, tokenizer = load_base(base)
    for number, folder in enumerate(adapters):
        model.load_adapter(folder, f"a{number}")
    prompt = tokenizer.encode("Where is my card? " * 8)[:64]
    sampling = SamplingConfig(max_new_tokens=16)

    def reply(switching: bool) -> float:
        started = time.perf_counter()
        for _ in stream(model, tokenizer, prompt, sampling):
            if switching:  # another request's step ran in between: pick this one's again
                model.use_adapter("a1")
                model.use_adapter("a0")
        return time.perf_counter() - started

    model.use_adapter("a0")
    reply(False)
    # Pairs run back to back, so a noisy neighbour slows both of a pair alike.
    pairs = [(reply(False), reply(True)) for _ in range(5 if quick else 15)]
    added_ms = 1e3 * statistics.median(switched - plain for plain, switched in pairs)
    ours, peft_own = [], []
    for n in range(200):
        started = time.perf_counter()
        model.use_adapter(f"a{n % 2}")
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.model.set_adapter(f"a{n % 2}")
        peft_own.append(time.perf_counter() - started)
    model.use_adapter("a0")  # peft's call leaves its own flags; kefu's sets them again
    big_ours, big_peft = seven_b_switches()
    # What a request pays: one switch before each of its decoding steps, when requests of
    # other adapters take turns with it on every step (the worst case).
    per_reply_ms = sampling.max_new_tokens * 1e3 * statistics.median(ours)
    figures = {
        "base_bytes": base_bytes,
        "adapter_bytes": adapter_bytes,
        "adapter_share": adapter_bytes / base_bytes,
        "reply_ms": 1e3 * statistics.median(plain for plain, _ in pairs),
        "reply_switching_ms": 1e3 * statistics.median(switched for _, switched in pairs),
        "switch_added_ms": added_ms,
        "switches_per_reply_ms": per_reply_ms,
        "use_adapter_ms": 1e3 * statistics.median(ours),
        "peft_set_adapter_ms": 1e3 * statistics.median(peft_own),
        "use_adapter_7b_ms": big_ours,
        "peft_set_adapter_7b_ms": big_peft,
    }
    print("\n## LoRA: adapter size and per-request switching\n")
    print("| figure | kefu | reference | ratio |")
    print("| --- | --- | --- | --- |")
    print(
        f"| size on disk | adapter {adapter_bytes / 1e6:.2f} MB | base {base_bytes / 1e6:.1f} MB | "
        f"{figures['adapter_share']:.2%} (target <= {TARGETS['adapter_share']:.0%}) |"
    )
    print(
        f"| 16 switches (one before each step of a 16-token reply) | {per_reply_ms:.2f} ms | "
        f"— | target < {TARGETS['switch_ms']:g} ms |"
    )
    print(
        f"| 16-token reply, switched to another adapter and back before every step | "
        f"{figures['reply_switching_ms']:.1f} ms | no switching {figures['reply_ms']:.1f} ms | "
        f"{added_ms:+.2f} ms (median of {len(pairs)} back-to-back pairs) |"
    )
    print(
        f"| one switch | use_adapter {figures['use_adapter_ms']:.3f} ms | peft set_adapter "
        f"{figures['peft_set_adapter_ms']:.3f} ms | "
        f"{figures['peft_set_adapter_ms'] / figures['use_adapter_ms']:.0f}x |"
    )
    print(
        f"| one switch, Llama-2-7B shape (LoRA on all 224 linear layers) | use_adapter "
        f"{big_ours:.3f} ms | peft set_adapter {big_peft:.3f} ms | {big_peft / big_ours:.0f}x |"
    )
    figures["met"] = (
        figures["adapter_share"] <= TARGETS["adapter_share"] and per_reply_ms < TARGETS["switch_ms"]
    )
    return figures


def seven_b_switches() -> tuple[float, float]:
    """Median ms of one switch between two adapters on every linear layer of a Llama-2-7B shape,
    kefu's and peft's; built on the meta device (shapes only: no memory, no weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kefu.models.hf import HFCausalLM, LoRASettings

    config = LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with torch.device("meta"):
        model = HFCausalLM(LlamaForCausalLM(config), "llama-2-7b-shaped")
        model.add_lora(LoRASettings(rank=16, alpha=32, targets=targets))
        model.model.add_adapter("second", model.model.peft_config["default"])
    ours, peft_own = [], []
    for name in ["default", "second"] * 15:
        started = time.perf_counter()
        model.use_adapter(name)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.model.set_adapter(name)
        peft_own.append(time.perf_counter() - started)
    return 1e3 * statistics.median(ours), 1e3 * statistics.median(peft_own)


SECTIONS = {"gpt", "intent", "lora"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and timings")
    parser.add_argument("--sections", default="gpt,intent,lora", help="comma-separated")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads while measuring")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - SECTIONS)
    if unknown:
        parser.error(f"unknown sections {unknown}; sections: {', '.join(sorted(SECTIONS))}")
    settings.quiet = True
    work = args.work or Path(tempfile.mkdtemp(prefix="kefu-compress-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"runs in {work}; {args.threads} thread(s) while measuring")
    figures: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "targets": TARGETS}
    if "gpt" in chosen:
        figures["gpt"] = gpt_section(args.data, work, args.quick, args.threads)
    if "intent" in chosen:
        figures["intent"] = intent_section(args.data, work, args.quick, args.threads)
    if "lora" in chosen:
        figures["lora"] = lora_section(work, args.quick, args.threads)
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
