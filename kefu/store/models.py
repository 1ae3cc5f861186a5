"""The conversation store's tables, as SQLAlchemy 2 typed declarative classes.

Only `repository.py` touches these; everyone else gets frozen records from it. The schema itself
is made by the Alembic migrations in `migrations/versions/`, which must stay equal to what is
declared here (tests/store/test_migrations.py compares them): a change here needs a new
migration beside it.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, MetaData, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# The words each string column may hold; the repository checks them before writing.
CHANNELS = ("web", "api", "wechat")
ROLES = ("system", "user", "assistant")
ROUTES = ("faq", "generator", "handoff")
CONVERSATION_STATUSES = ("open", "handoff", "closed")
HANDOFF_STATUSES = ("queued", "claimed", "resolved")
SCOPES = ("chat", "admin")
# What happened to a kind's deployment (kefu.registry writes them; `kefu models status` reads).
MODEL_ACTIONS = ("push", "promote", "rollback", "canary", "end_canary", "load_failed")

# Named constraints, so that later migrations can drop or alter them by a known name on
# every database (SQLite in particular cannot alter an unnamed one).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class UTCDateTime(TypeDecorator[datetime.datetime]):
    """A timestamp that is stored in UTC and always comes back timezone-aware.

    PostgreSQL keeps the zone (`timestamptz`); SQLite keeps none, so values are converted to UTC
    before they are written and marked UTC when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given to the store: use an aware one (UTC)")
        return value.astimezone(datetime.UTC)

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    channel: Mapped[str] = mapped_column(String(16))
    # The OpenAI `user` field or a WeChat openid; indexed for a channel user's latest conversation.
    user: Mapped[str | None] = mapped_column(String(255), index=True)
    language: Mapped[str | None] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="open")
    # Consecutive low-confidence assistant turns; the policy hands off when it grows too long.
    low_confidence_streak: Mapped[int] = mapped_column(default=0)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    redacted_text: Mapped[str] = mapped_column(Text)  # PII removed: what logs and exports show
    tokens: Mapped[int | None]
    latency_ms: Mapped[float | None] = mapped_column(Float)
    route: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Float)
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    model_versions: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None] = mapped_column(String(64))
    # A channel's own id for the message (WeChat's MsgId). Unique, so a retried delivery cannot
    # be stored twice; NULLs never collide, on SQLite or PostgreSQL.
    channel_message_id: Mapped[str | None] = mapped_column(String(64), unique=True)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    rating: Mapped[int]  # +1 or -1
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class Handoff(Base):
    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    agent: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime.datetime | None]
    resolved_at: Mapped[datetime.datetime | None]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(12))  # the key's first characters, for listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated, e.g. "chat,admin"
    rate_limit_per_minute: Mapped[int | None]  # None: the server's default
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime.datetime | None]


class ModelVersion(Base):
    """One pushed version of a model kind (generator, intent/en, kb …): files and evaluation."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("kind", "version", name="uq_model_versions_kind_version"),
        UniqueConstraint("kind", "digest", name="uq_model_versions_kind_digest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))  # v1, v2, … per kind
    path: Mapped[str] = mapped_column(Text)  # the version's folder in the registry
    digest: Mapped[str] = mapped_column(String(64))  # sha256 over its files: one push per content
    source: Mapped[str] = mapped_column(Text)  # the folder it was pushed from
    evaluation: Mapped[dict[str, Any]]  # {"metric", "value", "higher_is_better", "on", …}
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class ModelDeployment(Base):
    """What serves a kind now: the live version and an optional canary candidate with its share.

    `revision` is the id of the event that last changed the row; every server process polls the
    largest one and reloads when it grows.
    """

    __tablename__ = "model_deployments"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    live: Mapped[str] = mapped_column(String(16))
    candidate: Mapped[str | None] = mapped_column(String(16))
    canary_share: Mapped[float] = mapped_column(Float, default=0.0)
    revision: Mapped[int]
    updated_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class ModelEvent(Base):
    """The registry's history: pushes, promotions, rollbacks, canaries and failed loads."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class ModelWorker(Base):
    """A server process's heartbeat: the registry revision it serves and its last load error."""

    __tablename__ = "model_workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid:start
    revision: Mapped[int]  # the revision it serves
    versions: Mapped[dict[str, Any]]  # {"live": {kind: version}, "candidate": {…}}
    failed_revision: Mapped[int | None]  # the newest revision it could not load
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
