"""The `kefu` command. One table, `COMMANDS`, maps each command to the function that runs it.

Commands that need torch or transformers import them when they run, so `kefu --help` and the
data commands start in a fraction of a second.

Exit status: 0 done; 1 bad input or a failure, explained in one paragraph; 2 a usage error.
Results go to stdout, progress and notes to stderr (`--quiet` hides them).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging.config
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kefu import __version__
from kefu.config import DataSource, load_config, validate
from kefu.console import note, note_rejects, settings, stdout
from kefu.data.folder import load_stats, split_texts
from kefu.data.ingest import ingest
from kefu.data.readers import FORMATS
from kefu.data.records import SPLITS
from kefu.errors import KefuError
from kefu.project import build, init
from kefu.text.tokenizer import ChatTokenizer, train_tokenizer


def init_command(
    folder: Annotated[
        Path, typer.Argument(help="Folder for the new project (created if missing).")
    ],
    name: Annotated[
        str | None, typer.Option(help="Project name (default: the folder's name).")
    ] = None,
) -> None:
    """Write a commented starter project: kefu.yaml and small sample data."""
    project_file = init(folder, name)
    stdout.print(f"created {project_file}; next: kefu build {folder}")


def build_command(
    project: Annotated[Path, typer.Argument(help="Project folder (or its kefu.yaml).")],
    force: Annotated[
        bool, typer.Option(help="Rebuild everything, even what is up to date.")
    ] = False,
) -> None:
    """Build a project: ingest its data, train its tokenizer, index its knowledge base; reuse what is up to date."""
    result = build(project, force)
    for name, folder in result.data.items():
        _print_stats(load_stats(folder), title=f"data set {name!r} ({folder})")
    stdout.print(f"tokenizer: {result.tokenizer}")
    if result.kb:
        stdout.print(f'knowledge base: {result.kb} (try `kefu kb search {result.kb} "..."`)')
    stdout.print(
        f"rebuilt: {', '.join(result.rebuilt) or 'nothing'}; up to date: {', '.join(result.up_to_date) or 'nothing'}"
    )


def config_check(
    files: Annotated[list[Path], typer.Argument(help="YAML files to validate.")],
) -> None:
    """Validate config files (projects and recipes); every problem is listed with file:line."""
    problems = []
    for path in files:
        try:
            config = load_config(path)
        except KefuError as err:
            problems.append(str(err))
            continue
        stdout.print(f"ok: {path} is a valid {config.kind} config")
    if problems:
        raise KefuError("\n".join(problems))


def _key_values(pairs: list[str], option: str) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise KefuError(f"{option} {pair!r}: expected NAME=VALUE")
        mapping[key.strip()] = value.strip()
    return mapping


def _merge(base: dict[str, Any], options: dict[str, Any]) -> None:
    """Set in `base` every option that was given (not None), into nested sections too."""
    for key, value in options.items():
        if isinstance(value, dict):
            _merge(base.setdefault(key, {}), value)
        elif value is not None:
            base[key] = value


def _split_shares(text: str) -> dict[str, float]:
    parts = text.replace(",", "/").split("/")
    try:
        shares = [float(p) for p in parts]
    except ValueError:
        shares = []
    if len(shares) != 3:
        raise KefuError(f"--split {text!r}: expected three shares TRAIN/VALID/TEST, e.g. 80/10/10")
    total = sum(shares)
    return {name: share / total for name, share in zip(SPLITS, shares, strict=True)}


def data_ingest(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Input files or glob patterns.", show_default=False)
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Data folder to write (replaced if it exists).")
    ] = ...,
    format: Annotated[
        str | None, typer.Option("--format", "-f", help=f"Input format: {', '.join(FORMATS)}.")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="A `kind: data` YAML recipe; options given here override it."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="FIELD=COLUMN, e.g. role=sender (csv, intents, faq). Repeatable."),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(help="SPEAKER=ROLE for speaker names kefu cannot guess. Repeatable."),
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of the inputs, e.g. gb18030 (default utf-8).")
    ] = None,
    redact: Annotated[
        bool | None, typer.Option("--redact/--no-redact", help="Redact personal data (default on).")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(help="A string never redacted (your own hotline). Repeatable."),
    ] = None,
    lowercase: Annotated[
        bool | None,
        typer.Option("--lowercase/--keep-case", help="Lower-case all text (default off)."),
    ] = None,
    dedupe: Annotated[
        bool | None,
        typer.Option("--dedupe/--keep-duplicates", help="Drop exact duplicates (default on)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="TRAIN/VALID/TEST shares, e.g. 80/10/10 (the default).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split (default 0).")] = None,
) -> None:
    """Turn raw chat logs, labelled utterances or FAQs into a clean, redacted, split data folder."""
    base: dict[str, Any] = {}
    if recipe is not None:
        base = load_config(recipe, kind="data").model_dump(exclude={"kind"})
    allowed = [*base.get("redact", {}).get("allow", []), *allow] if allow else None
    options = {
        "format": format,
        "inputs": inputs or None,
        "columns": _key_values(column or [], "--column") or None,
        "roles": _key_values(role or [], "--role") or None,
        "encoding": encoding,
        "lowercase": lowercase,
        "dedupe": dedupe,
        "redact": {"enabled": redact, "allow": allowed},
        "split": {**(_split_shares(split) if split else {}), "seed": seed},
    }
    _merge(base, options)
    if "format" not in base:
        formats = ", ".join(FORMATS)
        raise KefuError(
            f"say which format the inputs are in with --format ({formats}) or give a --recipe"
        )
    if "inputs" not in base:
        raise KefuError("give the input files (or a --recipe that lists them)")
    source = validate(DataSource, base, "the ingest options", "data source")
    stats = ingest(source, out)
    _print_stats(stats, title=f"{out}")
    if stats["rejects"]["total"]:
        note(
            f"[yellow]{stats['rejects']['total']} input records rejected[/]: see {out / 'rejects.jsonl'} for file:line and why"
        )


def data_stats(
    folder: Annotated[Path, typer.Argument(help="A data folder written by `kefu data ingest`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as it is.")] = False,
) -> None:
    """Show a data folder's counts per split: records, turns, characters, languages, PII, rejects."""
    stats = load_stats(folder)
    if as_json:
        stdout.print_json(json.dumps(stats, ensure_ascii=False))
    else:
        _print_stats(stats, title=str(folder))


