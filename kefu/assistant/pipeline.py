"""The assistant pipeline: a customer's message in, a decision and its answer out.

    message → normalise → language → intent (that language's model) + entities + anger
            → knowledge base lookup (hits + calibrated confidence)
            → policy.decide → FAQ answer with its citation | generated reply | hand-off

`Assistant.turn` does everything up to the decision and returns a `Turn`; the answer comes from
`Turn.reply` (FAQ and hand-off: ready at once) or by iterating `Assistant.generate(turn, ...)`
(the generator streams). The server stores the customer's message before calling `turn`, and
the answer with the turn's record after, so nothing here touches the database.

Everything is loaded once from the project's build folder (`kefu build` writes it): intent
models per language, the knowledge base, the generator and its tokenizer. What is missing is
left out and said so, except that an assistant needs at least a knowledge base or a generator.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kefu.assistant.policy import ConversationState, Decision, Understanding, decide
from kefu.assistant.sentiment import anger
from kefu.config import ProjectConfig
from kefu.data.normalise import normalise_text
from kefu.errors import KefuError
from kefu.infer.engine import GenerationEngine
from kefu.infer.generate import SamplingConfig, stream
from kefu.kb.index import Hit, KnowledgeBase, Lookup
from kefu.kb.text import language as script_language
from kefu.nlu.entities import EntityExtractor
from kefu.nlu.intent import IntentClassifier, load_classifier

# Intent models whose answer for a message does not depend on the others in its batch (the
# encoder masks the padding out of its mean pooling).
POOLED = ("embed", "finetune")
UNDERSTANDING = threading.Lock()  # the process's one understanding lane (see Assistant)
# An LSTM generator writes one reply at a time, whichever assistant (version set) asks.
UNBATCHED_GENERATION = threading.Lock()


class BatchLane:
    """Run `work` (a list of items → a list of results) for many threads, in batches.

    A thread that finds the lane free runs everything waiting, its own item included; threads
    that arrive meanwhile wait and go in the next batch together. Alone, a message runs at
    once; under load, one encoder pass serves many messages.
    """

    def __init__(
        self,
        work: Callable[[list[Any]], list[Any]],
        max_batch: int = 32,
        running: threading.Lock | None = None,
    ) -> None:
        """Args:
        running: the lock a batch holds while it runs; lanes that share one take turns.
        """
        self.work = work
        self.max_batch = max_batch
        self._running = running or threading.Lock()
        self._queue = threading.Lock()
        self._waiting: list[tuple[Any, Future]] = []

    def __call__(self, item: Any) -> Any:
        future: Future = Future()
        with self._queue:
            self._waiting.append((item, future))
        while not future.done():
            with self._running:
                if future.done():  # the thread before us ran it
                    break
                with self._queue:
                    batch = self._waiting[: self.max_batch]
                    del self._waiting[: self.max_batch]
                try:
                    results = self.work([queued for queued, _ in batch])
                except BaseException as err:
                    for _, waiting in batch:
                        waiting.set_exception(err)
                else:
                    for (_, waiting), result in zip(batch, results, strict=True):
                        waiting.set_result(result)
        return future.result()


@dataclass
class Turn:
    """One decided turn: what was understood, the decision, and the answer when it is fixed."""

    understood: Understanding
    decision: Decision
    reply: str | None  # None: the generator answers (Assistant.generate)
    prompt: list[int] | None = None
    generating: Any = None  # the engine's ReplyStream while the generator answers
    adapter: str | None = None  # the generator's LoRA adapter for this reply (by model name)

    def cancel(self) -> None:
        """Stop generating (the customer has gone); safe from any thread."""
        if self.generating is not None:
            self.generating.close()

    @property
    def route(self) -> str:
        return self.decision.route

    def sources(self) -> list[dict[str, Any]]:
        """The cited entries: for an FAQ answer its entry; for a generated one the passages."""
        hits = self.decision.hits[:1] if self.route == "faq" else self.decision.hits
        return [source_of(hit) for hit in hits] if self.route != "handoff" else []


def source_of(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "title": hit.title, "url": hit.url or None, "snippet": hit.snippet()}


def model_kinds(config: ProjectConfig) -> dict[str, Path]:
    """The models a project serves, by kind (intent/<language>, kb, generator), and the folder
    `kefu build` makes each in. The kinds are what the model registry versions."""
    build = Path(config.build_dir)
    kinds = {
        f"intent/{language}": build / "intents" / language / "model"
        for language in (config.intents.recipes if config.intents else [])
    }
    kb = config.knowledge_base
    if kb.sources or kb.documents or (build / "kb" / "manifest.json").exists():
        kinds["kb"] = build / "kb"
    if config.generator:
        kinds["generator"] = build / "generator"
    return kinds


def _loader(kind: str) -> Callable[[Path], Any]:
    from kefu.models.checkpoint import load_run

    loaders: dict[str, Callable[[Path], Any]] = {
        "intent": load_classifier,
        "kb": KnowledgeBase.load,
        "generator": load_run,
    }
    family = kind.split("/")[0]
    if family not in loaders:
        raise KefuError(f"unknown model kind {kind!r}; kinds are intent/<language>, kb, generator")
    return loaders[family]


BUILT_MARKER = {"intent": "config.json", "kb": "manifest.json", "generator": "config.yaml"}


def load_model(kind: str, folder: Path) -> Any:
    """Load one model of a kind from its folder; any failure (a missing or corrupt file, a
    wrong kind of folder) is a KefuError that names the folder."""
    loader = _loader(kind)
    if not (folder / BUILT_MARKER[kind.split("/")[0]]).exists():
        raise KefuError(f"{folder}: no {kind} model here; run `kefu build` first")
    try:
        return loader(folder)
    except KefuError:
        raise
    except Exception as err:  # safetensors, JSON, torch: all mean "this folder is unusable"
        raise KefuError(f"{folder}: the {kind} model cannot be loaded: {err}") from err


def smoke_test(kind: str, model: Any) -> None:
    """Use a freshly loaded model once, as a request would, before it may serve; KefuError if
    it fails or its weights are not finite numbers."""
    import torch

    from kefu.infer.generate import generate

    try:
        if kind.startswith("intent/"):
            (prediction,) = model.predict(["hello"], top_k=1)
            if not math.isfinite(prediction.confidence):
                raise KefuError("its confidence is not a number")
        elif kind == "kb":
            model.lookup("hello", k=1)
        else:
            if not all(bool(torch.isfinite(p).all()) for p in model.model.parameters()):
                raise KefuError("its weights hold NaN or infinity")
            prompt = model.tokenizer.render(
                [{"role": "user", "content": "hello"}], add_generation_prompt=True
            ).ids
            generate(model.model, model.tokenizer, [prompt], SamplingConfig(max_new_tokens=2))
    except Exception as err:
        raise KefuError(f"the {kind} model failed its smoke test: {err}") from err


def file_version(path: Path) -> str:
    """A short fingerprint of a model file, so every stored turn names the exact model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def versioned_file(kind: str, folder: Path) -> Path:
    """The file whose fingerprint names a model's version: its weights (for a generator, where
    its kind of run keeps them), or a knowledge base's manifest."""
    from kefu.models.checkpoint import weights_file

    family = kind.split("/")[0]
    if family == "generator":
        return weights_file(folder)
    return folder / ("manifest.json" if family == "kb" else "model.safetensors")


