"""Live servers of the small demo (built by tests/conftest.py) over loopback.

Servers are real uvicorn servers on a free loopback port, in a thread of the test process, so
tests reach the store behind them directly (`server.store`).
"""

from __future__ import annotations

import socket
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
    """Start a live server of the small demo on a database URL (default: SQLite in tmp)."""
    started: list[LiveServer] = []

    def start(
        database: str, wechat: WeChatConfig | None = WECHAT, project: Path | None = None
    ) -> LiveServer:
        port = _free_port()
        settings = ServeSettings(
            project=str(project or demo_project), database=database, port=port, wechat=wechat
        )
        app = create_app(settings, assistant)
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
