"""A knowledge base measured on held-out questions: ranking metrics, fusion weights chosen on
them, and the calibrated answer threshold.

Held-out questions come from a file (`query` and the `ids` of the entries that answer it, CSV or
JSON Lines) or, for an FAQ with paraphrases, from the FAQ itself: each paraphrase in turn is asked
with that one text hidden from the index, so its entry can only be found through its other
wordings (`paraphrase_queries`). The metrics are the usual ones of retrieval:

    recall@k   share of questions with a right entry among the first k hits
    MRR        mean of 1 / rank of the first right hit (0 when none is in the first 100)
    nDCG@10    discounted gain of the right hits in the first 10, over the best possible order

and the answer rate: the share of questions the first hit would answer directly at the
calibrated threshold, with the precision those direct answers reach.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kefu.console import progress
from kefu.data.readers import ReadOptions, SourceFile, labelled_rows
from kefu.data.records import Reject
from kefu.errors import KefuError
from kefu.eval.calibration import calibrate_threshold
from kefu.kb.calibration import Calibration, features
from kefu.kb.fusion import FusionConfig, Rankings, fuse
from kefu.kb.text import language

if TYPE_CHECKING:
    from kefu.kb.index import KnowledgeBase

CUTOFFS = (1, 5, 10)
# Fusion settings tried by `calibrate`: how much BM25 counts beside the dense ranking (0: dense
# alone; the last pair is BM25 alone) and how steeply the ranks are discounted.
FUSION_GRID = [
    FusionConfig(k=k, bm25_weight=bm25, dense_weight=dense)
    for k in (1, 3, 10, 30, 60)
    for bm25, dense in ((0, 1), (0.1, 1), (0.25, 1), (0.5, 1), (0.75, 1), (1, 1), (1, 0.5), (1, 0))
]


@dataclass
class Query:
    """A held-out question and the chunk ids that answer it."""

    text: str
    ids: set[str]
    held_out: int | None = None  # a match text hidden from the index while it is asked


def read_queries(path: Path, kb: KnowledgeBase) -> tuple[list[Query], list[Reject]]:
    """Questions with their answers' ids from CSV (`query`, `ids` separated by " | ") or JSON
    Lines (`ids` a list or that string); rows that cannot be used are Rejects with their line."""
    if not path.is_file():
        raise KefuError(f"{path}: no such file; give a CSV or JSON Lines file of query, ids")
    known = {chunk.id for chunk in kb.chunks}
    queries, rejects = [], []
    options = ReadOptions(columns={}, roles={})
    for found in labelled_rows(SourceFile(path), options, ("query", "ids"), ()):
        if isinstance(found, Reject):
            rejects.append(found)
            continue
        line, row, raw = found
        ids = row["ids"].split(" | ") if isinstance(row["ids"], str) else row["ids"]
        ids = {str(i).strip() for i in ids if str(i).strip()} if isinstance(ids, list) else set()
        text = str(row["query"]).strip()
        unknown = sorted(ids - known)
        if not text or not ids:
            reason = (
                "empty query" if not text else "no ids: list the ids of the entries that answer it"
            )
            rejects.append(Reject(str(path), line, "bad_field", f"{reason}; skipped", raw))
        elif unknown:
            reason = (
                f"id {unknown[0]!r} is not in the knowledge base (see its chunks.jsonl); skipped"
            )
            rejects.append(Reject(str(path), line, "unknown_id", reason, raw))
        else:
            queries.append(Query(text, ids))
    if not queries:
        listed = "; ".join(f"line {r.line}: {r.reason}" for r in rejects[:3])
        raise KefuError(f"{path}: no usable queries ({listed or 'the file is empty'})")
    return queries, rejects


def paraphrase_queries(kb: KnowledgeBase) -> list[Query]:
    """Each FAQ paraphrase asked with itself hidden, so only the entry's other texts can match."""
    queries, row = [], 0
    for chunk in kb.chunks:
        texts = chunk.match_texts()
        if chunk.kind == "faq":
            for offset, text in enumerate(texts[1:], start=1):  # texts[0] is the question
                queries.append(Query(text, {chunk.id}, held_out=row + offset))
        row += len(texts)
    if not queries:
        raise KefuError(
            "the knowledge base has no FAQ paraphrases to hold out; give held-out questions "
            "with --queries FILE (query, ids)"
        )
    return queries


