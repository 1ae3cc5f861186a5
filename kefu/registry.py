"""The model registry: versions of each model a project serves, and how one goes live.

    kefu models push KIND FOLDER ─► copy ─► load ─► smoke test ─► evaluate (held-out set) ─► vN
    kefu models canary KIND vN --share S     a share of new conversations try vN
    kefu models promote KIND vN [--force]    vN serves everyone, if its evaluation is not worse
                                             than the live version's by more than the margin
    kefu models rollback KIND                back to the version that served before

A kind is one model the assistant uses: `intent/<language>`, `kb` or `generator`. A version's
files sit in the registry folder under a name taken from their digest, so pushing the same
files twice is the same version; what serves (live, candidate, canary share) lives in the
conversation store's database with the history of every change, so every server process —
workers and replicas alike — reads the one state, and each polls it and swaps by itself
(kefu.serve.deployment). Promoting waits for those processes to say they serve the new
version; one that cannot load it makes the promotion undo itself, so a version that fails to
load never stays live.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kefu.assistant.pipeline import Assistant, load_model, model_kinds, smoke_test
from kefu.config import ProjectConfig
from kefu.errors import KefuError
from kefu.files import write_text_atomically
from kefu.store.models import utcnow
from kefu.store.repository import Conflict, DeploymentRecord, ModelVersionRecord, Store

META = "kefu-version.json"  # in each version's folder: its digest and cached evaluation
WORKER_SILENCE = datetime.timedelta(seconds=15)  # a worker not heard from for longer is gone


class NotTakenUp(KefuError):
    """A change is recorded, but not every server process serves it yet."""


class PromotionRefused(KefuError):
    """The candidate's evaluation is worse than the live version's by more than the margin."""


def folder_digest(folder: Path) -> str:
    """sha256 over a folder's files (relative names and bytes), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- evaluation on the project's held-out set ------------------------------------------------


def _generator_score(config: ProjectConfig, model: Any) -> dict[str, Any]:
    from kefu.data.folder import load_stats
    from kefu.eval.lm import perplexity

    data = Path(config.build_dir) / "data" / config.generator.data
    split = _held_out_split(load_stats(data))
    found = perplexity(model, data, split, "chat")
    return {
        "metric": "perplexity",
        "value": found["perplexity"],
        "higher_is_better": False,
        "held_out": f"{data}/{split}.jsonl",
        "examples": found["tokens"],
        "held_out_digest": _file_digest(data / f"{split}.jsonl"),
    }


def _intent_score(config: ProjectConfig, model: Any, language: str) -> dict[str, Any]:
    from kefu.data.folder import load_stats
    from kefu.nlu.intent import intent_metrics, load_examples

    build = Path(config.build_dir)
    data = (
        build / "data" / config.intents.data
        if language == "all"
        else build / "intents" / language / "data"
    )
    split = _held_out_split(load_stats(data))
    texts, gold = load_examples(data, split)
    predicted = [p.label for p in model.predict_features(model.featurize(texts), top_k=1)]
    return {
        "metric": "accuracy",
        "value": intent_metrics(gold, predicted)["accuracy"],
        "higher_is_better": True,
        "held_out": f"{data}/{split}.jsonl",
        "examples": len(texts),
        "held_out_digest": _file_digest(data / f"{split}.jsonl"),
    }


def _kb_score(config: ProjectConfig, model: Any) -> dict[str, Any]:
    from kefu.kb.evaluate import evaluate_kb, paraphrase_queries, read_queries

    queries_file = config.knowledge_base.queries
    if queries_file:
        queries = read_queries(Path(queries_file), model)[0]
        described, digest = queries_file, _file_digest(Path(queries_file))
    else:
        queries = paraphrase_queries(model)
        described = "the FAQ's paraphrases"
        digest = hashlib.sha256("\n".join(q.text for q in queries).encode()).hexdigest()
    return {
        "metric": "MRR",
        "value": evaluate_kb(model, queries)["hybrid"]["mrr"],
        "higher_is_better": True,
        "held_out": described,
        "examples": len(queries),
        "held_out_digest": digest,
    }


