import datetime
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
from sqlalchemy import select

from kefu.store.models import Base
from kefu.store.repository import Conflict, NotFound, Store, StoreError, StoreUnavailable

SOURCES = [{"id": "faq-12", "title": "Card fees", "url": None, "snippet": "No annual fee."}]
VERSIONS = {"intent": "intent-en@3", "generator": "gpt-small@7"}


def user(text: str, **fields) -> dict:
    return {"role": "user", "text": text, "redacted_text": text, **fields}


def answer(store: Store, conversation_id: str, text: str = "Here you go.", **fields) -> int:
    decision = {
        "route": "faq",
        "reason": "FAQ hit above threshold",
        "intent": "card_fees",
        "confidence": 0.91,
        "sources": SOURCES,
        "model_versions": VERSIONS,
        "tokens": 4,
        "latency_ms": 12.5,
        "request_id": "req-2",
        "low_confidence": False,
    }
    return store.add_assistant_message(conversation_id, text, text, **{**decision, **fields})


def rows(engine, table: str) -> list[dict]:
    """Every row of a table, read past the Store."""
    with engine.connect() as connection:
        return [
            dict(row._mapping) for row in connection.execute(select(Base.metadata.tables[table]))
        ]


def test_a_conversation_comes_back_as_it_was_stored(store):
    conversation_id, (system_id, user_id) = store.start_conversation(
        "wechat",
        "openid-42",
        "zh",
        [
            {"role": "system", "text": "Be polite.", "redacted_text": "Be polite."},
            user("我的电话是13812345678", request_id="req-1", channel_message_id="wx-1", tokens=9)
            | {"redacted_text": "我的电话是[PHONE]"},
        ],
    )
    reply_id = answer(store, conversation_id)

    conversation = store.conversation(conversation_id)
    assert (conversation.channel, conversation.user, conversation.language) == (
        "wechat",
        "openid-42",
        "zh",
    )
    assert (conversation.status, conversation.low_confidence_streak) == ("open", 0)
    assert [m.id for m in conversation.messages] == [system_id, user_id, reply_id]
    said = conversation.messages[1]
    assert (said.role, said.text, said.redacted_text) == (
        "user",
        "我的电话是13812345678",
        "我的电话是[PHONE]",
    )
    assert (said.request_id, said.channel_message_id, said.tokens) == ("req-1", "wx-1", 9)
    reply = store.message(reply_id)
    assert reply == conversation.messages[2]
    assert (reply.route, reply.intent, reply.confidence) == ("faq", "card_fees", 0.91)
    assert (reply.sources, reply.model_versions) == (SOURCES, VERSIONS)
    assert (reply.tokens, reply.latency_ms, reply.request_id) == (4, 12.5, "req-2")
    for moment in (conversation.created_at, conversation.updated_at, reply.created_at):
        assert moment.tzinfo == datetime.UTC
        assert abs(datetime.datetime.now(datetime.UTC) - moment) < datetime.timedelta(minutes=1)
    assert conversation.updated_at >= conversation.created_at


def test_a_channel_user_continues_their_latest_conversation(store):
    assert store.open_conversation("wechat", "openid-7") is None
    older, _ = store.start_conversation("wechat", "openid-7", "zh", [user("你好")])
    newer, _ = store.start_conversation("wechat", "openid-7", "zh", [user("在吗")])
    store.start_conversation("web", "openid-7", None, [user("hi")])
    store.start_conversation("wechat", "openid-8", None, [user("hi")])
    store.add_user_message(older, "还在", "还在")  # written to last, so it is the current one
    current = store.open_conversation("wechat", "openid-7")
    assert current.id == older
    assert [m.text for m in current.messages] == ["你好", "还在"]
    assert newer != older


def test_start_conversation_stores_nothing_when_one_message_fails(store, engine):
    with pytest.raises(Conflict, match="'wx-7'"):
        store.start_conversation(
            "wechat",
            None,
            None,
            [
                user("hi", channel_message_id="wx-7"),
                user("again", channel_message_id="wx-7"),
            ],
        )
    assert rows(engine, "conversations") == []
    assert rows(engine, "messages") == []


