"""Benchmark the server under load: simulated customers over loopback against the real `kefu serve`.

The demo project (examples/acme_bank) is built (`kefu build`, seconds when up to date) and served
by `kefu serve` in its own process, on a free port, with a fresh database: a SQLite file in a
temporary folder, or with `--db postgresql://user@host:5432/db` a new database kefu_bench_<hex>
on that server, dropped afterwards. The client creates an API key with a high rate limit
(`kefu keys create`), so the per-address limit of anonymous chat never answers 429.

`--customers` simulated customers talk to it at once for `--duration` seconds, over one
`httpx.AsyncClient`. Each runs conversations of 2-5 turns: the first message starts a
conversation (no `kefu.conversation_id`), the next ones continue it through the `kefu`
extension; a conversation handed to a person ends there (the customer waits for the agent),
and a failed request ends it too. Before every message the customer thinks for a time drawn
from an exponential distribution of mean `--think` seconds: real customers read the answer and
type, so each one offers about 1 / (think + latency) requests a second. The default, 3 s, is
already quick for a person (reading an answer and typing the next question takes most people
10 s or more): 50 customers then send about 16 requests a second. `--think 1` is a stress test
(about 35 a second, what 2 cores can take with this mix; latency then grows with the queue).
With `--think 0` every
customer sends again the moment it has its answer: the server is then saturated and latency
only measures queueing (Little's law: latency = concurrency / throughput).

Messages are drawn, with `--seed`, from the demo's own data, by kind (MIX):

- question    an FAQ entry's exact question, English or Chinese (faq_en.csv, faq_zh.csv)
- paraphrase  one of an entry's paraphrases; the knowledge base indexes them, so they too
              take the FAQ route, with a retrieval score under the exact question's
- utterance   a labelled customer utterance (intents_en.csv, intents_zh.csv): phrasings the
              FAQ does not hold, which mostly take the generator route
- handoff     an explicit request for a person (HANDOFF_PHRASES)

A share `--stream-share` of the requests stream (stream=true): the client reads the server-sent
events and times the first content token (TTFT) and the whole answer. Latency is always the
whole answer, request sent to last byte, by the route the server reports (`kefu.route`).

Reference in the same run: the HTTP floor, the same server, client, customers and think time
on GET /healthz for `--floor-duration` seconds before the main phase; FAQ p50 ÷ floor p50 is the
assistant's cost over bare HTTP. One request of each kind and language warms the server up
before either phase (not counted). The server's CPU time comes from /proc/<pid>/stat (summed
over its worker processes with `--workers N`).

Afterwards, with the server stopped, every message the server acknowledged (the customer's by
`kefu.user_message_id`, the answer by `kefu.message_id`) is looked up in the store: lost = not
there; mismatched = there with another conversation, role or text. The messages stored in the
run's conversations are counted against those the client saw acknowledged.

Targets (2 CPU cores): FAQ-route p50 < 50 ms at 50 customers, zero errors, zero lost messages.
--quick: 10 customers for 15 s, floor 5 s.

    .venv/bin/python bench/serve_load.py [--quick] [--customers N] [--duration S] [--think S]
        [--stream-share F] [--floor-duration S] [--seed N] [--db postgresql://...] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "examples" / "acme_bank"
KEFU = [sys.executable, "-m", "kefu"]
MIX = {"question": 0.35, "paraphrase": 0.25, "utterance": 0.37, "handoff": 0.03}
HANDOFF_PHRASES = [
    "I want to talk to a person",
    "Can I speak to a human agent please?",
    "转人工",
    "我要找人工客服",
]
TURNS = (2, 5)  # turns per conversation, inclusive
TARGET_FAQ_P50_MS = 50.0
TARGET_CUSTOMERS = 50
READY_TIMEOUT_S = 300.0  # loading the models on a busy 2-core machine
STOP_TIMEOUT_S = 15.0


@dataclass
class Result:
    """One request as the client saw it."""

    phase: str  # warmup, floor or chat
    kind: str  # a MIX kind, or healthz
    stream: bool
    sent: str
    latency_ms: float = 0.0  # request sent → last byte of the whole answer
    status: int | None = None  # None: no HTTP response at all
    route: str | None = None
    ttft_ms: float | None = None  # streams: first non-empty content delta
    conversation_id: str | None = None
    user_message_id: int | None = None
    message_id: int | None = None
    answer: str | None = None
    error: str | None = None
    model_versions: dict[str, str] | None = None  # the versions the answer names
    versions_changed: bool = False  # a stream whose chunks named different versions


# ---------------------------------------------------------------------------------------------
# messages


def read_messages(project: Path) -> dict[str, list[str]]:
    """The customer messages of each kind, from the project's own data files."""

    def rows(name: str) -> list[dict[str, str]]:
        with open(project / name, encoding="utf-8") as file:
            return list(csv.DictReader(file))

    faq = rows("faq_en.csv") + rows("faq_zh.csv")
    intents = rows("intents_en.csv") + rows("intents_zh.csv")
    return {
        "question": [row["question"].strip() for row in faq],
        "paraphrase": [
            p.strip() for row in faq for p in (row["paraphrases"] or "").split("|") if p.strip()
        ],
        "utterance": [row["text"].strip() for row in intents if row["text"].strip()],
        "handoff": HANDOFF_PHRASES,
    }


