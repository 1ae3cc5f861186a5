"""A knowledge base folder: build it from sources, update it incrementally, load it, search it.

    kb/NAME/
      manifest.json    sources with content hashes, counts, encoder, build date and duration,
                       kefu version
      chunks.jsonl     one chunk a line: id, source, title path, text, url, FAQ fields
      bm25.npz         the BM25 weight matrix and its vocabulary
      vectors.npy      (M, dim) float32 unit vectors of the texts the encoder suits
      vector_rows.npy  (M,) which match text each vector belongs to
      vectors.faiss    the HNSW graph of the vectors, for large bases (see KBConfig.dense_index)
      problems.jsonl   the sources' problems: file, line, reason
      calibration.json fusion weights and answer threshold from `kefu kb calibrate` (optional)

Queries are matched against *texts*, not chunks: an FAQ entry has one text per question and
paraphrase, a document chunk one. A chunk scores as its best text. Every path inside is relative,
so the folder can be copied to another machine.

Hybrid search is weighted reciprocal-rank fusion over the BM25 and dense rankings (`fusion.py`).
The dense side only runs where the encoder suits the query's language (MiniLM is English), else
BM25 ranks alone. `calibration.json`, once `kefu kb calibrate` has written it, holds the fusion
weights chosen on held-out queries and the confidence model whose threshold decides when the
first hit may answer on its own (`KnowledgeBase.lookup`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from kefu import __version__
from kefu.config import Language, StrictModel
from kefu.console import progress
from kefu.data.records import Reject
from kefu.errors import KefuError
from kefu.files import replaced_folder
from kefu.kb.bm25 import BM25, BM25Config
from kefu.kb.calibration import Calibration
from kefu.kb.chunking import ChunkConfig
from kefu.kb.dense import ExactSearch, HNSWSearch, VectorSearch, embed, load_encoder
from kefu.kb.fusion import FusionConfig, Rankings, fuse
from kefu.kb.sources import Chunk, LoadedSource, load_sources
from kefu.kb.text import language, tokens
from kefu.models.encoder import DEFAULT_ENCODER

INDEX_FORMAT = 1  # bumped when the folder's layout changes
HNSW_FILE = "vectors.faiss"


class KBConfig(StrictModel):
    """How a knowledge base is built and searched."""

    encoder: str | None = Field(
        DEFAULT_ENCODER, description="Sentence encoder (name or folder); None: BM25 only."
    )
    dense_languages: list[Language] | None = Field(
        None,
        description="Languages the encoder suits; other texts and queries use BM25 only. "
        "Default: en for the packaged MiniLM (an English model), en and zh for an encoder you name.",
    )
    encoding: str = Field("utf-8", description="Text encoding of the source files.")
    chunking: ChunkConfig = Field(default_factory=ChunkConfig, description="Chunk sizes.")
    bm25: BM25Config = Field(default_factory=BM25Config, description="BM25 parameters.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Hybrid fusion.")
    dense_index: Literal["auto", "exact", "hnsw"] = Field(
        "auto",
        description="How vectors are searched: exact (every one scored), hnsw (a faiss graph "
        "built with the base: approximate, far faster on large bases) or auto (hnsw above "
        "hnsw_above vectors).",
    )
    hnsw_above: int = Field(
        50_000, ge=0, description="auto only: the number of vectors above which HNSW is used."
    )

    @model_validator(mode="after")
    def _languages_of_the_encoder(self) -> KBConfig:
        if self.dense_languages is None:
            english_only = self.encoder == DEFAULT_ENCODER
            self.dense_languages = ["en"] if english_only else ["en", "zh"]
        return self

    def vector_search(self, vectors: int) -> Literal["exact", "hnsw"]:
        """How a base of `vectors` vectors is searched. Exact search reads every vector per
        query (13 ms at 170k on two cores, growing with the base); an HNSW graph reads a few
        thousand (0.2 ms), but takes a minute to link and misses ~1% of the nearest 10."""
        if self.dense_index == "auto":
            return "hnsw" if vectors > self.hnsw_above else "exact"
        return self.dense_index


@dataclass
class Hit:
    """One search result: the chunk, its rank and its scores (None: that side did not rank it)."""

    rank: int
    chunk: Chunk
    fused: float
    bm25: float | None
    dense: float | None

    @property
    def id(self) -> str:
        return self.chunk.id

    @property
    def source(self) -> str:
        return self.chunk.source

    @property
    def title(self) -> str:
        return self.chunk.title

    @property
    def url(self) -> str:
        return self.chunk.url

    def snippet(self, length: int = 160) -> str:
        text = " ".join(self.chunk.text.split())
        return text if len(text) <= length else text[: length - 1] + "…"


@dataclass
class Lookup:
    """Hits with the confidence (0-1, None if uncalibrated) that the first one answers."""

    hits: list[Hit]
    confidence: float | None
    confident: bool


@dataclass
class BuildReport:
    """What a build did: counts, and how many texts the encoder had to embed afresh."""

    folder: Path
    sources: int
    chunks: int
    texts: int
    vectors: int
    embedded: int  # texts embedded this time; the other vectors were kept from the last build
    reembedded_chunks: int  # chunks with at least one text embedded this time
    problems: list[Reject] = field(default_factory=list)


def _chunk_of_each_text(chunks: list[Chunk]) -> list[int]:
    """For each match text, in order, the index of the chunk it belongs to."""
    return [n for n, chunk in enumerate(chunks) for _ in chunk.match_texts()]


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _question_key(text: str) -> str:
    """A question as it is compared for an exact match: case, spaces and punctuation ignored."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _suits(text: str, languages: list[str]) -> bool:
    """Whether the encoder suits a text: its language is one of `languages` or unknown."""
    found = language(text)
    return found == "und" or found in languages