def test_a_retried_channel_message_is_a_conflict(store):
    conversation_id, (first,) = store.start_conversation(
        "wechat", "openid-1", None, [user("hi", channel_message_id="wx-1")]
    )
    with pytest.raises(Conflict, match="retry"):
        store.add_user_message(conversation_id, "hi", "hi", channel_message_id="wx-1")
    with pytest.raises(Conflict):
        store.start_conversation(
            "wechat", "openid-1", None, [user("hi", channel_message_id="wx-1")]
        )
    assert store.message_by_channel_id("wx-1").id == first
    assert store.message_by_channel_id("wx-2") is None
    assert store.count_messages() == 1
    # Messages without a channel id never collide.
    store.add_user_message(conversation_id, "one", "one")
    store.add_user_message(conversation_id, "two", "two")
    assert store.count_messages("user") == 3


def test_unknown_ids_are_not_found(store):
    with pytest.raises(NotFound, match="'nope'"):
        store.add_user_message("nope", "hi", "hi")
    with pytest.raises(NotFound):
        answer(store, "nope")
    with pytest.raises(NotFound):
        store.conversation("nope")
    with pytest.raises(NotFound):
        store.message(12345)
    with pytest.raises(NotFound):
        store.reply_to(12345)
    with pytest.raises(NotFound):
        store.request_handoff("nope", "customer asked")


def test_bad_words_are_refused_with_the_valid_ones(store):
    with pytest.raises(StoreError, match="web, api, wechat"):
        store.start_conversation("sms", None, None, [])
    with pytest.raises(StoreError, match="system, user, assistant"):
        store.start_conversation(
            "web", None, None, [{"role": "bot", "text": "x", "redacted_text": "x"}]
        )
    conversation_id, _ = store.start_conversation("web", None, None, [])
    with pytest.raises(StoreError, match="faq, generator, handoff"):
        answer(store, conversation_id, route="magic")
    with pytest.raises(StoreError, match="queued, claimed, resolved"):
        store.handoffs("lost")


def test_the_low_confidence_streak_counts_and_a_handoff_opens_once(store):
    conversation_id, _ = store.start_conversation("web", None, "en", [user("hi")])
    answer(store, conversation_id, low_confidence=True)
    answer(store, conversation_id, low_confidence=True)
    assert store.conversation(conversation_id).low_confidence_streak == 2
    answer(store, conversation_id, low_confidence=False)
    assert store.conversation(conversation_id).low_confidence_streak == 0
    assert store.handoffs() == []

    answer(store, conversation_id, route="handoff", low_confidence=True, handoff_reason="unsure")
    answer(store, conversation_id, route="handoff", low_confidence=True, handoff_reason="again")
    conversation = store.conversation(conversation_id)
    assert (conversation.status, conversation.low_confidence_streak) == ("handoff", 2)
    (handoff,) = store.handoffs()
    assert (handoff.conversation_id, handoff.reason, handoff.status) == (
        conversation_id,
        "unsure",
        "queued",
    )
    assert handoff.agent is None and handoff.claimed_at is None
    assert store.request_handoff(conversation_id, "customer asked") == handoff