@dataclass
class Assistant:
    """The loaded models of a project and the turn logic over them."""

    config: ProjectConfig
    intents: dict[str, IntentClassifier] = field(default_factory=dict)
    knowledge_base: KnowledgeBase | None = None
    generator: Any = None  # a LoadedRun (model + tokenizer)
    versions: dict[str, str] = field(default_factory=dict)
    engine: GenerationEngine | None = None  # a GPT generator's continuous batching

    def __post_init__(self) -> None:
        self.entities = EntityExtractor(self.config.entities.patterns)
        # Two lanes of model work, each one thread at a time (tokenizers are not safe to share
        # between threads): understanding messages, batched across the requests waiting for
        # it, and generating replies — a GPT's in the engine's own thread, batched across every
        # reply being written; an LSTM's one piece at a time behind a lock. A quick FAQ turn
        # then never waits behind someone else's long reply, and each lane keeps one core busy
        # (`kefu serve` gives torch half the cores per operation). The understanding lane is
        # one per process: assistants of several versions (a canary) share their unchanged
        # models, and those models' tokenizers.
        self.understanding = BatchLane(self.look, running=UNDERSTANDING)

    @classmethod
    def load(cls, config: ProjectConfig) -> Assistant:
        """Load what `kefu build` made for this project."""
        models, versions = {}, {}
        for kind, folder in model_kinds(config).items():
            models[kind] = load_model(kind, folder)
            versions[kind] = file_version(versioned_file(kind, folder))
        return cls.assemble(config, models, versions)

    @classmethod
    def assemble(
        cls,
        config: ProjectConfig,
        models: dict[str, Any],
        versions: dict[str, str],
        engine: GenerationEngine | None = None,
    ) -> Assistant:
        """An assistant of loaded models by kind (see `model_kinds`), with their versions.

        Args:
            engine: the generator's engine, when another assistant already runs one for the
                same generator (a canary of another kind): one engine batches both.
        """
        assistant = cls(config, versions=dict(versions), engine=engine)
        for kind, model in models.items():
            if kind.startswith("intent/"):
                assistant.intents[kind.removeprefix("intent/")] = model
            elif kind == "kb":
                assistant.knowledge_base = model
            else:
                assistant.generator = model
        if assistant.generator is not None:
            assistant.load_adapters()
            assistant.check_prompt_room()
            if assistant.engine is None and assistant.generator.arch == "gpt":
                run = assistant.generator
                assistant.engine = GenerationEngine(
                    run.model, run.tokenizer, config.assistant.max_batch
                )
        if assistant.knowledge_base is None and assistant.generator is None:
            raise KefuError(
                f"{config.build_dir} has neither a knowledge base nor a generator; configure "
                "`knowledge_base:` or `generator:` in kefu.yaml and run `kefu build`"
            )
        return assistant

    def models(self) -> dict[str, Any]:
        """The loaded models by kind: what `assemble` takes."""
        found: dict[str, Any] = {f"intent/{lang}": model for lang, model in self.intents.items()}
        if self.knowledge_base is not None:
            found["kb"] = self.knowledge_base
        if self.generator is not None:
            found["generator"] = self.generator
        return found

    @property
    def name(self) -> str:
        """The model name clients ask for (`model` in the OpenAI API)."""
        return self.config.name

    def model_names(self) -> dict[str, str | None]:
        """Every name a client may put in `model`, with the generator adapter it selects: the
        project's name answers with the generator as built, `<name>:<adapter>` with an adapter
        of `generator.adapters`."""
        adapters = self.config.generator.adapters if self.config.generator else {}
        return {self.name: None} | {f"{self.name}:{adapter}": adapter for adapter in adapters}

    def load_adapters(self) -> None:
        """Put the project's LoRA adapters on the generator's base, once per loaded base (an
        assistant assembled again around the same generator finds them there)."""
        adapters = self.config.generator.adapters if self.config.generator else {}
        if not adapters:
            return
        run = self.generator
        if run.arch != "hf":
            raise KefuError(
                f"generator.adapters needs a Hugging Face generator to put LoRA adapters on; "
                f"this generator is a {run.arch} (train one with `kefu train chat --base …`)"
            )
        from kefu.models.hf import adapter_weights

        for name, folder in adapters.items():
            with UNBATCHED_GENERATION:  # the base may be answering someone meanwhile
                if name not in run.model.adapters:
                    run.model.load_adapter(folder, name)
            self.versions[f"adapter/{name}"] = file_version(adapter_weights(Path(folder)))

    def greeting(self, language: str | None = None) -> str:
        greetings = self.config.assistant.greeting
        return greetings.get(language or self.config.languages[0]) or next(
            iter(greetings.values()), f"Hello, this is {self.config.assistant.name}."
        )

    def language(self, text: str) -> str:
        """en or zh by the text's script; the project's first language when it cannot tell."""
        found = script_language(text)
        return found if found in ("en", "zh") else self.config.languages[0]

    def understand(self, text: str) -> Understanding:
        return self.look([text])[0][0]

    def look(self, texts: list[str]) -> list[tuple[Understanding, Lookup | None]]:
        """Understand messages and look each up in the knowledge base, as one batch.

        Each intent model encodes all the messages of its language in one pass, and an English
        message's sentence vector is reused by the knowledge base when both use the same
        encoder: one embedding per message, not two.
        """
        texts = [normalise_text(text) for text in texts]
        languages = [self.language(text) for text in texts]
        predictions: list[Any] = [None] * len(texts)
        vectors: list[np.ndarray | None] = [None] * len(texts)
        by_model: dict[int, list[int]] = {}
        for n, language in enumerate(languages):
            model = self.intents.get(language) or self.intents.get("all")
            if model is not None:
                by_model.setdefault(id(model), []).append(n)
        for indexes in by_model.values():
            model = self.intents.get(languages[indexes[0]]) or self.intents["all"]
            # A TextCNN's max-pooling sees the padding a batch adds, so its answer would depend
            # on the other messages; it takes well under a millisecond a message anyway.
            batches = (
                [indexes] if model.description.get("model") in POOLED else [[n] for n in indexes]
            )
            for batch in batches:
                features = model.featurize([texts[n] for n in batch])
                found = model.predict_features(features, top_k=1)
                for row, (n, prediction) in enumerate(zip(batch, found, strict=True)):
                    predictions[n] = prediction
                    if self._shares_encoder(model, texts[n]):
                        vectors[n] = features[row].numpy()
        looked = []
        for n, text in enumerate(texts):
            prediction = predictions[n]
            understood = Understanding(
                text,
                languages[n],
                prediction and prediction.label,
                prediction and prediction.confidence,
                [entity.to_json() for entity in self.entities(text)],
                anger(text),
            )
            lookup = None
            if self.knowledge_base is not None:
                lookup = self.knowledge_base.lookup(
                    text, k=max(3, self.passages), vector=vectors[n]
                )
            looked.append((understood, lookup))
        return looked

    def _shares_encoder(self, model: IntentClassifier, text: str) -> bool:
        kb = self.knowledge_base
        return (
            kb is not None
            and kb.uses_dense(text)
            and model.description.get("model") == "embed"
            and model.description.get("encoder") == kb.config.encoder
        )

    def turn(self, text: str, history: list[dict[str, str]], state: ConversationState) -> Turn:
        """Decide one turn.

        Args:
            text: the customer's message.
            history: the conversation before it, oldest first ({"role", "content"}).
            state: counts the policy needs (turns, low-confidence streak, with a person).
        """
        understood, found = self.understanding(text)
        hits, confidence, confident = [], None, False
        if found is not None:
            hits, confidence, confident = found.hits, found.confidence, found.confident
        decision = decide(
            understood,
            state,
            hits,
            confidence,
            confident,
            self.config.assistant.handoff,
            self.generator is not None,
        )
        if decision.route == "faq":
            return Turn(understood, decision, hits[0].chunk.text)
        if decision.route == "handoff":
            return Turn(understood, decision, self.handoff_message(understood.language))
        prompt = self.prompt(history, understood.text, hits[: self.passages])
        return Turn(understood, decision, None, prompt)

    @property
    def passages(self) -> int:
        return self.config.assistant.passages

    def handoff_message(self, language: str) -> str:
        messages = self.config.assistant.handoff.message
        return messages.get(language) or next(iter(messages.values()))

    def sampling(
        self,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> SamplingConfig:
        """The project's sampling settings with a request's overrides; the project's
        `max_new_tokens` caps a request's (the prompt left room for that many)."""
        settings = self.config.assistant
        return SamplingConfig(
            max_new_tokens=min(max_tokens or settings.max_new_tokens, settings.max_new_tokens),
            temperature=settings.temperature if temperature is None else temperature,
            top_p=settings.top_p if top_p is None else top_p,
            repetition_penalty=settings.repetition_penalty,
            stop=stop or [],
            seed=seed,
        )

    def context_length(self) -> int | None:
        # An LSTM reads any length; a Transformer only as far as its positions go.
        model = self.generator.model
        return None if self.generator.arch == "lstm" else model.config.context_length

    def prompt(self, history: list[dict[str, str]], text: str, hits: list[Hit]) -> list[int]:
        """The generator's prompt: system message and passages, the history, the message.

        It must leave room for the reply in the model's context, so the oldest exchanges go
        first, then the passages from the last; the message itself is cut to its end if even
        it alone is too long (a customer's essay must not break the turn).
        """
        tokenizer = self.generator.tokenizer
        limit = self.context_length()
        budget = None if limit is None else limit - self.config.assistant.max_new_tokens
        history = [m for m in history if m["role"] in ("user", "assistant")]
        while True:
            system = self.config.assistant.system
            if hits:
                system += "\n" + "\n".join(
                    f"[{n}] {hit.title}: {hit.snippet(300)}" for n, hit in enumerate(hits, 1)
                )
            messages = [
                {"role": "system", "content": system},
                *history,
                {"role": "user", "content": text},
            ]
            ids = tokenizer.render(messages, add_generation_prompt=True).ids
            if budget is None or len(ids) <= budget:
                return ids
            if history:
                history = history[2:] if len(history) > 1 else []
            elif hits:
                hits = hits[:-1]
            elif len(text) > 1:
                text = text[max(1, len(text) // 4) :]  # keep the end: the question is usually last
            else:  # `check_prompt_room` makes this unreachable; never loop on it
                return ids[-budget:]

    def check_prompt_room(self) -> None:
        """Refuse, at load, a system message that leaves the generator no room to answer."""
        limit = self.context_length()
        if limit is None:
            return
        settings = self.config.assistant
        messages = [
            {"role": "system", "content": settings.system},
            {"role": "user", "content": "?"},
        ]
        needed = len(self.generator.tokenizer.render(messages, add_generation_prompt=True).ids)
        if needed + settings.max_new_tokens > limit:
            raise KefuError(
                f"assistant.system takes {needed} tokens and assistant.max_new_tokens is "
                f"{settings.max_new_tokens}, more than the generator's context of {limit}; "
                "shorten the system message or lower max_new_tokens in kefu.yaml"
            )

    def generate(self, turn: Turn, sampling: SamplingConfig) -> Iterator[str]:
        """Stream the generator's reply to a turn routed to it, piece by piece; a generator that
        says nothing (it may end its turn at once) is replaced by the project's `no_answer`."""
        if turn.prompt is None:
            raise KefuError(f"this turn was routed to {turn.route}, not to the generator")
        said = False
        for piece in self._pieces(turn, sampling):
            said = said or bool(piece.strip())
            yield piece
        if not said:
            messages = self.config.assistant.no_answer
            yield messages.get(turn.understood.language) or next(iter(messages.values()))

    def _pieces(self, turn: Turn, sampling: SamplingConfig) -> Iterator[str]:
        """The generator's pieces: from the batching engine (a GPT), or one request at a time."""
        if self.engine is not None:
            turn.generating = self.engine.stream(turn.prompt, sampling)
            try:
                yield from turn.generating
            finally:
                turn.generating.close()
            return
        model = self.generator.model
        pieces = stream(model, self.generator.tokenizer, turn.prompt, sampling)
        switching = bool(self.config.generator and self.config.generator.adapters)
        while True:
            with UNBATCHED_GENERATION:
                # Replies of several adapters take turns on one base: each step sets its own.
                if switching and model.active_adapter != (turn.adapter or model.default_adapter):
                    model.use_adapter(turn.adapter or model.default_adapter)
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the generator's tokenizer (usage figures); words without one."""
        if self.generator is None:
            return len(text.split())
        return len(self.generator.tokenizer.encode(text))