def draw(rng: random.Random, messages: dict[str, list[str]]) -> tuple[str, str]:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    return kind, rng.choice(messages[kind])


# ---------------------------------------------------------------------------------------------
# the server and its database


@contextlib.contextmanager
def database(db: str) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database dropped after."""
    if db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="kefu-serve-load-") as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    from kefu.store.scratch import scratch_database

    with scratch_database(db, "kefu_bench") as url:
        yield url


def create_key(project: Path, url: str) -> str:
    done = subprocess.run(
        [*KEFU, "keys", "create", str(project), "--name", "bench/serve_load.py",
         "--scopes", "chat", "--rate-limit", "1000000", "--db", url],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"kefu keys create failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes(pid: int) -> list[int]:
    """The process and its descendants (`--workers N`: uvicorn's supervisor and its workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    queue += [int(child) for child in file.read().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree (all threads), from /proc/<pid>/stat."""
    total = 0.0
    for process in processes(pid):
        with contextlib.suppress(OSError), open(f"/proc/{process}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()  # after the command name
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict[str, float]:
    """Seconds the machine's CPUs spent idle and stolen by the hypervisor, from /proc/stat."""
    with open("/proc/stat") as file:
        fields = [int(x) for x in file.readline().split()[1:]]  # the "cpu" line: all CPUs
    tick = os.sysconf("SC_CLK_TCK")
    return {"idle": (fields[3] + fields[4]) / tick, "steal": fields[7] / tick}


def threads_of(pid: int) -> int:
    total = 0
    for process in processes(pid):
        with contextlib.suppress(OSError), open(f"/proc/{process}/status") as file:
            total += next(int(line.split()[1]) for line in file if line.startswith("Threads:"))
    return total


@contextlib.contextmanager
def server(
    project: Path,
    url: str,
    log_path: Path,
    workers: int,
    options: tuple[str, ...] = (),
    ready: Callable[[str], bool] | None = None,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`kefu serve` on a free port, in its own process group, until the block ends; then the
    whole group is stopped (SIGINT, then SIGKILL for anything left).

    Args:
        options: more `kefu serve` options (bench/swap.py: --new-key).
        ready: whether the server at a base URL is ready; default: /readyz answers 200.
    """
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*KEFU, "serve", str(project), "--port", str(port), "--db", url,
             "--workers", str(workers), *options],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"kefu serve exited with {process.returncode}:\n{tail(log_path)}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise SystemExit(
                    f"kefu serve not ready in {READY_TIMEOUT_S:.0f} s:\n{tail(log_path)}"
                )
            if (ready or answers_readyz)(base):
                break
            time.sleep(0.2)
        print(
            f"kefu serve ready at {base} in {time.monotonic() - started:.1f} s "
            f"(pid {process.pid}, {workers} server process(es))",
            flush=True,
        )
        yield process, base
    finally:
        stop_group(process)


def answers_readyz(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    return False


def stop_group(process: subprocess.Popen) -> None:
    """SIGINT to the server's process group (uvicorn's supervisor and its workers), SIGKILL to
    whatever is left of it after STOP_TIMEOUT_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"kefu serve still running {STOP_TIMEOUT_S:.0f} s after SIGINT: killed")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:  # the workers may outlive the supervisor for a moment
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# customers


async def chat(
    client: httpx.AsyncClient,
    base: str,
    model: str,
    result: Result,
    conversation_id: str | None,
) -> None:
    """Send one customer message and fill in `result` with what came back."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": result.sent}],
        "stream": result.stream,
    }
    if conversation_id:
        body["kefu"] = {"conversation_id": conversation_id}
    url = f"{base}/v1/chat/completions"
    started = time.perf_counter()
    try:
        if not result.stream:
            response = await client.post(url, json=body)
            result.latency_ms = 1000 * (time.perf_counter() - started)
            result.status = response.status_code
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {_message(response.text)}"
                return
            reply = response.json()
            _take(result, reply["kefu"])
            result.answer = reply["choices"][0]["message"]["content"]
        else:
            async with client.stream("POST", url, json=body) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    result.error = (
                        f"HTTP {response.status_code}: {_message(await response.aread())}"
                    )
                    result.latency_ms = 1000 * (time.perf_counter() - started)
                    return
                parts, done = [], False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, ": ping" comments
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "kefu" in chunk:  # the first chunk and the last content chunk
                        _take(result, chunk["kefu"])
                    for choice in chunk.get("choices", []):
                        if piece := choice.get("delta", {}).get("content"):
                            if result.ttft_ms is None:
                                result.ttft_ms = 1000 * (time.perf_counter() - started)
                            parts.append(piece)
                result.latency_ms = 1000 * (time.perf_counter() - started)
                result.answer = "".join(parts)
                if not done:
                    result.error = "the stream ended without [DONE]"
                    return
        if result.message_id is None or result.user_message_id is None:
            result.error = "no kefu.message_id / user_message_id in the answer"
        elif conversation_id and result.conversation_id != conversation_id:
            result.error = (
                f"answered in conversation {result.conversation_id}, not {conversation_id}"
            )
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as error:
        result.latency_ms = 1000 * (time.perf_counter() - started)
        result.error = f"{type(error).__name__}: {error}"[:200]


def _take(result: Result, kefu: dict[str, Any]) -> None:
    result.route = kefu.get("route") or result.route
    result.conversation_id = kefu.get("conversation_id") or result.conversation_id
    result.user_message_id = kefu.get("user_message_id") or result.user_message_id
    result.message_id = kefu.get("message_id") or result.message_id
    versions = kefu.get("model_versions")
    if versions is not None:
        if result.model_versions is not None and result.model_versions != versions:
            result.versions_changed = True
        result.model_versions = versions


def _message(body: str | bytes) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return json.loads(body)["error"]["message"][:200]
    return str(body[:200])


async def customer(
    number: int,
    phase: str,
    client: httpx.AsyncClient,
    base: str,
    model: str,
    messages: dict[str, list[str]],
    args: argparse.Namespace,
    stop: asyncio.Event,
    results: list[Result],
    new_result: Callable[[str, str, bool, str], Result] = Result,
) -> None:
    """One seat: conversations of 2-5 turns, one after another, until `stop` is set.

    Args:
        new_result: makes the record of one request (phase, kind, stream, text); a benchmark
            that records more (bench/swap.py: when it was sent) passes its own.
    """
    rng = random.Random(f"{args.seed}/{phase}/{number}")
    while True:
        conversation_id = None
        for _ in range(rng.randint(*TURNS)):
            if args.think > 0:  # cut short by `stop`: the phase ends on time
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.expovariate(1 / args.think))
            if stop.is_set():
                return
            if phase == "floor":
                result = Result(phase, "healthz", False, "")
                started = time.perf_counter()
                try:
                    response = await client.get(f"{base}/healthz")
                    result.status = response.status_code
                    if response.status_code != 200:
                        result.error = f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    result.error = f"{type(error).__name__}: {error}"[:200]
                result.latency_ms = 1000 * (time.perf_counter() - started)
                results.append(result)
                continue
            kind, text = draw(rng, messages)
            result = new_result(phase, kind, rng.random() < args.stream_share, text)
            await chat(client, base, model, result, conversation_id)
            results.append(result)
            if result.error or result.route == "handoff":
                break  # a failed turn leaves the conversation unknown; a person takes over
            conversation_id = result.conversation_id


def _client(args: argparse.Namespace, key: str) -> httpx.AsyncClient:
    connections = 2 * args.customers + 10
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=args.timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def warm_up(base: str, key: str, model: str, messages: dict[str, list[str]]) -> list[Result]:
    """One message of each kind in each language, one at a time, not counted: the first
    requests pay for lazy set-up (Chinese segmentation, first torch calls)."""
    results = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for kind, texts in messages.items():
            english = next(t for t in texts if t.isascii())
            chinese = next(t for t in texts if not t.isascii())
            for text, stream in ((english, False), (chinese, True)):
                result = Result("warmup", kind, stream, text)
                await chat(client, base, model, result, None)
                results.append(result)
    return results


async def run_phase(
    phase: str,
    seconds: float,
    base: str,
    key: str,
    model: str,
    messages: dict[str, list[str]],
    args: argparse.Namespace,
    pid: int,
) -> dict[str, Any]:
    """All customers for `seconds`; requests started before the end are awaited."""
    results: list[Result] = []
    async with _client(args, key) as client:
        cpu, client_cpu, machine = cpu_seconds(pid), _own_cpu(), machine_cpu()
        started = time.perf_counter()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await asyncio.gather(*(
            customer(n, phase, client, base, model, messages, args, stop, results)
            for n in range(args.customers)
        ))  # fmt: skip
        wall = time.perf_counter() - started
        cpu, client_cpu = cpu_seconds(pid) - cpu, _own_cpu() - client_cpu
        machine = {key: value - machine[key] for key, value in machine_cpu().items()}
    return {
        "results": results,
        "wall_s": wall,
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        "machine_idle_s": machine["idle"],
        "machine_steal_s": machine["steal"],
        "server_threads": threads_of(pid),
    }


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------------
# checks and figures


def verify(url: str, results: list[Result]) -> tuple[dict[str, Any], dict[int, float]]:
    """Look up every acknowledged message in the store; also each answer's stored turn time."""
    from kefu.store.repository import NotFound, Store

    lost, mismatched, checked = [], [], 0
    stored_ms: dict[int, float] = {}
    store = Store.open(url, migrate=False)
    try:
        for r in results:
            expected = [(r.user_message_id, "user", r.sent)]
            if r.message_id is not None and not r.error:
                expected.append((r.message_id, "assistant", r.answer))
            for message_id, role, text in expected:
                if message_id is None:
                    continue
                checked += 1
                try:
                    message = store.message(message_id)
                except NotFound:
                    lost.append(f"{role} message {message_id} of conversation {r.conversation_id}")
                    continue
                if (message.conversation_id, message.role, message.text) != (
                    r.conversation_id,
                    role,
                    text,
                ):
                    mismatched.append(f"{role} message {message_id}: stored {message.text[:60]!r}")
                elif role == "assistant" and message.latency_ms is not None:
                    stored_ms[message_id] = message.latency_ms
        conversations = {r.conversation_id for r in results if r.conversation_id}
        stored = sum(len(store.conversation(c).messages) for c in conversations)
        total = store.count_messages()
    finally:
        store.close()
    seen = sum((r.user_message_id is not None) + (r.message_id is not None) for r in results)
    return {
        "checked": checked,
        "lost": len(lost),
        "mismatched": len(mismatched),
        "examples": (lost + mismatched)[:5],
        "conversations": len(conversations),
        "stored_in_run_conversations": stored,
        "acknowledged_to_client": seen,
        "stored_in_database": total,
    }, stored_ms


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max(values)}