def _held_out_split(stats: dict[str, Any]) -> str:
    # An ingested folder counts records per split under "splits"; a language's share of one
    # (kefu build's intents/<language>/data) under "records".
    records = {name: split.get("records", 0) for name, split in stats.get("splits", {}).items()}
    records |= stats.get("records", {}) if isinstance(stats.get("records"), dict) else {}
    for split in ("test", "valid"):
        if records.get(split):
            return split
    raise KefuError("no held-out records (test or valid split) to evaluate on")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(config: ProjectConfig, kind: str, model: Any) -> dict[str, Any]:
    """A version's score on the project's held-out set; `{"metric": None, "why": …}` when the
    project has none for this kind (promotion then cannot compare, and says so)."""
    scorers: dict[str, Callable[[], dict[str, Any]]] = {
        "generator": lambda: _generator_score(config, model),
        "kb": lambda: _kb_score(config, model),
    }
    if kind.startswith("intent/"):
        return _scored(lambda: _intent_score(config, model, kind.removeprefix("intent/")))
    return _scored(scorers[kind])


def _scored(score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        scored = score()
    except (KefuError, FileNotFoundError) as err:
        return {"metric": None, "why": str(err)}
    except ArithmeticError as err:  # perplexity beyond a float: the model is broken
        raise KefuError(f"its evaluation overflowed ({err}); the model is broken") from err
    if not math.isfinite(scored["value"]):
        raise KefuError(
            f"its {scored['metric']} on the held-out set is {scored['value']}; the model is broken"
        )
    return scored


def comparison(live: dict[str, Any], candidate: dict[str, Any], margin: float) -> tuple[bool, str]:
    """Whether the candidate may replace the live version, and the figures that say why."""
    if live.get("metric") is None or candidate.get("metric") is None:
        why = candidate.get("why") or live.get("why") or "no evaluation"
        return True, f"not compared ({why})"
    name, before, after = live["metric"], live["value"], candidate["value"]
    change = (after - before) if live["higher_is_better"] else (before - after)
    worse_by = max(0.0, -change) / max(abs(before), 1e-12)
    said = f"{name} {after:.4g} against live {before:.4g} on {live['held_out']}"
    if worse_by > margin:
        return (
            False,
            f"{said}: worse by {100 * worse_by:.1f}%, more than the {100 * margin:g}% allowed",
        )
    return True, said


# -- the registry ------------------------------------------------------------------------------


@dataclass
class Promotion:
    deployment: DeploymentRecord
    gate: str  # what the evaluation gate found
    workers: list[str]  # the server processes that now serve it


class Registry:
    """One project's registry on its store. Each method is one decision, checked and logged."""

    def __init__(self, config: ProjectConfig, store: Store, actor: str | None = None) -> None:
        self.config = config
        self.store = store
        self.root = Path(config.registry.path or Path(config.build_dir) / "registry")
        self.kinds = model_kinds(config)
        self.actor = actor or getpass.getuser()

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise KefuError(
                f"this project has no {kind!r} model; its kinds are {', '.join(self.kinds)}"
            )

    # -- versions

    def push(
        self, kind: str, folder: Path, note: str | None = None, loaded: Any = None
    ) -> tuple[ModelVersionRecord, bool]:
        """Copy a model folder into the registry as a new version of `kind`, once it has loaded,
        passed its smoke test and been evaluated. Returns the version and whether it is new.

        Args:
            loaded: the model already loaded from `folder` (the server has the build's).
        """
        self.check_kind(kind)
        folder = Path(folder)
        if not folder.is_dir():
            raise KefuError(f"{folder}: no such folder; push a model folder (a run or a build)")
        try:
            digest = folder_digest(folder)
        except OSError as err:
            raise KefuError(f"{folder}: cannot read it: {err}") from err
        target = self.root / kind / digest[:16]
        meta = _read_meta(target, digest)
        if meta is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Private to this push: server processes starting together push the same build.
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                shutil.copytree(folder, staging, dirs_exist_ok=True)
                # The copy is what will serve, so the copy is what is tested.
                try:
                    model = loaded if loaded is not None else _checked_load(kind, staging)
                    if kind == "generator":  # the project's prompt must leave it room to answer
                        Assistant.assemble(self.config, {kind: model}, {})
                    meta = {"digest": digest, "evaluation": evaluate(self.config, kind, model)}
                except KefuError as err:
                    said = str(err).replace(str(staging), str(folder))
                    raise KefuError(f"{folder} not pushed: {said}") from err
                write_text_atomically(staging / META, json.dumps(meta, indent=2) + "\n")
                meta = _move_in(staging, target, digest) or meta
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.store.add_model_version(
            kind, str(target), digest, str(folder), meta["evaluation"], note
        )

    def versions(self, kind: str | None = None) -> list[ModelVersionRecord]:
        return self.store.model_versions(kind)

    def deployment(self, kind: str) -> DeploymentRecord | None:
        return next((d for d in self.store.deployments() if d.kind == kind), None)

    # -- what serves

    def promote(
        self, kind: str, version: str, force: bool = False, wait_s: float | None = 60
    ) -> Promotion:
        """Make `version` live for everyone (ending any canary), if the evaluation gate passes.

        Args:
            force: promote even when its evaluation is worse by more than the margin.
            wait_s: wait this long for every running server process to serve it, undoing the
                promotion if one cannot load it; None: do not wait.
        """
        self.check_kind(kind)
        candidate = self.store.model_version(kind, version)
        current = self.deployment(kind)
        gate = "the first live version"
        if current is not None:
            if current.live == version and current.candidate is None:
                raise KefuError(f"{kind} {version} is already live")
            if current.live == version:  # keeping the live version: the canary ends
                return self.end_canary(kind, wait_s)
            live = self.store.model_version(kind, current.live)
            ok, gate = comparison(
                *self._comparable(kind, live, candidate), self.config.registry.promote_margin
            )
            if not ok and not force:
                raise PromotionRefused(
                    f"{kind} {version} not promoted: {gate}. Promote it anyway with --force, or "
                    f"try it on a share of conversations first (`kefu models canary`)"
                )
            if not ok:
                gate += " (forced)"
        deployed = self.store.deploy(
            kind,
            "promote",
            version,
            live=version,
            detail=gate,
            actor=self.actor,
            expected_revision=current.revision if current else 0,
        )
        return Promotion(deployed, gate, self._await(deployed, current, wait_s, "promote"))

    def rollback(self, kind: str, wait_s: float | None = 60) -> Promotion:
        """Return to the version that was live before the current one, in one step."""
        self.check_kind(kind)
        current = self.deployment(kind)
        history = self.live_history(kind)
        if current is None or len(history) < 2:
            raise KefuError(
                f"{kind} has no earlier live version to roll back to"
                + (f" ({current.live} is the only one)" if current else "")
            )
        previous = history[-2]
        deployed = self.store.deploy(
            kind,
            "rollback",
            previous,
            live=previous,
            detail=f"from {current.live}",
            actor=self.actor,
            expected_revision=current.revision,
        )
        return Promotion(
            deployed,
            f"rolled back from {current.live}",
            self._await(deployed, current, wait_s, "rollback"),
        )

    def canary(self, kind: str, version: str, share: float, wait_s: float | None = 60) -> Promotion:
        """Send `share` of new conversations to `version`; the rest stay on the live one."""
        self.check_kind(kind)
        if not 0 < share < 1:
            raise KefuError(f"a canary's share must be between 0 and 1 (exclusive), not {share}")
        candidate = self.store.model_version(kind, version)
        current = self.deployment(kind)
        if current is None:
            raise KefuError(f"{kind} has no live version yet; promote one before a canary")
        if current.live == version:
            raise KefuError(f"{kind} {version} is the live version; a canary needs another")
        live = self.store.model_version(kind, current.live)
        _, gate = comparison(
            *self._comparable(kind, live, candidate), self.config.registry.promote_margin
        )
        deployed = self.store.deploy(
            kind,
            "canary",
            version,
            live=current.live,
            candidate=version,
            canary_share=share,
            detail=f"{100 * share:g}% of new conversations; {gate}",
            actor=self.actor,
            expected_revision=current.revision,
        )
        return Promotion(deployed, gate, self._await(deployed, current, wait_s, "canary"))

    def end_canary(self, kind: str, wait_s: float | None = 60) -> Promotion:
        """Stop sending conversations to the candidate; the live version serves all."""
        current = self.deployment(kind)
        if current is None or current.candidate is None:
            raise KefuError(f"{kind} has no canary running")
        deployed = self.store.deploy(
            kind,
            "end_canary",
            current.candidate,
            live=current.live,
            actor=self.actor,
            expected_revision=current.revision,
        )
        return Promotion(
            deployed, "canary ended", self._await(deployed, current, wait_s, "end_canary")
        )

    def live_history(self, kind: str) -> list[str]:
        """The live versions of a kind, oldest first, as promotions stacked them and rollbacks
        took them off: its last entry is live, the one before is what a rollback returns to."""
        stack: list[str] = []
        for event in self.store.model_events(kind):
            if event.action == "promote" and event.version:
                stack.append(event.version)
            elif event.action == "rollback" and len(stack) > 1:
                stack.pop()
        return stack

    def _comparable(
        self, kind: str, live: ModelVersionRecord, candidate: ModelVersionRecord
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two evaluations, made again on today's held-out set when they were made on
        different ones (the data was rebuilt between the pushes)."""
        before, after = live.evaluation, candidate.evaluation
        if before.get("held_out_digest") == after.get("held_out_digest"):
            return before, after
        scores = []
        for record in (live, candidate):
            try:
                scores.append(evaluate(self.config, kind, load_model(kind, Path(record.path))))
            except KefuError as err:  # a broken live version must not block its replacement
                scores.append({"metric": None, "why": f"{record.version}: {err}"})
        return scores[0], scores[1]

    def _await(
        self,
        deployed: DeploymentRecord,
        before: DeploymentRecord | None,
        wait_s: float | None,
        action: str,
    ) -> list[str]:
        """Wait until every running server process serves `deployed`; if one cannot load it,
        put back what served before (the opposite of `action`) and raise with its error."""
        if wait_s is None:
            return []
        deadline = time.monotonic() + wait_s
        while True:
            workers = self.store.model_workers(seen_within=WORKER_SILENCE)
            # A process that failed on a later revision, for this kind: another operator's
            # change to another kind failing is not this change failing.
            failed = [
                w
                for w in workers
                if (w.failed_revision or 0) >= deployed.revision
                and (w.versions.get("failed") or {}).get("kind") == deployed.kind
            ]
            if failed:
                raise KefuError(
                    f"{deployed.kind}: server {failed[0].id} could not load the new version: "
                    f"{failed[0].error}. {self._undo(deployed, before, action, failed[0].error)}"
                )
            behind = [w for w in workers if w.revision < deployed.revision]
            if not behind:
                return [w.id for w in workers]
            if time.monotonic() > deadline:
                raise NotTakenUp(
                    f"{deployed.kind}: the change is recorded, but {len(behind)} server "
                    f"process(es) did not take it up within {wait_s:g} s "
                    f"({', '.join(w.id for w in behind)}); see `kefu models status`"
                )
            time.sleep(0.2)

    def _undo(
        self,
        deployed: DeploymentRecord,
        before: DeploymentRecord | None,
        action: str,
        error: str | None,
    ) -> str:
        """Put back what served before a change that a server could not load; says what it did."""
        if before is None:
            return (
                f"It is the first version of {deployed.kind}, so there is nothing to go back to: "
                "push a version that loads and promote it"
            )
        undo = {"promote": "rollback", "rollback": "promote"}.get(
            action, "canary" if before.candidate else "end_canary"
        )
        try:
            self.store.deploy(
                deployed.kind,
                undo,
                before.candidate if undo == "canary" else before.live,
                live=before.live,
                candidate=before.candidate,
                canary_share=before.canary_share,
                detail=f"undone: a server could not load it: {error}",
                actor=self.actor,
                expected_revision=deployed.revision,
            )
        except Conflict:
            return "A later change has replaced it already; nothing was undone"
        return "It was undone, so nothing changed"

    # -- what kefu serve does at start

    def register_build(self, loaded: dict[str, Any] | None = None) -> list[str]:
        """Push what `kefu build` made; a kind with nothing live gets it live, a changed one is
        promoted through the gate when `registry.promote_build` is on. Returns what it did."""
        said = []
        for kind, folder in self.kinds.items():
            if not folder.exists():
                continue
            version, new = self.push(kind, folder, "built by kefu build", (loaded or {}).get(kind))
            current = self.deployment(kind)
            if current is None:
                try:
                    self.promote(kind, version.version, wait_s=None)
                    said.append(f"{kind} {version.version} is live")
                except Conflict:  # a replica starting at the same moment made it live first
                    continue
            elif new and self.config.registry.promote_build:
                try:
                    self.promote(kind, version.version, wait_s=None)
                    said.append(f"{kind} {version.version} (rebuilt) is live")
                except PromotionRefused as err:
                    said.append(str(err))
        return said

    # -- reports

    def status(self, since: datetime.datetime | None = None) -> dict[str, Any]:
        """What serves, the server processes, and each version's turns, routes, latency and
        feedback since `since` (default: the last 24 hours)."""
        since = since or utcnow() - datetime.timedelta(hours=24)
        figures: dict[tuple[str, str], list[Any]] = {}
        for turn in self.store.answered_turns(since):
            for kind, version in turn.model_versions.items():
                figures.setdefault((kind, version), []).append(turn)
        kinds = {}
        for deployment in self.store.deployments():
            serving = [deployment.live] + ([deployment.candidate] if deployment.candidate else [])
            kinds[deployment.kind] = {
                "live": deployment.live,
                "candidate": deployment.candidate,
                "canary_share": deployment.canary_share,
                "revision": deployment.revision,
                "versions": {v: _figures(figures.get((deployment.kind, v), [])) for v in serving},
            }
        workers = [
            {
                "id": w.id,
                "revision": w.revision,
                "versions": w.versions,
                "error": w.error,
                "seen": w.seen_at.isoformat(),
            }
            for w in self.store.model_workers(seen_within=WORKER_SILENCE)
        ]
        return {"since": since.isoformat(), "kinds": kinds, "workers": workers}


def _figures(turns: list[Any]) -> dict[str, Any]:
    latencies = sorted(t.latency_ms for t in turns if t.latency_ms is not None)
    routes: dict[str, int] = {}
    for turn in turns:
        routes[turn.route or "?"] = routes.get(turn.route or "?", 0) + 1
    return {
        "turns": len(turns),
        "routes": routes,
        "latency_ms_p50": statistics.median(latencies) if latencies else None,
        "thumbs_up": sum(t.rating > 0 for t in turns),
        "thumbs_down": sum(t.rating < 0 for t in turns),
    }


def _checked_load(kind: str, folder: Path) -> Any:
    model = load_model(kind, folder)
    smoke_test(kind, model)
    return model


def _move_in(staging: Path, target: Path, digest: str) -> dict[str, Any] | None:
    """Put a pushed folder in place; if a push of the same files got there first, keep theirs
    and return their metadata."""
    try:
        staging.rename(target)
        return None
    except OSError:
        theirs = _read_meta(target, digest)
        if theirs is not None:
            return theirs
        shutil.rmtree(target)  # a half-copied folder from a push that crashed
        staging.rename(target)
        return None


def _read_meta(folder: Path, digest: str) -> dict[str, Any] | None:
    """A version folder's metadata, if the folder is whole and holds those very files."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("digest") == digest else None
