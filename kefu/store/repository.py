"""The conversation store: every message, decision, feedback, hand-off and API key kefu keeps.

`Store.open(url)` connects to SQLite (the embedded default, in WAL mode) or PostgreSQL (for
replicas that share one database) and migrates the schema. Each method is one short
transaction and returns frozen records, never ORM objects, so callers — the server's thread
pool, the CLI — never hold a session or see a half-written state.

On SQLite every transaction that writes starts with `BEGIN IMMEDIATE` (one that only reads
starts a plain `BEGIN` and reads a WAL snapshot, waiting for no one): it takes the write lock up front,
waiting up to `busy_timeout` for it, so a transaction that reads and then writes (the
low-confidence streak, a hand-off's state) works on one consistent state and many threads at
once never fail with "database is locked". PostgreSQL gets the same from `SELECT ... FOR UPDATE`
on the row a method changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeVar

import alembic.command
import alembic.config
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from kefu.errors import KefuError
from kefu.store.models import (
    CHANNELS,
    HANDOFF_STATUSES,
    MODEL_ACTIONS,
    ROLES,
    ROUTES,
    SCOPES,
    ApiKey,
    Conversation,
    Feedback,
    Handoff,
    Message,
    ModelDeployment,
    ModelEvent,
    ModelVersion,
    ModelWorker,
    utcnow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
URL_EXAMPLES = "sqlite:///path/to/kefu.db, sqlite:// (in memory) or postgresql://user:password@host:5432/database"
KEY_PREFIX = "kefu-"
PREFIX_LENGTH = 12  # characters of a key shown in listings: "kefu-" and 7 of the secret


READ_ONLY = "kefu_read_only"  # execution option of the engine the read-only sessions use
MIGRATION_LOCK = 0x6B656675  # "kefu": the PostgreSQL advisory lock migrations hold


class StoreError(KefuError):
    """The store cannot do what it was asked."""


class NotFound(StoreError):
    """No conversation, message, hand-off or API key with that id."""


class Conflict(StoreError):
    """The request contradicts what is stored (a retried message, a hand-off already taken)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or used; the message says which one and what to check."""


@dataclasses.dataclass(frozen=True)
class MessageRecord:
    id: int
    conversation_id: str
    created_at: datetime.datetime
    role: str
    text: str
    redacted_text: str
    tokens: int | None
    latency_ms: float | None
    route: str | None
    reason: str | None
    intent: str | None
    confidence: float | None
    sources: list[dict[str, Any]] | None
    model_versions: dict[str, Any] | None
    request_id: str | None
    channel_message_id: str | None


@dataclasses.dataclass(frozen=True)
class ConversationRecord:
    id: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    channel: str
    user: str | None
    language: str | None
    status: str
    low_confidence_streak: int
    messages: list[MessageRecord]


@dataclasses.dataclass(frozen=True)
class FeedbackRecord:
    id: int
    message_id: int
    rating: int
    comment: str | None
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class HandoffRecord:
    id: int
    conversation_id: str
    reason: str
    status: str
    agent: str | None
    note: str | None
    created_at: datetime.datetime
    claimed_at: datetime.datetime | None
    resolved_at: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class ApiKeyRecord:
    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    rate_limit_per_minute: int | None
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    kind: str
    version: str
    path: str
    digest: str
    source: str
    evaluation: dict[str, Any]
    note: str | None
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class DeploymentRecord:
    kind: str
    live: str
    candidate: str | None
    canary_share: float
    revision: int
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class ModelEventRecord:
    id: int
    kind: str
    action: str
    version: str | None
    detail: str | None
    actor: str | None
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class WorkerRecord:
    id: str
    revision: int
    versions: dict[str, Any]
    failed_revision: int | None
    error: str | None
    started_at: datetime.datetime
    seen_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class AnsweredTurn:
    """An assistant message's figures, for comparing model versions."""

    model_versions: dict[str, Any]
    route: str | None
    latency_ms: float | None
    rating: int  # the sum of its feedback: +1 per thumbs up, -1 per thumbs down


class NewMessage(TypedDict):
    """A message for `Store.start_conversation`."""

    role: str
    text: str
    redacted_text: str
    request_id: NotRequired[str | None]
    channel_message_id: NotRequired[str | None]
    tokens: NotRequired[int | None]