def _print_stats(stats: dict[str, Any], title: str) -> None:
    conversations = stats["kind"] == "conversations"
    columns: dict[str, Callable[[dict[str, Any]], str]] = {
        "records": lambda s: f"{s['records']:,}",
        **({"turns": lambda s: f"{s['turns']:,}"} if conversations else {}),
        "chars": lambda s: f"{s['characters']:,}",
        "zh": lambda s: f"{s['share_zh']:.0%}",
        "en": lambda s: f"{s['share_en']:.0%}",
        **({} if conversations else {"labels": lambda s: str(s["labels"])}),
        "PII redacted": lambda s: " ".join(f"{k}:{v}" for k, v in s["pii"].items()) or "-",
    }
    table = Table(title=f"{title} — {stats['kind']} from {stats['format']}", title_justify="left")
    table.add_column("split")
    for heading in columns:
        table.add_column(heading, justify="left" if heading == "PII redacted" else "right")
    for split in SPLITS:
        table.add_row(split, *(cell(stats["splits"][split]) for cell in columns.values()))
    stdout.print(table)
    rejects = stats["rejects"]
    reasons = ", ".join(f"{k} {v}" for k, v in rejects.items() if k != "total")
    stdout.print(
        f"read {stats['records_read']:,} records; removed {stats['duplicates_removed']:,} duplicates; "
        f"dropped {stats['empty_turns_dropped']:,} empty turns; merged {stats['turns_merged']:,} turns; "
        f"rejected {rejects['total']:,}" + (f" ({reasons})" if reasons else "")
    )


def tokenizer_train(
    data: Annotated[
        list[Path], typer.Argument(help="Data folders whose train split the tokenizer learns from.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write tokenizer.json.")] = Path(
        "tokenizer.json"
    ),
    vocab_size: Annotated[
        int, typer.Option(help="Vocabulary size, special tokens included.")
    ] = 8000,
    min_frequency: Annotated[int, typer.Option(help="Minimum count of a pair to be merged.")] = 2,
) -> None:
    """Train a byte-level BPE tokenizer with kefu's role tokens and PII placeholders."""
    for folder in data:
        load_stats(folder)
    tokenizer = train_tokenizer(
        split_texts(data), vocab_size, min_frequency, show_progress=not settings.quiet
    )
    tokenizer.save(out)
    stdout.print(f"wrote {out} ({tokenizer.vocab_size:,} tokens)")


def tokenizer_encode(
    tokenizer: Annotated[Path, typer.Argument(help="tokenizer.json (or the folder holding it).")],
    text: Annotated[str, typer.Argument(help="Text to encode.")],
) -> None:
    """Show how a text is cut into tokens, with their ids."""
    chat = ChatTokenizer.load(tokenizer)
    ids = chat.encode(text)
    stdout.print(
        f"{len(ids)} tokens: "
        + " ".join(f"{piece!r}:{i}" for piece, i in zip(chat.tokens(text), ids, strict=True))
    )


RecipeOption = Annotated[
    Path | None,
    typer.Option(help="A `kind: train` YAML recipe (default: built-in small defaults)."),
]
DataOption = Annotated[
    Path | None, typer.Option(help="Data folder from `kefu data ingest` (overrides the recipe).")
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Run folder to write (new, or the one to --resume).")
]
ArchOption = Annotated[str | None, typer.Option(help="gpt or lstm (overrides the recipe).")]
TokenizerOption = Annotated[
    Path | None,
    typer.Option(help="tokenizer.json (default: the recipe's, else one trained on the data)."),
]
ResumeOption = Annotated[
    bool, typer.Option(help="Continue an interrupted run in --out from its checkpoint.")
]
InitOption = Annotated[
    Path | None,
    typer.Option(help="Start from this run's weights and tokenizer (e.g. lm pre-training)."),
]
StepsOption = Annotated[
    int | None, typer.Option(help="Optimizer steps (overrides train.max_steps).")
]
BaseOption = Annotated[
    str | None,
    typer.Option(help="Fine-tune this Hugging Face model (folder or hub id) instead of --arch."),
]
LoraOption = Annotated[
    str | None,
    typer.Option(
        help="Train only LoRA adapters on --base: rank,alpha[,targets...], e.g. "
        "8,16,q_proj,v_proj (default targets: peft's for the model type)."
    ),
]
MinutesOption = Annotated[float | None, typer.Option(help="Stop and save after this many minutes.")]


def _train(
    task: str,
    recipe: Path | None,
    data: Path | None,
    out: Path,
    arch: str | None,
    tokenizer: Path | None,
    resume: bool,
    init: Path | None,
    max_steps: int | None,
    minutes: float | None,
    base: str | None = None,
    lora: str | None = None,
) -> None:
    from kefu.models.hf import LoRASettings
    from kefu.train.recipe import TrainRecipe
    from kefu.train.run import run_training

    fields: dict[str, Any] = {"kind": "train", "task": task}
    if recipe is not None:
        fields = load_config(recipe, kind="train").model_dump()
        if fields["task"] != task:
            raise KefuError(
                f"{recipe} is a recipe for `kefu train {fields['task']}`, not `kefu train {task}`"
            )
    _merge(
        fields,
        {
            "arch": arch,
            "base": base,
            "data": data and str(data),
            "tokenizer": tokenizer and str(tokenizer),
            "train": {"max_steps": max_steps, "time_limit_minutes": minutes},
        },
    )
    if lora:
        fields["lora"] = LoRASettings.parse(lora).model_dump()
    summary = run_training(
        validate(TrainRecipe, fields, "the training options", "train recipe"), out, resume, init
    )
    result = summary.result
    best = (
        f"; best valid loss {result.best_valid_loss:.4f}"
        if result.best_valid_loss is not None
        else ""
    )
    stdout.print(
        f"trained {summary.arch} ({summary.parameters:,} parameters) for {result.step} steps{best}"
        + (" (stopped early)" if result.stopped_early else "")
        + f"; run folder: {summary.run_dir}"
    )


def _train_command(task: str, summary: str) -> Callable[..., None]:
    """The `kefu train lm` and `kefu train chat` commands: the same options, another task."""

    def command(
        recipe: RecipeOption = None,
        data: DataOption = None,
        out: OutOption = ...,
        arch: ArchOption = None,
        tokenizer: TokenizerOption = None,
        resume: ResumeOption = False,
        init: InitOption = None,
        max_steps: StepsOption = None,
        minutes: MinutesOption = None,
        base: BaseOption = None,
        lora: LoraOption = None,
    ) -> None:
        _train(
            task, recipe, data, out, arch, tokenizer, resume, init, max_steps, minutes, base, lora
        )

    command.__doc__ = summary
    return command


train_lm = _train_command(
    "lm", "Train a language model (GPT or LSTM) on all text of a data folder, packed into windows."
)
train_chat = _train_command(
    "chat", "Fine-tune on conversations: the loss falls on the assistant's replies only."
)


def models_merge(
    run: Annotated[Path, typer.Argument(help="A LoRA run from `kefu train chat --lora`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New run folder for the full model.")],
) -> None:
    """Fold a LoRA run's adapter into its base model: a full-model run that loads on its own."""
    from kefu.models.hf import merge_run

    stdout.print(f"wrote {merge_run(run, out)}")


