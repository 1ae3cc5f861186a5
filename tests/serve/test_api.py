"""The OpenAI-compatible API over loopback, with the official `openai` client and httpx."""

from __future__ import annotations

import json
import logging
import time

import openai
import psycopg
import pytest
from psycopg import sql

from tests.serve.conftest import FAQ_EN, FAQ_ZH, LiveServer

MODEL = "acme_bank"


def client_for(server: LiveServer, scopes=("chat",)) -> openai.OpenAI:
    key, _ = server.store.create_api_key("tests", list(scopes))
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def stored_answer(server: LiveServer, conversation_id: str):
    """The answer of a one-turn conversation, once the server has stored it."""
    deadline = time.monotonic() + 10
    while len(messages := server.store.conversation(conversation_id).messages) < 2:
        assert time.monotonic() < deadline, "the answer was never stored"
        time.sleep(0.05)
    return messages[1]


def test_an_faq_question_is_answered_from_the_faq_and_stored(server: LiveServer) -> None:
    client = client_for(server)
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_EN}]
    )
    kefu = response.model_extra["kefu"]
    assert kefu["route"] == "faq" and kefu["sources"][0]["id"] == "lost-card-en"
    assert kefu["sources"][0]["url"] == "https://www.acmebank.example/help/lost-card"
    assert response.choices[0].message.content.startswith("Please freeze your card straight away")
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (
        usage.completion_tokens > 10
        and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )

    stored = server.store.conversation(kefu["conversation_id"])
    assert [m.role for m in stored.messages] == ["user", "assistant"]
    assert stored.messages[0].text == FAQ_EN
    answer = stored.messages[1]
    assert answer.id == kefu["message_id"] and answer.route == "faq"
    assert answer.sources[0]["id"] == "lost-card-en" and "confidence" in answer.reason
    assert set(answer.model_versions) == {"intent/en", "intent/zh", "kb", "generator"}


def test_chinese_is_answered_from_the_chinese_faq(server: LiveServer) -> None:
    response = client_for(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_ZH}]
    )
    kefu = response.model_extra["kefu"]
    assert (kefu["route"], kefu["language"], kefu["sources"][0]["id"]) == (
        "faq",
        "zh",
        "lost-card-zh",
    )
    assert "冻结卡片（卡片 → 冻结卡片），" in response.choices[0].message.content  # as written


def test_streaming_gives_the_stored_answer_piece_by_piece(server: LiveServer) -> None:
    client = client_for(server)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me something about your savings products"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    first, last = chunks[0].model_extra["kefu"], chunks[-2].model_extra["kefu"]
    assert first["route"] == "generator" and "message_id" not in first
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1, "a generated answer arrives in more than one piece"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    stored = server.store.message(last["message_id"])
    assert stored.text == "".join(pieces) and stored.route == "generator"
    assert stored.tokens == chunks[-1].usage.completion_tokens


def test_a_conversation_continues_by_its_id(server: LiveServer) -> None:
    client = client_for(server)
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_EN}]
    )
    conversation_id = first.model_extra["kefu"]["conversation_id"]
    second = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "转人工"}],
        extra_body={"kefu": {"conversation_id": conversation_id}},
    )
    kefu = second.model_extra["kefu"]
    assert kefu["conversation_id"] == conversation_id and kefu["route"] == "handoff"
    assert second.choices[0].message.content.startswith("正在为您转接人工客服")
    stored = server.store.conversation(conversation_id)
    assert [m.role for m in stored.messages] == ["user", "assistant", "user", "assistant"]
    assert stored.status == "handoff"
    [queued] = server.store.handoffs("queued")
    assert queued.conversation_id == conversation_id and "转人工" in queued.reason


def test_history_sent_with_a_new_conversation_is_stored_with_it(server: LiveServer) -> None:
    response = client_for(server).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": FAQ_EN},
        ],
    )
    stored = server.store.conversation(response.model_extra["kefu"]["conversation_id"])
    assert [m.role for m in stored.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_models_lists_the_assistant(server: LiveServer) -> None:
    models = client_for(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["kefu"]["assistant"] == "Acme Bank Assistant"


BAD_REQUESTS = [
    # (body, status, code or words in the message)
    (b'{"model": "acme_bank", "messages": [', 400, "not valid JSON"),
    (b"[1, 2]", 400, "invalid request"),
    (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}), 404, "model_not_found"),
    (json.dumps({"model": MODEL, "messages": []}), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "   "}]}), 400, "invalid_messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}), 400, "invalid_messages"),
    (json.dumps({"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "hi"}]}), 400, "n"),
    (json.dumps({"model": MODEL, "temperature": 7, "messages": [{"role": "user", "content": "hi"}]}), 400, "temperature"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "kefu": {"conversation_id": "nope"}}), 404, "conversation_not_found"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 9000}]}), 413, "body_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "expected"), BAD_REQUESTS)
