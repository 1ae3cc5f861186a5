"""Benchmark a model swap under load: push, promote and roll back a generator while customers chat.

The demo project (examples/acme_bank, `kefu build`, seconds when up to date; with `--quick` the
small demo of the tests, built once into bench/out/swap-demo, about a minute) is served by
`kefu serve --workers 2 --new-key` in its own process group, on a free port, with a fresh
database: a SQLite file in a temporary folder, or with `--db postgresql://user@host:5432/db` a
new database kefu_bench_<hex> on that server, dropped afterwards (bench/serve_load.py's helpers).
The load uses a key with a high rate limit (`kefu keys create`: the --new-key key has the
project's per-key limit, 60 a minute for the demo, and would answer 429); the --new-key admin key
reads /admin/models, to start only once every server process serves.

The second generator version is a copy of build/generator with every floating-point tensor
multiplied by `--factor` (1.0001): other files, so another version, whose held-out perplexity
is within the promotion margin. Its registry folder is removed before the push (so the push
really copies, loads, smoke-tests and evaluates it) and after the run.

`--customers` simulated customers (bench/serve_load.py's: conversations of 2-5 turns, think time
exponential of mean `--think` s, the demo's FAQ questions, paraphrases, utterances that mostly
take the generator route and hand-off requests; `--stream-share` of them streamed) talk to the
server over loopback for the whole run, one `httpx.AsyncClient`. Every request is recorded with
the moment it was sent, its outcome, its latency (sent → last byte) and the versions the answer
names (`kefu.model_versions`). Meanwhile, on the same cores, the registry is driven by the CLI:

    warm-up  --settle s of load, not counted (the second server process warms up)
    before   --before s of steady state
    during   kefu models push PROJECT generator FOLDER       (copy, load, smoke test, evaluate)
             kefu models promote PROJECT generator v2        (returns once every process serves it)
             --pause s with v2 live
             kefu models rollback PROJECT generator          (returns once every process is back)
             2 s more
    after    --after s of steady state

A request belongs to the window it was sent in. Failed: no 2xx, a stream that broke (no [DONE])
or an answer without its ids. The swap is checked from the answers: before the promotion every
answer names the generator it had (v1), every answer to a request sent after `promote` returned
and before `rollback` began names v2, every one sent after `rollback` returned names v1 again
(unexpected: any other); a stream's first and last chunk name the same versions; afterwards the
store holds each acknowledged message (lost, mismatched: serve_load's check) with the versions
its answer named.

Targets: 0 failed requests; the p99 latency during the swap is reported against the p99 before.
By default 30 customers (think time 2 s: about 12 requests a second), 5 s warm-up, 30 s before,
15 s with v2 live, 20 s after: about 2 minutes once the demo is built. --quick: the small demo,
10 customers, 3 s warm-up, 10 s before, 5 s with v2 live, 8 s after: about 70 s once built
(its windows are too short for a steady p99; it checks that the swap works).

    .venv/bin/python bench/swap.py [--quick] [--customers N] [--think S] [--stream-share F]
        [--settle S] [--before S] [--pause S] [--after S] [--seed N] [--db postgresql://...]
        [--workers N] [--project FOLDER] [--factor F] [--requests-out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import serve_load
from serve_load import (
    KEFU,
    PROJECT,
    REPO,
    Result,
    create_key,
    database,
    log_problems,
    percentiles,
    read_messages,
    report,
    verify,
    warm_up,
)

SMALL_DEMO = REPO / "bench" / "out" / "swap-demo"
KIND = "generator"
AFTER_ROLLBACK_S = 2.0  # the during window ends this long after `rollback` returns
CLI_TIMEOUT_S = 300.0


@dataclass
class Request(Result):
    """One request as the client saw it, with when it was sent."""

    at_s: float = 0.0  # sent, seconds after the load began


# ---------------------------------------------------------------------------------------------
# the project and the second version


def small_demo(folder: Path) -> Path:
    """The tests' small demo (tests/conftest.py), written once into `folder`."""
    if not (folder / "kefu.yaml").exists():
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.conftest import _write_small_demo

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _write_small_demo(folder)
    return folder