def _read_chunks(path: Path) -> list[Chunk]:
    with open(path, encoding="utf-8") as file:
        return [Chunk.from_json(json.loads(line)) for line in file if line.strip()]


def _kept_vectors(folder: Path, encoder: str) -> dict[str, np.ndarray]:
    """The vectors of the last build in `folder` by text hash, if it used the same encoder."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("encoder") != encoder or manifest.get("format") != INDEX_FORMAT:
            return {}
        texts = [t for chunk in _read_chunks(folder / "chunks.jsonl") for t in chunk.match_texts()]
        vectors = np.load(folder / "vectors.npy")
        rows = np.load(folder / "vector_rows.npy")
    except (OSError, ValueError, KeyError, TypeError):  # no usable last build: embed everything
        return {}
    return {_text_key(texts[row]): vector for row, vector in zip(rows, vectors, strict=True)}


def _embed_all(encoder_name: str, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Embed `texts` in batches, with a progress bar (a large base takes minutes)."""
    encoder = load_encoder(encoder_name)
    parts = []
    with progress("texts") as bar:
        task = bar.add_task("embedding", total=len(texts))
        for start in range(0, len(texts), batch_size):
            parts.append(embed(encoder, texts[start : start + batch_size]))
            bar.advance(task, len(parts[-1]))
    return np.concatenate(parts)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that is not a knowledge base: `--out docs` must never wipe
    the documents being indexed."""
    empty_folder = out.is_dir() and not any(out.iterdir())
    if out.exists() and not (out / "manifest.json").is_file() and not empty_folder:
        raise KefuError(
            f"{out} exists and is not a knowledge base, so it is not replaced; "
            "give --out a new folder (e.g. kb/NAME) or an existing knowledge base"
        )


def build_kb(paths: list[Path], out: Path, config: KBConfig | None = None) -> BuildReport:
    """Index the sources under `paths` into the folder `out`, keeping the vectors of texts that
    did not change since the last build there.

    Args:
        paths: files and folders (searched for known file endings) to index.
        out: the knowledge base folder; replaced whole once the new one is complete.
        config: chunking, BM25, encoder and fusion settings (stored with the index).
    """
    started = time.perf_counter()
    config = config or KBConfig()
    _check_replaceable(out)
    loaded, problems = load_sources(paths, config.chunking, config.encoding)
    chunks = [chunk for source in loaded for chunk in source.chunks]
    if not chunks:
        listed = "; ".join(f"{p.file}:{p.line or '-'}: {p.reason}" for p in problems[:5])
        raise KefuError(
            f"no knowledge found in {', '.join(map(str, paths))}: {listed or 'no files'}"
        )
    row_chunk = _chunk_of_each_text(chunks)
    texts = [text for chunk in chunks for text in chunk.match_texts()]
    bm25 = BM25.build([tokens(text) for text in texts], config.bm25)

    vector_rows = np.zeros(0, dtype=np.int64)
    vectors = np.zeros((0, 0), dtype=np.float32)
    fresh: list[int] = []
    if config.encoder is not None:
        vector_rows = np.array(
            [r for r, text in enumerate(texts) if _suits(text, config.dense_languages)],
            dtype=np.int64,
        )
        kept = _kept_vectors(out, config.encoder)
        found = [kept.get(_text_key(texts[row])) for row in vector_rows]
        fresh = [i for i, vector in enumerate(found) if vector is None]
        if fresh:
            new = _embed_all(config.encoder, [texts[vector_rows[i]] for i in fresh])
            for i, vector in zip(fresh, new, strict=True):
                found[i] = vector
        if found:
            vectors = np.stack(found).astype(np.float32)

    reembedded = {row_chunk[vector_rows[i]] for i in fresh}
    manifest = {
        "format": INDEX_FORMAT,
        "kefu_version": __version__,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "encoder": config.encoder,
        "embedding_dim": int(vectors.shape[1]) if len(vectors) else None,
        "config": config.model_dump(),
        "sources": [_source_entry(source) for source in loaded],
        "counts": {
            "sources": len(loaded),
            "chunks": len(chunks),
            "texts": len(texts),
            "vectors": len(vectors),
            "embedded": len(fresh),
            "reembedded_chunks": len(reembedded),
            "problems": len(problems),
        },
    }
    with replaced_folder(out) as staging:
        with open(staging / "chunks.jsonl", "w", encoding="utf-8") as file:
            for chunk in chunks:
                file.write(json.dumps(chunk.to_json(), ensure_ascii=False) + "\n")
        bm25.save(staging / "bm25.npz")
        np.save(staging / "vectors.npy", vectors)
        np.save(staging / "vector_rows.npy", vector_rows)
        if len(vectors) and config.vector_search(len(vectors)) == "hnsw":
            HNSWSearch.build(vectors).save(staging / HNSW_FILE)
        with open(staging / "problems.jsonl", "w", encoding="utf-8") as file:
            for problem in problems:
                file.write(json.dumps(problem.to_json(), ensure_ascii=False) + "\n")
        manifest["build_seconds"] = round(time.perf_counter() - started, 2)
        (staging / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return BuildReport(
        out, len(loaded), len(chunks), len(texts), len(vectors), len(fresh), len(reembedded),
        problems,
    )  # fmt: skip


def _source_entry(source: LoadedSource) -> dict[str, Any]:
    return {
        "source": source.name,
        "format": source.format,
        "sha256": source.sha256,
        "bytes": source.bytes,
        "chunks": len(source.chunks),
        "problems": len(source.problems),
    }


def _vector_search(folder: Path, config: KBConfig) -> VectorSearch | None:
    """The search over a built folder's vectors that its config picks; None if it has none."""
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")  # read whole only for exact search
    if not len(vectors):
        return None
    if config.vector_search(len(vectors)) == "exact":
        return ExactSearch(np.array(vectors))
    if not (folder / HNSW_FILE).is_file():
        raise KefuError(
            f"{folder} has {len(vectors):,} vectors to search on an HNSW graph (dense_index: "
            f"{config.dense_index}, hnsw_above: {config.hnsw_above:,}) but no {HNSW_FILE}; "
            "rebuild it with `kefu kb build` (the vectors are kept, only the graph is built)"
        )
    return HNSWSearch.load(folder / HNSW_FILE)


