"""`kefu eval lm`: how well a trained language model predicts and answers held-out conversations.

- Perplexity per token, and bits per byte: the same loss divided by the bytes of the text, so
  models with different tokenizers (or an LSTM and a GPT) compare fairly. Chat runs are scored on
  the assistant's tokens only, as they were trained; lm runs on all text.
- Next-reply quality: for held-out conversations the model answers each customer turn from the
  history before it (greedy), scored against the agent's real reply with BLEU, chrF, ROUGE-L and
  distinct-1/2. The same replies can be scored for a baseline that answers with the reply that
  followed the most similar customer message in the training data.

Results go to report.md (with a loss-curve PNG) in the output folder and are returned as a dict.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kefu.compress.quantize import parameter_count
from kefu.data.folder import load_stats, read_split
from kefu.eval.text_metrics import reply_metrics, words
from kefu.files import write_text_atomically
from kefu.infer.generate import SamplingConfig, generate
from kefu.models.checkpoint import METRICS, LoadedRun
from kefu.text.tokenizer import ChatTokenizer
from kefu.train.data import build_batches, check_data
from kefu.train.loop import IGNORE


def token_bytes(tokenizer: ChatTokenizer) -> torch.Tensor:
    """UTF-8 bytes each token stands for: byte-level BPE maps one byte to one character of a
    token's string; placeholders are their text; control tokens are no text at all."""
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    special = {
        t.content for t in tokenizer.tokenizer.get_added_tokens_decoder().values() if t.special
    }
    for token, index in tokenizer.tokenizer.get_vocab(with_added_tokens=True).items():
        lengths[index] = (
            0
            if token in special
            else len(token)
            if index < tokenizer.base_size
            else len(token.encode())
        )
    return lengths


@torch.no_grad()
def perplexity(
    run: LoadedRun, data_dir: Path, split: str, task: str, limit: int | None = None
) -> dict[str, float]:
    """Loss per token (as perplexity) and bits per byte over a split, in batches of 8 rows."""
    block = run.model.config.context_length
    data = build_batches(task, data_dir, split, run.tokenizer, block, seed=0)
    rows = data.windows if task == "lm" else len(data.examples)
    rows = min(rows, limit) if limit else rows
    sizes = token_bytes(run.tokenizer)
    nll = tokens = text_bytes = 0.0
    for start in range(0, rows, 8):
        inputs, targets = data.rows(range(start, min(start + 8, rows)))
        logits = run.model(inputs)
        losses = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
        )
        scored = targets.flatten() != IGNORE
        nll += float(losses[scored].sum())
        tokens += int(scored.sum())
        text_bytes += int(sizes[targets.flatten()[scored]].sum())
    return {
        "tokens": int(tokens),
        "bytes": int(text_bytes),
        "loss": nll / tokens,
        "perplexity": math.exp(nll / tokens),
        "bits_per_byte": nll / math.log(2) / max(text_bytes, 1),
    }


@dataclass
class ReplyCase:
    """One customer turn to answer: the conversation before it and the agent's real reply."""

    history: list[dict[str, str]]
    reference: str


def reply_cases(data_dir: Path, split: str, limit: int) -> list[ReplyCase]:
    """The first `limit` assistant turns of a split that follow a customer turn."""
    cases = []
    for record in read_split(data_dir, split):
        messages = record["messages"]
        for index, message in enumerate(messages):
            if message["role"] == "assistant" and index and messages[index - 1]["role"] == "user":
                cases.append(ReplyCase(messages[:index], message["content"]))
                if len(cases) == limit:
                    return cases
    return cases


def fit_prompt(tokenizer: ChatTokenizer, history: list[dict[str, str]], budget: int) -> list[int]:
    """The history rendered for generation, oldest turns dropped until it fits `budget` tokens."""
    history = list(history)
    while True:
        ids = tokenizer.render(history, add_generation_prompt=True).ids
        if len(ids) <= budget or len(history) == 1:
            return ids[-budget:]
        history.pop(0)


def model_replies(run: LoadedRun, cases: list[ReplyCase], max_new_tokens: int) -> list[str]:
    # A Transformer's context holds prompt and reply; the LSTM keeps the history it was trained on.
    budget = run.model.config.context_length - (max_new_tokens if run.arch != "lstm" else 0)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    replies = []
    for start in range(0, len(cases), 16):
        prompts = [fit_prompt(run.tokenizer, c.history, budget) for c in cases[start : start + 16]]
        replies += [g.text.strip() for g in generate(run.model, run.tokenizer, prompts, sampling)]
    return replies


