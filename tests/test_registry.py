"""The model registry on the small demo: pushes, the evaluation gate, canaries, rollback, and a
server process (Deployments) that follows it — including a version that will not load."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kefu.assistant.pipeline import Assistant
from kefu.errors import KefuError
from kefu.project import load_project
from kefu.registry import PromotionRefused, Registry, comparison, folder_digest
from kefu.serve.deployment import Deployments, draw
from kefu.store.repository import Store


def variant(demo_project: Path, folder: Path, noise: float = 0.0, scale: float = 1.0) -> Path:
    """A copy of the demo generator with its weights changed: scaled, plus relative noise."""
    shutil.copytree(demo_project / "build" / "generator", folder)
    weights = load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    changed = {
        name: tensor * scale + noise * tensor.std() * torch.randn(tensor.shape, generator=generator)
        for name, tensor in weights.items()
    }
    save_file(changed, folder / "model.safetensors")
    return folder


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Store:
    url = (
        f"sqlite:///{tmp_path / 'registry.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    with Store.open(url) as opened:
        yield opened


@pytest.fixture
def registry(demo_project: Path, store: Store) -> Registry:
    found = Registry(load_project(demo_project), store, actor="test")
    found.register_build()
    return found


def test_the_build_becomes_v1_of_every_kind_with_real_evaluations(registry: Registry) -> None:
    assert {d.kind: d.live for d in registry.store.deployments()} == {
        "intent/en": "v1",
        "intent/zh": "v1",
        "kb": "v1",
        "generator": "v1",
    }
    scores = {v.kind: v.evaluation for v in registry.versions()}
    assert scores["generator"]["metric"] == "perplexity"
    assert 1 < scores["generator"]["value"] < 2000  # vocabulary 2000: better than uniform
    assert scores["generator"]["higher_is_better"] is False
    for language in ("en", "zh"):
        assert scores[f"intent/{language}"]["metric"] == "accuracy"
        assert 0.2 < scores[f"intent/{language}"]["value"] <= 1
    assert scores["kb"]["metric"] == "MRR" and 0.3 < scores["kb"]["value"] <= 1
    # Registering the same build again pushes nothing new and changes nothing.
    revision = registry.store.registry_revision()
    assert registry.register_build() == []
    assert len(registry.versions()) == 4 and registry.store.registry_revision() == revision


def test_the_same_files_are_the_same_version(registry: Registry, demo_project: Path) -> None:
    again, new = registry.push("generator", demo_project / "build" / "generator")
    assert (again.version, new) == ("v1", False)


def test_a_corrupt_or_broken_model_is_never_pushed(
    registry: Registry, demo_project: Path, tmp_path: Path
) -> None:
    corrupt = variant(demo_project, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(KefuError, match=rf"{corrupt} not pushed: .*cannot be loaded"):
        registry.push("generator", corrupt)
    not_a_number = variant(demo_project, tmp_path / "nan", scale=float("nan"))
    with pytest.raises(KefuError, match="smoke test: its weights hold NaN"):
        registry.push("generator", not_a_number)
    # Finite weights, but logits beyond any float: the evaluation gives no number.
    exploded = variant(demo_project, tmp_path / "exploded", scale=1e18)
    with pytest.raises(KefuError, match=rf"{exploded} not pushed: .*the model is broken"):
        registry.push("generator", exploded)
    with pytest.raises(KefuError, match="kinds are intent/en, intent/zh, kb, generator"):
        registry.push("classifier", corrupt)
    assert [v.version for v in registry.versions("generator")] == ["v1"]
    # Nothing of the refused pushes is left in the registry folder (other tests push beside).
    refused = {folder_digest(f)[:16] for f in (corrupt, not_a_number, exploded)}
    left = [
        p.name
        for p in (registry.root / "generator").iterdir()
        if p.name.lstrip(".")[:16] in refused
    ]
    assert left == []


def test_promotion_is_gated_by_the_held_out_evaluation(
    registry: Registry, demo_project: Path, tmp_path: Path
) -> None:
    close, _ = registry.push("generator", variant(demo_project, tmp_path / "close", scale=1.0001))
    worse, _ = registry.push("generator", variant(demo_project, tmp_path / "worse", noise=0.5))
    live = registry.store.model_version("generator", "v1").evaluation["value"]
    assert worse.evaluation["value"] > live * 1.02  # the noise really made it worse
    with pytest.raises(
        PromotionRefused, match=r"perplexity .* worse by [0-9.]+%, more than the 2%"
    ):
        registry.promote("generator", worse.version, wait_s=None)
    assert registry.deployment("generator").live == "v1"
    promoted = registry.promote("generator", close.version, wait_s=None)
    assert promoted.deployment.live == close.version and "against live" in promoted.gate
    forced = registry.promote("generator", worse.version, force=True, wait_s=None)
    assert forced.deployment.live == worse.version and forced.gate.endswith("(forced)")
    # Each rollback returns to the version live before, one step at a time.
    assert registry.rollback("generator", wait_s=None).deployment.live == close.version
    assert registry.rollback("generator", wait_s=None).deployment.live == "v1"
    with pytest.raises(KefuError, match="no earlier live version"):
        registry.rollback("generator", wait_s=None)
    actions = [e.action for e in registry.store.model_events("generator")]
    assert actions == [
        "push",
        "promote",
        "push",
        "push",
        "promote",
        "promote",
        "rollback",
        "rollback",
    ]


def test_the_gate_compares_in_the_metric_direction() -> None:
    perplexity = {"metric": "perplexity", "higher_is_better": False, "held_out": "test"}
    accuracy = {"metric": "accuracy", "higher_is_better": True, "held_out": "test"}
    assert comparison({**perplexity, "value": 10}, {**perplexity, "value": 10.1}, 0.02)[0]
    assert not comparison({**perplexity, "value": 10}, {**perplexity, "value": 10.3}, 0.02)[0]
    assert comparison({**accuracy, "value": 0.9}, {**accuracy, "value": 0.89}, 0.02)[0]
    assert not comparison({**accuracy, "value": 0.9}, {**accuracy, "value": 0.85}, 0.02)[0]
    unknown = {"metric": None, "why": "no held-out records"}
    assert comparison({**accuracy, "value": 0.9}, unknown, 0.02) == (
        True,
        "not compared (no held-out records)",
    )


def test_a_canary_takes_its_share_of_conversations_and_keeps_them(
    registry: Registry, demo_project: Path, tmp_path: Path, assistant: Assistant
) -> None:
    candidate, _ = registry.push("generator", variant(demo_project, tmp_path / "c", scale=1.0001))
    with pytest.raises(KefuError, match="between 0 and 1"):
        registry.canary("generator", candidate.version, 1.5, wait_s=None)
    registry.canary("generator", candidate.version, 0.25, wait_s=None)
    deployments = Deployments(registry.config, registry.store)
    deployments.start(preloaded=assistant)
    try:
        serving = deployments.serving
        ids = [f"conversation-{n}" for n in range(4000)]
        picked = Counter(serving.pick(i).versions["generator"] for i in ids)
        assert abs(picked[candidate.version] / len(ids) - 0.25) < 0.03
        assert all(serving.pick(i) is serving.pick(i) for i in ids[:50])  # stable per conversation
        assert all(draw(i) == draw(i) and 0 <= draw(i) < 1 for i in ids[:50])
        # Only the generator differs; the other models are the very same objects.
        trying = next(serving.pick(i) for i in ids if draw(i) < 0.25)
        assert trying.knowledge_base is serving.live.knowledge_base
        assert trying.generator is not serving.live.generator
        # Promoting the live version keeps it and ends the canary.
        kept = registry.promote("generator", "v1", wait_s=None)
        assert (kept.deployment.live, kept.deployment.candidate) == ("v1", None)
        assert deployments.refresh() and not deployments.serving.canaries
        assert registry.live_history("generator") == ["v1"]
    finally:
        deployments.stop()


def test_a_server_process_swaps_and_a_version_it_cannot_load_never_goes_live(
    registry: Registry, demo_project: Path, tmp_path: Path, assistant: Assistant
) -> None:
    deployments = Deployments(registry.config, registry.store)
    deployments.start(preloaded=assistant)  # it polls the registry every second
    try:
        before = deployments.serving.live
        good, _ = registry.push("generator", variant(demo_project, tmp_path / "good", scale=1.0001))
        promoted = registry.promote("generator", good.version, wait_s=30)
        assert promoted.workers == [deployments.worker]
        assert deployments.serving.live.versions["generator"] == good.version
        assert deployments.serving.live.knowledge_base is before.knowledge_base
        assert before.versions["generator"] == "v1"  # a turn that began on v1 still holds v1

        broken, _ = registry.push("generator", variant(demo_project, tmp_path / "b", scale=0.9999))
        (Path(broken.path) / "model.safetensors").write_bytes(b"corrupted after the push")
        with pytest.raises(
            KefuError,
            match=r"could not load the new version: .*cannot be loaded.*It was undone, so nothing changed",
        ):
            registry.promote("generator", broken.version, wait_s=30)
        assert registry.deployment("generator").live == good.version
        assert deployments.serving.live.versions["generator"] == good.version
        events = registry.store.model_events("generator")
        assert [e.action for e in events][-3:] == ["promote", "load_failed", "rollback"]
        assert "cannot be loaded" in events[-2].detail and events[-1].version == good.version
        # The undo is itself a revision: the process takes it up and its error is cleared.
        deadline = time.monotonic() + 10
        while True:
            (worker,) = registry.store.model_workers()
            if worker.revision == registry.store.registry_revision() and worker.error is None:
                break
            assert time.monotonic() < deadline, worker
            time.sleep(0.2)
    finally:
        deployments.stop()


def test_an_int8_generator_passes_the_gate_and_serves(
    registry: Registry, demo_project: Path, tmp_path: Path, assistant: Assistant
) -> None:
    from kefu.assistant.policy import ConversationState
    from kefu.compress.quantize import quantize_run

    quantized = quantize_run(demo_project / "build" / "generator", "int8-dynamic", tmp_path / "q")
    version, _ = registry.push("generator", quantized.path)
    (built,) = [v for v in registry.versions("generator") if v.version == "v1"]  # fp32
    assert abs(version.evaluation["value"] / built.evaluation["value"] - 1) < 0.02
    deployments = Deployments(registry.config, registry.store)
    deployments.start(preloaded=assistant)
    try:
        registry.promote("generator", version.version, wait_s=30)  # no --force: the gate passed
        serving = deployments.serving.live
        assert serving.versions["generator"] == version.version
        turn = serving.turn("and what about fees?" * 30, [], ConversationState())
        assert turn.route == "generator" and serving.engine.model is not assistant.engine.model
        assert "".join(serving.generate(turn, serving.sampling(max_tokens=8))).strip()
    finally:
        deployments.stop()