def ranking_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """recall@1/5/10, MRR and nDCG@10 of ranked ids against the right ones, per question."""
    recall = dict.fromkeys(CUTOFFS, 0.0)
    mrr = ndcg = 0.0
    for ids, right in zip(ranked, relevant, strict=True):
        first = next((rank for rank, i in enumerate(ids, start=1) if i in right), None)
        for cutoff in CUTOFFS:
            recall[cutoff] += first is not None and first <= cutoff
        mrr += 1 / first if first else 0.0
        gain = sum(1 / math.log2(rank + 1) for rank, i in enumerate(ids[:10], 1) if i in right)
        ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(right), 10) + 1))
        ndcg += gain / ideal
    n = max(len(ranked), 1)
    return {
        **{f"recall@{c}": recall[c] / n for c in CUTOFFS},
        "mrr": mrr / n,
        "ndcg@10": ndcg / n,
        "queries": len(ranked),
    }


def _rankings(kb: KnowledgeBase, queries: list[Query]) -> list[Rankings]:
    candidates = max(kb.fusion.candidates, 100)
    vectors = kb.embed_queries([query.text for query in queries])
    found = []
    with progress("queries") as bar:
        task = bar.add_task("searching", total=len(queries))
        for query, vector in zip(queries, vectors, strict=True):
            found.append(kb.rankings(query.text, candidates, query.held_out, vector))
            bar.advance(task)
    return found


def _ids(kb: KnowledgeBase, order: dict[int, float] | list[int]) -> list[str]:
    return [kb.chunks[n].id for n in list(order)[:100]]


def calibrate(
    kb: KnowledgeBase, queries: list[Query], precision: float = 0.9, source: str = ""
) -> Calibration:
    """Choose the fusion weights that find the most right first hits, fit the confidence model
    on the first hits they give, and write both into the knowledge base folder.

    Args:
        kb: the knowledge base, as loaded.
        queries: held-out questions (a file's, or `paraphrase_queries`).
        precision: the share of direct answers that must be right.
        source: what the queries were, for the record (a file name or "FAQ paraphrases").
    """
    rankings = _rankings(kb, queries)
    relevant = [q.ids for q in queries]
    grid = FUSION_GRID if any(r.dense for r in rankings) else [kb.config.fusion]

    def score(fusion: FusionConfig) -> tuple[float, float]:
        m = ranking_metrics([_ids(kb, fuse(r, fusion)) for r in rankings], relevant)
        return m["recall@1"], m["mrr"]

    best = max(grid, key=score)  # the first of equals: grid order puts the simpler settings first
    best = best.model_copy(update={"candidates": kb.config.fusion.candidates})
    orders = [list(fuse(r, best)) for r in rankings]
    answered = [(r, order[0]) for r, order in zip(rankings, orders, strict=True) if order]
    x = np.stack([features(r, top) for r, top in answered]) if answered else np.zeros((0, 7))
    correct = np.array(
        [kb.chunks[order[0]].id in q.ids for q, order in zip(queries, orders, strict=True) if order]
    )
    figures = ranking_metrics([_ids(kb, order) for order in orders], relevant)
    calibration = Calibration.fit(best, x, correct, precision, source, figures)
    calibration.figures["answer_rate"] = float(
        (calibration.probabilities(x) >= calibration.threshold).sum() / len(queries)
    )
    calibration.write(kb.folder)
    kb.calibration, kb.fusion = calibration, best
    return calibration