class NearestReply:
    """Answers with the reply that followed the most similar customer message in training
    (TF-IDF cosine over words; Chinese by character)."""

    def __init__(self, data_dir: Path) -> None:
        pairs = [
            (c.history[-1]["content"], c.reference) for c in reply_cases(data_dir, "train", 10**9)
        ]
        self.replies = [reply for _, reply in pairs]
        documents = [Counter(words(question, "auto")) for question, _ in pairs]
        frequency = Counter(word for document in documents for word in document)
        self.vocabulary = {word: i for i, word in enumerate(frequency)}
        self.idf = torch.tensor([math.log(len(documents) / frequency[w]) + 1 for w in frequency])
        self.matrix = self._vectors(documents)

    def _vectors(self, documents: list[Counter[str]]) -> torch.Tensor:
        rows, cols, values = [], [], []
        for row, document in enumerate(documents):
            for word, count in document.items():
                if word in self.vocabulary:
                    rows.append(row)
                    cols.append(self.vocabulary[word])
                    values.append(count * float(self.idf[self.vocabulary[word]]))
        dense_shape = (len(documents), len(self.vocabulary))
        indices = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        matrix = torch.sparse_coo_tensor(
            indices, torch.tensor(values), dense_shape, check_invariants=True
        ).coalesce()
        norms = (
            torch.zeros(len(documents))
            .index_add_(0, matrix.indices()[0], matrix.values() ** 2)
            .sqrt()
        )
        scaled = matrix.values() / norms[matrix.indices()[0]].clamp(min=1e-12)
        return torch.sparse_coo_tensor(matrix.indices(), scaled, dense_shape, check_invariants=True)

    def answer(self, questions: list[str]) -> list[str]:
        queries = self._vectors([Counter(words(q, "auto")) for q in questions]).to_dense()
        scores = torch.sparse.mm(self.matrix, queries.T)  # (train, questions)
        # Rounded so that near-ties go to the earliest example whatever the summation order
        # (which changes with the thread count): the baseline is the same on every machine.
        return [self.replies[int(i)] for i in scores.mul(1e6).round().argmax(dim=0)]


def loss_curve(run_dir: Path, out: Path) -> Path | None:
    """A PNG of training and validation loss from the run's metrics.jsonl."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in path.read_text().splitlines()]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([r["step"] for r in records], [r["train_loss"] for r in records], label="train")
    valid = [r for r in records if "valid_loss" in r]
    if valid:
        axes.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], label="valid")
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=run_dir.name)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def evaluate_lm(
    run: LoadedRun,
    data_dir: str | Path,
    split: str = "test",
    replies: int = 200,
    max_new_tokens: int = 64,
    baseline: bool = False,
    out_dir: str | Path | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Perplexity and (for conversation data) next-reply metrics of a run; writes report.md.

    Args:
        replies: how many customer turns to answer (0: skip generation).
        baseline: also score the nearest-training-reply baseline on the same turns.
        out_dir: where report.md and loss.png go (default: the run folder).
        limit: score at most this many windows or conversations for perplexity.
    """
    data_dir = Path(data_dir)
    if "recipe" in run.config:
        task = run.config["recipe"]["task"]
        stats = check_data(data_dir, task)
    else:  # a pretrained model as published: scored on replies in conversations, else all text
        stats = load_stats(data_dir)
        task = "chat" if stats["kind"] == "conversations" else "lm"
    results: dict[str, Any] = {
        "run": str(run.path),
        "arch": run.arch,
        "parameters": parameter_count(run.model),
        "data": str(data_dir),
        "split": split,
        "task": task,
    }
    results["perplexity"] = perplexity(run, data_dir, split, task, limit)
    if stats["kind"] == "conversations" and replies:
        cases = reply_cases(data_dir, split, replies)
        references = [c.reference for c in cases]
        results["replies"] = reply_metrics(model_replies(run, cases, max_new_tokens), references)
        if baseline:
            nearest = NearestReply(data_dir).answer([c.history[-1]["content"] for c in cases])
            results["nearest_reply_baseline"] = reply_metrics(nearest, references)
    out = Path(out_dir or run.path)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        out / "report.md", _report(results, loss_curve(run.path, out / "loss.png"))
    )
    write_text_atomically(
        out / "eval.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    return results


def _report(results: dict[str, Any], curve: Path | None) -> str:
    p = results["perplexity"]
    lines = [
        f"# {Path(results['run']).name}: {results['arch']} ({results['parameters']:,} parameters, {results['task']})",
        "",
        f"Data: `{results['data']}`, split `{results['split']}`.",
        "",
        "| tokens scored | bytes | loss (nats/token) | perplexity | bits per byte |",
        "| --- | --- | --- | --- | --- |",
        f"| {p['tokens']:,} | {p['bytes']:,} | {p['loss']:.4f} | {p['perplexity']:.2f} | {p['bits_per_byte']:.4f} |",
    ]
    if "replies" in results:
        lines += [
            "",
            "Next reply (greedy), against the agent's real reply:",
            "",
            "| system | replies | BLEU | chrF | ROUGE-L | distinct-1 | distinct-2 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, key in (
            ("model", "replies"),
            ("nearest training reply", "nearest_reply_baseline"),
        ):
            if key in results:
                m = results[key]
                lines.append(
                    f"| {name} | {m['replies']} | {m['bleu']} | {m['chrf']} | {m['rouge_l']} | {m['distinct_1']} | {m['distinct_2']} |"
                )
    if curve:
        lines += ["", f"![loss]({curve.name})"]
    return "\n".join(lines) + "\n"
