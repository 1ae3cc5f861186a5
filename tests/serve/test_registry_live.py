"""The registry driven from the CLI against `kefu serve --workers 2` under steady load: a push,
a canary, a promotion and a rollback, and not one request fails."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAQ_EN, kefu
from tests.serve.conftest import Server
from tests.test_registry import variant

GENERATED = "Tell me something about your savings products"  # the demo routes it to the generator


class SteadyLoad:
    """Customers asking one after another, in threads, until stopped: each answer's status and
    generator version, in order."""

    def __init__(self, url: str, key: str, customers: int = 3) -> None:
        self.url, self.key = url, key
        self.outcomes: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._customer, args=(n,)) for n in range(customers)
        ]

    def _customer(self, n: int) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as http:
            turn = 0
            while not self._stop.is_set():
                text = GENERATED if turn % 2 == 0 else FAQ_EN
                body = {"model": "acme_bank", "messages": [{"role": "user", "content": text}]}
                try:
                    if (turn + n) % 3 == 0:
                        body["stream"] = True
                        with http.stream("POST", "/v1/chat/completions", json=body) as response:
                            lines = list(response.iter_lines())
                        ok = response.status_code == 200 and "data: [DONE]" in lines
                        version = None
                        status = response.status_code if ok else 599
                    else:
                        response = http.post("/v1/chat/completions", json=body)
                        status = response.status_code
                        extension = response.json().get("kefu", {}) if status == 200 else {}
                        version = (
                            extension["model_versions"]["generator"]
                            if extension.get("route") == "generator"
                            else None
                        )
                except httpx.TransportError:
                    status, version = 598, None
                self.outcomes.append((time.monotonic(), status, version))
                turn += 1

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@pytest.mark.slow
def test_push_canary_promote_rollback_from_the_cli_under_load_fail_no_request(
    demo_project: Path, tmp_path: Path, kefu_serve: Callable[..., Server]
) -> None:
    database = f"sqlite:///{tmp_path / 'live.db'}"
    key = kefu(
        "keys", "create", str(demo_project), "--name", "ops", "--db", database
    ).stdout.strip()
    server = kefu_serve(database, options=("--workers", "2"))
    candidate = variant(demo_project, tmp_path / "candidate", scale=1.0001)

    def models(*args: str) -> str:
        done = kefu("models", *args[:1], str(demo_project), *args[1:], "--db", database)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with SteadyLoad(server.url, key) as load:
        time.sleep(2)
        assert "pushed as v2" in models("push", "generator", str(candidate))
        canary = models("canary", "generator", "v2", "--share", "0.5")
        assert "v2 on 50% of new conversations" in canary
        canary_started = time.monotonic()
        time.sleep(4)
        promoted = models("promote", "generator", "v2")
        assert "v2 live" in promoted and "served by 2 server process(es)" in promoted
        promoted_at = time.monotonic()
        time.sleep(4)
        assert "v1 live (rolled back from v2)" in models("rollback", "generator")
        rolled_back_at = time.monotonic()
        time.sleep(3)
    status = models("status", "--json")
    statuses = Counter(status for _, status, _ in load.outcomes)
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 30

    def versions(start: float, end: float) -> Counter:
        return Counter(v for t, _, v in load.outcomes if start < t < end and v is not None)

    # Every request is a new conversation: half of them draw the candidate.
    assert set(versions(canary_started + 0.5, promoted_at)) == {"v1", "v2"}
    after_promotion = versions(promoted_at, rolled_back_at)
    # A turn that began before the promotion may still end on v1; new ones are v2.
    assert after_promotion["v2"] > 0
    assert set(versions(rolled_back_at + 0.5, time.monotonic())) == {"v1"}
    report = json.loads(status)
    assert report["kinds"]["generator"]["live"] == "v1" and len(report["workers"]) == 2
    assert report["kinds"]["generator"]["versions"]["v1"]["turns"] > 0