def export_hf_command(
    run: Annotated[Path, typer.Argument(help="A GPT run folder.")],
    out: Annotated[
        Path, typer.Argument(help="Folder for the Hugging Face model (LlamaForCausalLM).")
    ],
) -> None:
    """Export a GPT run as a Hugging Face Llama model folder any Llama engine can serve."""
    from kefu.models.hf_export import export_hf

    stdout.print(f"wrote {export_hf(run, out)}")


def compress_quantize(
    run: Annotated[Path, typer.Argument(help="A GPT or LSTM run folder.")],
    method: Annotated[
        str,
        typer.Option(
            help="int8-dynamic: int8 arithmetic, faster on CPU from d_model ~512 up; "
            "int8-weight: int8 on disk only, float speed, least error."
        ),
    ] = "int8-dynamic",
    out: Annotated[Path, typer.Option(help="Folder for the quantized run.")] = ...,
) -> None:
    """Quantize a trained model to int8 as a new run folder that evaluates, chats and serves like any run."""
    from kefu.compress.quantize import quantize_run

    made = quantize_run(run, method, out)
    before, after = made.bytes_before / 1e6, made.bytes_after / 1e6
    stdout.print(
        f"{method}: weights {before:.2f} MB → {after:.2f} MB ({before / after:.1f}x smaller); wrote {made.path}"
    )