def perturbed_copy(source: Path, target: Path, factor: float) -> Path:
    """A copy of a model folder with every floating-point weight multiplied by `factor`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    with safe_open(str(weights), "pt") as file:
        metadata = file.metadata()
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    save_file(
        {n: t * factor if t.is_floating_point() else t for n, t in tensors.items()},
        str(weights),
        metadata=metadata,
    )
    return target


def registry_folder(project: Path, folder: Path) -> Path:
    """Where the registry keeps a pushed copy of `folder` (kefu.registry.Registry.push)."""
    from kefu.project import load_project
    from kefu.registry import folder_digest

    config = load_project(project)
    root = Path(config.registry.path or Path(config.build_dir) / "registry")
    return root / KIND / folder_digest(folder)[:16]


# ---------------------------------------------------------------------------------------------
# the server


class EveryProcessServing:
    """A readiness check for serve_load.server: ready once every server process has said which
    revision it serves (and it is one revision). It reads the admin key `--new-key` printed
    from the server's log, to ask /admin/models."""

    def __init__(self, log_path: Path, workers: int) -> None:
        self.log_path, self.workers = log_path, workers
        self.admin_key: str | None = None

    def __call__(self, base: str) -> bool:
        if self.admin_key is None:
            found = re.search(
                r"API key \(chat, admin; shown once\): (\S+)", self.log_path.read_text()
            )
            self.admin_key = found and found.group(1)
        if not self.admin_key:
            return False
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            response = httpx.get(
                f"{base}/admin/models",
                headers={"Authorization": f"Bearer {self.admin_key}"},
                timeout=5,
            )
            seen = response.json()["workers"]
            return len(seen) >= self.workers and len({w["revision"] for w in seen}) == 1
        return False


@contextlib.contextmanager
def server(
    project: Path, url: str, log_path: Path, workers: int
) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """`kefu serve --new-key` until the block ends (serve_load.server); yields the process, the
    base URL and the admin key, once every server process serves."""
    ready = EveryProcessServing(log_path, workers)
    with serve_load.server(project, url, log_path, workers, ("--new-key",), ready) as (
        process,
        base,
    ):
        yield process, base, ready.admin_key


# ---------------------------------------------------------------------------------------------
# the load and the commands


