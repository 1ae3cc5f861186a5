"""A learned entity tagger (and multi-label intents) on a fine-tuned encoder, the NLU++ way.

    text ─ word pieces ─ MiniLM ─┬─ each piece: a BIO tag over the entity types ─► character spans
                                 └─ mean pooling ─ each intent: yes or no      ─► the intents that apply

Entities are tagged per word piece: B-type on the piece where a span starts, I-type on the
pieces inside it, O elsewhere; the fast tokenizer's character offsets turn tags back into exact
spans of the original text. Intents are multi-label: each one is a yes/no question (NLU++ asks
"is the intent to ...?"), so one utterance can carry "change" and "card" at once.

Both heads train together through kefu's one loop, whose loss is cross-entropy over positions:
the network returns (B, T + I, K) logits, T tagged pieces and then I yes/no intent answers padded
to K classes with a logit that never wins, and the targets line up the same way.

Rule extractors (kefu.nlu.entities) and this tagger are scored alike by `evaluate_entities`:
exact-span, exact-type precision, recall and F1.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn

from kefu.config import StrictModel, resolve_path
from kefu.data.folder import load_stats, read_split
from kefu.errors import KefuError
from kefu.models.encoder import (
    DEFAULT_ENCODER,
    mean_pool,
    pretrained_encoder,
    pretrained_tokenizer,
)
from kefu.nlu.entities import Entity
from kefu.train.loop import IGNORE, TrainConfig

NEVER = -1e4  # the logit of the classes a yes/no intent position does not have


class TaggerRecipe(StrictModel):
    """A recipe for `kefu train entities`."""

    kind: Literal["entities"]
    data: str | None = Field(None, description="A `spans` data folder (or --data).")
    encoder: str = Field(DEFAULT_ENCODER, description="The packaged MiniLM, or a model folder.")
    max_length: int = Field(64, ge=8, description="Word pieces kept per text.")
    intents: bool = Field(True, description="Also learn the (multi-label) intents.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            max_steps=1000,
            batch_size=32,
            lr=1e-4,
            warmup_steps=100,
            eval_every=200,
            eval_batches=8,
            weight_decay=0.01,
        ),
        description="Optimizer, schedule, evaluation.",
    )

    @field_validator("data")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)


def load_spans(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The records of one split of a `spans` data folder."""
    kind = load_stats(data_dir)["kind"]
    if kind != "spans":
        raise KefuError(f"{data_dir} holds {kind}, not spans; ingest it with --format spans")
    return list(read_split(data_dir, split))


class EncoderTagger(nn.Module):
    """A pretrained encoder with a BIO tag layer on each piece and a yes/no layer per intent."""

    def __init__(self, name_or_path: str, tags: int, intents: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = pretrained_encoder(name_or_path)
        width = self.encoder.config.hidden_size
        self.drop = nn.Dropout(dropout)
        self.tag_out = nn.Linear(width, tags)
        self.intent_out = nn.Linear(width, 2 * intents)
        self.classes = max(tags, 2)
        self.intents = intents

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, features: Tensor) -> Tensor:
        """Logits (B, T + I, K) for features (B, 2, T): piece ids and attention mask."""
        ids, mask = features[:, 0], features[:, 1]
        hidden = self.drop(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
        tags = self.tag_out(hidden)
        tags = nn.functional.pad(tags, (0, self.classes - tags.shape[-1]), value=NEVER)
        yes_no = self.intent_out(mean_pool(hidden, mask)).view(len(ids), self.intents, 2)
        yes_no = nn.functional.pad(yes_no, (0, self.classes - 2), value=NEVER)
        return torch.cat([tags, yes_no.to(tags.dtype)], dim=1)


class Encoded:
    """Texts as word pieces, with each piece's character offsets for mapping tags to spans."""

    def __init__(self, tokenizer: Any, texts: list[str], max_length: int) -> None:
        batch = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        self.features = torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1)
        self.offsets = batch["offset_mapping"].tolist()  # (N, T, 2), (0, 0) for special pieces
        self.is_piece = (batch["attention_mask"] == 1) & (batch["special_tokens_mask"] == 0)


def bio_targets(encoded: Encoded, records: list[dict[str, Any]], tags: list[str]) -> Tensor:
    """(N, T) tag ids: B-/I-type on the pieces of each span, O elsewhere, IGNORE on specials.

    Where gold spans overlap (BIO cannot say both), the later one wins on the shared pieces.
    """
    index = {tag: i for i, tag in enumerate(tags)}
    targets = torch.full(encoded.features[:, 0].shape, IGNORE)
    for row, record in enumerate(records):
        for col, (start, end) in enumerate(encoded.offsets[row]):
            if encoded.is_piece[row, col]:
                targets[row, col] = index["O"]
                for entity in record["entities"]:
                    if start < entity["end"] and end > entity["start"]:
                        first = start <= entity["start"]
                        targets[row, col] = index[("B-" if first else "I-") + entity["type"]]
    return targets


