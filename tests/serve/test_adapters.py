"""One Hugging Face base with several LoRA adapters behind the server: `kefu build` fine-tunes
the project's generator as a LoRA run, a second adapter joins it from `generator.adapters`, and
each request picks its adapter by model name, all on one loaded base."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kefu.assistant.pipeline import Assistant
from kefu.assistant.policy import ConversationState
from kefu.errors import KefuError
from kefu.infer.generate import generate
from kefu.project import build, load_project
from tests.models.tiny_hf import save_adapter_run, save_llama

QUESTION = "Where is my card?"


def _write_project(folder: Path, base: Path, adapters: dict[str, str]) -> Path:
    chats = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "user", "content": f"Where is my card {i}?"},
                {"role": "assistant", "content": f"Your card {i} arrives in 5 days."},
            ],
        }
        for i in range(40)
    ]
    (folder / "chats.jsonl").write_text("\n".join(map(json.dumps, chats)), encoding="utf-8")
    recipe = {
        "kind": "train",
        "task": "chat",
        "base": str(base),
        "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 0.02, "eval_every": 6, "eval_batches": 1},
    }
    (folder / "generator.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    project = {
        "kind": "project",
        "name": "tiny",
        "languages": ["en"],
        "data": {"chats": {"format": "messages", "inputs": ["chats.jsonl"]}},
        "tokenizer": {"vocab_size": 400},
        "generator": {"data": "chats", "recipe": "generator.yaml", "adapters": adapters},
        # Greedy, short replies, no repetition penalty: what the test recomputes by hand.
        "assistant": {"temperature": 0.0, "max_new_tokens": 6, "repetition_penalty": 1.0},
        "serve": {"rate_limit_per_minute": 1000},
    }
    (folder / "kefu.yaml").write_text(yaml.safe_dump(project), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project, built: its generator a LoRA run on a tiny Llama, plus adapter `other`."""
    base = save_llama(tmp_path_factory.mktemp("llama"))
    folder = tmp_path_factory.mktemp("project")
    save_adapter_run(base, folder / "other", seed=2)
    _write_project(folder, base, {"other": "other"})
    build(folder)
    return folder


@pytest.fixture(scope="module")
def served(project: Path) -> Assistant:
    return Assistant.load(load_project(project))


def _alone(assistant: Assistant, adapter: str | None) -> str:
    """The reply the generator gives QUESTION with `adapter` in use, computed without the server."""
    turn = assistant.turn(QUESTION, [], ConversationState())
    model = assistant.generator.model
    model.use_adapter(adapter)
    sampling = assistant.sampling(temperature=0.0)
    (reply,) = generate(model, assistant.generator.tokenizer, [turn.prompt], sampling)
    return reply.text.strip() or assistant.config.assistant.no_answer["en"]


def test_each_model_name_answers_with_its_own_adapter(project, served, start_server, tmp_path):
    model = served.generator.model
    assert model.adapters == ["generator", "other"]  # the built run's own adapter, and one more
    assert model.default_adapter == "generator"
    expected = {"tiny": _alone(served, "generator"), "tiny:other": _alone(served, "other")}
    assert expected["tiny"] != expected["tiny:other"]  # else the test could not tell them apart
    assert set(served.versions) == {"generator", "adapter/other"}

    server = start_server(f"sqlite:///{tmp_path / 'kefu.db'}", project=project, serving=served)
    with server.client() as client:
        listed = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["kefu"]["adapter"]) for m in listed] == [
            ("tiny", None),
            ("tiny:other", "other"),
        ]

        def ask(name: str) -> str:
            body = {"model": name, "messages": [{"role": "user", "content": QUESTION}]}
            answered = client.post("/v1/chat/completions", json=body)
            assert answered.status_code == 200, answered.text
            assert answered.json()["kefu"]["route"] == "generator"
            return answered.json()["choices"][0]["message"]["content"]

        # Requests of both adapters at once: their decoding steps interleave on one base, and
        # each still gets exactly the reply its adapter gives alone.
        names = ["tiny", "tiny:other"] * 4
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, names))
        assert [reply.strip() for reply in replies] == [expected[name] for name in names]

        unknown = client.post(
            "/v1/chat/completions",
            json={"model": "tiny:nope", "messages": [{"role": "user", "content": QUESTION}]},
        )
        assert unknown.status_code == 404
        error = unknown.json()["error"]
        assert error["code"] == "model_not_found" and "'tiny:other'" in error["message"]


def test_an_adapter_of_another_base_stops_the_assistant_loading(project, tmp_path):
    stranger = save_llama(tmp_path / "stranger", seed=7)  # same shapes, other weights
    save_adapter_run(stranger, tmp_path / "foreign", seed=1)
    config = load_project(project)
    generator = config.generator.model_copy(
        update={"adapters": {"foreign": str(tmp_path / "foreign")}}
    )
    with pytest.raises(KefuError, match=r"trained on .*but this model is"):
        Assistant.load(config.model_copy(update={"generator": generator}))


def test_adapters_need_a_hugging_face_generator(demo_project, tmp_path):
    config = load_project(demo_project)  # its generator is kefu's own GPT
    generator = config.generator.model_copy(update={"adapters": {"x": str(tmp_path)}})
    with pytest.raises(KefuError, match=r"needs a Hugging Face generator.*this generator is a gpt"):
        Assistant.load(config.model_copy(update={"generator": generator}))
