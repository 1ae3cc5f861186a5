"""Benchmark kefu's tagger on NLU++ (banking): multi-label intent micro-F1 and slot F1.

The "large" setting of the NLU++ README: train on 18 of the 20 folds, test on the other two,
ten times with consecutive test pairs (folds 0+1, 2+3, ...), mean reported. Slots are scored
as exact spans with their type; intents as micro-F1 over (example, intent) pairs. The folds are
ingested as published (`--format spans`, duplicates kept); the one utterance NLU++ labels two
ways is rejected by ingest and missing from its fold. Hyper-parameters are fixed in advance
(recipes/entities/nlupp.yaml), with no validation split: the test folds are looked at once.
The rule extractors are scored too, on the types they share with NLU++ (date, time).

    .venv/bin/python bench/nlupp.py [--quick] [--runs 10] [--domain banking] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kefu.config import DataSource, load_config
from kefu.console import settings
from kefu.data.folder import read_split
from kefu.data.ingest import ingest
from kefu.nlu.entities import EntityExtractor
from kefu.nlu.tagger import multilabel_metrics, span_metrics, train_tagger

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "entities" / "nlupp.yaml"
RULE_TYPES = {"date": "date", "time": "time"}  # rule extractor type → NLU++ slot


def folds(data: Path, domain: str, work: Path) -> dict[int, list[dict]]:
    """The records of each NLU++ fold, read through `kefu data ingest --format spans`."""
    source = DataSource(
        format="spans",
        inputs=[str(p) for p in sorted((data / "nlupp" / domain).glob("fold*.json"))],
        dedupe=False,
    )
    ingest(source, work / "nlupp")
    by_fold: dict[int, list[dict]] = {}
    for split in ("train", "valid", "test"):
        for record in read_split(work / "nlupp", split):
            number = int(re.match(r"fold(\d+)\.json", record["id"]).group(1))
            by_fold.setdefault(number, []).append(record)
    return by_fold


def shared(gold: list[list[tuple]], found: list[list[tuple]]) -> tuple[list, list]:
    """Gold and found spans of the types the rule extractors also produce."""
    keep = set(RULE_TYPES.values())
    return [[s for s in g if s[0] in keep] for g in gold], [
        [s for s in f if s[0] in keep] for f in found
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run, 100 training steps")
    parser.add_argument("--runs", type=int, default=10, help="test-fold pairs to run (up to 10)")
    parser.add_argument("--domain", choices=("banking", "hotels"), default="banking")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = parser.parse_args()
    if not (args.data / "nlupp" / args.domain).is_dir():
        print(
            f"skipped: {args.data} has no nlupp/{args.domain}/; this benchmark needs ../shared/data"
        )
        print(json.dumps({"bench": "nlupp", "skipped": f"no data at {args.data}"}))
        return
    settings.quiet = True
    recipe = load_config(RECIPE, kind="entities")
    if args.quick:
        recipe.train.max_steps = 100
    runs = 1 if args.quick else min(args.runs, 10)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rules = EntityExtractor()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-nlupp-") as folder:
        work = Path(folder)
        by_fold = folds(args.data, args.domain, work)
        for run in range(runs):
            tested = {2 * run, 2 * run + 1}
            train = [r for n, records in by_fold.items() if n not in tested for r in records]
            test = [r for n in sorted(tested) for r in by_fold[n]]
            started = time.perf_counter()
            tagger = train_tagger(train, [], work / f"run{run}", recipe)
            seconds = time.perf_counter() - started
            predicted = tagger.predict([r["text"] for r in test])
            gold = [[(e["type"], e["start"], e["end"]) for e in r["entities"]] for r in test]
            tagged = [[(e.type, e.start, e.end) for e in found] for found, _ in predicted]
            by_rules = [
                [
                    (RULE_TYPES[e.type], e.start, e.end)
                    for e in rules(r["text"])
                    if e.type in RULE_TYPES
                ]
                for r in test
            ]
            slots = span_metrics(gold, tagged)
            intents = multilabel_metrics(
                [r["intents"] for r in test], [list(i) for _, i in predicted]
            )
            rows.append(
                {
                    "test_folds": sorted(tested),
                    "train": len(train),
                    "test": len(test),
                    "train_s": round(seconds, 1),
                    "intent_micro_f1": round(100 * intents["f1"], 2),
                    "slot_f1": round(100 * slots["f1"], 2),
                    "rules_date_time_f1": round(
                        100 * span_metrics(*shared(gold, by_rules))["f1"], 2
                    ),
                    "tagger_date_time_f1": round(
                        100 * span_metrics(*shared(gold, tagged))["f1"], 2
                    ),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    from rich.console import Console
    from rich.table import Table

    def mean(key: str) -> str:
        values = [r[key] for r in rows]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    table = Table(title=f"NLU++ {args.domain}, large setting ({runs} run(s); training on {device})")
    columns = {
        "intent micro-F1": "intent_micro_f1",
        "slot F1": "slot_f1",
        "date+time F1: tagger": "tagger_date_time_f1",
        "date+time F1: rules": "rules_date_time_f1",
        "train s / run": "train_s",
    }
    for column in columns:
        table.add_column(column)
    table.add_row(*(mean(key) for key in columns.values()))
    Console(width=120).print(table)
    summary = {key: round(statistics.mean(r[key] for r in rows), 2) for key in columns.values()}
    print(
        json.dumps(
            {
                "bench": "nlupp",
                "domain": args.domain,
                "quick": args.quick,
                "device": device,
                "runs": rows,
                "mean": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