def compress_prune(
    run: Annotated[Path, typer.Argument(help="A run folder from `kefu train lm|chat`.")],
    sparsity: Annotated[
        float,
        typer.Option(
            help="Share to remove, strictly between 0 and 1: of each pruned matrix's weights "
            "(magnitude), or of each layer's attention heads and MLP channels (structured)."
        ),
    ] = ...,
    method: Annotated[
        str,
        typer.Option(
            help="magnitude: zero the smallest weights (same size and speed); structured (GPT): "
            "remove whole heads and channels (smaller and faster)."
        ),
    ] = ...,
    out: Annotated[Path, typer.Option(help="New run folder for the pruned model.")] = ...,
    recover_steps: Annotated[
        int, typer.Option(help="Fine-tune this many steps after pruning to recover (0: none).")
    ] = 0,
    data: Annotated[
        Path | None,
        typer.Option(help="Data folder for recovery (default: the source recipe's)."),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate for recovery (default: a tenth of the source's)."),
    ] = None,
) -> None:
    """Prune a trained model into a new run folder; optionally fine-tune it to recover."""
    from kefu.compress.prune import prune_run

    summary = prune_run(run, out, method, sparsity, recover_steps, data, lr)
    before, after = summary.before, summary.after
    table = Table(title=f"{run} → {out} ({method}, sparsity {sparsity:g})")
    table.add_column("")
    for column in ("before", "after", "change"):
        table.add_column(column, justify="right")

    def change(old: float, new: float) -> str:
        return f"{100 * (new - old) / old:+.1f}%" if old else "-"

    table.add_row(
        "parameters",
        f"{before.parameters:,}",
        f"{after.parameters:,}",
        change(before.parameters, after.parameters),
    )
    table.add_row(
        "size on disk",
        f"{before.size_bytes / 1e6:.2f} MB",
        f"{after.size_bytes / 1e6:.2f} MB",
        change(before.size_bytes, after.size_bytes),
    )
    table.add_row(
        "zeros in pruned matrices",
        f"{100 * before.zero_share:.2f}%",
        f"{100 * after.zero_share:.2f}%",
        "",
    )
    record = summary.record
    for name in ("n_head", "n_kv_head", "d_hidden"):
        if name in record:
            old, new = record[name]
            table.add_row(f"{name} per layer", str(old), str(new), change(old, new))
    stdout.print(table)
    if "recovery" in record:
        r = record["recovery"]
        stdout.print(
            f"recovery: {r['steps']} steps at lr {r['lr']:g}, valid loss {r['valid_loss_before']} → "
            f"{r['valid_loss_after']}; kept the {r['kept']} weights"
        )
    if method == "magnitude":
        stdout.print(
            "the zeros are stored and multiplied like any weight: same size on disk, same speed"
        )
    stdout.print(f"run folder: {out}")


def eval_lm(
    run: Annotated[Path, typer.Argument(help="A run folder from `kefu train lm|chat`.")],
    data: Annotated[Path, typer.Option(help="Data folder to evaluate on.")] = ...,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    replies: Annotated[
        int, typer.Option(help="Customer turns to answer for BLEU/chrF/ROUGE-L (0: none).")
    ] = 200,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated reply, in tokens.")] = 64,
    baseline: Annotated[
        bool, typer.Option(help="Also score the nearest-training-reply baseline.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(help="Score at most this many windows/conversations for perplexity."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for report.md, loss.png, eval.json (default: the run)."),
    ] = None,
) -> None:
    """Perplexity, bits per byte and next-reply quality of a trained language model."""
    from kefu.eval.lm import evaluate_lm
    from kefu.models.checkpoint import load_run

    results = evaluate_lm(load_run(run), data, split, replies, max_new_tokens, baseline, out, limit)
    p = results["perplexity"]
    stdout.print(
        f"{run}: perplexity {p['perplexity']:.2f}, {p['bits_per_byte']:.4f} bits per byte over {p['tokens']:,} tokens of {split}"
    )
    for name, key in (("model", "replies"), ("nearest training reply", "nearest_reply_baseline")):
        if key in results:
            m = results[key]
            stdout.print(
                f"{name}: BLEU {m['bleu']}, chrF {m['chrf']}, ROUGE-L {m['rouge_l']}, distinct-2 {m['distinct_2']} over {m['replies']} replies"
            )
    stdout.print(f"report: {(out or run) / 'report.md'}")


def chat_command(
    run: Annotated[Path, typer.Argument(help="A run folder from `kefu train chat`.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 128,
    temperature: Annotated[
        float, typer.Option(help="0 for greedy; higher for more varied replies.")
    ] = 0.0,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling share (with temperature > 0).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    system: Annotated[
        str | None, typer.Option(help="A system message put before the conversation.")
    ] = None,
) -> None:
    """Chat with a trained model in the terminal (/reset starts over, /exit ends)."""
    import sys

    from kefu.infer.chat import chat_loop
    from kefu.infer.generate import SamplingConfig
    from kefu.models.checkpoint import load_run

    loaded = load_run(run)
    sampling = validate(
        SamplingConfig,
        {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        },
        "the chat options",
        "sampling config",
    )
    context = None if loaded.arch == "lstm" else loaded.model.config.context_length
    if sys.stdin.isatty():
        note("type a message and press Enter; /reset starts over, /exit ends")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(loaded.model, loaded.tokenizer, sampling, sys.stdin, write, system, context)


def _recipe(model: type[Any], kind: str, recipe: Path | None, options: dict[str, Any]) -> Any:
    """A recipe of `kind` from its file (if given) with the command-line options over it; it
    must name a data folder one way or the other."""
    fields: dict[str, Any] = {"kind": kind}
    if recipe is not None:
        fields = load_config(recipe, kind=kind).model_dump(exclude_unset=True)
    _merge(fields, options)
    settings = validate(model, fields, "the training options", f"{kind} recipe")
    if settings.data is None:
        raise KefuError("no data: give --data DIR or `data:` in the recipe")
    return settings


def train_intent(
    recipe: Annotated[
        Path | None,
        typer.Option(help="An intent recipe (kind: intent), e.g. recipes/intent/*.yaml."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="An `intents` data folder (kefu data ingest --format intents)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = ...,
    model: Annotated[
        str | None,
        typer.Option(
            help="embed (MiniLM + trained head), textcnn (from scratch) or finetune (MiniLM end to end)."
        ),
    ] = None,
    lora: Annotated[
        bool, typer.Option(help="finetune: train LoRA adapters (rank 8) instead of every weight.")
    ] = False,
    precision: Annotated[
        float | None,
        typer.Option(help="In-scope precision the out-of-scope threshold is calibrated for."),
    ] = None,
    max_steps: StepsOption = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
) -> None:
    """Train an intent classifier with a calibrated out-of-scope threshold."""
    from kefu.nlu.intent import IntentRecipe, train_intent

    options = {
        "model": model,
        "data": data and str(data),
        "precision": precision,
        "lora": {} if lora else None,
        "train": {"max_steps": max_steps, "lr": lr},
    }
    settings = _recipe(IntentRecipe, "intent", recipe, options)
    _, info = train_intent(settings.data, out, settings)
    stdout.print(
        f"trained a {' + '.join(m.model for m in [settings, *settings.ensemble])} intent model over {info['labels']} intents from {info['train_examples']:,} examples; out-of-scope below confidence {info['threshold']:.3f}; run folder: {out}"
    )


def eval_intent(
    run: Annotated[Path, typer.Argument(help="A run folder from `kefu train intent`.")],
    data: Annotated[Path, typer.Option(help="An `intents` data folder.")] = ...,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for report.md, confusion.png, eval.json (default: the run)."),
    ] = None,
) -> None:
    """Accuracy, macro-F1, per-intent P/R/F1, out-of-scope metrics, confusions and latency."""
    from kefu.nlu.intent import evaluate_intent, load_classifier

    results = evaluate_intent(load_classifier(run), data, split, out or run)
    extra = ""
    if results["out_of_scope_recall"] is not None:
        extra = f", in-scope accuracy {100 * results['in_scope_accuracy']:.2f}, out-of-scope recall {100 * results['out_of_scope_recall']:.2f}"
    stdout.print(
        f"{run} on {split}: accuracy {100 * results['accuracy']:.2f}, macro-F1 {100 * results['macro_f1']:.2f}{extra}; latency p50 {results['latency_ms']['p50']:.1f} ms"
    )
    stdout.print(f"report: {(out or run) / 'report.md'}")


def eval_compare(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Run folders of one task (language models or intent models)."),
    ],
    data: Annotated[Path, typer.Option(help="Data folder to score quality on.")] = ...,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    out: Annotated[
        Path, typer.Option(help="Folder for compare.md, compare.json, compare.png.")
    ] = Path("compare"),
    threads: Annotated[
        int, typer.Option(help="torch CPU threads while measuring, the same for every run.")
    ] = 1,
    prompt_tokens: Annotated[
        int, typer.Option(help="Language models: tokens of each timed prompt.")
    ] = 32,
    new_tokens: Annotated[
        int, typer.Option(help="Language models: tokens decoded per timed sequence.")
    ] = 32,
    repeats: Annotated[
        int, typer.Option(help="Timed rounds, each timing every run in turn (medians).")
    ] = 3,
    limit: Annotated[
        int | None,
        typer.Option(help="Score at most this many windows/conversations for perplexity."),
    ] = None,
) -> None:
    """Parameters, size on disk, CPU latency (batch 1), throughput (batch 16) and quality of runs."""
    from kefu.eval.compare import CompareSettings, compare_runs, setting_line, table

    settings = CompareSettings(threads, prompt_tokens, new_tokens, repeats, limit=limit)
    results = compare_runs(runs, data, split, out, settings)
    columns, cells = table(results)
    shown = Table(title=f"{len(cells)} {results['task']}s")
    for column in columns:
        shown.add_column(column, justify="left" if column in ("run", "relies on") else "right")
    for row in cells:
        shown.add_row(*row)
    stdout.print(setting_line(results))
    stdout.print(shown)
    stdout.print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")


def train_distill(
    teacher: Annotated[
        Path,
        typer.Option(
            help="The teacher's run folder: a generator (`kefu train lm|chat`) or an intent model."
        ),
    ] = ...,
    student: Annotated[
        Path,
        typer.Option(
            help="The student's recipe: kind train for a generator teacher, kind intent for an intent one."
        ),
    ] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = ...,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data folder (default: the recipe's; for generators, else the teacher's)."
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Softens both models' outputs (T); > 1 shows more of the ranking.")
    ] = 2.0,
    alpha: Annotated[
        float,
        typer.Option(
            help="Weight of the teacher's soft labels; 1 - alpha goes to the gold labels."
        ),
    ] = 0.5,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Generators: the student's tokenizer.json; it must be the teacher's."),
    ] = None,
    max_steps: StepsOption = None,
) -> None:
    """Distil a teacher into a smaller, faster student; report the student against the teacher."""
    from kefu.train.distill import (
        distill_generator,
        distill_intent,
        distilled_quality,
        teacher_kind,
    )

    kind = teacher_kind(teacher)
    needed = "intent" if kind == "intent" else "train"
    found = load_config(student).kind
    if found != needed:
        raise KefuError(
            f"{teacher} is {'an intent' if kind == 'intent' else 'a generator'} teacher, so the "
            f"student recipe needs `kind: {needed}`; {student} has `kind: {found}`"
        )
    options = {"data": data and str(data), "train": {"max_steps": max_steps}}
    if kind == "intent":
        from kefu.nlu.intent import IntentRecipe

        if tokenizer is not None:
            raise KefuError(
                "--tokenizer is for generator students; an intent student makes its own"
            )
        settings = _recipe(IntentRecipe, "intent", student, options)
        summary = distill_intent(teacher, settings, settings.data, out, temperature, alpha)
    else:
        from kefu.train.recipe import TrainRecipe

        fields = load_config(student, kind="train").model_dump()
        _merge(fields, {**options, "tokenizer": tokenizer and str(tokenizer)})
        settings = validate(TrainRecipe, fields, "the training options", "train recipe")
        summary = distill_generator(teacher, settings, out, temperature, alpha)
        if not summary:  # a process of a torchrun group other than the first
            return
    table = Table(title=f"student against teacher ({summary['split']} split, CPU, batch 1)")
    for column in ("model", "parameters", summary["quality"], summary["speed"]):
        table.add_column(column)
    for name in ("teacher", "student"):
        row = summary[name]
        quality = row["quality"]
        table.add_row(
            f"{name}: {row['model']}",
            f"{row['parameters']:,}",
            f"{100 * quality:.2f}%" if summary["quality"] == "accuracy" else f"{quality:.2f}",
            f"{row['latency_ms']:.2f}",
        )
    stdout.print(table)
    stdout.print(distilled_quality(summary))
    stdout.print(f"run folder: {out}; comparison: {out / 'distill.md'}")


def train_entities(
    recipe: Annotated[
        Path | None,
        typer.Option(help="A tagger recipe (kind: entities), e.g. recipes/entities/*.yaml."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="A `spans` data folder (kefu data ingest --format spans).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = ...,
    max_steps: StepsOption = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
) -> None:
    """Train the entity tagger (and multi-label intents) on annotated spans."""
    from kefu.nlu.tagger import TaggerRecipe, load_spans, train_tagger

    options = {"data": data and str(data), "train": {"max_steps": max_steps, "lr": lr}}
    settings = _recipe(TaggerRecipe, "entities", recipe, options)
    tagger = train_tagger(
        load_spans(settings.data, "train"), load_spans(settings.data, "valid"), out, settings
    )
    types = sorted({tag.split("-", 1)[1] for tag in tagger.tags if tag != "O"})
    stdout.print(
        f"trained a tagger for {len(types)} entity types ({', '.join(types[:6])}{' …' if len(types) > 6 else ''})"
        f" and {len(tagger.intent_names)} intents; run folder: {out}"
    )


def eval_entities(
    run: Annotated[
        Path | None, typer.Argument(help="A run folder from `kefu train entities`.")
    ] = None,
    data: Annotated[Path, typer.Option(help="A `spans` data folder.")] = ...,
    rules: Annotated[
        bool, typer.Option(help="Score the rule extractors instead of a trained tagger.")
    ] = False,
    project: Annotated[
        Path | None, typer.Option(help="With --rules: a project whose `entities.patterns` to use.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for report.md and eval.json (default: the run; DATA/eval-rules)."
        ),
    ] = None,
) -> None:
    """Entity precision/recall/F1 (exact span and type), per type, and latency."""
    from kefu.nlu.entities import EntityExtractor
    from kefu.nlu.tagger import evaluate_entities, load_spans, load_tagger

    if (run is None) == (not rules):
        raise KefuError("give a tagger run folder, or --rules to score the rule extractors")
    records = load_spans(data, split)
    if rules:
        from kefu.project import load_project

        extractor = EntityExtractor(load_project(project).entities.patterns if project else {})
        title = f"Rule extractors on {data} ({split})"
        out = out or data / "eval-rules"
        results = evaluate_entities(
            lambda texts: [(extractor(t), None) for t in texts], records, out, title
        )
    else:
        title = f"Tagger {run} on {data} ({split})"
        results = evaluate_entities(load_tagger(run).analyse, records, out or run, title)
    e = results["entities"]
    extra = (
        f"; intents micro-F1 {100 * results['intents']['f1']:.2f}" if "intents" in results else ""
    )
    stdout.print(
        f"{title}: entity precision {100 * e['precision']:.2f}, recall {100 * e['recall']:.2f}, F1 {100 * e['f1']:.2f}{extra}"
    )
    stdout.print(f"report: {(out or run) / 'report.md'}")


def nlu_command(
    run: Annotated[Path, typer.Argument(help="A run folder from `kefu train intent`.")],
    text: Annotated[str, typer.Argument(help="A customer message.")],
    project: Annotated[
        Path | None, typer.Option(help="A project whose `entities.patterns` to use too.")
    ] = None,
    tagger: Annotated[
        Path | None, typer.Option(help="A run from `kefu train entities`: its entities too.")
    ] = None,
) -> None:
    """Intent, confidence, top-3 and entities of one message."""
    from kefu.nlu.entities import EntityExtractor
    from kefu.nlu.intent import load_classifier
    from kefu.project import load_project

    patterns = load_project(project).entities.patterns if project else {}
    prediction = load_classifier(run).predict([text])[0]
    stdout.print(f"intent: {prediction.label} ({prediction.confidence:.3f})")
    stdout.print("top 3: " + ", ".join(f"{label} {p:.3f}" for label, p in prediction.top))
    for entity in EntityExtractor(patterns)(text):
        stdout.print(f"entity: {entity.type} {entity.text!r} → {entity.value}")
    if tagger is not None:
        from kefu.nlu.tagger import load_tagger

        entities, intents = load_tagger(tagger).predict([text])[0]
        for entity in entities:
            stdout.print(f"tagged: {entity.type} {entity.text!r} [{entity.start}:{entity.end}]")
        if intents:
            stdout.print("tagged intents: " + ", ".join(f"{n} {p:.3f}" for n, p in intents.items()))


def kb_build(
    sources: Annotated[
        list[Path],
        typer.Argument(help="FAQ (.csv/.jsonl), .md, .html, .txt, .json files or folders."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Knowledge base folder, e.g. kb/NAME (updated).")
    ] = ...,
    encoder: Annotated[
        str | None,
        typer.Option(help="Sentence encoder: all-MiniLM-L6-v2 (default) or a model folder."),
    ] = None,
    dense_language: Annotated[
        list[str] | None,
        typer.Option(
            help="en or zh: a language the encoder suits (default: en for MiniLM, both for others). Repeatable."
        ),
    ] = None,
    dense: Annotated[
        bool, typer.Option("--dense/--no-dense", help="Embed texts for dense search (default on).")
    ] = True,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of the sources (default utf-8).")
    ] = None,
    max_words: Annotated[
        int | None, typer.Option(help="Longest English chunk in words (default 200).")
    ] = None,
    overlap_words: Annotated[
        int | None, typer.Option(help="Words neighbouring chunks share (default 40).")
    ] = None,
    max_chars: Annotated[
        int | None, typer.Option(help="Longest Chinese chunk in characters (default 300).")
    ] = None,
    overlap_chars: Annotated[
        int | None, typer.Option(help="Characters neighbouring chunks share (default 60).")
    ] = None,
) -> None:
    """Build or update a knowledge base; only texts that changed are embedded again."""
    from kefu.kb.index import KBConfig, build_kb

    fields: dict[str, Any] = {}
    chunking = {
        "max_words": max_words,
        "overlap_words": overlap_words,
        "max_chars": max_chars,
        "overlap_chars": overlap_chars,
    }
    options = {"encoder": encoder, "dense_languages": dense_language, "encoding": encoding}
    _merge(fields, {**options, "chunking": chunking})
    if not dense:
        fields["encoder"] = None
    config = validate(KBConfig, fields, "the kb build options", "knowledge base config")
    was_calibrated = (out / "calibration.json").is_file()
    report = build_kb(sources, out, config)
    stdout.print(
        f"{out}: {report.chunks:,} chunks from {report.sources} sources, {report.texts:,} texts to "
        f"match, {report.vectors:,} vectors ({report.embedded:,} texts of "
        f"{report.reembedded_chunks:,} chunks embedded, the rest kept); problems: {len(report.problems)}"
    )
    note_rejects(report.problems, f": see {out / 'problems.jsonl'}")
    if was_calibrated:
        note(f"the rebuilt base needs its answer threshold again: `kefu kb calibrate {out}`")


def kb_search(
    kb: Annotated[Path, typer.Argument(help="A knowledge base folder from `kefu kb build`.")],
    query: Annotated[str, typer.Argument(help="The question to look up.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many hits to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per hit.")] = False,
    encoder: Annotated[
        str | None,
        typer.Option(help="Where the encoder folder it was built with is, if it moved."),
    ] = None,
) -> None:
    """Search a knowledge base: ranked hits with their sources and BM25, dense and fused scores."""
    from kefu.kb.index import KnowledgeBase

    found = KnowledgeBase.load(kb, encoder).lookup(query, k)
    hits = found.hits

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    if as_json:
        for hit in hits:
            fields = {"rank": hit.rank, "id": hit.id, "source": hit.source, "title": hit.title}
            scores = {"fused": hit.fused, "bm25": hit.bm25, "dense": hit.dense}
            row = {**fields, "url": hit.url, "snippet": hit.snippet(), **scores}
            stdout.print(json.dumps(row, ensure_ascii=False), highlight=False)
        return
    table = Table(title=f"{kb}: {query}", title_justify="left")
    for heading in ("#", "fused", "bm25", "dense", "id", "source", "title", "snippet"):
        table.add_column(heading, justify="right" if heading in "# fused bm25 dense" else "left")
    for hit in hits:
        where = hit.source + (f" {hit.url}" if hit.url else "")
        table.add_row(
            str(hit.rank), f"{hit.fused:.4f}", score(hit.bm25), score(hit.dense), hit.id, where,
            hit.title, hit.snippet(),
        )  # fmt: skip
    stdout.print(table)
    if not hits:
        note("no hits: none of the query's words are in the knowledge base")
    elif found.confidence is None:
        note("not calibrated, so no answer is direct: run `kefu kb calibrate` for a threshold")
    else:
        verdict = (
            "answers directly" if found.confident else "below the threshold: not a direct answer"
        )
        note(f"confidence of the first hit {found.confidence:.3f}: {verdict}")


def _held_out_queries(kb: Any, queries: Path | None) -> tuple[list[Any], str]:
    """The questions of `queries` (rejected rows listed), or else the FAQ's own paraphrases."""
    from kefu.kb.evaluate import paraphrase_queries, read_queries

    if queries is None:
        return paraphrase_queries(kb), "FAQ paraphrases, each held out in turn"
    found, rejects = read_queries(queries, kb)
    note_rejects(rejects, " rows skipped")
    return found, queries.name


QueriesOption = Annotated[
    Path | None,
    typer.Option(
        help='Held-out questions: CSV or JSON Lines with `query` and `ids` (" | "-separated). '
        "Default: each FAQ paraphrase, hidden from the index while it is asked."
    ),
]


def kb_calibrate(
    kb: Annotated[Path, typer.Argument(help="A knowledge base folder from `kefu kb build`.")],
    queries: QueriesOption = None,
    precision: Annotated[
        float,
        typer.Option(min=0.01, max=1.0, help="Share of direct FAQ answers that must be right."),
    ] = 0.9,
) -> None:
    """Choose the fusion weights and the confidence threshold for direct answers."""
    from kefu.kb.evaluate import calibrate
    from kefu.kb.index import KnowledgeBase

    base = KnowledgeBase.load(kb)
    held_out, source = _held_out_queries(base, queries)
    found = calibrate(base, held_out, precision, source)
    f, figures = found.fusion, found.figures
    stdout.print(
        f"{kb}: calibrated on {figures['queries']:,} questions ({source}); fusion k={f.k}, "
        f"BM25 weight {f.bm25_weight}, dense weight {f.dense_weight}: recall@1 "
        f"{100 * figures['recall@1']:.2f}, MRR {100 * figures['mrr']:.2f}; direct answers at "
        f"confidence ≥ {found.threshold:.3f} for {100 * precision:.0f}% precision: "
        f"{100 * figures['answer_rate']:.1f}% of questions"
    )


def eval_kb(
    kb: Annotated[Path, typer.Argument(help="A knowledge base folder from `kefu kb build`.")],
    queries: QueriesOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and eval.json (default: KB/eval).")
    ] = None,
) -> None:
    """Recall@1/5/10, MRR, nDCG@10 of BM25, dense and hybrid; the calibrated answer rate."""
    from kefu.kb.evaluate import evaluate_kb
    from kefu.kb.index import KnowledgeBase

    base = KnowledgeBase.load(kb)
    held_out, source = _held_out_queries(base, queries)
    results = evaluate_kb(base, held_out, out or kb / "eval")
    table = Table(title=f"{kb}: {results['queries']:,} questions ({source})", title_justify="left")
    for heading in ("ranking", "recall@1", "recall@5", "recall@10", "MRR", "nDCG@10"):
        table.add_column(heading, justify="left" if heading == "ranking" else "right")
    rows = [(name, results[name]) for name in ("bm25", "dense", "hybrid") if results[name]]
    rows += [(f"hybrid, {lang}", m) for lang, m in results["by_language"].items()]
    for name, m in rows:
        keys = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
        table.add_row(name, *(f"{100 * m[key]:.2f}" for key in keys))
    stdout.print(table)
    answering = results.get("answering")
    if answering:
        achieved = answering["precision"]
        stdout.print(
            f"direct answers: {100 * answering['answer_rate']:.1f}% of questions at confidence ≥ "
            f"{answering['threshold']:.3f}, {'none' if achieved is None else f'{100 * achieved:.1f}%'} "
            f"right (target {100 * answering['target_precision']:.0f}%)"
        )
    else:
        note("not calibrated: run `kefu kb calibrate` for the direct-answer rate")
    stdout.print(f"report: {(out or kb / 'eval') / 'report.md'}")


def _store_of(project: Path, database: str | None):
    from kefu.project import load_project
    from kefu.serve.settings import ServeSettings
    from kefu.store.repository import Store

    settings = ServeSettings(project=str(project), database=database)
    return Store.open(settings.database_url(load_project(project)))


DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Store URL (sqlite:///kefu.db, postgresql://user@host/db); default: the project's.",
    ),
]


def serve_command(
    project: Annotated[Path, typer.Argument(help="A built project folder (or its kefu.yaml).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the models).")] = 1,
    database: DatabaseOption = None,
    new_key: Annotated[
        bool, typer.Option(help="Create an API key (scopes chat, admin) and print it.")
    ] = False,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Proxies whose X-Forwarded-For is trusted for the client address (comma-separated, * for any)."
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the assistant: OpenAI-compatible API, web chat page, WeChat (when configured)."""
    import uvicorn

    from kefu.serve.app import create_app
    from kefu.serve.channels.wechat import WeChatConfig
    from kefu.serve.settings import ServeSettings

    wechat = WeChatConfig.from_env()
    settings = ServeSettings(
        project=str(project),
        database=database,
        host=host,
        port=port,
        workers=workers,
        wechat=wechat,
    )
    if new_key:
        store = _store_of(project, database)
        key, _ = store.create_api_key("kefu serve --new-key", ["chat", "admin"])
        store.close()
    # uvicorn's log setup, with kefu's own loggers (swaps, load failures, turns) on its handler.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["kefu"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    logging.config.dictConfig(log_config)
    note(f"loading {project} …")
    if workers > 1:  # the workers would race to push the build's models: push them once here
        with _registry_of(project, database) as registry:
            for line in registry.register_build():
                note(f"model registry: {line}")
    app = create_app(settings) if workers == 1 else None
    url = f"http://{host}:{port}"
    stdout.print(f"kefu is serving {project} at [bold]{url}[/] (web chat page; API at {url}/v1)")
    if new_key:
        stdout.print(f"API key (chat, admin; shown once): [bold]{key}[/]")
    if wechat:
        stdout.print(f"WeChat callback: {url}/channels/wechat")
    if app is not None:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=log_config,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    else:
        settings.to_environment()
        uvicorn.run(
            "kefu.serve.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=log_config,
            forwarded_allow_ips=forwarded_allow_ips,
        )


def keys_create(
    project: Annotated[Path, typer.Argument(help="Project folder (or its kefu.yaml).")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. the client's name.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: chat, admin.")] = "chat",
    rate_limit: Annotated[
        int | None, typer.Option(help="Requests a minute; default: the project's serve limit.")
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    store = _store_of(project, database)
    try:
        key, record = store.create_api_key(
            name, [s.strip() for s in scopes.split(",") if s.strip()], rate_limit
        )
    finally:
        store.close()
    note(f"key {record.prefix}… ({', '.join(record.scopes)}) created; it is not shown again")
    stdout.print(key)


def keys_list(
    project: Annotated[Path, typer.Argument(help="Project folder (or its kefu.yaml).")],
    database: DatabaseOption = None,
) -> None:
    """List API keys: prefix, name, scopes, rate limit, created, revoked."""
    store = _store_of(project, database)
    try:
        records = store.api_keys()
    finally:
        store.close()
    table = Table("prefix", "name", "scopes", "per minute", "created", "revoked")
    for r in records:
        table.add_row(
            r.prefix,
            r.name,
            ",".join(r.scopes),
            str(r.rate_limit_per_minute or "default"),
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
        )
    stdout.print(table)


def keys_revoke(
    project: Annotated[Path, typer.Argument(help="Project folder (or its kefu.yaml).")],
    prefix: Annotated[str, typer.Argument(help="The key's prefix (from `kefu keys list`).")],
    database: DatabaseOption = None,
) -> None:
    """Revoke an API key: requests with it get 401 from then on."""
    store = _store_of(project, database)
    try:
        record = store.revoke_api_key(prefix)
    finally:
        store.close()
    stdout.print(f"revoked {record.prefix}… ({record.name})")


@contextlib.contextmanager
def _registry_of(project: Path, database: str | None) -> Iterator[Any]:
    from kefu.project import load_project
    from kefu.registry import Registry

    store = _store_of(project, database)
    try:
        yield Registry(load_project(project), store)
    finally:
        store.close()


ProjectArgument = Annotated[Path, typer.Argument(help="Project folder (or its kefu.yaml).")]
KindArgument = Annotated[str, typer.Argument(help="intent/<language>, kb or generator.")]
VersionArgument = Annotated[str, typer.Argument(help="v1, v2, … (`kefu models list`).")]
WaitOption = Annotated[
    float,
    typer.Option(
        help="Seconds to wait for every running server process to serve the change (0: do not wait)."
    ),
]


def _evaluation(evaluation: dict[str, Any]) -> str:
    if evaluation.get("metric") is None:
        return f"not evaluated ({evaluation.get('why', '')})"
    return f"{evaluation['metric']} {evaluation['value']:.4g} ({evaluation['examples']:,} held out)"


def models_list(project: ProjectArgument, database: DatabaseOption = None) -> None:
    """Every pushed version of each model, with its evaluation and what serves now."""
    with _registry_of(project, database) as registry:
        versions = registry.versions()
        serving = {d.kind: d for d in registry.store.deployments()}
    table = Table("kind", "version", "serving", "evaluation", "pushed", "from")
    for v in versions:
        deployment = serving.get(v.kind)
        role = ""
        if deployment and deployment.live == v.version:
            role = "live"
        elif deployment and deployment.candidate == v.version:
            role = f"canary {100 * deployment.canary_share:g}%"
        table.add_row(
            v.kind,
            v.version,
            role,
            _evaluation(v.evaluation),
            f"{v.created_at:%Y-%m-%d %H:%M}",
            v.source,
        )
    stdout.print(table)


def models_push(
    project: ProjectArgument,
    kind: KindArgument,
    folder: Annotated[
        Path, typer.Argument(help="The model folder (a training run, a build output).")
    ],
    note_text: Annotated[str | None, typer.Option("--note", help="What changed.")] = None,
    database: DatabaseOption = None,
) -> None:
    """Add a version: copied into the registry, loaded, smoke-tested and evaluated. It serves
    nobody until `promote` or `canary`."""
    with _registry_of(project, database) as registry:
        record, new = registry.push(kind, folder, note_text)
        live = registry.deployment(kind)
    said = "pushed as" if new else "already pushed as"
    stdout.print(f"{kind} {said} {record.version}: {_evaluation(record.evaluation)}")
    if live is not None and live.live != record.version:
        stdout.print(f"live is {live.live}; next: `kefu models canary` or `kefu models promote`")


def _said(kind: str, promotion: Any) -> None:
    deployment = promotion.deployment
    serving = f"{kind}: {deployment.live} live"
    if deployment.candidate:
        serving += (
            f", {deployment.candidate} on {100 * deployment.canary_share:g}% of new conversations"
        )
    stdout.print(f"{serving} ({promotion.gate})")
    if promotion.workers:
        stdout.print(f"served by {len(promotion.workers)} server process(es) now")


def models_promote(
    project: ProjectArgument,
    kind: KindArgument,
    version: VersionArgument,
    force: Annotated[
        bool, typer.Option(help="Promote even if its evaluation is worse than the live one's.")
    ] = False,
    wait: WaitOption = 60,
    database: DatabaseOption = None,
) -> None:
    """Make a version live for every conversation, if its held-out evaluation is not worse
    than the live version's by more than `registry.promote_margin`."""
    with _registry_of(project, database) as registry:
        _said(kind, registry.promote(kind, version, force, wait or None))


def models_rollback(
    project: ProjectArgument,
    kind: KindArgument,
    wait: WaitOption = 60,
    database: DatabaseOption = None,
) -> None:
    """Return to the version that was live before the current one."""
    with _registry_of(project, database) as registry:
        _said(kind, registry.rollback(kind, wait or None))


def models_canary(
    project: ProjectArgument,
    kind: KindArgument,
    version: Annotated[
        str | None, typer.Argument(help="The candidate (v2, …); leave out with --stop.")
    ] = None,
    share: Annotated[float, typer.Option(help="Share of new conversations it gets, 0–1.")] = 0.1,
    stop: Annotated[
        bool, typer.Option(help="End the canary: the live version serves all.")
    ] = False,
    wait: WaitOption = 60,
    database: DatabaseOption = None,
) -> None:
    """Try a version on a share of new conversations; compare with `kefu models status`."""
    with _registry_of(project, database) as registry:
        if stop:
            _said(kind, registry.end_canary(kind, wait or None))
        elif version is None:
            raise KefuError("name the candidate version (or give --stop to end the canary)")
        else:
            _said(kind, registry.canary(kind, version, share, wait or None))


def models_status(
    project: ProjectArgument,
    hours: Annotated[float, typer.Option(help="Figures over the last this many hours.")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    database: DatabaseOption = None,
) -> None:
    """What serves each kind, each serving version's turns, routes, latency and feedback, and
    the server processes with the revision each serves (and any load error)."""
    import datetime

    from kefu.store.models import utcnow

    with _registry_of(project, database) as registry:
        report = registry.status(utcnow() - datetime.timedelta(hours=hours))
    if as_json:
        stdout.print_json(data=report)
        return
    table = Table("kind", "version", "role", "turns", "routes", "p50 ms", "👍", "👎")
    for kind, state in report["kinds"].items():
        for version, figures in state["versions"].items():
            role = (
                "live" if version == state["live"] else f"canary {100 * state['canary_share']:g}%"
            )
            p50 = figures["latency_ms_p50"]
            table.add_row(
                kind,
                version,
                role,
                str(figures["turns"]),
                ", ".join(f"{r} {n}" for r, n in sorted(figures["routes"].items())),
                "" if p50 is None else f"{p50:.0f}",
                str(figures["thumbs_up"]),
                str(figures["thumbs_down"]),
            )
    stdout.print(table)
    for worker in report["workers"]:
        problem = f" — could not load: {worker['error']}" if worker["error"] else ""
        stdout.print(f"server {worker['id']}: revision {worker['revision']}{problem}")
    if not report["workers"]:
        stdout.print("no server process is running on this database")


COMMANDS: dict[str, Callable[..., None]] = {
    "init": init_command,
    "build": build_command,
    "config check": config_check,
    "data ingest": data_ingest,
    "data stats": data_stats,
    "tokenizer train": tokenizer_train,
    "tokenizer encode": tokenizer_encode,
    "train lm": train_lm,
    "train chat": train_chat,
    "export hf": export_hf_command,
    "compress quantize": compress_quantize,
    "compress prune": compress_prune,
    "eval lm": eval_lm,
    "chat": chat_command,
    "train intent": train_intent,
    "eval intent": eval_intent,
    "train distill": train_distill,
    "eval compare": eval_compare,
    "train entities": train_entities,
    "eval entities": eval_entities,
    "nlu": nlu_command,
    "kb build": kb_build,
    "kb search": kb_search,
    "kb calibrate": kb_calibrate,
    "eval kb": eval_kb,
    "serve": serve_command,
    "keys create": keys_create,
    "keys list": keys_list,
    "keys revoke": keys_revoke,
    "models list": models_list,
    "models push": models_push,
    "models promote": models_promote,
    "models rollback": models_rollback,
    "models canary": models_canary,
    "models status": models_status,
    "models merge": models_merge,
}
GROUPS = {
    "config": "Validate project files and recipes.",
    "data": "Ingest chat logs, labelled utterances and FAQs; inspect data folders.",
    "tokenizer": "Train and inspect the byte-level BPE tokenizer.",
    "train": "Train language models and intent classifiers.",
    "export": "Export trained models to other formats.",
    "eval": "Evaluate trained models on held-out data.",
    "compress": "Make trained models smaller and faster: int8 quantization, pruning.",
    "kb": "Build and search knowledge bases (FAQ, documents, record databases).",
    "keys": "API keys of the server (stored hashed).",
    "models": "The model registry: push, canary, promote (evaluation-gated), roll back.",
}


def _friendly(command: Callable[..., None]) -> Callable[..., None]:
    """Turn a KefuError into one paragraph on stderr and exit status 1; likewise for bugs."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (KefuError, OSError) as err:  # OSError: a full disk, a missing permission
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; nothing half-written was kept", fg="yellow", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if os.environ.get("KEFU_DEBUG"):
                raise
            typer.secho(
                f"internal error: {type(err).__name__}: {err}. This is a bug in kefu, not in your "
                "input; rerun with KEFU_DEBUG=1 for the traceback and report it.",
                fg="red",
                err=True,
            )
            raise typer.Exit(1) from None

    return run


def _version(value: bool) -> None:
    if value:
        stdout.print(f"kefu {__version__}")
        raise typer.Exit()


def make_app() -> typer.Typer:
    app = typer.Typer(
        help="kefu (客服): build a customer-service assistant from your own support logs.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def main_options(
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")
        ] = False,
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
        ] = False,
    ) -> None:
        settings.quiet = quiet

    groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
    for name, group in groups.items():
        app.add_typer(group, name=name)
    for name, command in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        (groups[group] if group else app).command(leaf)(_friendly(command))
    return app


def main() -> None:
    make_app()(prog_name="kefu")
