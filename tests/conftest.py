"""Shared test helpers: the real data sets in ../shared/data, and small input files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kefu.console import settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KEFU_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).parent / "fixtures"

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