def test_bad_requests_get_a_json_error_and_store_nothing(
    sqlite_server: LiveServer, body, status: int, expected: str
) -> None:
    with sqlite_server.client() as http:
        response = http.post(
            "/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json", "x-request-id": "test-req-1"},
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert expected in (error["code"] or "") + error["message"] + (error["param"] or "")
    assert error["request_id"] == "test-req-1" == response.headers["x-request-id"]
    assert sqlite_server.store.count_messages() == 0


def test_a_body_streamed_without_length_is_cut_at_the_limit(sqlite_server: LiveServer) -> None:
    def body():
        yield b'{"model": "acme_bank", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}]}'

    with sqlite_server.client() as http:
        response = http.post("/v1/chat/completions", content=body())
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert sqlite_server.store.count_messages() == 0


def test_unknown_endpoints_and_methods_get_json_errors(sqlite_server: LiveServer) -> None:
    with sqlite_server.client() as http:
        missing = http.get("/v1/nothing")
        wrong = http.get("/v1/chat/completions")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]["message"]
    assert wrong.status_code == 405 and wrong.json()["error"]["message"]


def test_feedback_is_stored_and_checked(server: LiveServer) -> None:
    client = client_for(server)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_EN}]
    )
    message_id = answer.model_extra["kefu"]["message_id"]
    mine = answer.model_extra["kefu"]["conversation_id"]
    other = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_ZH}]
    ).model_extra["kefu"]["conversation_id"]
    with server.client() as http:

        def rate(conversation_id, message_id, rating, **more):
            body = {"conversation_id": conversation_id, "message_id": message_id, "rating": rating}
            return http.post("/v1/feedback", json={**body, **more})

        ok = rate(mine, message_id, -1, comment="too long")
        unknown = rate(mine, 10**9, 1)
        not_yours = rate(other, message_id, 1)  # someone else's answer, by its sequential id
        bad = rate(mine, message_id, 5)
    assert ok.status_code == 200 and ok.json()["rating"] == -1
    [stored] = server.store.feedback(message_id)
    assert (stored.rating, stored.comment) == (-1, "too long")
    assert unknown.status_code == 404 and not_yours.status_code == 404
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]


def test_the_handoff_queue_needs_admin_and_moves_claimed_to_resolved(server: LiveServer) -> None:
    chat = client_for(server)
    answer = chat.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_EN}]
    )
    conversation_id = answer.model_extra["kefu"]["conversation_id"]
    admin_key, _ = server.store.create_api_key("agent desk", ["admin"])
    admin = {"authorization": f"Bearer {admin_key}"}
    with server.client() as http:
        pressed = http.post("/v1/handoffs/request", json={"conversation_id": conversation_id})
        assert pressed.status_code == 200 and pressed.json()["message"].startswith(
            "I'm passing you"
        )
        assert http.get("/v1/handoffs").status_code == 401
        chat_only = {"authorization": f"Bearer {chat.api_key}"}
        assert http.get("/v1/handoffs", headers=chat_only).status_code == 403
        [queued] = http.get("/v1/handoffs", params={"status": "queued"}, headers=admin).json()[
            "data"
        ]
        assert queued["conversation_id"] == conversation_id
        claimed = http.post(
            f"/v1/handoffs/{queued['id']}/claim", json={"agent": "ann"}, headers=admin
        )
        again = http.post(
            f"/v1/handoffs/{queued['id']}/claim", json={"agent": "bob"}, headers=admin
        )
        resolved = http.post(
            f"/v1/handoffs/{queued['id']}/resolve",
            json={"agent": "ann", "note": "done"},
            headers=admin,
        )
    assert claimed.json()["status"] == "claimed" and claimed.json()["agent"] == "ann"
    assert again.status_code == 409 and "ann" in again.json()["error"]["message"]
    assert resolved.json()["status"] == "resolved"
    assert server.store.conversation(conversation_id).status == "open"


def test_keys_scopes_and_rate_limits(sqlite_server: LiveServer) -> None:
    store = sqlite_server.store
    limited, _ = store.create_api_key("slow client", ["chat"], rate_limit_per_minute=2)
    revoked, record = store.create_api_key("old", ["chat"])
    store.revoke_api_key(record.prefix)
    body = {"model": MODEL, "messages": [{"role": "user", "content": FAQ_EN}]}
    with sqlite_server.client() as http:
        codes = [
            http.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {limited}"}
            )
            for _ in range(3)
        ]
        gone = http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {revoked}"}
        )
        malformed = http.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Basic abc"}
        )
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1
    assert codes[2].json()["error"]["type"] == "rate_limit_error"
    assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]
    assert malformed.status_code == 401
    assert store.count_messages("user") == 2


