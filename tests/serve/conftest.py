"""A small built copy of the Acme Bank demo and live servers over loopback.

The project is the demo's own data with shorter training (intent models of 100 steps, a tiny
GPT of 40 steps), built once per test run and shared by the xdist workers through a file lock.
Servers are real uvicorn servers on a free loopback port, in a thread of the test process, so
tests reach the store behind them directly (`server.store`).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from filelock import FileLock

from kefu.assistant.pipeline import Assistant
from kefu.project import build, load_project
from kefu.serve.app import create_app
from kefu.serve.channels.wechat import WeChatConfig
from kefu.serve.settings import ServeSettings
from kefu.store.repository import Store
from tests.conftest import REPO

DEMO = REPO / "examples" / "acme_bank"
# Questions the demo's FAQ answers directly (their confidence is far above the threshold).
FAQ_EN = "I lost my debit card. What should I do?"
FAQ_ZH = "银行卡丢了怎么办？"
WECHAT = WeChatConfig(
    token="kefu-test-token",
    app_id="wx1234567890abcdef",
    encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
)


def _write_small_demo(folder: Path) -> None:
    for path in DEMO.iterdir():
        if path.is_file() and path.suffix in (".csv", ".jsonl"):
            shutil.copy(path, folder / path.name)
    project = yaml.safe_load((DEMO / "kefu.yaml").read_text(encoding="utf-8"))
    project["tokenizer"]["vocab_size"] = 2000
    recipes = {
        "intent_en.yaml": {"kind": "intent", "model": "embed", "train": {"max_steps": 150}},
        "intent_zh.yaml": {"kind": "intent", "model": "textcnn", "train": {"max_steps": 150}},
        "generator.yaml": {
            "kind": "train",
            "task": "chat",
            "arch": "gpt",
            "gpt": {"context_length": 128, "n_layer": 1, "n_head": 2, "d_model": 64},
            "train": {"max_steps": 150, "batch_size": 8, "eval_every": 150, "eval_batches": 2},
        },
    }
    (folder / "recipes").mkdir()
    for name, recipe in recipes.items():
        (folder / "recipes" / name).write_text(yaml.safe_dump(recipe), encoding="utf-8")
    # Sampling is greedy so answers are reproducible; the reply is short so tests are fast.
    project["assistant"].update({"temperature": 0.0, "max_new_tokens": 24})
    project["serve"] = {"rate_limit_per_minute": 1000, "max_body_bytes": 8192}
    (folder / "kefu.yaml").write_text(yaml.safe_dump(project, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo, built (once for all workers)."""
    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every xdist worker
    folder = shared / "serve-demo"
    with FileLock(str(shared / "serve-demo.lock")):
        if not (folder / "build" / "generator" / "model.safetensors").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            _write_small_demo(folder)
            build(folder)
    return folder


@pytest.fixture(scope="session")
def assistant(demo_project: Path) -> Assistant:
    return Assistant.load(load_project(demo_project))


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