def summarise(results: list[Result], wall: float, stored_ms: dict[int, float]) -> dict[str, Any]:
    """Figures of a set of requests: count, rate, latency percentiles, errors."""
    ok = [r for r in results if not r.error]
    server = [stored_ms[r.message_id] for r in ok if r.message_id in stored_ms]
    return {
        "requests": len(results),
        "req_per_s": len(results) / wall,
        **percentiles([r.latency_ms for r in ok]),
        "errors": len(results) - len(ok),
        "server_turn_p50_ms": float(np.percentile(server, 50)) if server else None,
    }


def figures_of(
    args: argparse.Namespace,
    floor: dict[str, Any],
    main: dict[str, Any],
    checks: dict[str, Any],
    stored_ms: dict[int, float],
) -> dict[str, Any]:
    results: list[Result] = main["results"]
    by_route: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_route[r.route or "(no answer)"].append(r)
    routes = {
        route: summarise(rs, main["wall_s"], stored_ms) for route, rs in sorted(by_route.items())
    }
    streaming = {}
    for route, rs in sorted(by_route.items()):
        streamed = [r for r in rs if r.stream and not r.error and r.ttft_ms is not None]
        if streamed:
            ttft = np.percentile([r.ttft_ms for r in streamed], [50, 95])
            total = np.percentile([r.latency_ms for r in streamed], [50, 95])
            streaming[route] = {
                "requests": len(streamed),
                "ttft_p50_ms": ttft[0],
                "ttft_p95_ms": ttft[1],
                "total_p50_ms": total[0],
                "total_p95_ms": total[1],
            }
    errors = Counter(
        (r.error or "").split(":")[0] for r in floor["results"] + results if r.error
    )  # by kind: "HTTP 503", "ReadTimeout"…
    kinds = {
        kind: dict(Counter(r.route or "(no answer)" for r in results if r.kind == kind))
        for kind in MIX
    }
    floor_figures = summarise(floor["results"], floor["wall_s"], {})
    faq = routes.get("faq", {})
    ratio = (
        faq["p50_ms"] / floor_figures["p50_ms"]
        if faq.get("p50_ms") and floor_figures.get("p50_ms")
        else None
    )
    error_count = sum(errors.values())
    meets = {
        "faq_p50": bool(faq.get("p50_ms") is not None and faq["p50_ms"] < TARGET_FAQ_P50_MS),
        "errors": error_count == 0,
        "lost": checks["lost"] == 0 and checks["mismatched"] == 0,
    }

    def cpu(phase: dict[str, Any]) -> dict[str, float]:
        return {
            "server_cpu_s": phase["server_cpu_s"],
            "server_cores_busy": phase["server_cpu_s"] / phase["wall_s"],
            "client_cores_busy": phase["client_cpu_s"] / phase["wall_s"],
            "machine_cores_idle": phase["machine_idle_s"] / phase["wall_s"],
            "machine_cores_stolen": phase["machine_steal_s"] / phase["wall_s"],
            "server_threads": phase["server_threads"],
        }

    return {
        "bench": "serve_load",
        "quick": args.quick,
        "database": "postgresql" if args.db != "sqlite" else "sqlite",
        "customers": args.customers,
        "workers": args.workers,
        "duration_s": args.duration,
        "floor_duration_s": args.floor_duration,
        "think_s": args.think,
        "stream_share": args.stream_share,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "mix": MIX,
        "floor": {**floor_figures, **cpu(floor), "wall_s": floor["wall_s"]},
        "chat": {
            **summarise(results, main["wall_s"], stored_ms),
            **cpu(main),
            "wall_s": main["wall_s"],
        },
        "routes": routes,
        "streaming": streaming,
        "routes_by_kind": kinds,
        "errors": error_count,
        "error_kinds": dict(errors),
        "error_examples": [r.error for r in floor["results"] + results if r.error][:5],
        "store": checks,
        "faq_p50_over_floor_p50": ratio,
        "targets": {
            "faq_p50_ms_below": TARGET_FAQ_P50_MS,
            "at_customers": TARGET_CUSTOMERS,
            "applies": args.customers == TARGET_CUSTOMERS,
        },
        "meets": meets,
        "meets_targets": all(meets.values()),
    }


