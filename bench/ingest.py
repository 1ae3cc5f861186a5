"""Benchmark `kefu data ingest` against a plain `json.loads` + `re` loop, in one run.

Jobs, each run by kefu (redaction on, default settings) and by the baseline:

- star:      the real STAR dialogues (../shared/data/star/dialogues.jsonl.gz), format "star".
- synthetic: STAR repeated `--repeat` times as OpenAI-messages JSONL, format "messages"; every
  10th user turn gets a phone number and an e-mail address so redaction has work to do, and the
  first user turn of each copy after the first gets a "(copy N)" tag so kefu's dedupe does not
  drop the copies (which would spare kefu the writing the baseline does).

The baseline reads, extracts the same turns, applies two `re.sub`s per turn and writes one JSON
line per conversation: no normalisation, validation, dedupe, split or stats, so it is the floor.
Both rates use the same denominator, the input turns counted once up front (kefu merges
consecutive same-role turns, so its written count is lower). Each job runs in a fresh spawned
process pinned to one core; peak RSS is that process's ru_maxrss. Target: 50,000 turns/s.

    .venv/bin/python bench/ingest.py [--quick] [--repeat N] [--data PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

TARGET = 50_000
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "star" / "dialogues.jsonl.gz"
)
PII = " my phone is 138 1234 5678 and email a.b@example.com"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"\+?\d[\d -]{6,}\d")

COLUMNS = ("job", "impl", "turns", "seconds", "turns/s", "peak RSS MiB", "Δ RSS MiB", "kefu ÷ base")
Turns = list[tuple[str, str]]


def star_turns(obj: dict[str, Any]) -> Turns:
    """The User's utterances and the Wizard's sent messages, as kefu's STAR reader takes them."""
    turns = []
    for event in obj.get("Events", ()):
        agent, action = event.get("Agent"), event.get("Action")
        if agent == "User" and action == "utter":
            turns.append(("user", event.get("Text") or ""))
        elif agent == "Wizard" and action in ("utter", "pick_suggestion"):
            turns.append(("assistant", event.get("Text") or ""))
    return turns


def message_turns(obj: dict[str, Any]) -> Turns:
    return [(m["role"], m.get("content") or "") for m in obj["messages"]]


def read_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        yield from stream


def baseline(fmt: str, path: Path, out: Path) -> int:
    """Plain Python: json.loads, extract turns, re.sub e-mail and phone, json.dumps, write."""
    extract = star_turns if fmt == "star" else message_turns
    turns = 0
    with open(out, "w", encoding="utf-8") as sink:
        for line in read_lines(path):
            obj = json.loads(line)
            messages = [
                {"role": role, "content": PHONE.sub("[PHONE]", EMAIL.sub("[EMAIL]", text))}
                for role, text in extract(obj)
            ]
            turns += len(messages)
            record = {"id": obj.get("id", obj.get("DialogueID")), "messages": messages}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return turns


def run_job(impl: str, fmt: str, path: str, out: str, core: int) -> dict[str, Any]:
    """In a fresh child: pin to one core, run one job, report time, turns written and memory."""
    os.sched_setaffinity(0, {core})
    job: Callable[[], Any] = partial(baseline, fmt, Path(path), Path(out))
    if impl == "kefu":  # imported here, so baseline children do not load kefu
        from kefu.config import DataSource
        from kefu.console import settings
        from kefu.data.ingest import ingest

        settings.quiet = True
        job = partial(ingest, DataSource(format=fmt, inputs=[path]), out)  # redaction on
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    result = job()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {"seconds": seconds, "peak_mib": peak / 1024, "delta_mib": (peak - before) / 1024}
    if impl == "kefu":
        written = sum(split["turns"] for split in result["splits"].values())
        duplicates, pii = result["duplicates_removed"], result["pii"]
        return {**report, "written": written, "duplicates": duplicates, "pii": pii}
    return {**report, "written": result}