def decode_spans(
    text: str, offsets: list[list[int]], is_piece: Tensor, tag_ids: list[int], tags: list[str]
) -> list[Entity]:
    """Spans from one text's predicted tags: a B (or an I after another type) opens one."""
    spans: list[list[Any]] = []  # [type, start, end]
    previous = "O"
    for col, tag_id in enumerate(tag_ids):
        if not is_piece[col]:
            continue
        tag = tags[tag_id]
        start, end = offsets[col]
        if tag == "O":
            previous = tag
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and previous != "O" and previous.split("-", 1)[1] == kind:
            spans[-1][2] = end
        else:
            spans.append([kind, start, end])
        previous = tag
    return [
        Entity(kind, text[start:end], start, end, text[start:end]) for kind, start, end in spans
    ]


class TaggerBatches:
    """`Batches` of (features, targets) trimmed to each batch's longest text."""

    def __init__(self, features: Tensor, targets: Tensor, intents: Tensor, seed: int) -> None:
        from kefu.train.data import Order

        self.features, self.targets, self.intents = features, targets, intents
        self.order = Order(len(features), seed)

    def batch(self, index: int, size: int) -> tuple[Tensor, Tensor]:
        rows = self.order.rows(index, size)
        width = int(self.features[rows, 1].sum(1).max())
        return (
            self.features[rows, :, :width],
            torch.cat([self.targets[rows, :width], self.intents[rows]], dim=1),
        )


class Tagger:
    """A trained tagger: texts → entities and the intents that apply."""

    def __init__(
        self,
        network: EncoderTagger,
        tokenizer: Any,
        tags: list[str],
        intents: list[str],
        config: dict,
    ) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.tags = tags
        self.intent_names = intents
        self.config = config

    @torch.inference_mode()
    def predict(
        self, texts: list[str], batch_size: int = 64
    ) -> list[tuple[list[Entity], dict[str, float]]]:
        """For each text: its entities, and each intent that applies with its probability."""
        results = []
        for first in range(0, len(texts), batch_size):
            chunk = texts[first : first + batch_size]
            encoded = Encoded(self.tokenizer, chunk, self.config["max_length"])
            logits = self.network(encoded.features)
            width = encoded.features.shape[-1]
            tag_ids = logits[:, :width, : len(self.tags)].argmax(-1).tolist()
            yes = logits[:, width:, :2].softmax(-1)[..., 1].tolist()
            for row, text in enumerate(chunk):
                entities = decode_spans(
                    text, encoded.offsets[row], encoded.is_piece[row], tag_ids[row], self.tags
                )
                chosen = {n: p for n, p in zip(self.intent_names, yes[row], strict=True) if p > 0.5}
                results.append((entities, chosen))
        return results

    def analyse(self, texts: list[str]) -> list[tuple[list[Entity], list[str] | None]]:
        """What `evaluate_entities` scores: entities, and intents when the tagger learnt them."""
        return [
            (entities, list(intents) if self.intent_names else None)
            for entities, intents in self.predict(texts)
        ]

    def save(self, run_dir: Path) -> None:
        from kefu.models.checkpoint import save_described

        described = {"kind": "tagger", **self.config, "tags": self.tags}
        save_described(run_dir, self.network, {**described, "intents": self.intent_names})


def train_tagger(
    train_records: list[dict[str, Any]],
    valid_records: list[dict[str, Any]],
    run_dir: str | Path,
    recipe: TaggerRecipe,
) -> Tagger:
    """Fine-tune the encoder to tag the records' entity types (and intents); save the run."""
    from kefu.train.loop import BestWeights, train

    types = sorted({e["type"] for r in train_records for e in r["entities"]})
    if not types:
        raise KefuError("the training records have no entities; a tagger needs annotated spans")
    unseen = sorted({e["type"] for r in valid_records for e in r["entities"]} - set(types))
    if unseen:
        raise KefuError(
            f"the validation records have entity types never seen in training: {', '.join(unseen)}"
        )
    tags = ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in "BI"]
    intents = (
        sorted({i for r in train_records for i in r.get("intents", [])}) if recipe.intents else []
    )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.train.seed)
    tokenizer = pretrained_tokenizer(recipe.encoder)
    network = EncoderTagger(recipe.encoder, len(tags), len(intents))

    def batches(records: list[dict[str, Any]]) -> TaggerBatches:
        encoded = Encoded(tokenizer, [r["text"] for r in records], recipe.max_length)
        answers = torch.tensor(
            [[int(i in r.get("intents", [])) for i in intents] for r in records], dtype=torch.long
        ).view(len(records), len(intents))
        return TaggerBatches(
            encoded.features, bio_targets(encoded, records, tags), answers, recipe.train.seed
        )

    best = BestWeights()
    valid = batches(valid_records) if valid_records else None
    train(network, batches(train_records), valid, recipe.train, run_dir, best)
    best.restore(network)
    config = {"encoder": recipe.encoder, "max_length": recipe.max_length}
    tagger = Tagger(network.cpu(), tokenizer, tags, intents, config)
    tagger.save(run_dir)
    return tagger


