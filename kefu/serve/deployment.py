"""What serves in this server process, kept in step with the model registry.

    registry state (database) ── poll every registry.poll_seconds ──► a new revision?
        ─► load the versions not loaded yet ─► smoke test ─► swap `serving` in one assignment
        └► a load or smoke test fails: keep serving what serves, report the error (heartbeat)

A turn takes the assistant it will use from `serving` once, at its start, and keeps it to its
end: a swap never changes the models under a request in flight, and the old models are freed
when the last such request is done with them.

Canaries: a conversation draws one number from its id; for each kind with a candidate it gets
the candidate when the number is below that kind's share. The draw is the same in every
process and on every turn, so a conversation stays with the versions it started with.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.assistant.pipeline import Assistant, load_model, smoke_test
from kefu.config import ProjectConfig
from kefu.errors import KefuError
from kefu.infer.engine import GenerationEngine
from kefu.registry import Registry
from kefu.store.repository import DeploymentRecord, Store, StoreError

log = logging.getLogger("kefu.serve")
HEARTBEAT_SECONDS = 5.0  # well inside kefu.registry.WORKER_SILENCE
RETRY_SECONDS = 30.0  # a revision that failed to load is tried again after this long


def draw(conversation_id: str) -> float:
    """A number in [0, 1) fixed by the conversation id: which canaries it takes part in."""
    return int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) / 2**32


@dataclass
class Serving:
    """One revision of the registry, loaded: the live assistant and the canaries' candidates."""

    revision: int
    live: Assistant
    config: ProjectConfig
    live_models: dict[str, Any]
    live_versions: dict[str, str]
    # kind → (share, candidate version, candidate model)
    canaries: dict[str, tuple[float, str, Any]] = field(default_factory=dict)
    # generator version → its batching engine: one per generator, whichever assistants use it
    engines: dict[str, GenerationEngine | None] = field(default_factory=dict)
    _assembled: dict[frozenset[str], Assistant] = field(default_factory=dict)

    def pick(self, conversation_id: str) -> Assistant:
        """The assistant of a conversation: live, with the candidates its draw falls into."""
        number = draw(conversation_id)
        trying = frozenset(kind for kind, (share, *_) in self.canaries.items() if number < share)
        if not trying:
            return self.live
        if trying not in self._assembled:  # two threads may both assemble it: harmless
            models, versions = dict(self.live_models), dict(self.live_versions)
            for kind in trying:
                _, versions[kind], models[kind] = self.canaries[kind]
            engine = self.engines.get(versions.get("generator", ""))
            self._assembled[trying] = Assistant.assemble(self.config, models, versions, engine)
        return self._assembled[trying]

    def versions(self) -> dict[str, dict[str, str]]:
        return {
            "live": self.live_versions,
            "candidate": {kind: version for kind, (_, version, _) in self.canaries.items()},
        }


def _engine_for(run: Any, config: ProjectConfig) -> GenerationEngine | None:
    if run.arch != "gpt":
        return None
    return GenerationEngine(run.model, run.tokenizer, config.assistant.max_batch)


class VersionNotLoaded(KefuError):
    def __init__(self, kind: str, version: str, cause: BaseException) -> None:
        super().__init__(f"{kind} {version} cannot serve: {cause}")
        self.kind, self.version = kind, version


@dataclass
class Failure:
    """A registry revision this process could not load, and which version of which kind broke it."""

    revision: int
    kind: str
    version: str
    reason: str
    at: float  # time.monotonic() of the attempt

    def report(self) -> dict[str, Any]:
        return {"revision": self.revision, "kind": self.kind, "version": self.version}