def show(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    console = Console(width=140)
    f = figures
    table = Table(
        title=f"{f['customers']} customers, think time {f['think_s']:g} s (exponential), "
        f"{f['stream_share']:.0%} streamed, {f['database']}, {f['workers']} server "
        f"process{'es' if f['workers'] > 1 else ''} — latency of the whole answer, ms"
    )
    columns = ("", "requests", "req/s", "p50", "p95", "p99", "max", "errors",
               "server turn p50")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")

    def row(name: str, s: dict[str, Any]) -> None:
        table.add_row(
            name, str(s["requests"]), f"{s['req_per_s']:.1f}", ms(s["p50_ms"]), ms(s["p95_ms"]),
            ms(s["p99_ms"]), ms(s["max_ms"]), str(s["errors"]), ms(s["server_turn_p50_ms"]),
        )  # fmt: skip

    row(f"HTTP floor: GET /healthz ({f['floor']['wall_s']:.0f} s)", f["floor"])
    for route, s in f["routes"].items():
        row(f"route {route}", s)
    row(f"all chat requests ({f['chat']['wall_s']:.0f} s)", f["chat"])
    console.print(table)
    if f["streaming"]:
        streams = Table(title="streamed requests (stream=true), ms")
        for column in ("route", "requests", "TTFT p50", "TTFT p95", "total p50", "total p95"):
            streams.add_column(column, justify="left" if column == "route" else "right")
        for route, s in f["streaming"].items():
            streams.add_row(route, str(s["requests"]), ms(s["ttft_p50_ms"]), ms(s["ttft_p95_ms"]),
                            ms(s["total_p50_ms"]), ms(s["total_p95_ms"]))  # fmt: skip
        console.print(streams)
    kinds = "; ".join(
        f"{kind} → " + ", ".join(f"{route} {n}" for route, n in sorted(routes.items()))
        for kind, routes in f["routes_by_kind"].items()
    )
    console.print(f"routes by message kind: {kinds}")
    console.print(
        "server turn p50: the turn time the server stored with each answer (from its start in "
        "a worker thread to the answer, before the answer's commit)"
    )
    for phase in ("floor", "chat"):
        p = f[phase]
        console.print(
            f"{phase}: server CPU {p['server_cpu_s']:.1f} s = {p['server_cores_busy']:.2f} cores "
            f"busy, client {p['client_cores_busy']:.2f}, idle {p['machine_cores_idle']:.2f}, "
            f"stolen by the hypervisor {p['machine_cores_stolen']:.2f}, of {f['cpus']} cores; "
            f"server threads at the end: {p['server_threads']}"
        )
    s = f["store"]
    console.print(
        f"store: {s['checked']} acknowledged messages checked, {s['lost']} lost, "
        f"{s['mismatched']} mismatched; {s['conversations']} conversations hold "
        f"{s['stored_in_run_conversations']} messages, the client saw "
        f"{s['acknowledged_to_client']} acknowledged; {s['stored_in_database']} in the database"
    )
    for example in s["examples"]:
        console.print(f"  {example}")
    if f["errors"]:
        console.print(f"errors: {f['error_kinds']}")
        for example in f["error_examples"]:
            console.print(f"  {example}")
    ratio = f["faq_p50_over_floor_p50"]
    console.print(
        "assistant cost over bare HTTP (FAQ p50 ÷ floor p50): "
        + ("-" if ratio is None else f"{ratio:.1f}×")
    )
    faq_p50 = f["routes"].get("faq", {}).get("p50_ms")
    applies = "" if f["targets"]["applies"] else f" (the target is for {TARGET_CUSTOMERS})"
    verdict = {True: "[green]met[/]", False: "[red]missed[/]"}
    meets = f["meets"]
    console.print(
        f"targets at {f['customers']} customers{applies}: FAQ p50 {ms(faq_p50)} ms < "
        f"{TARGET_FAQ_P50_MS:g} ms {verdict[meets['faq_p50']]}; errors {f['errors']} "
        f"{verdict[meets['errors']]}; lost {s['lost'] + s['mismatched']} {verdict[meets['lost']]}"
    )


# ---------------------------------------------------------------------------------------------


async def load(args: argparse.Namespace, base: str, key: str, pid: int) -> dict[str, Any]:
    messages = read_messages(args.project)
    async with httpx.AsyncClient(timeout=10) as client:
        model = (await client.get(f"{base}/readyz")).json()["model"]
    warm = await warm_up(base, key, model, messages)
    print(f"warm-up: {len(warm)} requests, {sum(bool(r.error) for r in warm)} errors")
    print(f"HTTP floor: {args.customers} customers on GET /healthz for {args.floor_duration:g} s …")
    floor = await run_phase("floor", args.floor_duration, base, key, model, messages, args, pid)
    print(f"chat: {args.customers} customers for {args.duration:g} s …")
    main = await run_phase("chat", args.duration, base, key, model, messages, args, pid)
    return {"warm": warm, "floor": floor, "main": main}


def customer_options(parser: argparse.ArgumentParser, think: float) -> None:
    """The simulated customers' options that bench/swap.py shares."""
    parser.add_argument(
        "--think", type=float, default=think, help="mean think time before each message, s"
    )
    parser.add_argument(
        "--stream-share", type=float, default=0.3, help="share of requests with stream=true"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, s")
    parser.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (a fresh file) or a PostgreSQL URL that may create databases, e.g. "
        "postgresql://postgres@127.0.0.1:5432/test (a fresh database is made and dropped)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 customers, 15 s, floor 5 s")
    parser.add_argument("--customers", type=int, help="concurrent conversations (default 50)")
    parser.add_argument("--duration", type=float, help="seconds of the chat phase (default 60)")
    parser.add_argument(
        "--floor-duration", type=float, help="seconds of the GET /healthz phase (default 10)"
    )
    customer_options(parser, think=3.0)
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (kefu serve --workers)"
    )
    parser.add_argument("--project", type=Path, default=PROJECT, help="the project to serve")
    args = parser.parse_args()
    quick = (10, 15.0, 5.0) if args.quick else (TARGET_CUSTOMERS, 60.0, 10.0)
    args.customers = args.customers or quick[0]
    args.duration = args.duration or quick[1]
    args.floor_duration = args.floor_duration or quick[2]
    if args.db != "sqlite" and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes sqlite or a postgresql:// URL")

    started = time.perf_counter()
    print(f"$ kefu build {args.project}", flush=True)
    subprocess.run([*KEFU, "build", str(args.project)], check=True)
    with tempfile.TemporaryDirectory(prefix="kefu-serve-load-log-") as folder:
        log = Path(folder) / "serve.log"
        with database(args.db) as url:
            key = create_key(args.project, url)
            with server(args.project, url, log, args.workers) as (process, base):
                run = asyncio.run(load(args, base, key, process.pid))
            counted = run["main"]["results"]
            checks, stored_ms = verify(url, run["warm"] + counted)
        problems = log_problems(log)
    figures = figures_of(args, run["floor"], run["main"], checks, stored_ms)
    report(figures, show, problems, started)


def log_problems(log: Path) -> list[str]:
    """The error and warning lines of a server log."""
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if any(word in line for word in ("ERROR", "Traceback", "WARNING", "Exception"))
    ]


def report(
    figures: dict[str, Any],
    show: Callable[[dict[str, Any]], None],
    problems: list[str],
    started: float,
) -> None:
    """Print a run's tables, the server log's error and warning lines, and the JSON line."""
    figures["server_log_problems"] = len(problems)
    figures["total_s"] = time.perf_counter() - started
    show(figures)
    if problems:
        print(f"server log: {len(problems)} error/warning lines, the first:")
        print("\n".join(f"  {line}" for line in problems[:10]))
    print(f"total {figures['total_s']:.0f} s")
    print(json.dumps(figures, ensure_ascii=False, default=float))


if __name__ == "__main__":
    main()
