"""Live servers of the small demo (built by tests/conftest.py) over loopback.

Servers are real uvicorn servers on a free loopback port, in a thread of the test process, so
tests reach the store behind them directly (`server.store`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from kefu.assistant.pipeline import Assistant
from kefu.serve.app import create_app
from kefu.serve.channels.wechat import WeChatConfig
from kefu.serve.settings import ServeSettings
from kefu.store.repository import Store
from tests.conftest import FAQ_EN, FAQ_ZH  # noqa: F401  (the tests import them from here)

WECHAT = WeChatConfig(
    token="kefu-test-token",
    app_id="wx1234567890abcdef",
    encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
)


@dataclass
class LiveServer:
    url: str
    app: object
    store: Store
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_server(demo_project: Path, assistant: Assistant) -> Iterator[Callable[..., LiveServer]]:
    """Start a live server of the small demo (or of `project` with its assistant `serving`) on a
    database URL."""
    started: list[LiveServer] = []

    def start(
        database: str,
        wechat: WeChatConfig | None = WECHAT,
        project: Path | None = None,
        serving: Assistant | None = None,
    ) -> LiveServer:
        port = _free_port()
        settings = ServeSettings(
            project=str(project or demo_project), database=database, port=port, wechat=wechat
        )
        app = create_app(settings, serving or assistant)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        live = LiveServer(f"http://127.0.0.1:{port}", app, app.state.service.store, server, thread)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, start_server, tmp_path: Path) -> LiveServer:
    """A live server on SQLite and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return start_server(f"sqlite:///{tmp_path / 'kefu.db'}")
    return start_server(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_server(start_server, tmp_path: Path) -> LiveServer:
    """A live server on SQLite only, for tests of things the database does not change."""
    return start_server(f"sqlite:///{tmp_path / 'kefu.db'}")


# -- `kefu serve` as a user runs it: a real process -----------------------------------------


class Server:
    """A `kefu serve` process in its own process group, its output in a log file."""

    def __init__(
        self,
        python_args: list[str],
        project: Path,
        port: int,
        database: str,
        log: Path,
        options: tuple[str, ...] = (),
    ):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = [sys.executable, *python_args, "serve", str(project), "--port", str(port)]
        command += ["--db", database, *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        with log.open("w") as out:
            # A session of its own: killing its group kills any process it started, too.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"kefu serve exited:\n{self.output()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"kefu serve did not get ready:\n{self.output()}"
            time.sleep(0.25)

    def kill(self) -> None:
        """SIGKILL the server and every process of its group; wait until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server as Ctrl-C does; kill it if it does not stop in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()


@pytest.fixture
def kefu_serve(demo_project: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `kefu serve` of the small demo as a process (`python_args`: how Python runs kefu;
    `options`: more command-line options) and wait until it is ready; every server is stopped
    at the end, or killed."""
    started: list[Server] = []

    def start(
        database: str,
        port: int | None = None,
        options: tuple[str, ...] = (),
        python_args: tuple[str, ...] = ("-m", "kefu"),
    ) -> Server:
        log = tmp_path / f"serve-{len(started)}.log"
        server = Server(
            list(python_args), demo_project, port or _free_port(), database, log, options
        )
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