def evaluate_kb(kb: KnowledgeBase, queries: list[Query], out: Path | None = None) -> dict[str, Any]:
    """BM25, dense and hybrid ranking metrics on `queries`, by language too, and the answer
    rate at the calibrated threshold; written to out/eval.json and out/report.md if `out`."""
    rankings = _rankings(kb, queries)
    relevant = [q.ids for q in queries]
    hybrid = [list(fuse(r, kb.fusion)) for r in rankings]
    results: dict[str, Any] = {
        "queries": len(queries),
        "fusion": kb.fusion.model_dump(),
        "bm25": ranking_metrics([_ids(kb, r.bm25) for r in rankings], relevant),
        # None when the encoder suits none of the questions (Chinese ones, with MiniLM).
        "dense": ranking_metrics([_ids(kb, r.dense) for r in rankings], relevant)
        if any(r.dense for r in rankings)
        else None,
        "hybrid": ranking_metrics([_ids(kb, order) for order in hybrid], relevant),
        "by_language": {},
    }
    languages = [language(q.text) for q in queries]
    for name in sorted(set(languages)):
        picked = [n for n, lang in enumerate(languages) if lang == name]
        results["by_language"][name] = ranking_metrics(
            [_ids(kb, hybrid[n]) for n in picked], [relevant[n] for n in picked]
        )
    if kb.calibration is not None:
        results["answering"] = _answering(kb, rankings, hybrid, queries)
    if out is not None:
        from kefu.files import write_text_atomically

        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out / "eval.json", json.dumps(results, indent=2) + "\n")
        write_text_atomically(out / "report.md", _report(kb, results))
    return results


def _answering(
    kb: KnowledgeBase, rankings: list[Rankings], orders: list[list[int]], queries: list[Query]
) -> dict[str, Any]:
    """How many questions the first hit answers directly at the calibrated threshold, and how
    many it could at the target precision had the threshold been chosen on these very ones."""
    calibration = kb.calibration
    confidence = np.array([
        calibration.confidence(r, order[0]) if order else 0.0
        for r, order in zip(rankings, orders, strict=True)
    ])  # fmt: skip
    correct = np.array([
        bool(order) and kb.chunks[order[0]].id in q.ids
        for q, order in zip(queries, orders, strict=True)
    ])  # fmt: skip
    direct = confidence >= calibration.threshold
    best = calibrate_threshold(confidence, correct, calibration.precision)
    return {
        "target_precision": calibration.precision,
        "threshold": calibration.threshold,
        "answer_rate": float(direct.mean()),
        "precision": float(correct[direct].mean()) if direct.any() else None,
        "answer_rate_best_threshold": float((confidence >= best).mean()) if best < 1 else 0.0,
    }


def _report(kb: KnowledgeBase, results: dict[str, Any]) -> str:
    def row(name: str, m: dict[str, float]) -> str:
        cells = [
            f"{100 * m[key]:.2f}" for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
        ]
        return f"| {name} | {m['queries']} | " + " | ".join(cells) + " |"

    lines = [
        f"# Knowledge base {kb.folder.name}: retrieval on {results['queries']} held-out questions",
        "",
        "| ranking | questions | recall@1 | recall@5 | recall@10 | MRR | nDCG@10 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        row("BM25", results["bm25"]),
        *([row("dense", results["dense"])] if results["dense"] else []),
        row("hybrid", results["hybrid"]),
        *[row(f"hybrid, {name}", m) for name, m in results["by_language"].items()],
        "",
    ]
    answering = results.get("answering")
    if answering is None:
        lines.append("Not calibrated: run `kefu kb calibrate` for the answer threshold.")
    else:
        achieved = answering["precision"]
        lines.append(
            f"Direct answers at confidence ≥ {answering['threshold']:.3f} (calibrated for "
            f"{100 * answering['target_precision']:.0f}% precision): "
            f"{100 * answering['answer_rate']:.1f}% of questions, "
            f"{'no answers' if achieved is None else f'{100 * achieved:.1f}% of them right'}."
        )
    return "\n".join(lines) + "\n"