def load_tagger(run_dir: str | Path) -> Tagger:
    """A tagger saved by `train_tagger`, ready to predict."""
    from safetensors.torch import load_model

    from kefu.models.checkpoint import read_described

    config = read_described(run_dir, "tagger", "kefu train entities")
    network = EncoderTagger(config["encoder"], len(config["tags"]), len(config["intents"]))
    load_model(network, str(Path(run_dir) / "model.safetensors"))
    settings = {"encoder": config["encoder"], "max_length": config["max_length"]}
    return Tagger(
        network,
        pretrained_tokenizer(config["encoder"]),
        config["tags"],
        config["intents"],
        settings,
    )


def _f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}


def span_metrics(gold: list[list[tuple]], predicted: list[list[tuple]]) -> dict[str, Any]:
    """Micro precision/recall/F1 over (type, start, end) spans, exact match only, and per type."""
    counts: dict[str, Counter[str]] = {}
    for gold_spans, found in zip(gold, predicted, strict=True):
        expected, got = set(gold_spans), set(found)
        for span in expected | got:
            outcome = (
                "tp" if span in expected and span in got else "fn" if span in expected else "fp"
            )
            counts.setdefault(span[0], Counter())[outcome] += 1
    total = sum(counts.values(), Counter())
    return {
        **_f1(total["tp"], total["fp"], total["fn"]),
        "per_type": {kind: _f1(c["tp"], c["fp"], c["fn"]) for kind, c in sorted(counts.items())},
    }


def multilabel_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over (example, intent) pairs, and exact-set accuracy."""
    tp = fp = fn = exact = 0
    for expected, got in zip(gold, predicted, strict=True):
        tp += len(set(expected) & set(got))
        fp += len(set(got) - set(expected))
        fn += len(set(expected) - set(got))
        exact += set(expected) == set(got)
    return {**_f1(tp, fp, fn), "exact_match": exact / len(gold) if gold else 0.0}


def evaluate_entities(
    analyse: Callable[[list[str]], list[tuple[list[Entity], list[str] | None]]],
    records: list[dict[str, Any]],
    out_dir: str | Path,
    title: str,
) -> dict[str, Any]:
    """Exact-span entity P/R/F1 (micro and per type), intents' micro-F1 when `analyse` gives
    intents (not None), per-text CPU latency; writes eval.json and report.md into `out_dir`.

    Args:
        analyse: texts → for each, its entities and its intents (or None).
    """
    import time

    from kefu.files import write_text_atomically

    texts = [r["text"] for r in records]
    analysed = analyse(texts)
    found = [entities for entities, _ in analysed]
    results: dict[str, Any] = {
        "examples": len(records),
        "entities": span_metrics(
            [[(e["type"], e["start"], e["end"]) for e in r["entities"]] for r in records],
            [[(e.type, e.start, e.end) for e in spans] for spans in found],
        ),
    }
    if analysed and analysed[0][1] is not None:
        results["intents"] = multilabel_metrics(
            [r.get("intents", []) for r in records], [intents or [] for _, intents in analysed]
        )
    latencies = []
    for text in texts[:200]:
        started = time.perf_counter()
        analyse([text])
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    results["latency_ms"] = {
        "p50": latencies[len(latencies) // 2] if latencies else 0.0,
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0,
    }
    misses = Counter(
        (e["type"], e["text"])
        for r, spans in zip(records, found, strict=True)
        for e in r["entities"]
        if (e["type"], e["start"], e["end"]) not in {(s.type, s.start, s.end) for s in spans}
    )
    results["most_missed"] = [
        {"type": t, "text": x, "count": n} for (t, x), n in misses.most_common(10)
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        out / "eval.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    write_text_atomically(out / "report.md", _entity_report(results, title))
    return results


def _entity_report(results: dict[str, Any], title: str) -> str:
    def percent(value: float) -> str:
        return f"{100 * value:.2f}"

    entities = results["entities"]
    lines = [
        f"# {title} ({results['examples']:,} examples)",
        "",
        "Entities, exact span and type:",
        "",
        "| precision | recall | F1 | latency p50 / p99 (ms) |",
        "| --- | --- | --- | --- |",
        f"| {percent(entities['precision'])} | {percent(entities['recall'])} | {percent(entities['f1'])} | "
        f"{results['latency_ms']['p50']:.1f} / {results['latency_ms']['p99']:.1f} |",
        "",
    ]
    if "intents" in results:
        i = results["intents"]
        lines += [
            f"Intents (multi-label): micro-F1 {percent(i['f1'])}, precision {percent(i['precision'])}, "
            f"recall {percent(i['recall'])}, exact set {percent(i['exact_match'])}",
            "",
        ]
    lines += ["| type | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for kind, m in entities["per_type"].items():
        lines.append(
            f"| {kind} | {percent(m['precision'])} | {percent(m['recall'])} | {percent(m['f1'])} | {m['support']} |"
        )
    missed = ", ".join(f"{m['type']} {m['text']!r} ({m['count']})" for m in results["most_missed"])
    return "\n".join(lines) + f"\n\nMost missed: {missed or 'none'}\n"
