"""The central service's database: stations, researchers' keys, trains, hops, a timeline.

SQLAlchemy 2 ORM; SQLite file by default, any SQLAlchemy URL (PostgreSQL in production).
Every registry event is stored once under a unique key (repository + digest + tag), so a
duplicated webhook delivery changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StationRow(Base):
    """A station in the directory: what a researcher needs to put it on a route.

    ``removed`` is when ``pht central stations remove`` took it off (None: active). A removed
    station's row stays, as its trains' hops name it; it takes no new trains.
    """

    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    key_pem: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(80))
    recipient: Mapped[str] = mapped_column(String(120))
    project: Mapped[str] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    removed: Mapped[datetime | None] = mapped_column(nullable=True, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key_pem,
            "key_id": self.key_id,
            "recipient": self.recipient,
            "project": self.project,
            "webhook_url": self.webhook_url,
            "removed": self.removed.isoformat() + "Z" if self.removed else None,
        }


class StationSchemaRow(Base):
    """A station's latest described schema (:mod:`pht_airflow.schemadoc`): the signed document
    as the station sent it, checked against the station's key before it was stored."""

    __tablename__ = "station_schemas"

    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    key_id: Mapped[str] = mapped_column(String(80))
    made: Mapped[datetime] = mapped_column()
    received: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TrustedKeyRow(Base):
    """A researcher's key the central service trusts for submission by push.

    A train pushed to the incoming project is submitted once its creator (a ``creator`` key
    here, the one the spec names) and enough ``approver`` keys have signed it.
    """

    __tablename__ = "trusted_keys"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    key_pem: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(80), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "key": self.key_pem, "key_id": self.key_id}


class IncomingRow(Base):
    """A train pushed to the incoming project that waits for its signatures."""

    __tablename__ = "incoming"
    __table_args__ = (UniqueConstraint("repository", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(71))
    waiting_for: Mapped[str] = mapped_column(Text, default="")
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "waiting_for": self.waiting_for,
            "first_seen": self.first_seen.isoformat() + "Z",
        }


class TrainRow(Base):
    """A submitted train and where it is on its route.

    ``status``: ``routing``, ``done`` (results in the outbox), or ended without reaching it:
    ``failed``, ``rejected`` (a station's person refused to run it), ``withheld`` (a
    station's person refused to release its output); ``reason`` says why.
    """

    __tablename__ = "trains"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    digest: Mapped[str] = mapped_column(String(71))
    name: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    route: Mapped[list[str]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_repository: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="submitted")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    hops: Mapped[list[HopRow]] = relationship(
        back_populates="train", order_by="HopRow.hop", cascade="all, delete-orphan"
    )
    events: Mapped[list[EventRow]] = relationship(
        back_populates="train", order_by="EventRow.id", cascade="all, delete-orphan"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "digest": self.digest,
            "name": self.name,
            "mode": self.mode,
            "route": list(self.route),
            "status": self.status,
            "reason": self.reason,
            "created": self.created.isoformat() + "Z",
            "updated": self.updated.isoformat() + "Z",
            "hops": [h.to_dict() for h in self.hops],
            "events": [e.to_dict() for e in self.events],
        }


class HopRow(Base):
    """One stop of a train: ``pending``, ``sent`` to the station's project, ``done`` (result
    delivered), or ended without a result: ``failed``, ``rejected`` (a person at the station
    refused to run it) or ``withheld`` (a person refused to release its output). ``note``
    says why it ended (None while pending, in flight or done)."""

    __tablename__ = "hops"
    __table_args__ = (UniqueConstraint("train_id", "hop"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    train_id: Mapped[str] = mapped_column(ForeignKey("trains.id"))
    hop: Mapped[int] = mapped_column(Integer)
    station: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    result_digest: Mapped[str | None] = mapped_column(String(71), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)

    train: Mapped[TrainRow] = relationship(back_populates="hops")

    def to_dict(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "station": self.station,
            "state": self.state,
            "result_digest": self.result_digest,
            "sent_at": self.sent_at.isoformat() + "Z" if self.sent_at else None,
            "done_at": self.done_at.isoformat() + "Z" if self.done_at else None,
            "note": self.note,
        }


class EventRow(Base):
    """The timeline: every registry event and every action the router took."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("dedup_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    train_id: Mapped[str | None] = mapped_column(ForeignKey("trains.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str | None] = mapped_column(String(400), nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    train: Mapped[TrainRow | None] = relationship(back_populates="events")

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.created.isoformat() + "Z",
            "kind": self.kind,
            "message": self.message,
        }


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` by default); creates the tables."""
    args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        args["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, future=True, **args)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since a database was made (create_all adds tables, not columns):
    ``stations.removed``, ``hops.note``. Nullable, so old rows read as before (an active
    station; a hop with no note)."""
    for column in (StationRow.__table__.c.removed, HopRow.__table__.c.note):
        table = column.table.name
        if column.name in {c["name"] for c in inspect(engine).get_columns(table)}:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind} NULL"))


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
