"""Shared test helpers: the real data sets in ../shared/data, small input files, PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import torch
import yaml
from filelock import FileLock

from kefu.assistant.pipeline import Assistant
from kefu.config import DataSource
from kefu.console import settings
from kefu.data.ingest import ingest
from kefu.project import build, load_project
from kefu.store.scratch import scratch_database

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KEFU_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).parent / "fixtures"
# The PostgreSQL server every development and CI machine runs, trust auth; which role and
# maintenance database exist differs between machines.
POSTGRES_ADMIN_URLS = [
    f"postgresql://{user}@127.0.0.1:5432/{database}"
    for user in ("postgres", "root")
    for database in ("test", "postgres")
]

settings.quiet = True
# `make test` runs two workers on two cores: one thread each, or they fight over the cores.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """The public data sets beside the project; tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data sets not found at {SHARED_DATA} (set KEFU_SHARED_DATA to their folder)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_admin_url() -> str | None:
    """A URL on the local PostgreSQL server that may create databases; None if none answers."""
    for url in POSTGRES_ADMIN_URLS:
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.OperationalError:
            continue
    return None


@pytest.fixture
def postgres_url(postgres_admin_url: str | None):
    """The URL (postgresql://...) of a fresh, empty PostgreSQL database, dropped after the test.

    Each test gets its own database (kefu_test_<hex>), so tests and xdist workers never share
    state. Skips the test when the server at 127.0.0.1:5432 does not answer.
    """
    if postgres_admin_url is None:
        pytest.skip(
            "PostgreSQL not reachable at 127.0.0.1:5432 (start it: see .ci/run); "
            "this test ran on SQLite only"
        )
    with scratch_database(postgres_admin_url, "kefu_test") as url:
        yield url


@pytest.fixture
def write(tmp_path: Path):
    """Write text (str) or raw bytes to a file under tmp_path and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


def kefu(
    *args: str, stdin: str | None = None, module: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `kefu` command (or `module`, e.g. torchrun) in a subprocess, one thread."""
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *(module or ["-m", "kefu"]), *args]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, env=env, timeout=300
    )


def write_chats(folder: Path, conversations: int = 80) -> Path:
    """An ingested data folder (`folder`/data) of short bilingual support conversations, two
    exchanges each, for training tiny chat models."""
    lines = [
        json.dumps(
            {
                "id": f"c{i}",
                "messages": [
                    {"role": "user", "content": f"Where is my card number {i}? 卡在哪里"},
                    {
                        "role": "assistant",
                        "content": f"Your card {i} arrives in 5 days. 请耐心等待",
                    },
                    {"role": "user", "content": "thanks"},
                    {"role": "assistant", "content": "You are welcome!"},
                ],
            },
            ensure_ascii=False,
        )
        for i in range(conversations)
    ]
    (folder / "chats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(DataSource(format="messages", inputs=[str(folder / "chats.jsonl")]), folder / "data")
    return folder / "data"


# -- the demo assistant, small ---------------------------------------------------------------
# The demo's own data with shorter training (intent models of 150 steps, a tiny GPT of 150
# steps), built once per test run and shared by the xdist workers through a file lock.

DEMO = REPO / "examples" / "acme_bank"
# Exact FAQ questions: the knowledge base is sure of them, so the FAQ answers directly.
FAQ_EN = "I lost my debit card. What should I do?"
FAQ_ZH = "银行卡丢了怎么办？"


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
    """The small demo, built (once for all workers of this test run)."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's folder sits in this run's folder; without it, basetemp is.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
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
