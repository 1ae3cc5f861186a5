"""Benchmark knowledge-base retrieval: quality on real data; speed at 1k, 10k and 100k chunks.

quality: FAQ benchmarks made from real data. BANKING77 and CLINC150 (in scope): one FAQ entry per
intent, written from the training utterances only (its question is the intent's name, its
paraphrases 5 training utterances drawn at random); 1,000 other training utterances are the
validation questions that `kefu.kb.evaluate.calibrate` chooses the fusion weights and the
direct-answer threshold (90% precision) on; the test utterances are the questions. Chinese:
CrossWOZ's attraction, hotel and restaurant databases, one chunk a record; the questions are user
turns that ask about one named place (see `crosswoz_queries`), validation from `val`, questions
from `test`. Each reports recall@1/5/10, MRR and nDCG@10 for BM25, dense and hybrid (RRF with
kefu's defaults, and with the calibrated weights), and the direct-answer rate with its precision.
Target: hybrid recall@1 at least 2 points above the better single ranking. --quick: 500
questions a data set, 300 to calibrate on.

speed: a synthetic base of N chunks made of real texts from ../shared/data, written to files and
built with `kefu.kb.index.build_kb`, so that source loading, BM25, MiniLM embedding and (where
`dense_index: auto` picks it) the HNSW graph are all timed. The base mixes English FAQ entries
(questions and paraphrases are real customer utterances of one intent or task, from BANKING77,
CLINC150, STAR and Taskmaster-4; answers are real agent replies from STAR and Taskmaster-4),
Markdown guides cut from STAR dialogues, and Chinese: CrossWOZ's records and FAQ entries made of
its validation dialogues' questions and replies. There are fewer distinct utterances (~75k) than
a 100k base has texts, so past ~40k chunks some utterances recur. Queries are held out: BANKING77
and CLINC150 test questions, and CrossWOZ test questions in Chinese (a fifth of them).

Each size is built twice, each build in a fresh spawned process so that its peak memory is its
own: peak RSS (resource's ru_maxrss) minus the RSS before the build, with jieba and MiniLM already
loaded. The BM25-only base (`encoder: null`) gives kefu's BM25 alone; the default (hybrid) base
gives the rest. Latencies are per query on `--threads` torch threads (2), p50 and p99:

- kefu BM25   `search(q, k=10)` on the BM25-only base: tokens, scores, best text per chunk, top 10
- rank_bm25   `BM25Okapi.get_scores(tokens(q))` and the top 10, over the same texts and tokens;
              its build is timed beside `kefu.kb.bm25.BM25.build` on the same token lists
- embed       MiniLM embedding of the query alone (part of the two below)
- dense       embedding + the base's vector search, top 10 (English queries; MiniLM is English)
- hybrid      `search(q, k=10)` on the hybrid base; Chinese queries run BM25 alone there, so
              they are reported apart (hybrid zh)

Where the base has enough vectors for HNSW, exact search over the same vectors is timed beside it,
with HNSW's recall of the exact nearest at k=10 and at the 401 that hybrid search asks for (a
neighbour counts as found when it scores at least the exact k-th: recurring texts tie), and how
many of hybrid search's top 10 stay the same with exact search.
Targets: rank_bm25 ÷ kefu BM25 >= 10 at 10k chunks, hybrid p50 < 20 ms at 10k chunks.
--quick: 1k chunks (both bases) and the BM25-only base at 10k (embedding 10k chunks takes
minutes on two cores), 100 queries; about two minutes.

    .venv/bin/python bench/retrieval.py [--quick] [--only speed] [--threads N] [--data PATH]
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import itertools
import json
import multiprocessing
import os
import random
import re
import resource
import tempfile
import time
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from kefu.console import settings
from kefu.kb.bm25 import BM25
from kefu.kb.dense import HNSW_EF_SEARCH, ExactSearch, embed, load_encoder
from kefu.kb.evaluate import Query, calibrate, evaluate_kb
from kefu.kb.index import HNSW_FILE, KBConfig, KnowledgeBase, build_kb
from kefu.kb.text import tokens

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Environment variables that change how torch's and numpy's thread pools share the cores.
THREAD_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREADS = 2  # the targets are for two cores
SIZES = (1_000, 10_000, 100_000)
TARGET_RATIO = 10.0  # rank_bm25 ÷ kefu BM25 at 10k chunks
TARGET_HYBRID_P50_MS = 20.0  # at 10k chunks
K = 10
EF_SWEEP = (16, 32, 64, 128, 256)  # HNSW search widths tried where the base uses HNSW
DENSE_DEPTH = 401  # texts hybrid search asks the vector search for (4 × 100 candidates + 1)
DOC_SHARE, ZH_SHARE = 0.15, 0.10  # of the chunks; the rest are English FAQ entries
DOC_TURNS = 6  # dialogue turns per guide section: ~60 words, one chunk each
MIN_WORDS = 3  # shorter utterances ("yes", "thank you") make poor FAQ questions


@dataclass
class Texts:
    """Real texts to make bases of, and held-out queries."""

    questions: dict[str, list[str]]  # intent or task → customer utterances
    answers: list[str]  # agent replies
    sections: list[tuple[str, str]]  # (title, dialogue turns) for the guides
    records_zh: list[tuple[str, dict[str, Any]]]  # CrossWOZ (name, record)
    faq_zh: list[tuple[str, str]]  # CrossWOZ (question, reply)
    queries_en: list[str]
    queries_zh: list[str]


def _crosswoz(data: Path, split: str) -> dict[str, Any]:
    with zipfile.ZipFile(data / "crosswoz" / f"{split}.json.zip") as archive:
        return json.loads(archive.read(f"{split}.json"))


def read_texts(data: Path) -> Texts:
    """The utterances, replies and records of the shared data sets, deduplicated."""
    questions: dict[str, list[str]] = defaultdict(list)
    answers, sections = [], []
    with open(data / "banking77" / "train.csv", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            questions[f"banking77/{row['category']}"].append(row["text"])
    clinc = json.loads((data / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    for text, label in clinc["train"] + clinc["val"]:
        questions[f"clinc150/{label}"].append(text)
    with gzip.open(data / "star" / "dialogues.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            dialogue = json.loads(line)
            task = dialogue["Scenario"]["WizardCapabilities"][0]["Task"]
            turns = []
            for event in dialogue["Events"]:
                agent, text = event.get("Agent"), " ".join((event.get("Text") or "").split())
                if not text:
                    continue
                if agent == "User" and event.get("Action") == "utter":
                    questions[f"star/{task}"].append(text)
                    turns.append(f"Customer: {text}")
                elif agent == "Wizard" and event.get("Action") in ("utter", "pick_suggestion"):
                    answers.append(text)
                    turns.append(f"Agent: {text}")
            for start in range(0, len(turns), DOC_TURNS):
                title = f"{task.replace('_', ' ')} (dialogue {dialogue['DialogueID']}, {start + 1})"
                sections.append((title, "\n".join(turns[start : start + DOC_TURNS])))
    for path in sorted((data / "taskmaster4").glob("data_*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for dialogue in json.load(file):
                for turn in dialogue["utterances"]:
                    side = questions["taskmaster4/coffee"] if turn["speaker"] == "user" else answers
                    side.append(turn["text"])
    records = []
    for name in ("attraction", "hotel", "restaurant", "metro"):
        path = data / "crosswoz" / "database" / f"{name}_db.json"
        records += [tuple(pair) for pair in json.loads(path.read_text(encoding="utf-8"))]
    faq_zh = []
    for dialogue in _crosswoz(data, "val").values():
        turns = dialogue["messages"]
        faq_zh += [
            (asked["content"], reply["content"])
            for asked, reply in itertools.pairwise(turns)
            if asked["role"] == "usr" and reply["role"] == "sys"
        ]
    queries_zh = [
        turn["content"]
        for dialogue in _crosswoz(data, "test").values()
        for turn in dialogue["messages"]
        if turn["role"] == "usr"
    ]
    with open(data / "banking77" / "test.csv", encoding="utf-8") as file:
        queries_en = [row["text"] for row in csv.DictReader(file)]
    queries_en += [text for text, _ in clinc["test"]]
    return Texts(
        questions={
            group: kept
            for group, found in questions.items()
            if (kept := [t for t in dict.fromkeys(found) if len(t.split()) >= MIN_WORDS])
        },
        answers=[t for t in dict.fromkeys(answers) if len(t.split()) >= MIN_WORDS],
        sections=sections,
        records_zh=records,
        faq_zh=list(dict(faq_zh).items()),
        queries_en=list(dict.fromkeys(queries_en)),
        queries_zh=list(dict.fromkeys(queries_zh)),
    )


def write_corpus(texts: Texts, size: int, folder: Path, seed: int = 0) -> dict[str, int]:
    """Source files of about `size` chunks under `folder`: English FAQ entries with 0-2
    paraphrases of their intent, guide sections (one chunk each), Chinese records and FAQ."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    zh = min(int(size * ZH_SHARE), len(texts.records_zh) + len(texts.faq_zh))
    faq_zh = min(zh // 2, len(texts.faq_zh))
    records = zh - faq_zh
    sections = min(int(size * DOC_SHARE), len(texts.sections))
    faq_en = size - zh - sections

    # Every utterance is a question once before any is again; paraphrases come from the
    # question's own intent or task, in turn.
    asked = [(group, text) for group, found in texts.questions.items() for text in found]
    rng.shuffle(asked)
    queues = {group: rng.sample(found, len(found)) for group, found in texts.questions.items()}
    taken = dict.fromkeys(queues, 0)
    with open(folder / "faq_en.jsonl", "w", encoding="utf-8") as file:
        for n in range(faq_en):
            group, question = asked[n % len(asked)]
            queue, paraphrases = queues[group], []
            for _ in range(rng.randrange(3)):
                paraphrase = queue[taken[group] % len(queue)]
                taken[group] += 1
                if paraphrase != question and paraphrase not in paraphrases:
                    paraphrases.append(paraphrase)
            entry = {
                "id": f"en-{n}",
                "question": question,
                "answer": texts.answers[rng.randrange(len(texts.answers))],
                "category": group,
                "paraphrases": paraphrases,
            }
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")
    guides = folder / "guides"
    guides.mkdir()
    chosen = rng.sample(texts.sections, sections)
    for start in range(0, sections, 1000):
        body = "".join(f"## {title}\n\n{text}\n\n" for title, text in chosen[start : start + 1000])
        (guides / f"guide_{start // 1000:03}.md").write_text(body, encoding="utf-8")
    (folder / "crosswoz_zh.json").write_text(
        json.dumps(rng.sample(texts.records_zh, records), ensure_ascii=False), encoding="utf-8"
    )
    with open(folder / "faq_zh.jsonl", "w", encoding="utf-8") as file:
        for n, (question, answer) in enumerate(rng.sample(texts.faq_zh, faq_zh)):
            entry = {"id": f"zh-{n}", "question": question, "answer": answer}
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return {"faq_en": faq_en, "sections": sections, "records_zh": records, "faq_zh": faq_zh}


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _latencies(run: Callable[[Any], Any], queries: list[Any]) -> list[float]:
    """Milliseconds per query, after a few untimed ones (lazy loading, caches)."""
    for query in queries[:5]:
        run(query)
    times = []
    for query in queries:
        started = time.perf_counter()
        run(query)
        times.append(1e3 * (time.perf_counter() - started))
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "queries": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "mean_ms": round(float(np.mean(times)), 3),
    }