class KnowledgeBase:
    """A built knowledge base, ready to search."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        chunks: list[Chunk],
        bm25: BM25,
        vectors: VectorSearch | None,
        vector_rows: np.ndarray,
        calibration: Calibration | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.config = KBConfig.model_validate(manifest["config"])
        self.chunks = chunks
        self.bm25 = bm25
        self.vectors = vectors
        self.vector_rows = vector_rows
        self.row_chunk = np.array(_chunk_of_each_text(chunks), dtype=np.int64)
        # A chunk's texts are consecutive rows, so per-chunk maxima are one reduceat.
        self.chunk_starts = np.searchsorted(self.row_chunk, np.arange(len(chunks)))
        self.calibration = calibration
        # A customer who asks exactly an FAQ question (or a listed paraphrase) gets its entry
        # whatever the scores say: held-out paraphrases, which the calibration is fitted on,
        # never tell it how sure an exact match is.
        self.exact_questions = {
            _question_key(text): n
            for n, chunk in enumerate(chunks)
            if chunk.kind == "faq"
            for text in chunk.match_texts()
            if _question_key(text)
        }
        # Fusion weights tuned by `kefu kb calibrate` take precedence over the built-in ones.
        self.fusion = calibration.fusion if calibration else self.config.fusion

    @classmethod
    def load(cls, folder: str | Path, encoder: str | None = None) -> KnowledgeBase:
        """Open a folder written by `build_kb` (or `kefu kb build`).

        Args:
            folder: the knowledge base folder.
            encoder: where the encoder it was built with is on this machine, when it was built
                with an encoder folder that is elsewhere here (the packaged MiniLM needs none).
        """
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise KefuError(
                f"{folder} is not a knowledge base (no manifest.json); build one with "
                f"`kefu kb build SOURCES... --out {folder}`"
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != INDEX_FORMAT:
            raise KefuError(
                f"{folder} was built by kefu {manifest.get('kefu_version')} in another layout; "
                "rebuild it with `kefu kb build`"
            )
        if encoder is not None:
            manifest["config"]["encoder"] = encoder
        return cls(
            folder,
            manifest,
            _read_chunks(folder / "chunks.jsonl"),
            BM25.load(folder / "bm25.npz"),
            _vector_search(folder, KBConfig.model_validate(manifest["config"])),
            np.load(folder / "vector_rows.npy"),
            Calibration.read(folder),
        )

    def uses_dense(self, query: str) -> bool:
        """Whether the dense side runs for `query`: there are vectors and the encoder suits it."""
        return self.vectors is not None and _suits(query, self.config.dense_languages)

    def embed_queries(self, queries: list[str]) -> list[np.ndarray | None]:
        """Query vectors in one batch (None where the dense side does not run), for `rankings`."""
        suited = [n for n, query in enumerate(queries) if self.uses_dense(query)]
        found: list[np.ndarray | None] = [None] * len(queries)
        if suited:
            vectors = embed(load_encoder(self.config.encoder), [queries[n] for n in suited])
            for n, vector in zip(suited, vectors, strict=True):
                found[n] = vector
        return found

    def rankings(
        self,
        query: str,
        candidates: int = 100,
        held_out: int | None = None,
        vector: np.ndarray | None = None,
    ) -> Rankings:
        """Both sides' best `candidates` chunks for `query`, before fusion.

        Args:
            held_out: a match text (row) that may not match, so that an FAQ's own paraphrase can
                serve as a held-out query (see `kefu.kb.evaluate.paraphrase_queries`).
            vector: the query's vector, when it was embedded in a batch (`embed_queries`).
        """
        words = tokens(query)
        text_scores = self.bm25.scores(words)
        if held_out is not None:
            text_scores[held_out] = 0.0
        bm25 = _best(np.maximum.reduceat(text_scores, self.chunk_starts), candidates)
        dense: dict[int, float] = {}
        if self.vectors is not None and self.uses_dense(query):
            if vector is None:
                [vector] = self.embed_queries([query])
            # A chunk may own several texts, so ask for more texts than chunks are wanted.
            found, scores = self.vectors.search(vector, 4 * candidates + 1)
            for index, score in zip(found, scores, strict=True):
                row = int(self.vector_rows[index])
                if row != held_out:
                    dense.setdefault(int(self.row_chunk[row]), float(score))  # first = best
                if len(dense) == candidates:
                    break
        return Rankings(bm25, dense, self.bm25.ceiling(words))

    def search(self, query: str, k: int = 5, fusion: FusionConfig | None = None) -> list[Hit]:
        """The `k` chunks that best answer `query`, best first.

        Args:
            query: the customer's question, in any language.
            k: how many hits to return.
            fusion: weights and constant of the rank fusion (default: the calibrated ones, else
                the knowledge base's config).
        """
        return self.lookup(query, k, fusion).hits

    def lookup(
        self,
        query: str,
        k: int = 5,
        fusion: FusionConfig | None = None,
        vector: np.ndarray | None = None,
    ) -> Lookup:
        """The hits for `query` and how sure the knowledge base is that the first one answers it.

        `confident` is whether the assistant may answer straight from the first hit: its
        confidence reaches the threshold calibrated for the target precision (never, when the
        knowledge base has not been calibrated: `kefu kb calibrate`), or the query is exactly
        one of the FAQ's questions or paraphrases (confidence 1).

        Args:
            vector: the query's vector from this base's encoder, when the caller has it.
        """
        fusion = fusion or self.fusion
        rankings = self.rankings(query, max(fusion.candidates, k), vector=vector)
        fused = fuse(rankings, fusion)
        exact = self.exact_questions.get(_question_key(query))
        best = list(fused)[:k]
        if exact is not None:
            best = [exact, *(n for n in best if n != exact)][:k]
        hits = [
            Hit(
                rank, self.chunks[n], fused.get(n, 0.0), rankings.bm25.get(n), rankings.dense.get(n)
            )
            for rank, n in enumerate(best, start=1)
        ]
        if exact is not None:
            return Lookup(hits, 1.0, True)
        if self.calibration is None or not hits:
            return Lookup(hits, None, False)
        confidence = self.calibration.confidence(rankings, best[0])
        return Lookup(hits, confidence, confidence >= self.calibration.threshold)


def _best(scores: np.ndarray, candidates: int) -> dict[int, float]:
    """The best `candidates` chunks by score (> 0) → score, best first."""
    top = np.flatnonzero(scores > 0)
    if len(top) > candidates:
        top = top[np.argpartition(-scores[top], candidates - 1)[:candidates]]
    top = top[np.argsort(-scores[top], kind="stable")]
    return {int(n): float(scores[n]) for n in top}
