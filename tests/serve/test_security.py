"""A locked-down project: no anonymous chat, a CORS allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.serve.conftest import FAQ_EN

ALLOWED = "https://shop.acmebank.example"


@pytest.fixture
def locked_server(demo_project: Path, start_server, tmp_path: Path):
    project = yaml.safe_load((demo_project / "kefu.yaml").read_text(encoding="utf-8"))
    project["build_dir"] = str(demo_project / "build")
    project["serve"].update({"anonymous_chat": False, "cors_origins": [ALLOWED]})
    for section in ("data",):  # data inputs stay relative to the demo's folder
        for source in project[section].values():
            source["inputs"] = [str(demo_project / i) for i in source["inputs"]]
    for language, recipe in project["intents"]["recipes"].items():
        project["intents"]["recipes"][language] = str(demo_project / recipe)
    project["generator"]["recipe"] = str(demo_project / project["generator"]["recipe"])
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "kefu.yaml").write_text(yaml.safe_dump(project, allow_unicode=True), encoding="utf-8")
    return start_server(f"sqlite:///{tmp_path / 'kefu.db'}", project=folder)


def test_without_anonymous_chat_every_chat_request_needs_a_key(locked_server) -> None:
    body = {"model": "acme_bank", "messages": [{"role": "user", "content": FAQ_EN}]}
    key, _ = locked_server.store.create_api_key("shop", ["chat"])
    with locked_server.client() as http:
        anonymous = http.post("/v1/chat/completions", json=body)
        with_key = http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        page = http.get("/")  # the page itself is public; it just cannot chat
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    assert with_key.status_code == 200 and page.status_code == 200
    assert locked_server.store.count_messages("user") == 1


def test_cors_allows_only_the_listed_origins(locked_server) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    with locked_server.client() as http:
        allowed = http.options("/v1/chat/completions", headers={"origin": ALLOWED, **preflight})
        other = http.options(
            "/v1/chat/completions", headers={"origin": "https://evil.example", **preflight}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_the_api_key_is_never_stored_in_plain_text(locked_server, tmp_path: Path) -> None:
    key, _ = locked_server.store.create_api_key("shop", ["chat"])
    locked_server.stop()
    files = list(tmp_path.glob("kefu.db*"))  # the database, and its write-ahead log if any
    assert files and all(key.encode() not in f.read_bytes() for f in files)