Record = TypeVar(
    "Record",
    MessageRecord,
    FeedbackRecord,
    HandoffRecord,
    ConversationRecord,
    ModelVersionRecord,
    DeploymentRecord,
    ModelEventRecord,
    WorkerRecord,
)


def _record(kind: type[Record], row: Any, **given: Any) -> Record:
    """Copy an ORM row into a record whose fields are named like its columns; `given` fields
    (those that are not columns) are passed in."""
    columns = (field.name for field in dataclasses.fields(kind) if field.name not in given)
    return kind(**{name: getattr(row, name) for name in columns}, **given)


def _conversation_record(session: Session, row: Conversation) -> ConversationRecord:
    messages = session.scalars(
        select(Message).where(Message.conversation_id == row.id).order_by(Message.id)
    )
    return _record(ConversationRecord, row, messages=[_record(MessageRecord, m) for m in messages])


def _api_key_record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes.split(",")),
        rate_limit_per_minute=row.rate_limit_per_minute,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _check(value: str, valid: Sequence[str], what: str) -> None:
    if value not in valid:
        raise StoreError(f"Unknown {what} {value!r}: expected one of {', '.join(valid)}.")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _already_stored(channel_message_ids: Sequence[str]) -> Conflict:
    ids = ", ".join(repr(i) for i in channel_message_ids)
    return Conflict(
        f"The channel message {ids} is already stored: this delivery is a retry. Look it up "
        "with message_by_channel_id (and its answer with reply_to) instead of storing it again."
    )


def migrations_config(connection: Connection) -> alembic.config.Config:
    """An Alembic config that runs kefu's migrations on `connection` (see migrations/env.py)."""
    config = alembic.config.Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        # The URL is not repeated: it may hold a password that could not be masked.
        raise StoreError(
            f"The database URL is not one kefu can read; expected {URL_EXAMPLES}."
        ) from error
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver kefu installs
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return create_engine(
            parsed, pool_pre_ping=True, hide_parameters=True, connect_args={"connect_timeout": 10}
        )
    raise StoreError(
        f"kefu stores conversations in SQLite or PostgreSQL, not {backend!r} "
        f"({parsed.render_as_string(hide_password=True)}); use {URL_EXAMPLES}."
    )


