"""Benchmark kefu's intent models on BANKING77 and CLINC150 against the published results.

BANKING77 (Casanueva et al. 2020): test accuracy; fine-tuned BERT-base 93.66, USE+ConveRT 93.36.
CLINC150 full (Larson et al. 2019, BERT): in-scope accuracy 96.9 with an out-of-scope class
(out-of-scope recall 40.3), 96.2 with a confidence threshold (recall 52.3).

Data are read from ../shared/data and ingested with `kefu data ingest` (formats intents and
clinc150). Hyper-parameters come from recipes/intent/<data>.yaml (chosen on validation splits)
and the threshold is calibrated on the validation split (CLINC's own `val`; BANKING77 has no
out-of-scope queries, and its models train on all of train once the settings are chosen, as the
published baselines did). Each row times training (encoding included; on CUDA when torch sees a
GPU) and per-query CPU latency. Models: `embed`, `textcnn` and `finetune` (with the ensemble its
recipe names). The demo bank's English and Chinese intents (examples/acme_bank) are reported
apart, as acme_en and acme_zh.

    .venv/bin/python bench/intent.py [--quick] [--only banking77 clinc150 acme_en acme_zh]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kefu.config import DataSource, load_config
from kefu.console import settings
from kefu.data.folder import load_stats
from kefu.data.ingest import ingest
from kefu.models.encoder import SentenceEncoder
from kefu.nlu.intent import IntentRecipe, evaluate_intent, train_intent

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "intent"
DEMO = Path(__file__).resolve().parents[1] / "examples" / "acme_bank"
MODEL_NAMES = {
    "embed": "embed (MiniLM + MLP)",
    "textcnn": "TextCNN (from scratch)",
    "finetune": "MiniLM fine-tuned",
}
PUBLISHED = {
    "banking77": "BERT-base 93.66 accuracy (Casanueva et al. 2020)",
    "clinc150": "BERT: in-scope 96.9 / OOS recall 40.3 (OOS class); 96.2 / 52.3 (threshold)",
    "acme_en": "",
    "acme_zh": "",
}


def banking77(data: Path, work: Path) -> Path:
    """BANKING77 with all of train to learn from, as the published baselines had: the recipe's
    settings were chosen on a validation split cut from it (recipes/data/banking77.yaml's 10%)."""
    source = DataSource(
        format="intents",
        inputs=[str(data / "banking77" / "train.csv"), str(data / "banking77" / "test.csv")],
        columns={"label": "category"},
        split={"train": 1.0, "valid": 0.0, "test": 0.0},
    )
    ingest(source, work / "banking77")
    return work / "banking77"


def clinc150(data: Path, work: Path) -> Path:
    """CLINC150 full with its own split; out-of-scope queries labelled as such."""
    source = DataSource(format="clinc150", inputs=[str(data / "clinc150" / "data_full.json")])
    ingest(source, work / "clinc150")
    return work / "clinc150"


def acme_bank(language: str) -> Callable[[Path, Path], Path]:
    """The demo bank's own intents (examples/acme_bank), English or Chinese, reported apart."""

    def prepare(data: Path, work: Path) -> Path:
        source = DataSource(format="intents", inputs=[str(DEMO / f"intents_{language}.csv")])
        ingest(source, work / f"acme_{language}")
        return work / f"acme_{language}"

    return prepare


DATASETS = {
    "banking77": banking77,
    "clinc150": clinc150,
    "acme_en": acme_bank("en"),
    "acme_zh": acme_bank("zh"),
}


def run(
    name: str, folder: Path, work: Path, encoder: SentenceEncoder, quick: bool, model: str
) -> dict[str, Any]:
    """One model on one data set: the data set's recipe for its model (with the ensemble it
    names, if any); for the others, their defaults with the recipe's precision target, capped at
    30 epochs (the demo sets are small)."""
    recipe = load_config(RECIPES / f"{name}.yaml", kind="intent")
    if model != recipe.model:
        recipe = IntentRecipe(kind="intent", model=model, precision=recipe.precision)
        examples = load_stats(folder)["splits"]["train"]["records"]
        epochs_30 = math.ceil(30 * examples / recipe.train.batch_size)
        recipe.train.max_steps = min(recipe.train.max_steps, epochs_30)
    models = [recipe, *recipe.ensemble]
    if quick:
        for member in models:
            member.train.max_steps = min(member.train.max_steps, 150)
    started = time.perf_counter()
    classifier, _ = train_intent(folder, work / f"{name}-{model}", recipe, encoder)
    seconds = time.perf_counter() - started
    results = evaluate_intent(classifier, folder, "test", work / f"{name}-{model}")
    return {
        "data": name,
        "model": " + ".join(MODEL_NAMES[member.model] for member in models),
        "train_s": round(seconds, 1),
        "accuracy": round(100 * results["accuracy_without_threshold"], 2),
        "in_scope_accuracy": None
        if results["in_scope_accuracy"] is None
        else round(100 * results["in_scope_accuracy"], 2),
        "oos_recall": None
        if results["out_of_scope_recall"] is None
        else round(100 * results["out_of_scope_recall"], 2),
        "latency_p50_ms": round(results["latency_ms"]["p50"], 1),
        "latency_p99_ms": round(results["latency_ms"]["p99"], 1),
        "published": PUBLISHED[name],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument(
        "--only", nargs="+", choices=DATASETS, default=list(DATASETS), help="data sets to run"
    )
    args = parser.parse_args()
    chosen = list(args.only)
    if not (args.data / "banking77").is_dir():
        chosen = [name for name in chosen if name.startswith("acme")]
        print(f"{args.data} has no banking77/ and clinc150/ (../shared/data): demo data only")
    settings.quiet = True
    encoder = SentenceEncoder()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-intent-") as folder:
        work = Path(folder)
        for name in chosen:
            folder = DATASETS[name](args.data, work)
            for model in MODEL_NAMES:
                rows.append(run(name, folder, work, encoder, args.quick, model))

    from rich.console import Console
    from rich.table import Table

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    table = Table(title=f"intent classification (test sets; training on {device})")
    for column in (
        "data",
        "model",
        "train s",
        "accuracy",
        "in-scope acc.",
        "OOS recall",
        "p50 / p99 ms",
        "published",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["data"],
            r["model"],
            f"{r['train_s']}",
            f"{r['accuracy']}",
            "—" if r["in_scope_accuracy"] is None else str(r["in_scope_accuracy"]),
            "—" if r["oos_recall"] is None else str(r["oos_recall"]),
            f"{r['latency_p50_ms']} / {r['latency_p99_ms']}",
            r["published"],
        )
    Console(width=140).print(table)
    print(json.dumps({"bench": "intent", "quick": args.quick, "device": device, "rows": rows}))


if __name__ == "__main__":
    main()