def test_a_handoff_is_claimed_then_resolved_and_never_twice(store):
    conversation_id, _ = store.start_conversation("web", None, None, [user("human please")])
    answer(store, conversation_id, low_confidence=True)
    requested = store.request_handoff(conversation_id, "customer asked")
    assert requested.status == "queued"
    assert store.conversation(conversation_id).status == "handoff"

    claimed = store.claim_handoff(requested.id, "liwei")
    assert (claimed.status, claimed.agent) == ("claimed", "liwei")
    assert claimed.claimed_at is not None
    with pytest.raises(Conflict, match="already claimed by liwei"):
        store.claim_handoff(requested.id, "sam")
    assert [h.id for h in store.handoffs("claimed")] == [requested.id]
    assert store.handoffs("queued") == []

    resolved = store.resolve_handoff(requested.id, "liwei", "Card unblocked by phone.")
    assert (resolved.status, resolved.note) == ("resolved", "Card unblocked by phone.")
    assert resolved.resolved_at >= resolved.claimed_at
    conversation = store.conversation(conversation_id)
    assert (conversation.status, conversation.low_confidence_streak) == ("open", 0)
    with pytest.raises(Conflict, match="already resolved by liwei"):
        store.resolve_handoff(requested.id, "sam", None)
    with pytest.raises(Conflict, match="resolved"):
        store.claim_handoff(requested.id, "sam")
    with pytest.raises(NotFound):
        store.claim_handoff(999, "sam")
    with pytest.raises(NotFound):
        store.resolve_handoff(999, "sam", None)

    # Once resolved, asking again opens a new hand-off; a queued one may be resolved directly.
    again = store.request_handoff(conversation_id, "still stuck")
    assert again.id != requested.id
    assert store.resolve_handoff(again.id, "sam", None).status == "resolved"
    assert [h.id for h in store.handoffs()] == [requested.id, again.id]


def test_feedback_rates_assistant_messages_only(store):
    conversation_id, (user_id,) = store.start_conversation("web", None, None, [user("hi")])
    reply_id = answer(store, conversation_id)
    up = store.add_feedback(reply_id, 1, None)
    down = store.add_feedback(reply_id, -1, "wrong fee")
    assert (up.message_id, up.rating, down.rating, down.comment) == (reply_id, 1, -1, "wrong fee")
    with pytest.raises(Conflict, match="user message"):
        store.add_feedback(user_id, 1, None)
    with pytest.raises(NotFound):
        store.add_feedback(999, 1, None)
    with pytest.raises(StoreError, match="1 or -1"):
        store.add_feedback(reply_id, 5, None)
    assert store.feedback(reply_id) == [up, down]
    assert store.feedback(user_id) == []
    assert store.feedback() == [up, down]


def test_reply_to_finds_the_answer_to_a_user_message(store):
    conversation_id, (first,) = store.start_conversation("wechat", None, None, [user("a")])
    assert store.reply_to(first) is None
    reply = answer(store, conversation_id)
    second = store.add_user_message(conversation_id, "b", "b")
    third = store.add_user_message(conversation_id, "c", "c")
    late = answer(store, conversation_id)
    assert store.reply_to(first).id == reply
    assert store.reply_to(second) is None  # answered together with the next message
    assert store.reply_to(third).id == late


def test_count_messages_by_role(store):
    conversation_id, _ = store.start_conversation("api", "u1", None, [user("a"), user("b")])
    answer(store, conversation_id)
    assert store.count_messages() == 3
    assert (store.count_messages("user"), store.count_messages("assistant")) == (2, 1)
    assert store.count_messages("system") == 0


def test_api_keys_are_stored_as_hashes_only(store, engine):
    key, record = store.create_api_key("support widget", ["chat"], rate_limit_per_minute=30)
    admin_key, _ = store.create_api_key("ops", ["chat", "admin", "chat"])
    assert key.startswith("kefu-") and len(key) > 40
    assert (record.name, record.prefix, record.scopes) == ("support widget", key[:12], ("chat",))
    assert record.rate_limit_per_minute == 30 and record.revoked_at is None
    assert store.api_key(key) == record
    assert store.api_key(admin_key).scopes == ("chat", "admin")
    assert store.api_key(key + "x") is None

    secrets = [key, admin_key, key[12:], admin_key[12:]]
    for table in Base.metadata.tables:
        for row in rows(engine, table):
            for value in row.values():
                assert not any(secret in str(value) for secret in secrets), (table, row)