def test_health_readiness_and_metrics(sqlite_server: LiveServer) -> None:
    client = client_for(sqlite_server)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": FAQ_EN}])
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "human please"}]
    )
    with sqlite_server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["status"] == "ready"
        metrics = http.get("/metrics").text
    versions = "generator=v1 intent/en=v1 intent/zh=v1 kb=v1"
    assert f'kefu_turns_total{{route="faq",versions="{versions}"}} 1.0' in metrics
    assert 'kefu_handoffs_total{trigger="requested"} 1.0' in metrics
    assert (
        'kefu_http_requests_total{method="POST",path="/v1/chat/completions",status="200"} 2.0'
        in metrics
    )
    assert 'kefu_model_info{kind="generator",role="live",version="v1"} 1.0' in metrics
    assert "kefu_registry_revision " in metrics
    assert "kefu_turn_seconds_bucket" in metrics


def test_personal_data_is_redacted_in_the_store_copy_and_the_log(
    sqlite_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    text = "My card 4111 1111 1111 1111 is lost, call me on 13812345678"
    with caplog.at_level(logging.INFO, logger="kefu.serve"):
        response = client_for(sqlite_server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}]
        )
    stored = sqlite_server.store.conversation(response.model_extra["kefu"]["conversation_id"])
    assert stored.messages[0].text == text
    redacted = stored.messages[0].redacted_text
    assert "4111" not in redacted and "13812345678" not in redacted
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "customer said" in logged and "13812345678" not in logged and "4111 1111" not in logged


def test_a_client_that_leaves_mid_stream_leaves_what_it_was_sent_stored(
    sqlite_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = sqlite_server.app.state.service
    real_pieces = service.pieces

    def paced(started, sampling):  # the tiny test model is too fast to leave in the middle of
        for piece in real_pieces(started, sampling):
            time.sleep(0.05)
            yield piece

    monkeypatch.setattr(service, "pieces", paced)
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me something about your savings products"}],
    }
    with (
        sqlite_server.client() as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        next(line for line in lines if line.startswith("data:"))  # one piece of the answer
    answer = stored_answer(sqlite_server, first["kefu"]["conversation_id"])
    assert answer.role == "assistant" and "client disconnected" in answer.reason
    assert answer.text and answer.tokens < 24  # part of the answer, not all of it


def test_the_database_down_is_503_and_the_server_recovers_by_itself(
    start_server, postgres_url: str, postgres_admin_url: str
) -> None:
    server = start_server(postgres_url)
    name = postgres_url.rsplit("/", 1)[1]
    body = {"model": MODEL, "messages": [{"role": "user", "content": FAQ_EN}]}

    def database_allows_connections(allowed: bool) -> None:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(name), sql.Literal(allowed)
                )
            )
            if not allowed:  # and drop the server's pooled connections
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [name],
                )

    with server.client() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        database_allows_connections(False)
        try:
            down = http.post("/v1/chat/completions", json=body)
            not_ready = http.get("/readyz")
        finally:
            database_allows_connections(True)
        back = http.post("/v1/chat/completions", json=body)
    assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
    assert down.headers["retry-after"] == "1"
    assert not_ready.status_code == 503
    assert back.status_code == 200
    assert server.store.count_messages("user") == 2  # the refused message was not half-stored


def test_after_a_resolved_handoff_the_turn_limit_counts_afresh(sqlite_server: LiveServer) -> None:
    client = client_for(sqlite_server)
    limit = 20  # HandoffConfig.max_turns

    def ask(text: str, conversation_id: str | None = None) -> dict:
        extra = {"kefu": {"conversation_id": conversation_id}} if conversation_id else None
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], extra_body=extra
        )
        return answer.model_extra["kefu"]

    first = ask(FAQ_EN)
    conversation_id = first["conversation_id"]
    routes = [ask(FAQ_EN, conversation_id)["route"] for _ in range(limit - 1)]
    assert routes[:-1] == ["faq"] * (limit - 2) and routes[-1] == "handoff"
    [handoff] = sqlite_server.store.handoffs("queued")
    sqlite_server.store.resolve_handoff(handoff.id, "ann", "answered by phone")
    assert ask(FAQ_EN, conversation_id)["route"] == "faq"
    assert sqlite_server.store.handoffs("queued") == []


def test_an_answer_that_fails_mid_stream_says_so_and_is_stored_as_failed(
    sqlite_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def breaks(started, sampling):
        yield "Let me check"
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(sqlite_server.app.state.service, "pieces", breaks)
    stream = client_for(sqlite_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FAQ_EN}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="failed part-way"):
        for chunk in stream:
            received.append(chunk)
    conversation_id = received[0].model_extra["kefu"]["conversation_id"]
    answer = stored_answer(sqlite_server, conversation_id)  # stored after the error was sent
    assert answer.text == "Let me check"
    assert answer.reason.endswith("the answer failed: RuntimeError")