def make_synthetic(star: Path, out: Path, repeat: int) -> tuple[int, int]:
    """STAR as messages JSONL, `repeat` copies with unique ids; (STAR turns, synthetic turns)."""
    dialogues = [json.loads(line) for line in read_lines(star)]
    star_count = sum(len(star_turns(d)) for d in dialogues)
    user_turns = total = 0
    with open(out, "w", encoding="utf-8") as sink:
        for copy in range(repeat):
            for dialogue in dialogues:
                messages, tagged = [], copy == 0
                for role, text in star_turns(dialogue):
                    if role == "user":
                        user_turns += 1
                        text += PII if user_turns % 10 == 0 else ""
                        text += "" if tagged else f" (copy {copy})"
                        tagged = True
                    messages.append({"role": role, "content": text})
                total += len(messages)
                record = {"id": f"star-{dialogue.get('DialogueID')}-{copy}", "messages": messages}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return star_count, total


def in_child(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function` in a fresh spawned process, so the parent stays small (a child's ru_maxrss
    starts at its parent's RSS at fork) and each job's peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def show(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ingest: kefu vs plain json.loads + re (one core, redaction on)")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("job", "impl") else "right")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        numbers = (f"{row['turns']:,}", f"{row['seconds']:.2f}", f"{row['rate']:,.0f}")
        memory = (f"{row['peak_mib']:.0f}", f"{row['delta_mib']:.0f}")
        table.add_row(row["job"], row["impl"], *numbers, *memory, ratio)
    Console(width=110).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="STAR once, synthetic repeat 1")
    parser.add_argument("--repeat", type=int, default=5, help="STAR copies in the synthetic log")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="STAR dialogues.jsonl.gz")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found; this benchmark needs ../shared/data/star")
        print(json.dumps({"bench": "ingest", "skipped": f"no STAR data at {args.data}"}))
        return
    repeat = 1 if args.quick else args.repeat
    work = args.out or Path(tempfile.mkdtemp(prefix="kefu-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    core = min(os.sched_getaffinity(0))
    try:
        synthetic = work / "synthetic.jsonl"
        star_turns_n, synthetic_turns_n = in_child(make_synthetic, args.data, synthetic, repeat)
        jobs = [
            ("star", "star", args.data, star_turns_n),
            ("synthetic", "messages", synthetic, synthetic_turns_n),
        ]
        rows, figures = [], {"bench": "ingest", "repeat": repeat}
        for job, fmt, path, turns in jobs:
            base = in_child(
                run_job, "baseline", fmt, str(path), str(work / f"{job}-base.jsonl"), core
            )
            kefu = in_child(run_job, "kefu", fmt, str(path), str(work / f"{job}-kefu"), core)
            assert base["written"] == turns, (job, base["written"], turns)
            for impl, result in (("kefu", kefu), ("baseline", base)):
                rate = turns / result["seconds"]
                rows.append({"job": job, "impl": impl, "turns": turns, "rate": rate, **result})
                figures[f"{job}_{impl}_turns_per_s"] = round(rate)
                figures[f"{job}_{impl}_peak_rss_mib"] = round(result["peak_mib"], 1)
                figures[f"{job}_{impl}_job_rss_mib"] = round(result["delta_mib"], 1)
            rows[-2]["ratio"] = rows[-2]["rate"] / rows[-1]["rate"]  # shown on the kefu row
            figures[f"{job}_turns"] = turns
            figures[f"{job}_kefu_turns_written"] = kefu["written"]
            figures[f"{job}_kefu_duplicates"] = kefu["duplicates"]
            figures[f"{job}_kefu_pii_redacted"] = kefu["pii"]
            figures[f"{job}_kefu_vs_baseline"] = round(rows[-2]["ratio"], 3)
        show(rows)
        slowest = min(figures["star_kefu_turns_per_s"], figures["synthetic_kefu_turns_per_s"])
        figures.update(target_turns_per_s=TARGET, meets_target=slowest >= TARGET)
        print(json.dumps(figures))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