class Deployments:
    """Loads what the registry says should serve, and swaps it in when that changes."""

    def __init__(
        self,
        config: ProjectConfig,
        store: Store,
        on_swap: Callable[[Serving], None] = lambda serving: None,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = Registry(config, store, actor="server")
        self.on_swap = on_swap
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
        self._models: dict[tuple[str, str], Any] = {}  # (kind, version) → loaded model
        self._engines: dict[str, GenerationEngine | None] = {}  # generator version → engine
        self._failed: Failure | None = None
        self._previous: dict[str, str] = {}  # kind → the version live before, kept loaded
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.serving: Serving

    def start(self, preloaded: Assistant | None = None) -> list[str]:
        """Push the build's models, load what the registry says serves, and start watching.

        Args:
            preloaded: an assistant already loaded from this project's build folder; its
                models serve the versions the build became, without loading them again.
        Returns: what registering the build did, for the log.
        """
        built = preloaded.models() if preloaded is not None else None
        said = self.registry.register_build(built)
        if built:
            for kind, model in built.items():
                version, _ = self.registry.push(kind, self.registry.kinds[kind], loaded=model)
                self._models[(kind, version.version)] = model
                if kind == "generator":
                    self._engines[version.version] = preloaded.engine
        revision = self.store.registry_revision()
        self.serving = self._load(revision, self.store.deployments(), None)
        self._forget_unused()
        self._swap(self.serving)
        # Two threads: a load may take minutes, and the heartbeat must go on meanwhile, or
        # `kefu models promote` would take this process for gone.
        for target, name in ((self._watch, "kefu-registry"), (self._beat, "kefu-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return said

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def refresh(self) -> bool:
        """One look at the registry; True when a new revision now serves.

        A revision that fails to load leaves the old models serving and is reported (event
        and heartbeat); it is tried again after RETRY_SECONDS, in case the cause was passing.
        """
        revision = self.store.registry_revision()
        failed = self._failed
        if revision == self.serving.revision:
            return False
        if failed and failed.revision == revision and time.monotonic() - failed.at < RETRY_SECONDS:
            return False
        try:
            serving = self._load(revision, self.store.deployments(), self.serving)
        except VersionNotLoaded as err:
            self._failed = Failure(revision, err.kind, err.version, str(err), time.monotonic())
            log.error(
                "registry revision %d not loaded; still serving %d: %s",
                revision,
                self.serving.revision,
                err,
            )
            self.store.log_model_event(
                err.kind, "load_failed", err.version, f"{self.worker}: {err}", "server"
            )
            self._forget_unused()
            self._heartbeat()
            return False
        self._failed = None
        for kind, version in self.serving.live_versions.items():
            if serving.live_versions.get(kind) != version:
                self._previous[kind] = version
        self.serving = serving
        self._forget_unused()
        self._swap(serving)
        log.info("now serving registry revision %d: %s", revision, serving.versions())
        return True

    def _load(
        self, revision: int, deployments: list[DeploymentRecord], current: Serving | None
    ) -> Serving:
        """Load and assemble a revision; VersionNotLoaded names the kind and version that broke
        it, whatever the error (a corrupt file, a model too big for the prompt, out of memory)."""
        live_models, live_versions, canaries = {}, {}, {}
        for deployment in deployments:
            if deployment.kind not in self.registry.kinds:
                continue  # a kind this project no longer has
            live_versions[deployment.kind] = deployment.live
            live_models[deployment.kind] = self._model(deployment.kind, deployment.live)
            if deployment.candidate:
                canaries[deployment.kind] = (
                    deployment.canary_share,
                    deployment.candidate,
                    self._model(deployment.kind, deployment.candidate),
                )
        changed = [
            (kind, version)
            for kind, version in [*live_versions.items(), *((k, c[1]) for k, c in canaries.items())]
            if current is None or current.live_versions.get(kind) != version
        ] or [("generator", live_versions.get("generator", "?"))]
        try:
            engines = {}
            generators = [live_versions.get("generator"), canaries.get("generator", (0, None))[1]]
            for version in filter(None, generators):
                engines[version] = self._engines.get(version) or _engine_for(
                    self._models[("generator", version)], self.config
                )
            live = Assistant.assemble(
                self.config,
                live_models,
                live_versions,
                engines.get(live_versions.get("generator", "")),
            )
            trying_one = {  # each candidate must fit, too; the draws that take one use these
                frozenset({kind}): Assistant.assemble(
                    self.config,
                    {**live_models, kind: model},
                    {**live_versions, kind: version},
                    engines.get(version) if kind == "generator" else live.engine,
                )
                for kind, (_, version, model) in canaries.items()
            }
        except Exception as err:
            raise VersionNotLoaded(*changed[0], err) from err
        self._engines = engines  # engines of versions no longer serving end when idle
        return Serving(
            revision,
            live,
            self.config,
            live_models,
            live_versions,
            canaries,
            engines=engines,
            _assembled=trying_one,
        )

    def _model(self, kind: str, version: str) -> Any:
        if (kind, version) not in self._models:
            try:
                record = self.store.model_version(kind, version)
                model = load_model(kind, Path(record.path))
                smoke_test(kind, model)
            except StoreError:
                raise
            except Exception as err:  # MemoryError, a CUDA error: all mean "cannot serve it"
                raise VersionNotLoaded(kind, version, err) from err
            self._models[(kind, version)] = model
        return self._models[(kind, version)]

    def _forget_unused(self) -> None:
        """Drop our references to models no longer serving (but the previous live version of
        each kind); requests still using them keep theirs. Assistants hold cycles (their understanding lane calls back into them), so
        the collector runs here: the old models' memory is back before the next load."""
        serving = self.serving
        used = {(k, v) for k, v in serving.live_versions.items()}
        used |= {(k, version) for k, (_, version, _) in serving.canaries.items()}
        used |= set(self._previous.items())  # a rollback is then a switch, not a load
        for key in list(self._models):
            if key not in used:
                del self._models[key]
        gc.collect()

    def _swap(self, serving: Serving) -> None:
        self.on_swap(serving)
        self._heartbeat()

    def _heartbeat(self) -> None:
        failed = self._failed
        versions = {**self.serving.versions(), "failed": failed.report() if failed else None}
        self.store.heartbeat(
            self.worker,
            self.serving.revision,
            versions,
            failed.revision if failed else None,
            failed.reason if failed else None,
        )

    def _watch(self) -> None:
        while not self._stop.wait(self.config.registry.poll_seconds):
            try:
                self.refresh()
            except StoreError as err:  # the database is away for a moment: keep serving
                log.warning("registry not checked: %s", err)
            except Exception:  # a bug must not end the watching: log it, keep serving
                log.exception("registry check failed; still serving %d", self.serving.revision)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._heartbeat()
            except Exception as err:
                log.warning("heartbeat not recorded: %s", err)