def test_revoked_keys_are_no_longer_found(store):
    key, record = store.create_api_key("widget", ["chat"])
    other, other_record = store.create_api_key("ops", ["admin"])
    revoked = store.revoke_api_key(record.prefix)
    assert revoked.revoked_at is not None
    assert store.api_key(key) is None
    assert store.revoke_api_key(record.id) == revoked  # twice: no change
    assert store.revoke_api_key(str(other_record.id)).id == other_record.id
    assert store.api_key(other) is None
    assert [k.id for k in store.api_keys()] == [record.id, other_record.id]
    with pytest.raises(NotFound):
        store.revoke_api_key("kefu-nothing")
    with pytest.raises(NotFound):
        store.revoke_api_key(999)


def test_api_key_scopes_and_limits_are_checked(store):
    with pytest.raises(StoreError, match="chat, admin"):
        store.create_api_key("x", ["root"])
    with pytest.raises(StoreError, match="at least one scope"):
        store.create_api_key("x", [])
    with pytest.raises(StoreError, match="at least 1"):
        store.create_api_key("x", ["chat"], rate_limit_per_minute=0)
    assert store.api_keys() == []


def test_concurrent_writers_all_land(store):
    """8 threads x 25 turns on one conversation: every message stored, no update lost."""
    conversation_id, _ = store.start_conversation("web", None, None, [])

    def turns(worker: int) -> None:
        for turn in range(25):
            store.add_user_message(conversation_id, f"{worker}-{turn}", f"{worker}-{turn}")
            answer(store, conversation_id, low_confidence=True)

    with ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(turns, worker) for worker in range(8)]:
            done.result()
    conversation = store.conversation(conversation_id)
    assert len(conversation.messages) == 400
    assert {m.text for m in conversation.messages if m.role == "user"} == {
        f"{worker}-{turn}" for worker in range(8) for turn in range(25)
    }
    assert conversation.low_confidence_streak == 200


def test_a_reopened_database_keeps_its_data(database_url):
    with Store.open(database_url) as store:
        conversation_id, _ = store.start_conversation("api", None, None, [user("remember me")])
    with Store.open(database_url) as store:
        assert store.conversation(conversation_id).messages[0].text == "remember me"


def test_sqlite_files_are_in_wal_mode_in_a_new_folder(tmp_path):
    path = tmp_path / "deep" / "er" / "kefu.db"
    with Store.open(f"sqlite:///{path}") as store:
        assert store.dialect == "sqlite"
        store.ping()
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_in_memory_store_is_shared_by_threads():
    with Store.open("sqlite://") as store:
        conversation_id, _ = store.start_conversation("web", None, None, [])
        start = threading.Barrier(4)

        def write(worker: int) -> None:
            start.wait()
            for turn in range(10):
                store.add_user_message(conversation_id, f"{worker}-{turn}", "x")

        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(write, worker) for worker in range(4)]:
                done.result()
        assert store.count_messages() == 40


def test_an_unreachable_database_says_where_and_what_to_check():
    with pytest.raises(StoreUnavailable) as error:
        Store.open("postgresql://kefu:hunter2@127.0.0.1:1/nothing")
    message = str(error.value)
    assert "127.0.0.1:1" in message and "PostgreSQL is running" in message
    assert "hunter2" not in message


def test_urls_kefu_cannot_use_are_refused():
    with pytest.raises(StoreError, match="SQLite or PostgreSQL, not 'mysql'"):
        Store.open("mysql://root:secret@localhost/kefu")
    with pytest.raises(StoreError, match="expected sqlite:///"):
        Store.open("kefu.db")


def test_on_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    path = tmp_path / "kefu.db"
    with Store.open(f"sqlite:///{path}") as store:
        key, _ = store.create_api_key("shop", ["chat"])
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            started = time.monotonic()
            assert store.api_key(key) is not None
            assert store.count_messages() == 0
            assert time.monotonic() - started < 1.0  # not the 5 s busy timeout
        finally:
            writer.execute("ROLLBACK")
            writer.close()
