"""Time one fine-tuning step of MiniLM on BANKING77 queries: kefu's settings against the naive ones.

The naive step is what a plain fine-tuning script does: random batches padded to their longest
query, every weight trained (the 30k-word embedding table included), bf16 autocast (right on a
GPU or a CPU with AMX). kefu's: batches of similar length (`Order` with lengths), the word
table frozen, fp32. Each change is also timed on its own, so the table shows what each buys.
Same queries, same model, same process; the first steps are warm-up and not timed.

    .venv/bin/python bench/finetune_step.py [--quick] [--steps 20] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from kefu.models.encoder import DEFAULT_ENCODER
from kefu.nlu.intent import FineTunedEncoder, encoder_features
from kefu.train.data import Order

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEMO = Path(__file__).resolve().parents[1] / "examples" / "acme_bank" / "intents_en.csv"
WARM_UP = 3
# (name, batches bucketed by length, word table trained, bf16 autocast)
SETTINGS = [
    ("naive: random batches, table trained, bf16", False, True, True),
    ("naive in fp32", False, True, False),
    ("bucketed batches, bf16", True, True, True),
    ("bucketed batches, fp32", True, True, False),
    ("kefu: bucketed, table frozen, fp32", True, False, False),
]


def queries(data: Path) -> tuple[list[str], list[str], str]:
    """BANKING77's training queries, or the demo's English intents when it is absent."""
    path, text, label = data / "banking77" / "train.csv", "text", "category"
    if not path.exists():
        path, label = DEMO, "label"
    with open(path, encoding="utf-8", newline="") as rows:
        read = list(csv.DictReader(rows))
    return [r[text] for r in read], [r[label] for r in read], str(path)


def seconds_per_step(
    features: torch.Tensor, targets: torch.Tensor, labels: int, setting: tuple, steps: int
) -> float:
    _, bucketed, train_table, bf16 = setting
    torch.manual_seed(0)
    network = FineTunedEncoder(DEFAULT_ENCODER, labels, train_word_embeddings=train_table).train()
    trained = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=True)
    lengths = features[:, 1].sum(1) if bucketed else None
    order = Order(len(targets), seed=0, lengths=lengths)
    timed = []
    for step in range(WARM_UP + steps):
        rows = order.rows(step, 32)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = network(features[rows])
        torch.nn.functional.cross_entropy(logits.float(), targets[rows]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARM_UP:
            timed.append(time.perf_counter() - started)
    return sum(timed) / len(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timed steps per setting")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = parser.parse_args()
    steps = 5 if args.quick else args.steps
    texts, gold, source = queries(args.data)
    names = sorted(set(gold))
    targets = torch.tensor([names.index(g) for g in gold])
    features = encoder_features(DEFAULT_ENCODER, 64)(texts)
    rows = []
    for setting in SETTINGS:
        rows.append(
            {
                "setting": setting[0],
                "s_per_step": seconds_per_step(features, targets, len(names), setting, steps),
            }
        )
    naive = rows[0]["s_per_step"]

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"MiniLM fine-tuning, batch 32, {torch.get_num_threads()} threads ({source})"
    )
    for column in ("setting", "s / step", "speed-up over naive"):
        table.add_column(column)
    for row in rows:
        row["speedup"] = naive / row["s_per_step"]
        table.add_row(row["setting"], f"{row['s_per_step']:.3f}", f"{row['speedup']:.2f}x")
    Console(width=120).print(table)
    print(json.dumps({"bench": "finetune_step", "quick": args.quick, "steps": steps, "rows": rows}))


if __name__ == "__main__":
    main()
