"""Shared test helpers: the real data sets in ../shared/data, and small input files."""

from __future__ import annotations

import os
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
