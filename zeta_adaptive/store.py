"""The outcome log: calls, attempts and feedback in SQLite or PostgreSQL, written off the call path.

Callers hand rows to :meth:`Store.put`, which only appends to an in-memory queue; one background
thread drains the queue in batches, one transaction per batch, with ``INSERT ... ON CONFLICT DO
NOTHING`` on primary keys, so a retried batch never writes a row twice. If the database fails, the
batch is kept and retried with back-off; :meth:`Store.flush` waits until everything handed in so
far is written. The schema is owned by the Alembic migrations in ``migrations/`` and is upgraded
automatically when a store is opened.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
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
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    or_,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .exceptions import StoreError

__all__ = ["Store", "Journal", "metadata", "calls", "attempts", "feedback", "call_features", "upgrade", "default_journal_dir"]

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
    Column("skipped", Text),  # JSON {model: "cooling_down" | "saturated"} passed over at decision time
    Index("ix_calls_task_ts", "task_type", "ts"),
    Index("ix_calls_ts", "ts"),
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
    Column("ttft_s", Float),  # time to first token, streamed attempts only
    Column("router_id", String(32)),  # the router process that made the attempt
    Index("ix_attempts_task_ts", "task_type", "ts"),
    Index("ix_attempts_ts", "ts"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("call_id", String(32), primary_key=True),  # one accuracy per call
    Column("ts", Float, nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("router_id", String(32)),  # the router process that received the feedback
    Index("ix_feedback_task_ts", "task_type", "ts"),
    Index("ix_feedback_ts", "ts"),
)

#: rows the database refused for a reason other than connectivity, with its error (see Store)
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("table_name", String(32), nullable=False),
    Column("row_key", String(64), nullable=False),  # the refused row's primary key, as JSON
    Column("row", Text, nullable=False),  # the refused row, as JSON
    Column("error", Text, nullable=False),
    UniqueConstraint("table_name", "row_key", name="uq_dead_letters_row"),
)

#: prompt features of calls (hashed indices and values as JSON, never the text), for contextual warm start and replay
call_features = Table(
    "call_features",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("space", String(64), nullable=False),  # the featurizer's label: features of one space are comparable
    Column("features", Text, nullable=False),  # JSON {"i": [indices], "v": [values]}
    Index("ix_call_features_task_ts", "task_type", "ts"),
)

TABLES: dict[str, Table] = {t.name: t for t in (calls, attempts, feedback, call_features)}


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


def _log_latency(latency_s: float | None) -> float | None:
    """ln(latency) as the policies take it (floored at 1 microsecond); SQL's own on PostgreSQL."""
    return None if latency_s is None else math.log(max(latency_s, 1e-6))


def _engine(url: str, pgbouncer: bool = False) -> Engine:
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
            dbapi_conn.create_function("zeta_log_latency", 1, _log_latency, deterministic=True)

        return engine
    # a bounded pool per process: the writer, the refresher and feedback look-ups
    connect_args = {"prepare_threshold": None} if pgbouncer else {}  # PgBouncer's transaction mode forbids prepared statements
    return create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args=connect_args)