def _in_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_engine(url: URL) -> Engine:
    in_memory = _in_memory(url)
    if in_memory:
        # One connection that every thread shares, or each would see its own empty database.
        engine = create_engine(
            url,
            poolclass=StaticPool,
            hide_parameters=True,
            connect_args={"check_same_thread": False},
        )
    else:
        folder = Path(url.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(
                f"Cannot create the folder {folder} for the SQLite database {url}: "
                f"{error.strerror}. Choose a path kefu can write to."
            ) from error
        engine = create_engine(url, hide_parameters=True, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite would BEGIN only before the first write; the "begin" hook below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=5000")  # first: WAL switching may have to wait
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL up to a power cut
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        # Why IMMEDIATE: see the module docstring. Reads need no write lock: in WAL mode a
        # plain BEGIN reads a consistent snapshot while a writer works.
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


class Store:
    """The conversation store on one database; thread-safe, one transaction per call."""

    def __init__(self, engine: Engine) -> None:
        """Use `Store.open(url)`, which also checks the database and migrates it."""
        self._engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self.dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reading = sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        # An in-memory SQLite database is a single shared connection: transactions take turns.
        self._turns = threading.Lock() if _in_memory(engine.url) else contextlib.nullcontext()

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> Store:
        """Connect to the database at `url` and bring its schema up to date.

        Args:
            url: sqlite:///path/to/kefu.db (its folder is created), sqlite:// (in memory, for
                tests) or postgresql://user:password@host:5432/database.
            migrate: run the migrations up to the newest (`alembic upgrade head`); on a database
                that is already up to date they do nothing.
        """
        store = cls(_engine(url))
        try:
            store.ping()
            if migrate:
                with store._turns, store._translated_errors(), store._engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        # Several workers or replicas start at once: one migrates, the others
                        # wait for it here and then find nothing left to do.
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                        )
                    alembic.command.upgrade(migrations_config(connection), "head")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- conversations and messages

    def start_conversation(
        self, channel: str, user: str | None, language: str | None, messages: Sequence[NewMessage]
    ) -> tuple[str, list[int]]:
        """Create a conversation with its first messages, all or nothing.

        Returns the conversation's id and the messages' ids, in order. Conflict if a message's
        channel_message_id is already stored (nothing is stored then).
        """
        _check(channel, CHANNELS, "channel")
        for message in messages:
            _check(message["role"], ROLES, "role")
        conversation_id = uuid.uuid4().hex
        try:
            with self._transaction() as session:
                session.add(
                    Conversation(id=conversation_id, channel=channel, user=user, language=language)
                )
                session.flush()  # the conversation row first: the messages refer to it
                rows = [
                    Message(
                        conversation_id=conversation_id,
                        role=message["role"],
                        text=message["text"],
                        redacted_text=message["redacted_text"],
                        request_id=message.get("request_id"),
                        channel_message_id=message.get("channel_message_id"),
                        tokens=message.get("tokens"),
                    )
                    for message in messages
                ]
                session.add_all(rows)
                session.flush()
                return conversation_id, [row.id for row in rows]
        except IntegrityError as error:
            ids = [m["channel_message_id"] for m in messages if m.get("channel_message_id")]
            raise _already_stored(ids) from error

    def add_user_message(
        self,
        conversation_id: str,
        text: str,
        redacted_text: str,
        request_id: str | None = None,
        channel_message_id: str | None = None,
        tokens: int | None = None,
    ) -> int:
        """Store a customer's message; NotFound for an unknown conversation, Conflict for a retry."""
        try:
            with self._transaction() as session:
                conversation = self._conversation(session, conversation_id, lock=True)
                message = Message(
                    conversation_id=conversation_id,
                    role="user",
                    text=text,
                    redacted_text=redacted_text,
                    request_id=request_id,
                    channel_message_id=channel_message_id,
                    tokens=tokens,
                )
                session.add(message)
                conversation.updated_at = utcnow()
                session.flush()
                return message.id
        except IntegrityError as error:
            raise _already_stored([channel_message_id]) from error

    def add_assistant_message(
        self,
        conversation_id: str,
        text: str,
        redacted_text: str,
        *,
        route: str,
        reason: str,
        intent: str | None,
        confidence: float | None,
        sources: list[dict[str, Any]],
        model_versions: dict[str, Any],
        tokens: int | None,
        latency_ms: float | None,
        request_id: str | None,
        low_confidence: bool,
        handoff_reason: str | None = None,
    ) -> int:
        """Store the assistant's reply with the decision behind it, in one transaction.

        Also counts the conversation's low-confidence streak (one more when `low_confidence`,
        else back to 0) and, given a `handoff_reason`, queues the conversation for a person
        unless it already is.
        """
        _check(route, ROUTES, "route")
        with self._transaction() as session:
            conversation = self._conversation(session, conversation_id, lock=True)
            message = Message(
                conversation_id=conversation_id,
                role="assistant",
                text=text,
                redacted_text=redacted_text,
                route=route,
                reason=reason,
                intent=intent,
                confidence=confidence,
                sources=sources,
                model_versions=model_versions,
                tokens=tokens,
                latency_ms=latency_ms,
                request_id=request_id,
            )
            session.add(message)
            conversation.low_confidence_streak = (
                conversation.low_confidence_streak + 1 if low_confidence else 0
            )
            conversation.updated_at = utcnow()
            if handoff_reason is not None and conversation.status != "handoff":
                conversation.status = "handoff"
                session.add(Handoff(conversation_id=conversation_id, reason=handoff_reason))
            session.flush()
            return message.id

    def conversation(self, conversation_id: str) -> ConversationRecord:
        """A conversation with all its messages, oldest first; NotFound if there is none."""
        with self._transaction(write=False) as session:
            return _conversation_record(session, self._conversation(session, conversation_id))

    def open_conversation(self, channel: str, user: str) -> ConversationRecord | None:
        """The conversation a channel's user is in: their latest one that is not closed.

        Channels such as WeChat send no conversation id, only who is writing; their messages
        continue this conversation. None when the user has none yet.
        """
        _check(channel, CHANNELS, "channel")
        with self._transaction(write=False) as session:
            row = session.scalar(
                select(Conversation)
                .where(
                    Conversation.channel == channel,
                    Conversation.user == user,
                    Conversation.status != "closed",
                )
                .order_by(Conversation.updated_at.desc(), Conversation.created_at.desc())
                .limit(1)
            )
            return None if row is None else _conversation_record(session, row)

    def message(self, message_id: int) -> MessageRecord:
        """One message; NotFound if there is none."""
        with self._transaction(write=False) as session:
            return _record(MessageRecord, self._message(session, message_id))

    def message_by_channel_id(self, channel_message_id: str) -> MessageRecord | None:
        """The message a channel delivered with this id (WeChat's MsgId), if it was stored."""
        with self._transaction(write=False) as session:
            row = session.scalar(
                select(Message).where(Message.channel_message_id == channel_message_id)
            )
            return None if row is None else _record(MessageRecord, row)

    def reply_to(self, message_id: int) -> MessageRecord | None:
        """The assistant's answer to a user message; None while it has none.

        The answer is the next user or assistant message of the conversation, if that is the
        assistant's: a retried delivery gets the same answer again instead of a second one.
        """
        with self._transaction(write=False) as session:
            message = self._message(session, message_id)
            following = session.scalar(
                select(Message)
                .where(
                    Message.conversation_id == message.conversation_id,
                    Message.id > message.id,
                    Message.role.in_(("user", "assistant")),
                )
                .order_by(Message.id)
                .limit(1)
            )
            if following is None or following.role != "assistant":
                return None
            return _record(MessageRecord, following)

    def count_messages(self, role: str | None = None) -> int:
        """How many messages are stored (of one role, if given)."""
        query = select(func.count()).select_from(Message)
        if role is not None:
            _check(role, ROLES, "role")
            query = query.where(Message.role == role)
        with self._transaction(write=False) as session:
            return session.scalar(query)

    # -- feedback

    def add_feedback(self, message_id: int, rating: int, comment: str | None) -> FeedbackRecord:
        """A thumbs up (+1) or down (-1) on an assistant message."""
        if rating not in (1, -1):
            raise StoreError(f"Feedback rating must be 1 or -1, not {rating!r}.")
        with self._transaction() as session:
            message = self._message(session, message_id)
            if message.role != "assistant":
                raise Conflict(
                    f"Message {message_id} is a {message.role} message; feedback rates the "
                    "assistant's answers, so give the id of an assistant message."
                )
            row = Feedback(message_id=message_id, rating=rating, comment=comment)
            session.add(row)
            session.flush()
            return _record(FeedbackRecord, row)

    def feedback(self, message_id: int | None = None) -> list[FeedbackRecord]:
        """All feedback (on one message, if given), oldest first."""
        query = select(Feedback).order_by(Feedback.id)
        if message_id is not None:
            query = query.where(Feedback.message_id == message_id)
        with self._transaction(write=False) as session:
            return [_record(FeedbackRecord, row) for row in session.scalars(query)]

    # -- hand-offs to a person

    def request_handoff(self, conversation_id: str, reason: str) -> HandoffRecord:
        """Queue the conversation for a person; the open hand-off if it already has one."""
        with self._transaction() as session:
            conversation = self._conversation(session, conversation_id, lock=True)
            row = session.scalar(
                select(Handoff)
                .where(
                    Handoff.conversation_id == conversation_id,
                    Handoff.status.in_(("queued", "claimed")),
                )
                .order_by(Handoff.id)
                .limit(1)
            )
            if row is None:
                row = Handoff(conversation_id=conversation_id, reason=reason)
                session.add(row)
            conversation.status = "handoff"
            conversation.updated_at = utcnow()
            session.flush()
            return _record(HandoffRecord, row)

    def handoffs(self, status: str | None = None) -> list[HandoffRecord]:
        """Hand-offs (in one status, if given), oldest first: the order agents take them."""
        query = select(Handoff).order_by(Handoff.id)
        if status is not None:
            _check(status, HANDOFF_STATUSES, "hand-off status")
            query = query.where(Handoff.status == status)
        with self._transaction(write=False) as session:
            return [_record(HandoffRecord, row) for row in session.scalars(query)]

    def claim_handoff(self, handoff_id: int, agent: str) -> HandoffRecord:
        """An agent takes a queued hand-off; Conflict if someone already has it or it is done."""
        with self._transaction() as session:
            row = self._handoff(session, handoff_id)
            if row.status != "queued":
                raise Conflict(
                    f"Hand-off {handoff_id} is already {row.status} by {row.agent}; only a "
                    "queued hand-off can be claimed."
                )
            row.status, row.agent, row.claimed_at = "claimed", agent, utcnow()
            return _record(HandoffRecord, row)

    def resolve_handoff(self, handoff_id: int, agent: str, note: str | None) -> HandoffRecord:
        """Close a hand-off; the conversation goes back to the assistant with a clean streak."""
        with self._transaction() as session:
            row = self._handoff(session, handoff_id)
            if row.status == "resolved":
                raise Conflict(
                    f"Hand-off {handoff_id} was already resolved by {row.agent} at "
                    f"{row.resolved_at:%Y-%m-%d %H:%M:%S} UTC."
                )
            conversation = self._conversation(session, row.conversation_id, lock=True)
            conversation.status, conversation.low_confidence_streak = "open", 0
            conversation.updated_at = row.resolved_at = utcnow()
            row.status, row.agent, row.note = "resolved", agent, note
            return _record(HandoffRecord, row)

    # -- API keys

    def create_api_key(
        self, name: str, scopes: list[str], rate_limit_per_minute: int | None = None
    ) -> tuple[str, ApiKeyRecord]:
        """Make a new API key; returns the key itself (shown once, never stored) and its record."""
        if not scopes:
            raise StoreError(f"An API key needs at least one scope: {', '.join(SCOPES)}.")
        for scope in scopes:
            _check(scope, SCOPES, "API key scope")
        if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
            raise StoreError(
                f"rate_limit_per_minute must be at least 1, not {rate_limit_per_minute} "
                "(leave it out for the server's default)."
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._transaction() as session:
            row = ApiKey(
                name=name,
                prefix=key[:PREFIX_LENGTH],
                key_hash=_hash(key),
                scopes=",".join(dict.fromkeys(scopes)),
                rate_limit_per_minute=rate_limit_per_minute,
            )
            session.add(row)
            session.flush()
            return key, _api_key_record(row)

    def api_key(self, key: str) -> ApiKeyRecord | None:
        """The live key a client presented; None if it is unknown or revoked."""
        # An equality lookup on the hash, not hmac.compare_digest: timing could at most reveal
        # how much of a stored sha256 matches, and that reveals nothing of a 256-bit random key.
        with self._transaction(write=False) as session:
            row = session.scalar(
                select(ApiKey).where(ApiKey.key_hash == _hash(key), ApiKey.revoked_at.is_(None))
            )
            return None if row is None else _api_key_record(row)

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._transaction(write=False) as session:
            return [
                _api_key_record(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))
            ]

    def revoke_api_key(self, prefix_or_id: int | str) -> ApiKeyRecord:
        """Revoke a key given by its id or its listed prefix; revoking twice changes nothing.

        Args:
            prefix_or_id: the id (an int, or its digits as text) or the prefix shown by `api_keys`.
        """
        with self._transaction() as session:
            if isinstance(prefix_or_id, int) or prefix_or_id.isdigit():
                rows = [session.get(ApiKey, int(prefix_or_id))]
                rows = [row for row in rows if row is not None]
            else:
                rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix_or_id)))
            if not rows:
                raise NotFound(
                    f"No API key {prefix_or_id!r}: give an id or a prefix as api_keys lists them."
                )
            if len(rows) > 1:
                ids = ", ".join(str(row.id) for row in rows)
                raise Conflict(
                    f"{len(rows)} API keys start with {prefix_or_id!r} (ids {ids}); "
                    "revoke one by its id."
                )
            row = rows[0]
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _api_key_record(row)

    # -- the model registry (kefu.registry decides; this keeps its state)

    def add_model_version(
        self,
        kind: str,
        path: str,
        digest: str,
        source: str,
        evaluation: dict[str, Any],
        note: str | None = None,
    ) -> tuple[ModelVersionRecord, bool]:
        """Register a pushed version, named v1, v2, … per kind, and log the push.

        Returns the record and whether it is new: the same content (digest) pushed again is the
        version it already was.
        """
        for attempt in range(5):
            try:
                with self._transaction() as session:
                    known = session.scalar(
                        select(ModelVersion).where(
                            ModelVersion.kind == kind, ModelVersion.digest == digest
                        )
                    )
                    if known is not None:
                        return _record(ModelVersionRecord, known), False
                    count = session.scalar(
                        select(func.count())
                        .select_from(ModelVersion)
                        .where(ModelVersion.kind == kind)
                    )
                    row = ModelVersion(
                        kind=kind,
                        version=f"v{count + 1}",
                        path=path,
                        digest=digest,
                        source=source,
                        evaluation=evaluation,
                        note=note,
                    )
                    session.add(row)
                    session.add(
                        ModelEvent(kind=kind, action="push", version=row.version, detail=source)
                    )
                    session.flush()
                    return _record(ModelVersionRecord, row), True
            except IntegrityError as error:
                # PostgreSQL: a concurrent push took the same number; counting again finds it.
                if attempt == 4:
                    raise Conflict(
                        f"{kind}: too many pushes at once took the same version number; push again"
                    ) from error
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def model_versions(self, kind: str | None = None) -> list[ModelVersionRecord]:
        """Every pushed version (of one kind), oldest first."""
        with self._transaction(write=False) as session:
            query = select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.id)
            if kind is not None:
                query = query.where(ModelVersion.kind == kind)
            return [_record(ModelVersionRecord, row) for row in session.scalars(query)]

    def model_version(self, kind: str, version: str) -> ModelVersionRecord:
        with self._transaction(write=False) as session:
            row = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.kind == kind, ModelVersion.version == version
                )
            )
            if row is None:
                known = session.scalars(
                    select(ModelVersion.version)
                    .where(ModelVersion.kind == kind)
                    .order_by(ModelVersion.id)
                ).all()
                raise NotFound(
                    f"No {kind} version {version!r}; pushed: {', '.join(known) or 'none'} "
                    "(`kefu models list`)."
                )
            return _record(ModelVersionRecord, row)

    def deployments(self) -> list[DeploymentRecord]:
        """What serves each kind, by kind."""
        with self._transaction(write=False) as session:
            rows = session.scalars(select(ModelDeployment).order_by(ModelDeployment.kind))
            return [_record(DeploymentRecord, row) for row in rows]

    def deploy(
        self,
        kind: str,
        action: str,
        version: str | None,
        *,
        live: str,
        candidate: str | None = None,
        canary_share: float = 0.0,
        detail: str | None = None,
        actor: str | None = None,
        expected_revision: int | None = None,
    ) -> DeploymentRecord:
        """Change what serves a kind and log why, in one transaction.

        Args:
            expected_revision: the revision the caller decided on (0: that nothing is deployed
                yet); Conflict if another change came first (two operators, or two replicas
                starting at once), so no decision is made on a stale state.
        """
        _check(action, MODEL_ACTIONS, "model action")
        try:
            return self._deploy(
                kind,
                action,
                version,
                live,
                candidate,
                canary_share,
                detail,
                actor,
                expected_revision,
            )
        except IntegrityError as error:  # PostgreSQL: both saw no row and both inserted one
            raise Conflict(
                f"The {kind} deployment was created by another process at the same moment; look again and retry."
            ) from error

    def _deploy(
        self,
        kind: str,
        action: str,
        version: str | None,
        live: str,
        candidate: str | None,
        canary_share: float,
        detail: str | None,
        actor: str | None,
        expected_revision: int | None,
    ) -> DeploymentRecord:
        with self._transaction() as session:
            row = session.get(ModelDeployment, kind, with_for_update=True)
            current = row.revision if row is not None else 0
            if expected_revision is not None and current != expected_revision:
                raise Conflict(
                    f"The {kind} deployment changed while this {action} was being decided "
                    f"(revision {current}, not {expected_revision}); look again and retry."
                )
            event = ModelEvent(
                kind=kind, action=action, version=version, detail=detail, actor=actor
            )
            session.add(event)
            session.flush()
            if row is None:
                row = ModelDeployment(kind=kind, revision=event.id)
                session.add(row)
            row.live, row.candidate, row.canary_share = live, candidate, canary_share
            row.revision, row.updated_at = event.id, utcnow()
            session.flush()
            return _record(DeploymentRecord, row)

    def log_model_event(
        self, kind: str, action: str, version: str | None, detail: str | None, actor: str | None
    ) -> None:
        """Record something that changed no deployment (a failed load, a refused promotion)."""
        _check(action, MODEL_ACTIONS, "model action")
        with self._transaction() as session:
            session.add(
                ModelEvent(kind=kind, action=action, version=version, detail=detail, actor=actor)
            )

    def model_events(
        self, kind: str | None = None, limit: int | None = None
    ) -> list[ModelEventRecord]:
        """The registry's history (of one kind), oldest first; `limit`: only the newest."""
        with self._transaction(write=False) as session:
            query = select(ModelEvent).order_by(ModelEvent.id.desc())
            if kind is not None:
                query = query.where(ModelEvent.kind == kind)
            if limit is not None:
                query = query.limit(limit)
            return [
                _record(ModelEventRecord, row) for row in reversed(session.scalars(query).all())
            ]

    def registry_revision(self) -> int:
        """The newest deployment change (0: nothing deployed); servers poll it."""
        with self._transaction(write=False) as session:
            return session.scalar(select(func.max(ModelDeployment.revision))) or 0

    def heartbeat(
        self,
        worker: str,
        revision: int,
        versions: dict[str, Any],
        failed_revision: int | None = None,
        error: str | None = None,
    ) -> None:
        """A server process says which revision it serves and what it could not load."""
        with self._transaction() as session:
            row = session.get(ModelWorker, worker, with_for_update=True)
            if row is None:
                row = ModelWorker(id=worker)
                session.add(row)
            row.revision, row.versions = revision, versions
            row.failed_revision, row.error, row.seen_at = failed_revision, error, utcnow()

    def model_workers(self, seen_within: datetime.timedelta | None = None) -> list[WorkerRecord]:
        """Server processes' heartbeats (those seen lately), oldest start first."""
        with self._transaction(write=False) as session:
            query = select(ModelWorker).order_by(ModelWorker.started_at)
            if seen_within is not None:
                query = query.where(ModelWorker.seen_at >= utcnow() - seen_within)
            return [_record(WorkerRecord, row) for row in session.scalars(query)]

    def answered_turns(self, since: datetime.datetime) -> list[AnsweredTurn]:
        """Every assistant answer since a moment, with its versions, route, latency and rating."""
        with self._transaction(write=False) as session:
            ratings = (
                select(Feedback.message_id, func.sum(Feedback.rating).label("rating"))
                .group_by(Feedback.message_id)
                .subquery()
            )
            rows = session.execute(
                select(Message.model_versions, Message.route, Message.latency_ms, ratings.c.rating)
                .outerjoin(ratings, ratings.c.message_id == Message.id)
                .where(Message.role == "assistant", Message.created_at >= since)
            )
            return [
                AnsweredTurn(versions or {}, route, latency, int(rating or 0))
                for versions, route, latency, rating in rows
            ]

    # -- health

    def ping(self) -> None:
        """Check the database answers; StoreUnavailable if it does not (readiness probes)."""
        with self._transaction(write=False) as session:
            session.execute(text("SELECT 1"))

    # -- internals

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Session]:
        """One short transaction, committed when the block ends, rolled back if it raises.

        Args:
            write: false for a transaction that only reads (on SQLite it then waits for no one).
        """
        sessions = self._sessions if write else self._reading
        with self._turns, self._translated_errors(), sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """Turn the driver's "cannot connect / cannot use" errors into StoreUnavailable."""
        try:
            yield
        except OperationalError as error:
            reason = " ".join(str(error.orig).split())
            if self.dialect == "sqlite":
                advice = (
                    "Check that its folder is writable and the disk not full; a missing table "
                    "means it was opened without migrating (Store.open(url, migrate=True))."
                )
            else:
                advice = (
                    "Check that PostgreSQL is running and accepts connections at that host and "
                    "port, and that the URL's user, password and database name are right."
                )
            raise StoreUnavailable(f"The database {self.url} failed: {reason}. {advice}") from error

    def _conversation(
        self, session: Session, conversation_id: str, lock: bool = False
    ) -> Conversation:
        """The conversation row, locked for this transaction when it is about to change."""
        row = session.get(Conversation, conversation_id, with_for_update=lock)
        if row is None:
            raise NotFound(
                f"No conversation {conversation_id!r}: start one by sending a message without a "
                "conversation id."
            )
        return row

    def _message(self, session: Session, message_id: int) -> Message:
        row = session.get(Message, message_id)
        if row is None:
            raise NotFound(f"No message {message_id}.")
        return row

    def _handoff(self, session: Session, handoff_id: int) -> Handoff:
        row = session.get(Handoff, handoff_id, with_for_update=True)
        if row is None:
            raise NotFound(f"No hand-off {handoff_id}: list them with GET /v1/handoffs.")
        return row