async def cli(*arguments: str) -> dict[str, Any]:
    """Run `kefu ARGUMENTS`; its wall time (and clock times), exit status and output."""
    started, started_at = time.perf_counter(), time.time()
    process = await asyncio.create_subprocess_exec(
        *KEFU, *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace").strip()
    done = {
        "command": "kefu " + " ".join(arguments),
        "seconds": time.perf_counter() - started,
        "started_at": started_at,
        "ended_at": time.time(),
        "returncode": process.returncode,
        "output": text,
    }
    print(f"$ {done['command']}  ({done['seconds']:.1f} s, exit {process.returncode})")
    print("\n".join(f"  {line}" for line in text.splitlines()[-4:]), flush=True)
    return done


async def scenario(
    args: argparse.Namespace, base: str, key: str, admin_key: str, url: str, folder: Path
) -> dict[str, Any]:
    messages = read_messages(args.project)
    async with httpx.AsyncClient(timeout=10) as client:
        model = (await client.get(f"{base}/readyz")).json()["model"]
        status = await client.get(
            f"{base}/admin/models", headers={"Authorization": f"Bearer {admin_key}"}
        )
        live = status.json()["kinds"][KIND]["live"]
    # Two at once, on two connections: most often each server process gets one.
    warm = [
        r for rs in await asyncio.gather(warm_up(base, key, model, messages),
                                         warm_up(base, key, model, messages))
        for r in rs
    ]  # fmt: skip
    print(
        f"warm-up: {len(warm)} requests, {sum(bool(r.error) for r in warm)} errors; "
        f"{KIND} {live} live"
    )

    project, db = str(args.project), ["--db", url]
    results: list[Request] = []
    marks: dict[str, float] = {}
    commands: dict[str, dict[str, Any]] = {}
    stop = asyncio.Event()
    began = time.perf_counter()

    def mark(name: str) -> None:
        marks[name] = time.perf_counter() - began

    async def step(name: str, *arguments: str) -> dict[str, Any]:
        mark(name)
        commands[name] = await cli(*arguments)
        mark(f"{name}_end")
        return commands[name]

    print(f"{args.customers} customers for the whole run: warm-up {args.settle:g} s, before "
          f"{args.before:g} s, push/promote/{args.pause:g} s/rollback, after {args.after:g} s",
          flush=True)  # fmt: skip
    async with serve_load._client(args, key) as client:

        def request(phase: str, kind: str, stream: bool, text: str) -> Request:
            return Request(phase, kind, stream, text, at_s=time.perf_counter() - began)

        load = asyncio.gather(*(
            serve_load.customer(
                n, "load", client, base, model, messages, args, stop, results, request
            )
            for n in range(args.customers)
        ))  # fmt: skip
        candidate = None
        try:
            await asyncio.sleep(args.settle)
            mark("before")
            await asyncio.sleep(args.before)
            pushed = await step("push", "models", "push", project, KIND, str(folder), *db)
            found = re.search(rf"{KIND} (?:already )?pushed as (v\d+)", pushed["output"])
            candidate = found and found.group(1)
            if candidate:
                await step("promote", "models", "promote", project, KIND, candidate, *db)
                mark("pause")
                await asyncio.sleep(args.pause)
                await step("rollback", "models", "rollback", project, KIND, *db)
            await asyncio.sleep(AFTER_ROLLBACK_S)
            mark("after")
            await asyncio.sleep(args.after)
            mark("end")
        finally:
            stop.set()
            await load
    mark("stopped")
    return {
        "warm": warm,
        "results": sorted(results, key=lambda r: r.at_s),
        "marks": marks,
        "commands": commands,
        "live": live,
        "candidate": candidate,
    }


# ---------------------------------------------------------------------------------------------
# figures


def windows(marks: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each window's start and end, seconds after the load began (sent in [start, end))."""
    m = marks
    end = m.get("end", m["stopped"])
    found = {
        "warm-up": (0.0, m.get("before", end)),
        "before": (m.get("before", end), m.get("push", end)),
    }
    found["during"] = (m.get("push", end), m.get("after", end))
    parts = [("push", "push"), ("promote", "promote"), ("v2 live", "pause"),
             ("rollback", "rollback"), (f"+{AFTER_ROLLBACK_S:g} s", "rollback_end"),
             ("", "after")]  # fmt: skip
    for (name, start), (_, stop) in itertools.pairwise(parts):
        if start in m:
            found[f"  {name}"] = (m[start], m.get(stop, m.get("after", end)))
    found["after"] = (m.get("after", end), end + 3600)  # the last requests, sent before the stop
    return found


def expected(window: str, live: str, candidate: str | None) -> set[str] | None:
    """The generator versions answers sent in a window may name; None: any."""
    if window in ("warm-up", "before", "  push"):
        return {live}
    if window == "  v2 live" and candidate:
        return {candidate}
    if window in ("after", f"  +{AFTER_ROLLBACK_S:g} s"):
        return {live}
    return None


def stored_versions(
    url: str, results: list[Request], commands: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Whether the store holds each answer with the versions the answer named. Also when each
    command's change was recorded (the registry's history): `recorded_after_s` after the
    command started, `then_s` before it returned (promote, rollback: waiting for every server
    process to serve it)."""
    from kefu.store.repository import NotFound, Store

    differ, checked = [], 0
    store = Store.open(url, migrate=False)
    try:
        events = store.model_events(KIND)
        for name, command in commands.items():
            for event in events:
                at = event.created_at
                at = (at if at.tzinfo else at.replace(tzinfo=datetime.UTC)).timestamp()
                if event.action == name and command["started_at"] <= at <= command["ended_at"]:
                    command["recorded_after_s"] = at - command["started_at"]
                    command["then_s"] = command["ended_at"] - at
                    break
        for r in results:
            if r.error or r.message_id is None:
                continue
            checked += 1
            try:
                stored = store.message(r.message_id).model_versions
            except NotFound:
                continue  # counted as lost by verify()
            if stored != r.model_versions:
                differ.append(
                    f"message {r.message_id}: answered {r.model_versions}, stored {stored}"
                )
    finally:
        store.close()
    return {"checked": checked, "differ": len(differ), "examples": differ[:5]}


def figures_of(
    args: argparse.Namespace, run: dict[str, Any], checks: dict[str, Any]
) -> dict[str, Any]:
    results: list[Request] = run["results"]
    live, candidate = run["live"], run["candidate"]
    found: dict[str, Any] = {}
    unexpected: list[str] = []
    for name, (start, end) in windows(run["marks"]).items():
        sent = [r for r in results if start <= r.at_s < end]
        ok = [r for r in sent if not r.error]
        allowed = expected(name, live, candidate)
        wrong = [
            r for r in ok
            if allowed is not None and (r.model_versions or {}).get(KIND) not in allowed
        ]  # fmt: skip
        unexpected += [
            f"{name.strip()}: sent at {r.at_s:.2f} s, {r.route} answer names {KIND} "
            f"{(r.model_versions or {}).get(KIND)}, expected {' or '.join(sorted(allowed or ()))}"
            for r in wrong
        ]
        figures = percentiles([r.latency_ms for r in ok])
        found[name] = {
            "from_s": start,
            "to_s": min(end, run["marks"]["stopped"]),
            "requests": len(sent),
            "failed": len(sent) - len(ok),
            "p50_ms": figures["p50_ms"],
            "p99_ms": figures["p99_ms"],
            "max_ms": figures["max_ms"],
            "generator_answers": dict(
                sorted(
                    Counter(
                        (r.model_versions or {}).get(KIND, "?") for r in ok if r.route == KIND
                    ).items()
                )
            ),
            "answers_naming": dict(
                sorted(Counter((r.model_versions or {}).get(KIND, "?") for r in ok).items())
            ),
            "slowest": [
                f"{r.at_s:.2f} s {r.route} {'stream' if r.stream else 'whole'} "
                f"{r.latency_ms:.0f} ms"
                for r in sorted(ok, key=lambda r: -r.latency_ms)[:3]
            ],
            "expected": sorted(allowed) if allowed is not None else None,
            "unexpected": len(wrong),
        }
    counted = [r for r in results if r.at_s >= found["before"]["from_s"]]
    failed = [r for r in counted if r.error]
    every_failed = [r for r in results + run["warm"] if r.error]
    before, during = found["before"]["p99_ms"], found["during"]["p99_ms"]
    changed = [r for r in results if r.versions_changed]
    seen_v2 = found.get("  v2 live", {}).get("generator_answers", {}).get(candidate or "", 0)
    back = found["after"]["generator_answers"].get(live, 0)
    commands = run["commands"]
    across = {}
    for name, command in commands.items():
        if name == "push" or command.get("recorded_after_s") is None:
            continue
        # From the change in the database to every server process serving it: the swaps
        # happen in there, and these requests were sent before one and answered after it.
        changed_at = run["marks"][name] + command["recorded_after_s"]
        served_at = run["marks"][f"{name}_end"]
        spanning = [
            r for r in results if r.at_s < served_at and r.at_s + r.latency_ms / 1000 > changed_at
        ]
        across[name] = {
            "from_s": changed_at,
            "to_s": served_at,
            "requests": len(spanning),
            "streams": sum(r.stream for r in spanning),
            "generator": sum(r.route == KIND for r in spanning),
            "failed": sum(bool(r.error) for r in spanning),
            "naming": dict(
                Counter((r.model_versions or {}).get(KIND, "?") for r in spanning).items()
            ),
        }
    meets = {
        "failed": not every_failed,
        "commands": len(commands) == 3 and all(c["returncode"] == 0 for c in commands.values()),
        "swap_seen": bool(seen_v2 and back),
        "unexpected_versions": not unexpected,
        "streams_kept_versions": not changed,
        "store": checks["lost"] == 0
        and checks["mismatched"] == 0
        and checks["versions"]["differ"] == 0,
    }
    return {
        "bench": "swap",
        "quick": args.quick,
        "project": str(args.project),
        "database": "postgresql" if args.db != "sqlite" else "sqlite",
        "workers": args.workers,
        "customers": args.customers,
        "think_s": args.think,
        "stream_share": args.stream_share,
        "seed": args.seed,
        "factor": args.factor,
        "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "live": live,
        "candidate": candidate,
        "marks_s": run["marks"],
        "windows": found,
        "requests": len(counted),
        "failed": len(failed),
        "failed_warm_up": len(every_failed) - len(failed),
        "failure_kinds": dict(Counter((r.error or "").split(":")[0] for r in every_failed)),
        "failure_examples": [
            f"{r.at_s:.2f} s {r.kind} stream={r.stream}: {r.error}" for r in every_failed
        ][:10],
        "p99_during_over_before": during / before if during and before else None,
        "commands": {
            name: {
                "seconds": c["seconds"],
                "recorded_after_s": c.get("recorded_after_s"),
                "then_s": c.get("then_s"),
                "returncode": c["returncode"],
                "output": c["output"][-600:],
            }
            for name, c in commands.items()
        },
        "in_flight_during_swap": across,
        "unexpected_versions": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "streams_changing_versions": len(changed),
        "store": checks,
        "meets": meets,
        "meets_targets": all(meets.values()),
    }


def show(f: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def versions(counts: dict[str, int]) -> str:
        return ", ".join(f"{v} {n}" for v, n in counts.items()) or "-"

    console = Console(width=150)
    table = Table(
        title=f"{f['customers']} customers, think time {f['think_s']:g} s (exponential), "
        f"{f['stream_share']:.0%} streamed, {f['database']}, {f['workers']} server processes: "
        f"{KIND} {f['candidate']} pushed, promoted, rolled back to {f['live']} — latency of the "
        "whole answer, ms"
    )
    for column in ("window", "from–to s", "requests", "failed", "p50", "p99", "max",
                   f"{KIND} answers by version", "unexpected"):  # fmt: skip
        table.add_column(
            column,
            justify="left" if column in ("window", f"{KIND} answers by version") else "right",
        )
    for name, w in f["windows"].items():
        table.add_row(
            name, f"{w['from_s']:.1f}–{w['to_s']:.1f}", str(w["requests"]), str(w["failed"]),
            ms(w["p50_ms"]), ms(w["p99_ms"]), ms(w["max_ms"]), versions(w["generator_answers"]),
            str(w["unexpected"]) if w["expected"] is not None else "(any)",
        )  # fmt: skip
    console.print(table)
    ratio = f["p99_during_over_before"]
    console.print(f"p99 during ÷ p99 before: {'-' if ratio is None else f'{ratio:.2f}×'}")
    for name, c in f["commands"].items():
        last = c["output"].splitlines()[-1] if c["output"] else ""
        split = (
            f" (recorded after {c['recorded_after_s']:.1f} s, then {c['then_s']:.1f} s)"
            if c["recorded_after_s"] is not None
            else ""
        )
        console.print(
            f"kefu models {name}: {c['seconds']:.1f} s{split}, exit {c['returncode']}: {last}",
            markup=False,
        )
    for name, a in f["in_flight_during_swap"].items():
        console.print(
            f"in flight during the {name}'s swap ({a['from_s']:.1f}–{a['to_s']:.1f} s: "
            f"recorded → every process serving it): {a['requests']} "
            f"requests ({a['streams']} streams, {a['generator']} to the {KIND}), "
            f"{a['failed']} failed; they name {versions(a['naming'])}"
        )
    console.print(
        f"versions: {f['unexpected_versions']} answers named an unexpected {KIND} version; "
        f"{f['streams_changing_versions']} streams changed versions part-way"
    )
    for example in f["unexpected_examples"]:
        console.print(f"  {example}", markup=False)
    s = f["store"]
    console.print(
        f"store: {s['checked']} acknowledged messages checked, {s['lost']} lost, "
        f"{s['mismatched']} mismatched; {s['versions']['checked']} answers' versions checked, "
        f"{s['versions']['differ']} differ"
    )
    for example in s["examples"] + s["versions"]["examples"]:
        console.print(f"  {example}", markup=False)
    if f["failure_kinds"]:
        console.print(f"failed: {f['failure_kinds']}")
        for example in f["failure_examples"]:
            console.print(f"  {example}", markup=False)
    verdict = {True: "[green]met[/]", False: "[red]missed[/]"}
    console.print(
        "targets: "
        + "; ".join(f"{name.replace('_', ' ')} {verdict[ok]}" for name, ok in f["meets"].items())
        + f" ({f['failed']} failed of {f['requests']}, {f['failed_warm_up']} in the warm-up)"
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the small demo, 10 customers, shorter windows"
    )
    parser.add_argument("--customers", type=int, help="concurrent conversations (default 30)")
    serve_load.customer_options(parser, think=2.0)
    parser.add_argument("--settle", type=float, help="s of load not counted (default 5)")
    parser.add_argument("--before", type=float, help="s of steady state first (default 30)")
    parser.add_argument("--pause", type=float, help="s with the new version live (default 15)")
    parser.add_argument("--after", type=float, help="s of steady state at the end (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument(
        "--project", type=Path, help="the project to serve (default: the demo; --quick: small)"
    )
    parser.add_argument(
        "--factor", type=float, default=1.0001, help="the second version's weights: v1's × this"
    )
    parser.add_argument(
        "--requests-out", type=Path, help="write every request here, one JSON object a line"
    )
    args = parser.parse_args()
    defaults = (10, 3.0, 10.0, 5.0, 8.0) if args.quick else (30, 5.0, 30.0, 15.0, 20.0)
    for name, default in zip(
        ("customers", "settle", "before", "pause", "after"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.db != "sqlite" and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes sqlite or a postgresql:// URL")

    # A stop (SIGTERM, or Ctrl-C: SIGINT) unwinds like an error: the server's process group is
    # stopped, the database dropped, the pushed copy removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from kefu.project import load_project

    started = time.perf_counter()
    if args.project is None:
        args.project = small_demo(SMALL_DEMO) if args.quick else PROJECT
    print(f"$ kefu build {args.project}", flush=True)
    subprocess.run([*KEFU, "build", str(args.project)], check=True)
    with tempfile.TemporaryDirectory(prefix="kefu-swap-") as folder:
        log = Path(folder) / "serve.log"
        built = Path(load_project(args.project).build_dir) / KIND
        candidate = perturbed_copy(built, Path(folder) / KIND, args.factor)
        pushed = registry_folder(args.project, candidate)
        shutil.rmtree(pushed, ignore_errors=True)  # left by an earlier run: push it for real
        try:
            with database(args.db) as url:
                key = create_key(args.project, url)
                with server(args.project, url, log, args.workers) as (_, base, admin_key):
                    run = asyncio.run(scenario(args, base, key, admin_key, url, candidate))
                checks, _ = verify(url, run["warm"] + run["results"])
                checks["versions"] = stored_versions(url, run["results"], run["commands"])
        finally:
            shutil.rmtree(pushed, ignore_errors=True)
        problems = log_problems(log)
    if args.requests_out:
        with open(args.requests_out, "w", encoding="utf-8") as file:
            for r in run["results"]:
                fields = ("at_s", "kind", "stream", "status", "route", "latency_ms", "ttft_ms",
                          "conversation_id", "message_id", "model_versions", "error")  # fmt: skip
                file.write(json.dumps({f: getattr(r, f) for f in fields}, ensure_ascii=False))
                file.write("\n")
    figures = figures_of(args, run, checks)
    report(figures, show, problems, started)
    if not figures["meets"]["commands"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