class Journal:
    """A local append-only file of rows the database could not take yet, replayed when it returns.

    Each store claims one journal file (an exclusive ``flock`` held while it is open), so several
    processes on one host never share a file; on open, a store also replays the files that no live
    process holds, which a crashed or cut-off process left behind.
    """

    def __init__(self, directory: Path, key: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = key
        self.rows = 0  # rows in our file not yet in the database
        for slot in itertools.count():
            path = directory / f"{key}-{slot}.jsonl"
            fh = open(path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self.path, self._fh = path, fh
            break
        self.rows = sum(1 for _ in self._lines(self.path))

    @staticmethod
    def _lines(path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as fh:
            yield from (line for line in fh if line.endswith("\n"))  # a torn last line was never acknowledged

    def append(self, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Write rows durably (flushed and fsynced) before the caller forgets them."""
        self._fh.write("".join(json.dumps([t, r], separators=(",", ":")) + "\n" for t, r in batch))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows += len(batch)

    def orphans(self) -> list[Path]:
        """Journal files of this store that no open store holds."""
        found = []
        for path in sorted(self.directory.glob(f"{self.key}-*.jsonl")):
            if path == self.path:
                continue
            with open(path, "a+", encoding="utf-8") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                fcntl.flock(fh, fcntl.LOCK_UN)
            found.append(path)
        return found

    def read(self, path: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [tuple(json.loads(line)) for line in self._lines(path or self.path)]  # type: ignore[misc]

    def clear(self) -> None:
        """Forget our rows once the database has them."""
        self._fh.truncate(0)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows = 0

    def close(self) -> None:
        """Release the file; an empty journal is removed."""
        empty = self.rows == 0
        self._fh.close()
        if empty:
            self.path.unlink(missing_ok=True)


def default_journal_dir() -> Path:
    """Where journals live unless the config says otherwise: $XDG_STATE_HOME/zeta_adaptive."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "zeta_adaptive"


class _Flush:
    """A marker in the queue: its event is set once every row queued before it is durable."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_STOP = object()
Row = tuple[str, Mapping[str, Any]]


class Store:
    """One interface to the log: queue rows without waiting, flush, close, and read back.

    If the database fails (stopped server, locked file, full disk), the writer appends each batch
    to the local :class:`Journal` and goes on; it probes the database with back-off and, once it
    answers, replays the journal before anything newer. Rows are idempotent (primary keys with
    ``ON CONFLICT DO NOTHING``), so replaying a batch that did reach the database writes nothing
    twice. Only if the journal cannot be written either are rows held in memory, up to
    ``buffer_rows``; beyond that they are counted in ``dropped`` and logged as errors.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 5000,
        linger_s: float = 0.05,
        migrate: bool = True,
        journal_dir: str | Path | None = None,
        buffer_rows: int = 1_000_000,
        pgbouncer: bool = False,
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.buffer_rows = buffer_rows
        try:
            self.engine = _engine(url, pgbouncer)
            if migrate:
                upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {type(exc).__name__}: {getattr(exc, 'orig', exc)}") from None
        self._insert = {name: _insert(self.engine, table) for name, table in TABLES.items()}
        key = "journal-" + hashlib.sha1(self.safe_url.encode()).hexdigest()[:16]
        self.journal = Journal(Path(journal_dir) if journal_dir else default_journal_dir(), key)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.written = {name: 0 for name in TABLES}  # rows inserted (or found present), per table
        self.errors = 0  # failed database writes
        self.dropped = 0  # rows lost because neither the database nor the journal took them
        self._backlog: list[Row] = []  # rows neither the database nor the journal took yet
        self._next_probe = 0.0
        self._delay = 0.05
        self._closed = False
        self._recover()
        self._writer = threading.Thread(target=self._run, name="zeta-store-writer", daemon=True)
        self._writer.start()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    @property
    def pending(self) -> int:
        """Rows held in the journal or in memory, waiting for the database."""
        return self.journal.rows + len(self._backlog)

    # -- writing (never blocks the caller) --------------------------------------------------------
    def put(self, table: str, row: Mapping[str, Any]) -> None:
        """Queue one row for ``table``; the background writer inserts it."""
        if self._closed:
            raise StoreError("the store is closed")
        self._queue.put((table, row))

    def put_many(self, items: Iterable[Row]) -> None:
        """Queue several rows, in order."""
        for item in items:
            self.put(*item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row queued so far is in the database or the journal; False on timeout."""
        marker = _Flush()
        self._queue.put(marker)
        return marker.event.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, stop the writer and release connections (idempotent).

        Rows the database cannot take stay in the journal and are written by the next store
        opened on the same URL.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise StoreError(f"could not write the queued log records to {self.safe_url} within {timeout} s")
        if self.journal.rows:
            self._replay()
        if self.journal.rows or self._backlog:
            log.warning("%d log rows wait in %s for %s", self.pending, self.journal.path, self.safe_url)
        self.journal.close()
        self.engine.dispose()

    def _run(self) -> None:
        """Collect rows for up to ``linger_s`` after the first one (or until a flush, a stop or a
        full batch), then deliver them in one transaction: one wake-up and one commit per batch, not
        per call, is what keeps the writer from taking CPU and the GIL from the call path."""
        stop = False
        while not stop:
            items = [self._queue.get()]
            until = time.monotonic() + self.linger_s
            urgent = isinstance(items[0], _Flush) or items[0] is _STOP
            while len(items) < self.batch_size:
                try:
                    wait = 0.0 if urgent else until - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                urgent = urgent or isinstance(item, _Flush) or item is _STOP
            rows: list[Row] = []
            markers = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    rows.append(item)
            self._deliver(rows)
            for marker in markers:
                marker.event.set()

    def _deliver(self, rows: list[Row]) -> None:
        """Put a batch in the database if it is healthy, else in the journal (or, failing that, memory)."""
        if self._backlog:
            rows, self._backlog = self._backlog + rows, []
        if not rows:
            return
        if (not self.journal.rows or self._replay()) and self._insert_rows(rows):
            return
        try:
            self.journal.append(rows)
        except OSError as exc:
            log.error("journal %s is not writable (%s): holding %d rows in memory", self.journal.path, exc, len(rows))
            self._backlog = rows
            if len(self._backlog) > self.buffer_rows:
                lost = len(self._backlog) - self.buffer_rows
                self._backlog = self._backlog[lost:]
                self.dropped += lost
                log.error("log buffer full: %d rows dropped", lost)

    def _insert_rows(self, rows: Sequence[Row]) -> bool:
        """Insert rows in one transaction per chunk; False (and back-off armed) if the database failed."""
        by_table: dict[str, list[Mapping[str, Any]]] = {name: [] for name in TABLES}
        for table, row in rows:
            by_table[table].append(row)
        try:
            with self.engine.begin() as conn:
                for name in ("calls", "attempts", "feedback", "call_features"):  # parents first
                    if by_table[name]:
                        conn.execute(self._insert[name], by_table[name])
        except SQLAlchemyError as exc:
            self.errors += 1
            self._next_probe = time.monotonic() + self._delay
            log.warning("log write to %s failed (%s); journaling, next try in %.2f s", self.safe_url, type(exc).__name__, self._delay)
            self._delay = min(self._delay * 2, 2.0)
            return False
        self._delay = 0.05
        for name, batch in by_table.items():
            self.written[name] += len(batch)
        return True

    def _replay(self) -> bool:
        """Move our journal into the database if it is time to try; True when the journal is empty."""
        if time.monotonic() < self._next_probe:
            return False
        rows = self.journal.read()
        for start in range(0, len(rows), self.batch_size):
            if not self._insert_rows(rows[start : start + self.batch_size]):
                return False
        self.journal.clear()
        return True

    def _recover(self) -> None:
        """At open: write what earlier runs left in journals (ours and orphans) to the database."""
        for path in self.journal.orphans():
            rows = self.journal.read(path)
            if rows:
                self.journal.append(rows)  # adopt them: one place to replay from
            path.unlink(missing_ok=True)
        if self.journal.rows:
            self._replay()

    # -- reading --------------------------------------------------------------------------------
    def find_call(self, call_id: str) -> dict[str, Any] | None:
        """The logged call row, or None (reads the database: flush first for recent calls)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.call_id == call_id)).mappings().first()
        return dict(row) if row else None

    def has_feedback(self, call_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(feedback.c.call_id).where(feedback.c.call_id == call_id)).first() is not None

    def tail(self, table: str, task_type: str, limit: int, columns: Sequence[str], where: Any = None) -> pd.DataFrame:
        """The last ``limit`` rows of a task type (optionally filtered), in time order."""
        t = TABLES[table]
        query = select(*(t.c[name] for name in columns)).where(t.c.task_type == task_type)
        if where is not None:
            query = query.where(where)
        order = [t.c.ts.desc(), t.c.idx.desc()] if table == "attempts" else [t.c.ts.desc()]
        with self.engine.connect() as conn:
            result = conn.execute(query.order_by(*order).limit(limit))
            keys, rows = list(result.keys()), result.all()[::-1]
        return pd.DataFrame({key: list(column) for key, column in zip(keys, zip(*rows))} if rows else {key: [] for key in keys})

    def attempt_sums(self, task_type: str, where: Any = None) -> pd.DataFrame:
        """Per model of a task type: attempts ``n``, successes ``succ``, and over successes the sums
        of latency, log-latency, its square and cost: what an undiscounted policy keeps."""
        t = attempts
        ok = t.c.outcome == "ok"
        if self.engine.dialect.name == "postgresql":
            log_latency = func.ln(func.greatest(t.c.latency_s, 1e-6))
        else:
            log_latency = func.zeta_log_latency(t.c.latency_s)
        when_ok = lambda value: func.sum(case((ok, value), else_=0.0))  # noqa: E731
        query = select(
            t.c.model,
            func.count().label("n"),
            when_ok(1.0).label("succ"),
            when_ok(t.c.latency_s).label("lat_sum"),
            when_ok(log_latency).label("loglat_sum"),
            when_ok(log_latency * log_latency).label("loglat_sq"),
            when_ok(t.c.cost).label("cost_sum"),
        ).where(t.c.task_type == task_type)
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as conn:
            result = conn.execute(query.group_by(t.c.model))
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    def feedback_sums(self, task_type: str) -> pd.DataFrame:
        """Per model of a task type: ratings ``acc_n`` and the sum of accuracy ``acc_sum``."""
        query = select(feedback.c.model, func.count().label("acc_n"), func.sum(feedback.c.accuracy).label("acc_sum"))
        with self.engine.connect() as conn:
            result = conn.execute(query.where(feedback.c.task_type == task_type).group_by(feedback.c.model))
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    def prune(self, older_than: float) -> dict[str, int]:
        """Delete calls, attempts and feedback that started before ``older_than`` (unix time);
        returns the rows deleted per table. Feedback goes with its call, whenever it arrived."""
        with self.engine.begin() as conn:
            old = select(calls.c.call_id).where(calls.c.ts < older_than)
            deleted = {
                "feedback": conn.execute(delete(feedback).where(feedback.c.call_id.in_(old))).rowcount,
                "attempts": conn.execute(delete(attempts).where(attempts.c.ts < older_than)).rowcount,
                "calls": conn.execute(delete(calls).where(calls.c.ts < older_than)).rowcount,
            }
        return deleted

    def count(self, table: str) -> int:
        """Rows in one table of the log."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one())

    def frame(
        self,
        table: str,
        task_types: Iterable[str] | None = None,
        *,
        since: float | None = None,
        exclude_router: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """A table as a DataFrame in time order: optionally some task types, rows from ``since``
        (unix time) on, not written by router ``exclude_router``, only some ``columns``."""
        t = TABLES[table]
        query = select(*(t.c[name] for name in columns)) if columns else select(t)
        if task_types is not None:
            query = query.where(t.c.task_type.in_(list(task_types)))
        if since is not None:
            query = query.where(t.c.ts >= since)
        if exclude_router is not None:
            query = query.where(or_(t.c.router_id.is_(None), t.c.router_id != exclude_router))
        order = [t.c.ts, t.c.idx] if table == "attempts" else [t.c.ts]
        with self.engine.connect() as conn:
            result = conn.execute(query.order_by(*order))
            keys, rows = list(result.keys()), result.all()
        # built column by column: pandas probing each SQLAlchemy Row for named fields is slow
        return pd.DataFrame({key: list(column) for key, column in zip(keys, zip(*rows))} if rows else {key: [] for key in keys})
