"""Faults of a real `kefu serve` process: killed (SIGKILL) mid-stream, then restarted.

The store commits the customer's message before anything is generated and the answer only
once it is whole (or cut short by the client or an error the server sees). A server killed
outright sees nothing: the customer's message must be there after the restart, committed,
with no answer, no half-written row and no duplicate, and the conversation must go on.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from kefu.store.repository import Store
from tests.serve.conftest import Server, _free_port

MODEL = "acme_bank"
# Routed to the generator by the demo (see test_api.py), so the answer is streamed in pieces.
GENERATED = "Tell me something about your savings products"
HOLD_S = 60
# The tiny test generator writes its whole answer (at most 24 tokens; the project caps
# max_tokens at that) in about a millisecond once warm: by the time a client has parsed the
# first chunk, the rest of the stream, [DONE] included, is already in its socket buffer, and
# a kill would come too late. (Only a server's first answer is slower, by its warm-up.)
# So the first server runs `kefu serve` with one change: once the first piece of an answer is
# out, the next is held back HOLD_S seconds. When the client has read that first piece, the
# server is therefore certainly in the middle of the stream (the answer neither finished nor
# stored) and stays there far longer than the test needs to kill it: the kill lands
# mid-stream every time, whatever the machine's load. Nothing else of the server changes, and
# the restarted server is the plain `kefu serve`.
HELD_SERVE = f"""
import time

from kefu.serve.service import ChatService

real_pieces = ChatService.pieces


def held_pieces(self, started, sampling):
    pieces = real_pieces(self, started, sampling)
    first = next(pieces, None)
    if first is not None:
        yield first
    time.sleep({HOLD_S})  # runs when the route asks for the second piece
    yield from pieces


ChatService.pieces = held_pieces

from kefu.cli import main

main()
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kefu.db'}"
    return request.getfixturevalue("postgres_url")


def table_rows(database: str) -> dict[str, int]:
    """Rows of every table, and rows that break the database's own integrity (must be 0)."""
    url = database.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = {
                table: connection.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in ("conversations", "messages", "handoffs", "feedback", "api_keys")
            }
            rows["orphan messages"] = connection.scalar(
                text(
                    "SELECT count(*) FROM messages m LEFT JOIN conversations c"
                    " ON c.id = m.conversation_id WHERE c.id IS NULL"
                )
            )
            if engine.dialect.name == "sqlite":
                check = connection.exec_driver_sql("PRAGMA integrity_check").scalars().all()
                rows["sqlite integrity problems"] = 0 if check == ["ok"] else len(check)
    finally:
        engine.dispose()
    return rows


def expected_rows(database: str, messages: int) -> dict[str, int]:
    """`table_rows` of a store with one conversation of `messages` messages and one key."""
    rows = {"conversations": 1, "messages": messages, "handoffs": 0, "feedback": 0}
    rows |= {"api_keys": 1, "orphan messages": 0}
    return rows | ({"sqlite integrity problems": 0} if database.startswith("sqlite") else {})


@pytest.mark.slow
def test_a_server_killed_mid_stream_restarts_with_the_turn_stored_and_goes_on(
    database: str, kefu_serve: Callable[..., Server]
) -> None:
    with Store.open(database) as store:
        key, _ = store.create_api_key("faults", ["chat"])
    headers = {"authorization": f"Bearer {key}"}
    port = _free_port()
    server = kefu_serve(database, port, python_args=("-c", HELD_SERVE))

    # 1. A streamed answer, and the server killed once the first piece of it has arrived.
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": GENERATED}]}
    events: list[str] = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        stream_headers = {**headers, "x-request-id": "req-killed-turn"}
        with http.stream("POST", "/v1/chat/completions", json=body, headers=stream_headers) as r:
            assert r.status_code == 200, r.read()
            data = (line[5:].strip() for line in r.iter_lines() if line.startswith("data:"))
            first = json.loads(next(data))  # the role chunk, sent before generation
            piece = json.loads(next(data))  # the first piece of the generated answer
            server.kill()
            killed_at = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):  # not a ReadTimeout: no hang
                events.extend(data)
            broken_after = time.monotonic() - killed_at
    assert server.process.returncode == -signal.SIGKILL
    assert first["kefu"]["route"] == "generator" and "message_id" not in first["kefu"]
    assert piece["choices"][0]["delta"]["content"]
    assert "[DONE]" not in events and not any('"finish_reason"' in e for e in events)
    assert broken_after < 5, f"the client noticed the dead server only after {broken_after:.1f} s"
    conversation_id = first["kefu"]["conversation_id"]
    user_message_id = first["kefu"]["user_message_id"]

    # 2. The store as the kill left it: the customer's message, committed, and nothing else.
    assert table_rows(database) == expected_rows(database, messages=1)
    with Store.open(database) as store:
        killed = store.conversation(conversation_id)
    [message] = killed.messages
    assert (message.id, message.role, message.text) == (user_message_id, "user", GENERATED)
    assert message.redacted_text == GENERATED and message.request_id == "req-killed-turn"
    assert (message.route, message.reason, message.tokens) == (None, None, None)
    assert (killed.status, killed.low_confidence_streak, killed.channel) == ("open", 0, "api")

    # 3. The plain server, restarted on the same database and port, reads the conversation...
    server = kefu_serve(database, port)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        read = http.get(f"/v1/conversations/{conversation_id}", headers=headers)
        refused = http.get(
            f"/v1/conversations/{conversation_id}", headers={"authorization": "Bearer kefu-nope"}
        )
        # ... and the conversation goes on.
        continued = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": GENERATED}],
                "kefu": {"conversation_id": conversation_id},
            },
            headers={**headers, "x-request-id": "req-after-restart"},
        )
    assert read.status_code == 200, read.text
    shown = read.json()
    assert (shown["id"], shown["status"]) == (conversation_id, "open")
    assert [(m["id"], m["role"], m["text"]) for m in shown["messages"]] == [
        (user_message_id, "user", GENERATED)
    ]
    assert refused.status_code == 401
    assert continued.status_code == 200, continued.text
    answer = continued.json()
    kefu = answer["kefu"]
    assert kefu["conversation_id"] == conversation_id and kefu["route"] == "generator"
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    reply = answer["choices"][0]["message"]["content"]
    assert reply

    # 4. The conversation holds the killed turn's message (unanswered), then the new turn.
    with Store.open(database) as store:
        after = store.conversation(conversation_id)
    assert [(m.role, m.text, m.request_id) for m in after.messages] == [
        ("user", GENERATED, "req-killed-turn"),
        ("user", GENERATED, "req-after-restart"),
        ("assistant", reply, "req-after-restart"),
    ]
    ids = [m.id for m in after.messages]
    assert ids == sorted(set(ids)) and ids == [user_message_id, kefu["user_message_id"], ids[2]]
    assert ids[2] == kefu["message_id"]
    answered = after.messages[2]
    assert answered.route == "generator" and answered.tokens == answer["usage"]["completion_tokens"]
    assert "disconnected" not in answered.reason and "failed" not in answered.reason
    assert table_rows(database) == expected_rows(database, messages=3)
