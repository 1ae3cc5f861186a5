"""`kefu eval compare`: what each model costs and what it buys, side by side.

For runs of one task — language models (anything `load_run` loads: GPT, LSTM, and whatever a
run folder's `arch:` names) or intent classifiers (`load_classifier`) — one row per run:

    parameters · size on disk · CPU latency at batch 1 · throughput at batch 16 · quality

- Size: the bytes of the files a run folder holds for its model. Left out: `checkpoint/`
  (optimizer and data position, for `--resume` only) and what training and evaluation write
  beside the model (NOT_THE_MODEL). A run that needs another folder to load (a LoRA adapter on
  its base, an intent head on its sentence encoder) counts its own files and names what it
  relies on.
- Language models: greedy decoding with the KV cache (`prefill`, then one `decode` per token)
  of `new_tokens` tokens after a prompt of `prompt_tokens` random token ids (seeded), after a
  warm-up. Latency is the median decoding step (ms per generated token) at batch 1;
  throughput the tokens per second of 16 sequences decoded together (16 / the median step).
  Reading the prompt (prefill) is timed apart. Quality is perplexity on the split, from
  `evaluate_lm`, with bits per byte beside it: perplexity only compares runs that share a
  tokenizer, bits per byte compares any.
- Intent classifiers: `predict` on texts of the split, featurizing included (for `embed`, the
  MiniLM encoder runs too): the median milliseconds of a query asked alone, and queries per
  second in batches of 16 (16 / the median batch). Quality is accuracy on the split, from
  `evaluate_intent` (with the run's out-of-scope threshold, as the assistant answers), with
  top-1 accuracy (threshold ignored) beside it.

All runs are loaded together and timed in turns, `repeats` rounds after a warm-up, so that a
busy neighbour slows them alike; the medians over the rounds drop the steps and queries it
slowed most. torch runs on a fixed number of threads (1 by default), so figures taken on one
machine compare. Ratios are against the first run.

Writes compare.md (the table), compare.json (every figure) and compare.png (quality against
latency, marker area by size on disk, and the sizes as bars) into the output folder, with each
run's own evaluation report under runs/.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from kefu.compress.quantize import parameter_count
from kefu.errors import KefuError
from kefu.files import write_text_atomically

LM, INTENT = "language model", "intent classifier"
# Files in a run folder that are not the model: training's record and evaluation reports.
NOT_THE_MODEL = frozenset(
    {
        "checkpoint",
        "metrics.jsonl",
        "report.md",
        "eval.json",
        "loss.png",
        "confusion.png",
        "distill.json",
        "distill.md",
    }
)
BATCH = 16  # the batch of the throughput figure


@dataclass
class CompareSettings:
    """How the runs are measured; the same for every run of a comparison.

    Args:
        threads: torch's CPU threads while measuring (restored afterwards).
        prompt_tokens: language models: tokens of each prompt.
        new_tokens: language models: tokens decoded per sequence.
        repeats: timed rounds, after a warm-up; each round times every run in turn.
        queries: intent classifiers: queries timed one at a time per round.
        limit: language models: score at most this many windows/conversations for perplexity.
    """

    threads: int = 1
    prompt_tokens: int = 32
    new_tokens: int = 32
    repeats: int = 3
    queries: int = 32
    limit: int | None = None

    def check(self) -> None:
        """A clear error, naming the command-line option, for a value that cannot work."""
        for option, value in (
            ("threads", self.threads),
            ("prompt-tokens", self.prompt_tokens),
            ("new-tokens", self.new_tokens),
            ("repeats", self.repeats),
            ("queries", self.queries),
            ("limit", 1 if self.limit is None else self.limit),
        ):
            if value < 1:
                raise KefuError(f"--{option} must be at least 1, not {value}")


def run_task(run_dir: Path) -> str:
    """LM or INTENT, from what the run folder holds; a clear error for anything else."""
    if (run_dir / "config.yaml").is_file():
        return LM
    path = run_dir / "config.json"
    if path.is_file():
        try:
            described = json.loads(path.read_text(encoding="utf-8"))
            kind = described.get("kind")
        except (json.JSONDecodeError, AttributeError):
            raise KefuError(f"{path} is not a kefu model description (bad JSON)") from None
        if kind == "intent":
            return INTENT
        if "model_type" in described:  # a plain Hugging Face model folder: load_run takes it
            return LM
        raise KefuError(
            f"{run_dir} holds a {kind!r} model; `eval compare` compares language models "
            "(config.yaml) or intent classifiers (config.json with kind intent)"
        )
    if not run_dir.is_dir():
        raise KefuError(f"{run_dir} does not exist")
    raise KefuError(
        f"{run_dir} is not a run folder: no config.yaml (language model) or config.json "
        "(intent classifier)"
    )


def one_task(runs: list[Path]) -> str:
    """The task all runs share; a mix is an error that says which run is which."""
    tasks = {run: run_task(run) for run in runs}
    if len(set(tasks.values())) > 1:
        groups = {
            task: ", ".join(str(r) for r, t in tasks.items() if t == task)
            for task in dict.fromkeys(tasks.values())
        }
        raise KefuError(
            "`eval compare` compares runs of one task, but these mix "
            + "; ".join(f"{task}s: {names}" for task, names in groups.items())
            + ". Compare each kind on its own"
        )
    return next(iter(tasks.values()))


def disk_usage(run_dir: Path) -> dict[str, Any]:
    """Bytes of the run's own model files (see NOT_THE_MODEL), in all and file by file."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] in NOT_THE_MODEL or not path.is_file():
            continue
        files[relative.as_posix()] = path.stat().st_size
    return {"bytes": sum(files.values()), "files": files}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def relies_on(run_dir: Path, task: str) -> list[dict[str, Any]]:
    """What a run needs beside its own files to load: a language model's `base:` (in
    config.yaml, or under `model:` for a LoRA run of `arch: hf`), an intent model's pretrained
    encoder(s). With their bytes when they are folders on disk."""
    needs: dict[str, Path | None] = {}  # name → its folder, where one is on this machine
    if task == LM and (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        model = config.get("model") if isinstance(config, dict) else None
        base = None
        if isinstance(config, dict) and config.get("base"):
            base = str(config["base"])
        elif isinstance(model, dict) and model.get("lora") and model.get("base"):
            base = str(model["base"])  # an hf LoRA run: only the adapter is its own
        if base is not None:
            needs[base] = next((p for p in (run_dir / base, Path(base)) if p.is_dir()), None)
    elif task == INTENT:
        from kefu.models.encoder import encoder_path

        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        members = config["members"] if config.get("model") == "ensemble" else [config]
        for name in (m["encoder"] for m in members if m.get("encoder")):
            try:
                needs[name] = Path(encoder_path(name))  # the packaged MiniLM, or a folder
            except KefuError:
                needs[name] = None  # loading the run will say what is missing
    return [
        {"name": name, "bytes": folder_bytes(folder) if folder else None}
        for name, folder in needs.items()
    ]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on `threads` CPU threads inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class DecodeTiming:
    """One greedy generation: seconds reading the prompts, seconds of each decoding step, and
    the new tokens."""

    prefill_s: float
    step_s: list[float]
    tokens: torch.Tensor  # (B, new tokens)

    @property
    def decode_s(self) -> float:
        return sum(self.step_s)


@torch.inference_mode()
def time_decoding(model: Any, prompts: list[list[int]], new_tokens: int) -> DecodeTiming:
    """Greedy decoding of `new_tokens` per prompt with the model's cache, timed in two parts.

    Each new token costs one step: its choice (argmax) and one `decode` call, which feeds it
    back (the last step's logits go unused). Never stops early.
    """
    started = time.perf_counter()
    logits, state = model.prefill(prompts, new_tokens)
    last = time.perf_counter()
    prefill_s, steps, tokens = last - started, [], []
    for _ in range(new_tokens):
        token = logits.argmax(dim=-1)  # (B,)
        tokens.append(token)
        logits = model.decode(token, state)
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    return DecodeTiming(prefill_s, steps, torch.stack(tokens, dim=1))


def random_prompts(vocab_size: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of `length` token ids drawn with `seed`: the same for every run, and
    of one length, so no padding enters the timings."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (batch, length), generator=generator).tolist()


# A timer runs one round of a run's timings and returns its samples in seconds: "one" (steps
# or queries at batch 1), "batch" (steps or batches at batch BATCH), "prefill" (LMs, batch 1).
Timer = Callable[[], dict[str, list[float]]]


def _lm_timer(model: Any, vocab_size: int, settings: CompareSettings) -> Timer:
    one = random_prompts(vocab_size, 1, settings.prompt_tokens)
    batch = random_prompts(vocab_size, BATCH, settings.prompt_tokens, seed=1)

    def round_() -> dict[str, list[float]]:
        alone = time_decoding(model, one, settings.new_tokens)
        together = time_decoding(model, batch, settings.new_tokens)
        return {"one": alone.step_s, "batch": together.step_s, "prefill": [alone.prefill_s]}

    return round_


def _intent_timer(classifier: Any, texts: list[str], settings: CompareSettings) -> Timer:
    # `queries` texts one at a time and as many in batches of BATCH (at least two batches),
    # the split repeated when it is short.
    batches = max(2, settings.queries // BATCH)
    needed = max(settings.queries, batches * BATCH)
    texts = (texts * (needed // len(texts) + 1))[:needed]

    def round_() -> dict[str, list[float]]:
        one, batched = [], []
        for text in texts[: settings.queries]:
            started = time.perf_counter()
            classifier.predict([text])
            one.append(time.perf_counter() - started)
        for first in range(0, batches * BATCH, BATCH):
            started = time.perf_counter()
            classifier.predict(texts[first : first + BATCH])
            batched.append(time.perf_counter() - started)
        return {"one": one, "batch": batched}

    return round_


def _lm_row(
    run_dir: Path, data: Path, split: str, settings: CompareSettings, out: Path
) -> tuple[dict[str, Any], Timer]:
    from kefu.eval.lm import evaluate_lm
    from kefu.models.checkpoint import load_run

    run = load_run(run_dir)
    timer = _warmed_up(_lm_timer(run.model, run.tokenizer.vocab_size, settings), run_dir)
    results = evaluate_lm(run, data, split, replies=0, out_dir=out, limit=settings.limit)
    p = results["perplexity"]
    row = {
        "arch": run.arch,
        "task": results["task"],
        "parameters": parameter_count(run.model),
        "quality": p["perplexity"],
        "bits_per_byte": p["bits_per_byte"],
        "tokens_scored": p["tokens"],
    }
    return row, timer


def _intent_row(
    run_dir: Path, data: Path, split: str, settings: CompareSettings, out: Path
) -> tuple[dict[str, Any], Timer]:
    from kefu.nlu.intent import evaluate_intent, load_classifier, load_examples

    classifier = load_classifier(run_dir)
    timer = _intent_timer(classifier, load_examples(data, split)[0], settings)
    timer = _warmed_up(timer, run_dir)
    results = evaluate_intent(classifier, data, split, out)
    row = {
        "model": classifier.description.get("model"),
        "parameters": sum(p.numel() for p in classifier.network.parameters()),
        "quality": results["accuracy"],
        "top1_accuracy": results["accuracy_without_threshold"],
        "macro_f1": results["macro_f1"],
        "examples": results["examples"],
    }
    return row, timer


def _warmed_up(timer: Timer, run_dir: Path) -> Timer:
    """The timer, after one untimed round (first-call allocations, lazy set-up); a run that
    cannot be timed as asked (a context too short for the prompt and new tokens) fails here,
    before its evaluation."""
    try:
        timer()
    except KefuError as err:
        raise KefuError(f"{run_dir}: {err}") from None
    return timer


def _timings(timers: list[Timer], repeats: int) -> list[dict[str, float]]:
    """Each run's figures from `repeats` rounds. Rounds go through the runs in turn, so a busy
    neighbour slows them alike; medians drop the steps and queries it slowed most."""
    from kefu.console import note

    samples: list[dict[str, list[float]]] = [{} for _ in timers]
    for number in range(1, repeats + 1):
        note(f"timing: round {number} of {repeats}")
        for timer, kept in zip(timers, samples, strict=True):
            for key, values in timer().items():
                kept.setdefault(key, []).extend(values)
    return [
        {
            "latency_ms": 1e3 * statistics.median(kept["one"]),
            "throughput": BATCH / statistics.median(kept["batch"]),
            **(
                {"prefill_ms": 1e3 * statistics.median(kept["prefill"])}
                if "prefill" in kept
                else {}
            ),
        }
        for kept in samples
    ]


def _names(runs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [run.name or str(run) for run in runs]
    return [
        name if names.count(name) == 1 else str(run) for name, run in zip(names, runs, strict=True)
    ]


def compare_runs(
    runs: list[str | Path],
    data: str | Path,
    split: str = "test",
    out: str | Path = "compare",
    settings: CompareSettings | None = None,
) -> dict[str, Any]:
    """Measure every run (see the module's docstring); write compare.md, compare.json and
    compare.png into `out`, each run's evaluation report into out/runs/<n>-<name>/.

    All runs are loaded together, so that their timings can take turns.

    Returns the figures written to compare.json.
    """
    from kefu.console import note
    from kefu.data.folder import read_split

    settings = settings or CompareSettings()
    settings.check()
    paths = [Path(run) for run in runs]
    if not paths:
        raise KefuError("give at least one run folder to compare")
    task = one_task(paths)
    data, out = Path(data), Path(out)
    if next(read_split(data, split), None) is None:
        raise KefuError(f"the {split} split of {data} is empty; nothing to score on")
    # Sizes first: the reports written below must not count, should `out` lie in a run folder.
    sizes = [disk_usage(path) for path in paths]
    evaluate = _lm_row if task == LM else _intent_row
    rows, timers = [], []
    with torch_threads(settings.threads):
        for number, (path, name, size) in enumerate(
            zip(paths, _names(paths), sizes, strict=True), 1
        ):
            note(f"[{number}/{len(paths)}] loading and scoring {path}")
            folder = out / "runs" / f"{number}-{Path(name).name}"
            figures, timer = evaluate(path, data, split, settings, folder)
            timers.append(timer)
            rows.append(
                {
                    "name": name,
                    "run": str(path),
                    **figures,
                    "size_bytes": size["bytes"],
                    "files": size["files"],
                    "relies_on": relies_on(path, task),
                    "report": str(folder / "report.md"),
                }
            )
        for row, speed in zip(rows, _timings(timers, settings.repeats), strict=True):
            row.update(speed)
    baseline = rows[0]
    for row in rows:
        row["ratios"] = {
            key: row[field] / baseline[field] if baseline[field] else None
            for key, field in (
                ("size", "size_bytes"),
                ("latency", "latency_ms"),
                ("quality", "quality"),
            )
        }
    results = {
        "task": task,
        "data": str(data),
        "split": split,
        "quality": "perplexity" if task == LM else "accuracy",
        "threads": settings.threads,
        "prompt_tokens": settings.prompt_tokens if task == LM else None,
        "new_tokens": settings.new_tokens if task == LM else None,
        "queries": settings.queries if task == INTENT else None,
        "batch": BATCH,
        "repeats": settings.repeats,
        "torch": torch.__version__,
        "runs": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    _plot(results, out / "compare.png")
    write_text_atomically(
        out / "compare.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    write_text_atomically(out / "compare.md", markdown(results))
    return results


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def setting_line(results: dict[str, Any]) -> str:
    """How the figures were taken, in one sentence."""
    if results["task"] == LM:
        how = (
            f"greedy decoding with the KV cache, {results['prompt_tokens']}-token prompts, "
            f"{results['new_tokens']} new tokens; latency: the median decoding step at batch 1; "
            f"tokens/s at batch {results['batch']} (decoding only, the prompt read apart)"
        )
    else:
        how = (
            f"`predict` with featurizing, {results['queries']} queries one at a time, "
            f"queries/s at batch {results['batch']}"
        )
    return (
        f"CPU, {results['threads']} thread(s), torch {results['torch']}; {how}; medians over "
        f"{results['repeats']} round(s) after a warm-up, the runs timed in turn. {results['quality'].capitalize()} on the "
        f"`{results['split']}` split of `{results['data']}`. Ratios against the first run."
    )


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the comparison, shared by the terminal and compare.md."""
    lm = results["task"] == LM
    columns = [
        "run",
        "arch" if lm else "model",
        "parameters",
        "size",
        "size ×",
        "ms/token (b1)" if lm else "ms/query (b1)",
        "latency ×",
        f"tokens/s (b{results['batch']})" if lm else f"queries/s (b{results['batch']})",
        "perplexity" if lm else "accuracy %",
        "bits/byte" if lm else "top-1 %",
        "quality ×",
        "relies on",
    ]
    cells = []
    for row in results["runs"]:
        quality = f"{row['quality']:.2f}" if lm else f"{100 * row['quality']:.2f}"
        needs = ", ".join(
            need["name"] + (f" ({human_bytes(need['bytes'])})" if need["bytes"] is not None else "")
            for need in row["relies_on"]
        )
        cells.append(
            [
                row["name"],
                str(row["arch"] if lm else row["model"]),
                f"{row['parameters']:,}",
                human_bytes(row["size_bytes"]),
                _ratio(row["ratios"]["size"]),
                f"{row['latency_ms']:.3f}",
                _ratio(row["ratios"]["latency"]),
                f"{row['throughput']:,.0f}",
                quality,
                f"{row['bits_per_byte']:.4f}" if lm else f"{100 * row['top1_accuracy']:.2f}",
                _ratio(row["ratios"]["quality"]),
                needs or "—",
            ]
        )
    return columns, cells


def markdown(results: dict[str, Any]) -> str:
    columns, cells = table(results)
    lines = [
        f"# Comparison of {len(results['runs'])} {results['task']}s",
        "",
        setting_line(results),
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells),
        "",
        "Size: the run folder's model files (not `checkpoint/` or reports); what a run relies "
        "on is not counted.",
    ]
    if results["task"] == INTENT:
        lines.append(
            "Accuracy: with the run's out-of-scope threshold, as it answers (evaluate_intent); "
            "top-1: the likeliest intent, threshold ignored."
        )
    if results["task"] == LM:
        lines.append(
            "Perplexity compares runs that share a tokenizer; bits per byte compares any two."
        )
        if len({row["task"] for row in results["runs"]}) > 1:
            lines.append(
                "Careful: these runs mix tasks; chat runs are scored on the assistant's tokens "
                "only, lm runs on all text."
            )
    return "\n".join(lines) + "\n\n![comparison](compare.png)\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    """Quality against latency (marker area by size on disk), and size on disk as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["runs"]
    lm = results["task"] == LM
    names = [row["name"] for row in rows]
    sizes = [row["size_bytes"] for row in rows]
    quality = [row["quality"] if lm else 100 * row["quality"] for row in rows]
    colours = [f"C{i % 10}" for i in range(len(rows))]
    figure, (scatter, bars) = plt.subplots(
        1, 2, figsize=(11, max(3.5, 1.5 + 0.35 * len(rows))), width_ratios=(3, 2)
    )
    largest = max(sizes) or 1
    areas = [40 + 900 * size / largest for size in sizes]  # points²
    latency = [row["latency_ms"] for row in rows]
    for name, x, y, area, colour in zip(names, latency, quality, areas, colours, strict=True):
        scatter.scatter([x], [y], s=area, alpha=0.6, color=colour, label=name)
    # Names in a legend (points of similar speed and quality would hide each other's labels),
    # with markers of one size there; the colours are those of the bars.
    legend = scatter.legend(fontsize=8, loc="best")
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    scatter.set(
        xlabel=f"ms per {'token' if lm else 'query'}, batch 1, {results['threads']} thread(s)",
        ylabel="perplexity (lower is better)" if lm else "accuracy % (higher is better)",
        title="quality against latency (area: size on disk)",
    )
    scatter.margins(0.25)
    scatter.set_xlim(left=0)  # latency from zero: the distances between runs read as ratios
    megabytes = [size / 1e6 for size in sizes]
    bars.barh(range(len(rows)), megabytes, color=colours, height=0.6)
    for index, size in enumerate(sizes):
        bars.annotate(
            human_bytes(size),
            (megabytes[index], index),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    bars.set_yticks(range(len(rows)), names, fontsize=8)
    bars.invert_yaxis()
    bars.margins(x=0.25)
    bars.set(xlabel="MB on disk (own files)", title="size on disk")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
