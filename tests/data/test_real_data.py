"""The real STAR, Taskmaster-4 and CrossWOZ files, counted independently of kefu's readers."""

from __future__ import annotations

import gzip
import json
import zipfile

import pytest

from kefu.config import load_config
from kefu.data.ingest import ingest
from kefu.data.records import SPLITS
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def independent_count(dialogues: list[list[tuple[str, str]]]) -> tuple[int, int, int]:
    """(kept conversations, their turns, rejected) the simple way: turns with text, same-role runs
    merged, conversations needing both a user and an assistant turn."""
    kept = turns = rejected = 0
    seen = set()
    for pairs in dialogues:
        merged: list[tuple[str, str]] = []
        for role, text in pairs:
            text = " ".join((text or "").split())
            if not text:
                continue
            if merged and merged[-1][0] == role:
                merged[-1] = (role, merged[-1][1] + "\n" + text)
            else:
                merged.append((role, text))
        if {r for r, _ in merged} < {"user", "assistant"} or len({r for r, _ in merged}) < 2:
            rejected += 1
            continue
        key = tuple(merged)
        if key in seen:
            continue
        seen.add(key)
        kept += 1
        turns += len(merged)
    return kept, turns, rejected


def ingest_recipe(name: str, tmp_path, shared_data):
    """Ingest with a shipped recipe, its inputs pointed at wherever the shared data really is."""
    recipe = load_config(REPO / "recipes" / "data" / f"{name}.yaml")
    inputs = [str(shared_data / path.split("/shared/data/", 1)[1]) for path in recipe.inputs]
    stats = ingest(recipe.model_copy(update={"inputs": inputs}), tmp_path / name)
    written = sum(stats["splits"][s]["records"] for s in SPLITS)
    turns = sum(stats["splits"][s]["turns"] for s in SPLITS)
    return stats, written, turns


def test_star(shared_data, tmp_path):
    dialogues = []
    with gzip.open(shared_data / "star" / "dialogues.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            events = json.loads(line)["Events"]
            dialogues.append(
                [
                    ("user" if e["Agent"] == "User" else "assistant", e.get("Text"))
                    for e in events
                    if (e["Agent"], e["Action"])
                    in {("User", "utter"), ("Wizard", "utter"), ("Wizard", "pick_suggestion")}
                ]
            )
    kept, turns, rejected = independent_count(dialogues)
    stats, written, written_turns = ingest_recipe("star", tmp_path, shared_data)
    assert (stats["records_read"], written, written_turns) == (6652, kept, turns)
    assert stats["rejects"] == {"total": rejected, "no_exchange": rejected}
    assert (written, rejected) == (6026, 624)  # 624 dialogues ended before the wizard spoke
    assert stats["splits"]["train"]["share_en"] == 1.0


def test_taskmaster4(shared_data, tmp_path):
    dialogues = []
    for path in sorted((shared_data / "taskmaster4").glob("data_*.json.gz")):
        for dialogue in json.loads(gzip.decompress(path.read_bytes())):
            dialogues.append([(u["speaker"], u["text"]) for u in dialogue["utterances"]])
    kept, turns, rejected = independent_count(dialogues)
    stats, written, written_turns = ingest_recipe("taskmaster4", tmp_path, shared_data)
    assert (stats["records_read"], written, written_turns) == (3710, kept, turns)
    assert rejected == stats["rejects"]["total"] == 0
    assert stats["duplicates_removed"] == 3710 - kept == 23  # self-dialogues written twice


def test_crosswoz(shared_data, tmp_path):
    dialogues = []
    for name in ("test", "val"):
        with zipfile.ZipFile(shared_data / "crosswoz" / f"{name}.json.zip") as archive:
            data = json.loads(archive.read(f"{name}.json"))
        for dialogue in data.values():
            dialogues.append(
                [
                    ("user" if m["role"] == "usr" else "assistant", m["content"])
                    for m in dialogue["messages"]
                ]
            )
    kept, turns, _ = independent_count(dialogues)
    stats, written, written_turns = ingest_recipe("crosswoz", tmp_path, shared_data)
    assert (
        (stats["records_read"], written, written_turns)
        == (1000, kept, turns)
        == (1000, 1000, turns)
    )
    assert all(stats["splits"][s]["share_zh"] > 0.95 for s in SPLITS)
    assert stats["pii"]["PHONE"] > 500  # venue phone numbers such as 010-65528888


def test_banking77_keeps_its_published_test_set(shared_data, tmp_path):
    stats, written, _ = ingest_recipe("banking77", tmp_path, shared_data)
    assert written == 13083 and stats["splits"]["test"]["records"] == 3080
    assert stats["splits"]["valid"]["records"] == pytest.approx(1000, abs=10)
    assert all(stats["splits"][s]["labels"] == 77 for s in SPLITS)