def _build(sources: Path, out: Path, config: KBConfig) -> tuple[KnowledgeBase, dict[str, Any]]:
    """Build and load a base, with the build's time and peak memory and the folder's size."""
    before = _rss_mib()
    started = time.perf_counter()
    report = build_kb([sources], out, config)
    build_s = time.perf_counter() - started
    peak = _peak_rss_mib() - before
    started = time.perf_counter()
    kb = KnowledgeBase.load(out)
    load_s = time.perf_counter() - started
    return kb, {
        "chunks": report.chunks,
        "texts": report.texts,
        "vectors": report.vectors,
        "dense_search": config.vector_search(report.vectors) if report.vectors else "none",
        "build_s": round(build_s, 2),
        "build_peak_rss_mib": round(peak, 1),
        "disk_mib": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2),
        "graph_mib": round((out / HNSW_FILE).stat().st_size / 2**20, 2)
        if (out / HNSW_FILE).exists()
        else 0.0,
        "load_s": round(load_s, 3),
    }


def _ready(dense: bool) -> None:
    """A spawned process set up as a service would be: jieba, and MiniLM if it is used."""
    settings.quiet = True
    tokens("热身一下")  # loads jieba's dictionary
    if dense:
        load_encoder(KBConfig().encoder)


def measure_bm25(sources: Path, out: Path, queries: list[str], reference: int) -> dict[str, Any]:
    """The BM25-only base: its build, kefu's BM25 search, and rank_bm25 on the same tokens
    (over the first `reference` queries: it scores every text in Python)."""
    from rank_bm25 import BM25Okapi

    _ready(dense=False)
    kb, figures = _build(sources, out, KBConfig(encoder=None))
    documents = [tokens(text) for chunk in kb.chunks for text in chunk.match_texts()]
    started = time.perf_counter()
    BM25.build(documents, kb.config.bm25)
    figures["kefu_bm25_build_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    okapi = BM25Okapi(documents)
    figures["rank_bm25_build_s"] = round(time.perf_counter() - started, 3)

    def rank_bm25(query: str) -> np.ndarray:
        scores = okapi.get_scores(tokens(query))
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    kefu_ms = _latencies(lambda q: kb.search(q, k=K), queries)
    reference_ms = _latencies(rank_bm25, queries[:reference])
    figures["kefu_bm25"] = _summary(kefu_ms)
    figures["rank_bm25"] = _summary(reference_ms)
    # Over the same queries: rank_bm25 runs on a subset at large sizes.
    figures["rank_bm25_over_kefu"] = round(sum(reference_ms) / sum(kefu_ms[:reference]), 1)
    return figures


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """The share of the exact k nearest that `found` (scores, best first) holds, ties counted
    as found: a text that recurs in the base has several vectors of one score."""
    return float(np.sum(found >= exact[len(exact) - 1] - 1e-5) / len(exact))


def measure_hybrid(
    sources: Path, out: Path, queries_en: list[str], queries_zh: list[str]
) -> dict[str, Any]:
    """The default base: its build, query embedding, dense and hybrid search; where it chose
    HNSW, exact search over the same vectors beside it."""
    _ready(dense=True)
    kb, figures = _build(sources, out, KBConfig())
    assert kb.vectors is not None, "the hybrid base has no vectors"
    encoder = load_encoder(kb.config.encoder)
    figures["embed"] = _summary(_latencies(lambda q: embed(encoder, [q]), queries_en))
    search = kb.vectors.search
    figures["dense"] = _summary(_latencies(lambda q: search(embed(encoder, [q])[0], K), queries_en))
    hits = {}

    def hybrid(query: str) -> None:
        hits[query] = kb.search(query, k=K)

    figures["hybrid_en"] = _summary(_latencies(hybrid, queries_en))
    figures["hybrid_zh"] = _summary(_latencies(lambda q: kb.search(q, k=K), queries_zh))
    if figures["dense_search"] != "hnsw":
        return figures

    exact = ExactSearch(np.load(out / "vectors.npy"))
    vectors = embed(encoder, queries_en)  # (Q, dim)
    for k in (K, DENSE_DEPTH):
        recall = [_recall(kb.vectors.search(v, k)[1], exact.search(v, k)[1]) for v in vectors]
        figures[f"hnsw_recall_at_{k}"] = round(float(np.mean(recall)), 4)
        for name, index in (("hnsw", kb.vectors), ("exact", exact)):
            times = _latencies(lambda v, index=index, k=k: index.search(v, k), list(vectors))
            figures[f"{name}_search_at_{k}"] = _summary(times)
    # How the graph's search width trades recall for time (kefu searches HNSW_EF_SEARCH wide).
    figures["hnsw_ef_search"], sweep = HNSW_EF_SEARCH, []
    truth = [exact.search(v, K)[1] for v in vectors]
    for ef in EF_SWEEP:
        wide = faiss.SearchParametersHNSW(efSearch=ef)

        def graph(v: np.ndarray, wide: Any = wide) -> np.ndarray:
            return kb.vectors.index.search(v[None], K, params=wide)[0][0]  # scores, best first

        recall = [_recall(graph(v), t) for v, t in zip(vectors, truth, strict=True)]
        point = {"ef_search": ef, "recall_at_10": round(float(np.mean(recall)), 4)}
        sweep.append(point | _summary(_latencies(graph, list(vectors))))
    figures["hnsw_ef_sweep"] = sweep
    with_exact = copy.copy(kb)
    with_exact.vectors = exact
    same = []

    def exact_hybrid(query: str) -> None:
        ids = {hit.id for hit in with_exact.search(query, k=K)}
        same.append(len(ids & {hit.id for hit in hits[query]}) / max(len(ids), 1))

    figures["hybrid_en_exact"] = _summary(_latencies(exact_hybrid, queries_en))
    figures["hybrid_top10_same_as_exact"] = round(float(np.mean(same)), 4)
    return figures


def _in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`function(*args)` in a new interpreter, so that its peak RSS is its own; on as many
    torch threads as this process."""
    threads = torch.get_num_threads()
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        return pool.apply(function, args)


def speed(data: Path, quick: bool) -> dict[str, Any]:
    """Build times, memory, size and query latencies at each size; see the module docstring."""
    if not (data / "banking77").is_dir():
        print(f"speed: no data sets at {data} (../shared/data; give --data); skipped")
        return {"skipped": f"no data sets at {data}"}
    texts = read_texts(data)
    rng = random.Random(1)
    count = 100 if quick else 500
    queries_en = rng.sample(texts.queries_en, count * 4 // 5)
    queries_zh = rng.sample(texts.queries_zh, count // 5)
    queries = [*queries_en, *queries_zh]
    rng.shuffle(queries)
    plan = [(1_000, True), (10_000, False)] if quick else [(size, True) for size in SIZES]
    load = os.getloadavg()
    sizes = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-retrieval-") as folder:
        work = Path(folder)
        for size, dense in plan:
            sources = work / f"sources-{size}"
            made = write_corpus(texts, size, sources)
            reference = 50 if size >= 100_000 else min(len(queries), 200)
            print(f"{size:,} chunks: BM25-only base ...", flush=True)
            row: dict[str, Any] = {"size": size, "made": made}
            row["bm25"] = _in_fresh_process(
                measure_bm25, sources, work / f"bm25-{size}", queries, reference
            )
            if dense:
                print(f"{size:,} chunks: hybrid base (embedding takes a while) ...", flush=True)
                row["hybrid"] = _in_fresh_process(
                    measure_hybrid, sources, work / f"hybrid-{size}", queries_en, queries_zh
                )
            sizes.append(row)
    figures = {
        "threads": torch.get_num_threads(),
        "thread_settings": {
            name: os.environ[name] for name in THREAD_SETTINGS if name in os.environ
        },
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "queries_en": len(queries_en),
        "queries_zh": len(queries_zh),
        "sizes": sizes,
    }
    at_10k = next((row for row in sizes if row["size"] == 10_000), None)
    if at_10k:
        ratio = at_10k["bm25"]["rank_bm25_over_kefu"]
        figures["meets_target_ratio"] = ratio >= TARGET_RATIO
        if "hybrid" in at_10k:
            p50 = at_10k["hybrid"]["hybrid_en"]["p50_ms"]
            figures["meets_target_hybrid_p50"] = p50 < TARGET_HYBRID_P50_MS
    show_speed(figures)
    return figures


def show_speed(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    builds = Table(title="knowledge-base builds (peak RSS: ru_maxrss − RSS before the build)")
    columns = ("chunks", "base", "texts", "vectors", "dense search", "build s", "peak RSS MiB",
               "disk MiB", "load s", "BM25 build s: kefu / rank_bm25")  # fmt: skip
    for column in columns:
        builds.add_column(column, justify="left" if column in ("base", "dense search") else "right")
    pools = ", ".join(f"{k}={v}" for k, v in figures["thread_settings"].items())
    threads = f"{figures['threads']} torch threads{', ' if pools else ''}{pools}"
    queries = Table(title=f"query latency, ms ({threads})")
    for column in ("chunks", "method", "queries", "p50", "p99", "mean"):
        queries.add_column(column, justify="left" if column == "method" else "right")
    for row in figures["sizes"]:
        for base in ("bm25", "hybrid"):
            if base not in row:
                continue
            f = row[base]
            reference = (
                f"{f['kefu_bm25_build_s']:.2f} / {f['rank_bm25_build_s']:.2f}"
                if base == "bm25"
                else ""
            )
            builds.add_row(
                f"{f['chunks']:,}", "BM25 only" if base == "bm25" else "hybrid",
                f"{f['texts']:,}", f"{f['vectors']:,}", f["dense_search"], f"{f['build_s']:.1f}",
                f"{f['build_peak_rss_mib']:.0f}", f"{f['disk_mib']:.1f}", f"{f['load_s']:.2f}",
                reference,
            )  # fmt: skip
        names = [
            ("bm25", "kefu_bm25", "kefu BM25"),
            ("bm25", "rank_bm25", "rank_bm25"),
            ("hybrid", "embed", "embed (query only)"),
            ("hybrid", "dense", "dense (embed + search)"),
            ("hybrid", "hybrid_en", "hybrid, English"),
            ("hybrid", "hybrid_zh", "hybrid, Chinese (BM25 side only)"),
            ("hybrid", "hybrid_en_exact", "hybrid, English, exact search"),
        ]
        for base, key, name in names:
            if key in row.get(base, {}):
                s = row[base][key]
                queries.add_row(f"{row['size']:,}", name, str(s["queries"]),
                                f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}")  # fmt: skip
    console.print(builds)
    console.print(queries)
    for row in figures["sizes"]:
        ratio = row["bm25"]["rank_bm25_over_kefu"]
        target = f" (target >= {TARGET_RATIO:g} at 10k)" if row["size"] == 10_000 else ""
        console.print(f"{row['size']:,} chunks: rank_bm25 ÷ kefu BM25 = {ratio}×{target}")
        f = row.get("hybrid", {})
        if f.get("dense_search") == "hnsw":
            graph = Table(title=f"{row['size']:,} chunks, {f['vectors']:,} vectors: HNSW vs exact")
            for column in ("k", "HNSW recall", "HNSW p50 / p99 ms", "exact p50 / p99 ms"):
                graph.add_column(column, justify="right")
            for k in (K, DENSE_DEPTH):
                h, e = f[f"hnsw_search_at_{k}"], f[f"exact_search_at_{k}"]
                graph.add_row(str(k), f"{f[f'hnsw_recall_at_{k}']:.4f}",
                              f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f}",
                              f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f}")  # fmt: skip
            console.print(graph)
            sweep = Table(title="HNSW search width (efSearch) at k=10")
            for column in ("efSearch", "recall@10", "p50 ms", "p99 ms"):
                sweep.add_column(column, justify="right")
            for point in f["hnsw_ef_sweep"]:
                chosen = " (kefu's)" if point["ef_search"] == f["hnsw_ef_search"] else ""
                sweep.add_row(f"{point['ef_search']}{chosen}", f"{point['recall_at_10']:.4f}",
                              f"{point['p50_ms']:.3f}", f"{point['p99_ms']:.3f}")  # fmt: skip
            console.print(sweep)
            console.print(
                f"hybrid top 10 the same with exact search: {f['hybrid_top10_same_as_exact']:.4f}"
            )
    console.print(
        f"load average before / after: {figures['load_average_before']} / "
        f"{figures['load_average_after']} on {figures['cpus']} CPUs"
    )


# ---------------------------------------------------------------------------------------------
# quality


PARAPHRASES = 5  # training utterances an FAQ entry lists beside its question
VALID_QUESTIONS = 1_000  # held-out training utterances the fusion and threshold are chosen on
PRECISION = 0.9
# CrossWOZ's domains that have a record base, and the file of each (under database/).
DOMAIN_FILES = {"景点": "attraction_db.json", "酒店": "hotel_db.json", "餐馆": "restaurant_db.json"}


def intent_faq(
    train: list[tuple[str, str]], folder: Path, seed: int = 0
) -> tuple[Path, list[Query]]:
    """One FAQ entry per intent, written from the training utterances only: the question is the
    intent's name ("card arrival?"), the paraphrases are PARAPHRASES of its utterances picked at
    random; the other utterances are returned as validation questions."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in train:
        by_label[label].append(text)
    rng = random.Random(seed)
    entries, valid = [], []
    for label in sorted(by_label):
        texts = sorted(set(by_label[label]))
        rng.shuffle(texts)
        name = label.replace("_", " ")
        entries.append({
            "id": label, "question": f"{name.capitalize()}?", "answer": f"(answer about {name})",
            "category": label, "paraphrases": texts[:PARAPHRASES],
        })  # fmt: skip
        valid += [Query(text, {label}) for text in texts[PARAPHRASES:]]
    rng.shuffle(valid)
    path = folder / "faq.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return path, valid[:VALID_QUESTIONS]


def banking77_split(data: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    def read(name: str) -> list[tuple[str, str]]:
        with open(data / "banking77" / name, encoding="utf-8") as file:
            return [(row["text"], row["category"]) for row in csv.DictReader(file)]

    return read("train.csv"), read("test.csv")


def clinc150_split(data: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """CLINC150's in-scope train and test (an FAQ has no entry for out-of-scope questions)."""
    full = json.loads((data / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    return [tuple(x) for x in full["train"]], [tuple(x) for x in full["test"]]


def crosswoz_queries(data: Path, split: str) -> list[Query]:
    """User turns of CrossWOZ's `split` dialogues that ask about one named place → its record.

    A turn qualifies when one of its dialog acts requests an attribute (phone, price, nearby
    places…) of an attraction, hotel or restaurant and none requests that domain's name (asking
    for a name is a search for a place not yet known), and its text names exactly one record of
    a requested domain in full. Names are found leftmost-longest over the three databases after
    NFKC (the dialogues write `(…)` where the databases often write `（…）`), so 什刹海 inside a
    hotel's name is no mention of the attraction; where the acts give the name (slot 名称), only
    those mentions count. A repeated question is kept once.
    """
    records: dict[str, list[tuple[str, str]]] = {}  # NFKC name → [(domain, chunk id)]
    for domain, file in DOMAIN_FILES.items():
        pairs = json.loads((data / "database" / file).read_text(encoding="utf-8"))
        for name, _ in pairs:
            key = unicodedata.normalize("NFKC", name)
            records.setdefault(key, []).append((domain, f"{file}#{name}"))
    mention = re.compile("|".join(map(re.escape, sorted(records, key=len, reverse=True))))
    with zipfile.ZipFile(data / f"{split}.json.zip") as archive:
        dialogues = json.loads(archive.read(f"{split}.json"))
    queries: dict[str, set[str]] = {}
    for dialogue in dialogues.values():
        for turn in dialogue["messages"]:
            if turn["role"] != "usr" or turn["content"] in queries:
                continue
            acts = turn["dialog_act"]  # [intent, domain, slot, value]
            requests = {(d, s) for i, d, s, _ in acts if i == "Request" and d in DOMAIN_FILES}
            searching = {d for d, s in requests if s == "名称"}
            asked = {d for d, s in requests if s != "名称"} - searching
            mentioned = mention.findall(unicodedata.normalize("NFKC", turn["content"]))
            named = {(d, n) for n in mentioned for d, _ in records[n] if d in asked}
            annotated = {
                (d, unicodedata.normalize("NFKC", v)) for _, d, s, v in acts if s == "名称"
            }
            named = (annotated & named) or named
            if len(named) == 1:
                domain, name = named.pop()
                queries[turn["content"]] = {i for d, i in records[name] if d == domain}
    return [Query(text, ids) for text, ids in queries.items()]


def _sample(queries: list[Query], count: int | None, seed: int = 0) -> list[Query]:
    if count is None or count >= len(queries):
        return queries
    return random.Random(seed).sample(queries, count)


def rate(kb: KnowledgeBase, valid: list[Query], test: list[Query]) -> dict[str, Any]:
    """Each ranking on `test` before calibration, then the calibrated hybrid and answer rate."""
    before = evaluate_kb(kb, test)
    calibration = calibrate(kb, valid, PRECISION, "validation")
    after = evaluate_kb(kb, test)
    return {
        "queries": len(test),
        "bm25": before["bm25"],
        "dense": before["dense"],
        "hybrid_default": before["hybrid"],
        "hybrid": after["hybrid"],
        "fusion": after["fusion"],
        "answering": after["answering"],
        "threshold": calibration.threshold,
    }


def quality(data: Path, quick: bool) -> dict[str, Any]:
    """FAQ benchmarks from BANKING77 and CLINC150 (English) and CrossWOZ's records (Chinese)."""
    tests, valids = (500, 300) if quick else (None, None)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for name, split in (("banking77", banking77_split), ("clinc150", clinc150_split)):
            if not (data / name).is_dir():
                print(f"quality: {data / name} not found; {name} skipped")
                continue
            folder = Path(work) / name
            folder.mkdir()
            train, test = split(data)
            faq, valid = intent_faq(train, folder)
            build_kb([faq], folder / "kb")
            kb = KnowledgeBase.load(folder / "kb")
            queries = _sample([Query(text, {label}) for text, label in test], tests)
            figures[name] = rate(kb, _sample(valid, valids), queries)
        crosswoz = data / "crosswoz"
        if (crosswoz / "database").is_dir():
            databases = [crosswoz / "database" / file for file in DOMAIN_FILES.values()]
            build_kb(databases, Path(work) / "crosswoz")
            kb = KnowledgeBase.load(Path(work) / "crosswoz")
            valid = _sample(crosswoz_queries(crosswoz, "val"), valids)
            test = _sample(crosswoz_queries(crosswoz, "test"), tests)
            figures["crosswoz"] = rate(kb, valid, test)
        else:
            print(f"quality: {crosswoz} not found; CrossWOZ skipped")
    show_quality(figures)
    return figures


def show_quality(figures: dict[str, Any]) -> None:
    print(
        f"\nQuality: test questions against an FAQ of one entry per intent (question + "
        f"{PARAPHRASES} training utterances), CrossWOZ questions against its record database"
    )
    header = "| data | questions | ranking | recall@1 | recall@5 | recall@10 | MRR | nDCG@10 |"
    print(header)
    print("| --- " * 8 + "|")
    for name, f in figures.items():
        fusion = f["fusion"]
        rows = [
            ("BM25", f["bm25"]),
            ("dense (MiniLM)", f["dense"]),
            ("hybrid, RRF k=60 equal weights", f["hybrid_default"]),
            (
                f"hybrid, calibrated (k={fusion['k']}, BM25 {fusion['bm25_weight']}, dense {fusion['dense_weight']})",
                f["hybrid"],
            ),
        ]
        for label, m in rows:
            if m is None:  # no question in a language the encoder suits
                continue
            cells = " | ".join(
                f"{100 * m[key]:.2f}"
                for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
            )
            print(f"| {name} | {f['queries']} | {label} | {cells} |")
    print(
        "\n| data | hybrid recall@1 − best single | direct answers at 90% target | their precision |"
    )
    print("| --- | --- | --- | --- |")
    for name, f in figures.items():
        single = max(f["bm25"]["recall@1"], (f["dense"] or f["bm25"])["recall@1"])
        gain = 100 * (f["hybrid"]["recall@1"] - single)
        a = f["answering"]
        achieved = "-" if a["precision"] is None else f"{100 * a['precision']:.1f}%"
        rate_ = f"{100 * a['answer_rate']:.1f}%"
        print(f"| {name} | {gain:+.2f} | {rate_} | {achieved} |")


PARTS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {"quality": quality, "speed": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="quality: 500 questions; speed: 1k chunks, BM25 alone at 10k",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument(
        "--only", nargs="+", choices=list(PARTS), default=list(PARTS), help="parts to run"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"bench": "retrieval", "quick": args.quick}
    for name in args.only:
        figures[name] = PARTS[name](args.data, args.quick)
    print(json.dumps(figures, ensure_ascii=False))


if __name__ == "__main__":
    main()
