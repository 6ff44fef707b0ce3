"""The outcome log: calls, attempts and feedback in SQLite or PostgreSQL, written off the call path.

Callers hand rows to :meth:`Store.put`, which only appends to an in-memory queue; one background
thread drains the queue in batches, one transaction per batch, with ``INSERT ... ON CONFLICT DO
NOTHING`` on primary keys, so a retried batch never writes a row twice. If the database fails, the
batch is kept and retried with back-off; :meth:`Store.flush` waits until everything handed in so
far is written. The schema is owned by the Alembic migrations in ``migrations/`` and is upgraded
automatically when a store is opened.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .exceptions import StoreError

__all__ = ["Store", "metadata", "calls", "attempts", "feedback", "upgrade"]

log = logging.getLogger(__name__)

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("ts", Float, nullable=False),  # unix time when the call started
    Column("task_type", String(64), nullable=False),
    Column("policy", String(32), nullable=False),
    Column("propensity", Float, nullable=False),  # P(the primary was chosen)
    Column("ranking", Text, nullable=False),  # JSON list: primary first, then the fallback order
    Column("model", String(128)),  # the model that answered, NULL if none did
    Column("outcome", String(16), nullable=False),  # ok | failed | rejected
    Column("latency_s", Float, nullable=False),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("n_attempts", Integer, nullable=False),
    Column("prompt", Text),  # only with log_prompts = true
    Column("answer", Text),  # only with log_prompts = true
    Index("ix_calls_task_ts", "task_type", "ts"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),  # 0 = primary, then fallbacks in order
    Column("ts", Float, nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status", Integer),
    Column("latency_s", Float, nullable=False),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("error", Text),
    Index("ix_attempts_task_ts", "task_type", "ts"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("call_id", String(32), primary_key=True),  # one accuracy per call
    Column("ts", Float, nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("accuracy", Float, nullable=False),
    Index("ix_feedback_task_ts", "task_type", "ts"),
)

TABLES: dict[str, Table] = {t.name: t for t in (calls, attempts, feedback)}


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("zeta_adaptive.migrations")))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (a no-op when it is already there).

    On PostgreSQL an advisory lock makes concurrent router processes migrate once, in turn.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        cfg = _alembic_config(conn)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        if MigrationContext.configure(conn).get_current_revision() != head:
            command.upgrade(cfg, "head")


def _insert(engine: Engine, table: Table) -> Any:
    """An idempotent INSERT for this dialect: rows whose primary key exists are skipped."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if parsed.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)


class _Flush:
    """A marker in the queue: its event is set once every row queued before it is written."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_STOP = object()


class Store:
    """One interface to the log: queue rows without waiting, flush, close, and read back."""

    def __init__(self, url: str, *, batch_size: int = 5000, migrate: bool = True) -> None:
        self.url = url
        self.batch_size = batch_size
        try:
            self.engine = _engine(url)
            if migrate:
                upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from None
        self._insert = {name: _insert(self.engine, table) for name, table in TABLES.items()}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.written = {name: 0 for name in TABLES}  # rows handed to the database, per table
        self.errors = 0  # failed batch writes (each was retried)
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="zeta-store-writer", daemon=True)
        self._writer.start()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    # -- writing (never blocks the caller) --------------------------------------------------------
    def put(self, table: str, row: Mapping[str, Any]) -> None:
        """Queue one row for ``table``; the background writer inserts it."""
        if self._closed:
            raise StoreError("the store is closed")
        self._queue.put((table, row))

    def put_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Queue several rows, in order."""
        for item in items:
            self.put(*item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row queued so far is written; False if ``timeout`` ran out first."""
        marker = _Flush()
        self._queue.put(marker)
        return marker.event.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, stop the writer and release connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise StoreError(f"could not write the queued log records to {self.safe_url} within {timeout} s")
        self.engine.dispose()

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self.batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: dict[str, list[Mapping[str, Any]]] = {name: [] for name in TABLES}
            markers = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    rows[item[0]].append(item[1])
            self._write(rows)
            for marker in markers:
                marker.event.set()

    def _write(self, rows: dict[str, list[Mapping[str, Any]]]) -> None:
        """Insert a batch in one transaction, retrying with back-off until it succeeds."""
        if not any(rows.values()):
            return
        delay = 0.05
        while True:
            try:
                with self.engine.begin() as conn:
                    for name in ("calls", "attempts", "feedback"):  # parents first
                        if rows[name]:
                            conn.execute(self._insert[name], rows[name])
                break
            except SQLAlchemyError as exc:
                self.errors += 1
                log.warning("log write failed (%s); retrying in %.2f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        for name, batch in rows.items():
            self.written[name] += len(batch)

    # -- reading --------------------------------------------------------------------------------
    def find_call(self, call_id: str) -> dict[str, Any] | None:
        """The logged call row, or None (reads the database: flush first for recent calls)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.call_id == call_id)).mappings().first()
        return dict(row) if row else None

    def has_feedback(self, call_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(feedback.c.call_id).where(feedback.c.call_id == call_id)).first() is not None

    def count(self, table: str) -> int:
        """Rows in one table of the log."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one())

    def frame(self, table: str, task_types: Iterable[str] | None = None) -> pd.DataFrame:
        """A whole table (optionally for some task types) as a DataFrame, in time order."""
        t = TABLES[table]
        query = select(t)
        if task_types is not None:
            query = query.where(t.c.task_type.in_(list(task_types)))
        order = [t.c.ts, t.c.idx] if table == "attempts" else [t.c.ts]
        with self.engine.connect() as conn:
            return pd.read_sql(query.order_by(*order), conn)
