"""`kefu keys` and `kefu serve` as a user runs them: real processes, a real port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAQ_EN, kefu
from tests.serve.conftest import Server, _free_port


def test_keys_are_created_listed_and_revoked(demo_project: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    created = kefu(
        "keys", "create", str(demo_project), "--name", "shop", "--scopes", "chat,admin", "--db", db
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("kefu-") and len(key) > 40
    listed = kefu("keys", "list", str(demo_project), "--db", db)
    prefix = key[:12]
    assert prefix in listed.stdout and "chat,admin" in listed.stdout
    revoked = kefu("keys", "revoke", str(demo_project), prefix, "--db", db)
    assert revoked.returncode == 0 and f"revoked {prefix}" in revoked.stdout
    bad = kefu(
        "keys", "create", str(demo_project), "--name", "x", "--scopes", "chat,root", "--db", db
    )
    assert bad.returncode == 1 and "root" in bad.stderr and "admin" in bad.stderr


@pytest.mark.slow
def test_kefu_serve_answers_with_the_key_it_prints(demo_project: Path, tmp_path: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "kefu", "serve", str(demo_project), "--port", str(port)]
    command += ["--db", f"sqlite:///{tmp_path / 'serve.db'}", "--new-key"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "kefu serve did not become ready"
            time.sleep(0.5)
        # The key is printed before the server starts; stdout is a pipe, so it is flushed.
        printed = server.stdout.readline() + server.stdout.readline()
        assert f"at {url}" in printed
        key = printed.split("shown once): ")[1].split()[0]
        body = {"model": "acme_bank", "messages": [{"role": "user", "content": FAQ_EN}]}
        answer = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200 and answer.json()["kefu"]["route"] == "faq"
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert "Application shutdown complete" in err


def test_serving_an_unbuilt_project_says_what_to_do(tmp_path: Path) -> None:
    created = kefu("init", str(tmp_path / "fresh"))
    assert created.returncode == 0
    result = kefu("serve", str(tmp_path / "fresh"), "--port", str(_free_port()))
    assert result.returncode == 1
    assert "kefu build" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_several_workers_serve_one_database(
    demo_project: Path, tmp_path: Path, kefu_serve: Callable[..., Server]
) -> None:
    database = f"sqlite:///{tmp_path / 'workers.db'}"
    created = kefu("keys", "create", str(demo_project), "--name", "w", "--db", database)
    key = created.stdout.strip()
    server = kefu_serve(database, options=("--workers", "2"))
    body = {"model": "acme_bank", "messages": [{"role": "user", "content": FAQ_EN}]}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answers = [http.post("/v1/chat/completions", json=body, headers=headers) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.json()["kefu"]["conversation_id"] for a in answers}) == 6
