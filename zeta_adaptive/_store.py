"""The outcome log: calls, attempts and feedback in SQLite or PostgreSQL, written off the call path.

Callers hand rows to :meth:`Store.put`, which only appends to an in-memory queue; one background
thread drains the queue in batches, one transaction per batch, with ``INSERT ... ON CONFLICT DO
NOTHING`` on primary keys, so a retried batch never writes a row twice; the same transaction adds
the attempts and ratings it inserted to hourly rollups, which a warm start reads instead of every
row. If the database fails, the batch is kept and retried with back-off; :meth:`Store.flush` waits
until everything handed in so far is written. The schema is owned by the Alembic migrations in
``migrations/`` and is upgraded automatically when a store is opened.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import hashlib
import importlib
import itertools
import json
import logging
import math
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from ._exceptions import StoreError
from ._optional import requires
from ._policies import LATENCY_FLOOR_S
from ._records import CallRecord

if TYPE_CHECKING:  # pandas is imported by the methods that return frames, not by the call path
    import pandas as pd

__all__ = [
    "Store",
    "Journal",
    "metadata",
    "calls",
    "attempts",
    "feedback",
    "dead_letters",
    "call_features",
    "attempt_rollups",
    "feedback_rollups",
    "upgrade",
    "default_journal_dir",
    "sanitize",
]

log = logging.getLogger("zeta_adaptive.store")  # the name before the module became private

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

#: the width in seconds of a rollup bucket (rows are bucketed by ``trunc(ts / width)``)
ROLLUP_BUCKET_S = 3600


def _rollup_key() -> list[Column[Any]]:
    """The key columns every rollup starts with: task type, model and bucket."""
    return [
        Column("task_type", String(64), primary_key=True),
        Column("model", String(128), primary_key=True),
        Column("bucket", Integer, primary_key=True),  # trunc(ts / ROLLUP_BUCKET_S)
    ]


#: per task type, model, hour and everything the warm start's rule reads (see :mod:`.lessons`), the
#: attempts' count and sums; the writer adds each batch's attempts in the batch's transaction, counting
#: only rows it inserted, so that a warm start reads these few rows instead of scanning every attempt
attempt_rollups = Table(
    "attempt_rollups",
    metadata,
    *_rollup_key(),
    Column("outcome", String(16), primary_key=True),
    Column("status", Integer, primary_key=True),  # the attempts' status, 0 for none
    Column("unknown_model", Integer, primary_key=True),  # 1 if their error names an unknown model
    Column("n", Integer, nullable=False),
    Column("lat_sum", Float, nullable=False),
    Column("loglat_sum", Float, nullable=False),  # of ln(max(latency_s, LATENCY_FLOOR_S))
    Column("loglat_sq", Float, nullable=False),
    Column("cost_sum", Float, nullable=False),
)
#: per task type, model and hour, the ratings' count and sum, kept like ``attempt_rollups``
feedback_rollups = Table(
    "feedback_rollups",
    metadata,
    *_rollup_key(),
    Column("acc_n", Integer, nullable=False),
    Column("acc_sum", Float, nullable=False),
)
#: the rollup of each log table that has one: its key columns first, then its sums
ROLLUPS: dict[str, Table] = {"attempts": attempt_rollups, "feedback": feedback_rollups}

TABLES: dict[str, Table] = {t.name: t for t in (calls, attempts, feedback, call_features)}


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("zeta_adaptive.migrations")))
    cfg.attributes["connection"] = connection
    return cfg


#: the newest migration (``migrations/versions``), so that opening a log already at it needs no
#: Alembic, whose import is most of a Router's start-up; a test checks it against Alembic's head
SCHEMA_HEAD = "0008"


def head_revision() -> str:
    """The newest migration's revision."""
    return SCHEMA_HEAD


def _revision(conn: Connection) -> str | None:
    """The revision the log's schema is at (None for a log Alembic never stamped)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    """:func:`_revision` on a connection of its own."""
    with engine.connect() as conn:
        return _revision(conn)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (a no-op when it is already there).

    On PostgreSQL an advisory lock makes concurrent router processes migrate once, in turn.
    """
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        current = _revision(conn)
        if current is None and not inspect(conn).has_table("calls"):  # a new log: the tables as of the newest migration
            metadata.create_all(conn)
            command.stamp(_alembic_config(conn), "head")
        elif current != SCHEMA_HEAD:
            command.upgrade(_alembic_config(conn), "head")


def _dialect_insert(dialect: str, table: Table) -> Any:
    """This dialect's INSERT, which has ``ON CONFLICT`` clauses (its module imported on first use)."""
    return importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(table)


def _insert(engine: Engine, table: Table) -> Any:
    """An idempotent INSERT for this dialect: rows whose primary key exists are skipped."""
    return _dialect_insert(engine.dialect.name, table).on_conflict_do_nothing()


def _engine(url: str, pgbouncer: bool = False, timeout_s: float = 2.0) -> Engine:
    """An engine whose every wait is bounded: SQLite's busy timeout, PostgreSQL's connect and statement
    timeouts, and the pool's checkout timeout all follow ``timeout_s``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):  # each connection (thread) would get its own empty database
            raise StoreError(
                f"cannot use store {url}: SQLite in memory is one database per connection, and the log is written "
                "from a background thread, which would see none of it; name a file (a temporary one will do)"
            )
        folder = Path(parsed.database).parent
        if not folder.is_dir():  # SQLite would only say "unable to open database file"
            raise StoreError(f"cannot open store {url}: directory {folder} does not exist")
        engine = create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # checkpoint the WAL every 10,000 pages (about 40 MB), not 1,000: the log's index pages change
            # in every batch, so a rarer checkpoint copies each page once for many batches (+18% rows/s
            # in bench_store, interleaved)
            cur.execute("PRAGMA wal_autocheckpoint=10000")
            try:  # SQLite's own ln() (3.35+, when built with its math functions) runs a warm start's sums
                cur.execute("SELECT ln(1.0)")
            except sqlite3.OperationalError:  # else Python's, a hundred times slower per row
                dbapi_conn.create_function("ln", 1, math.log, deterministic=True)
            cur.close()

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(timeout_s))}  # libpq's minimum is 2 s
    if pgbouncer:  # PgBouncer's transaction mode forbids prepared statements and startup options
        connect_args["prepare_threshold"] = None
    else:
        given = parsed.query.get("options", "")  # e.g. a search_path the URL sets: keep it
        given = given if isinstance(given, str) else " ".join(given)
        connect_args["options"] = f"{given} -c statement_timeout={int(timeout_s * 1000)}".strip()
    # a bounded pool per process: the writer, the refresher and feedback look-ups
    with requires("postgres"):  # the driver, psycopg, is imported here
        return create_engine(
            url, pool_size=2, max_overflow=4, pool_pre_ping=True, pool_timeout=timeout_s, connect_args=connect_args
        )


# -- rollups: the attempts' sums the warm start reads --------------------------------------------


def rollup_bucket(ts: float) -> int:
    """The rollup bucket of a time stamp: ``trunc(ts / ROLLUP_BUCKET_S)``, computed as SQL computes it."""
    return int(ts / ROLLUP_BUCKET_S)


def _bucket_sql(ts: Any, dialect: str) -> Any:
    """:func:`rollup_bucket` in SQL (SQLite's CAST truncates; PostgreSQL's rounds, so trunc first)."""
    quotient = ts / float(ROLLUP_BUCKET_S)
    return cast(func.trunc(quotient) if dialect == "postgresql" else quotient, Integer)


def _loglat_sql(latency: Any, dialect: str) -> Any:
    """``ln(max(latency, LATENCY_FLOOR_S))`` in SQL: the log-latency a policy learns."""
    return func.ln((func.greatest if dialect == "postgresql" else func.max)(latency, LATENCY_FLOOR_S))


def _increments(table: str, rows: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, ...], list[float]]:
    """Per rollup key, the sums (in the rollup's column order) of rows of ``table`` (sanitized)."""
    sums: dict[tuple[Any, ...], list[float]] = {}
    if table == "feedback":
        for row in rows:
            acc = sums.setdefault((row["task_type"], row["model"], rollup_bucket(row["ts"])), [0, 0.0])
            acc[0] += 1
            acc[1] += row["accuracy"]
        return sums
    from ._lessons import names_unknown_model  # with the backends it reads: off the store's import

    width, floor, log = float(ROLLUP_BUCKET_S), LATENCY_FLOOR_S, math.log  # the writer's loop: no calls it can spare
    fields = operator.itemgetter("task_type", "model", "ts", "outcome", "status", "error", "latency_s", "cost")
    for task_type, model, ts, outcome, status, error, latency, cost in map(fields, rows):
        key = (
            task_type,
            model,
            int(ts / width),  # rollup_bucket()
            outcome,
            status or 0,
            int(names_unknown_model(error)) if outcome == "client_error" else 0,
        )
        loglat = log(latency if latency > floor else floor)
        found = sums.get(key)
        if found is None:
            sums[key] = [1, latency, loglat, loglat * loglat, cost]
        else:
            found[0] += 1
            found[1] += latency
            found[2] += loglat
            found[3] += loglat * loglat
            found[4] += cost
    return sums


def _add_rollups(conn: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add rows just inserted into ``table`` to its rollups, in the caller's transaction, in key
    order: concurrent writers then lock the rollup rows they share in one order."""
    if not rows:
        return
    names = [c.name for c in ROLLUPS[table].columns]
    increments = sorted(_increments(table, rows).items())
    conn.execute(_rollup_upsert(conn.dialect.name, table), [dict(zip(names, (*key, *acc))) for key, acc in increments])


@functools.cache
def _rollup_upsert(dialect: str, table: str) -> Any:
    """The statement that adds increments to a rollup's rows (built once: SQLAlchemy takes milliseconds)."""
    rollup = ROLLUPS[table]
    query = _dialect_insert(dialect, rollup)
    return query.on_conflict_do_update(
        index_elements=[c.name for c in rollup.primary_key.columns],
        set_={c.name: c + query.excluded[c.name] for c in rollup.columns if not c.primary_key},
    )


def _rollup_source(table: str, dialect: str) -> tuple[list[Any], list[Any]]:
    """A rollup's key columns and sums as SQL over its table (what :func:`_increments` computes)."""
    if table == "feedback":
        f = feedback.c
        return [f.task_type, f.model, _bucket_sql(f.ts, dialect)], [func.count(), func.sum(f.accuracy)]
    from ._lessons import unknown_model_sql

    a = attempts.c
    loglat = _loglat_sql(a.latency_s, dialect)
    unknown = case((and_(a.outcome == "client_error", unknown_model_sql(a.error)), 1), else_=0)
    keys = [a.task_type, a.model, _bucket_sql(a.ts, dialect), a.outcome, func.coalesce(a.status, 0), unknown]
    sums = [func.count(), func.sum(a.latency_s), func.sum(loglat), func.sum(loglat * loglat), func.sum(a.cost)]
    return keys, sums


def rebuild_rollups(conn: Connection, table: str, bucket: int | None = None) -> None:
    """Recompute the rollups of ``table`` (``attempts`` or ``feedback``) from its rows, all of them
    or one ``bucket``'s: the migration's backfill, and :meth:`Store.prune`'s repair."""
    rollup, ts = ROLLUPS[table], TABLES[table].c.ts
    keys, sums = _rollup_source(table, conn.dialect.name)
    query = select(*keys, *sums)
    stale = delete(rollup)
    if bucket is not None:  # the (task_type, ts) index finds the rows; the bucket's own test is exact
        start = bucket * ROLLUP_BUCKET_S
        present = TABLES[table].c.task_type.in_(_task_types(conn, TABLES[table]))
        query = query.where(present, ts >= start - 1.0, ts < start + ROLLUP_BUCKET_S + 1.0, keys[2] == bucket)
        stale = stale.where(rollup.c.bucket == bucket)
    conn.execute(stale)
    conn.execute(rollup.insert().from_select([c.name for c in rollup.columns], query.group_by(*keys)))


def _task_types(conn: Connection, table: Table) -> list[str]:
    """The task types in a log table, found by skipping through its (task_type, ts) index, one probe
    per task type (a loose index scan, on SQLite and PostgreSQL alike): with them a condition on
    ``ts`` alone becomes one index range per task type, so no index on ``ts`` alone is needed."""
    name = table.name
    found = conn.exec_driver_sql(
        f"WITH RECURSIVE seen(task_type) AS (SELECT min(task_type) FROM {name} UNION ALL "
        f"SELECT (SELECT min(task_type) FROM {name} WHERE task_type > seen.task_type) FROM seen "
        "WHERE seen.task_type IS NOT NULL) SELECT task_type FROM seen WHERE task_type IS NOT NULL"
    )
    return [row[0] for row in found]


_SUCCESS_SUMS = ("succ", "lat_sum", "loglat_sum", "loglat_sq", "cost_sum")


def _success_sums(outcome: Any, n: Any, lat: Any, loglat: Any, cost: Any, squares: Any = None) -> list[Any]:
    """The sums over successful attempts, as labelled columns: of attempts (``n`` each), latency,
    log-latency, its square (``squares``, or ``loglat * loglat`` over single attempts) and cost."""
    when_ok = lambda value: func.sum(case((outcome == "ok", value), else_=0.0))  # noqa: E731
    values = (n, lat, loglat, loglat * loglat if squares is None else squares, cost)
    return [when_ok(value).label(name) for name, value in zip(_SUCCESS_SUMS, values)]


# -- what every store accepts ---------------------------------------------------------------------

#: the largest value of an ``Integer`` column on every supported database (PostgreSQL's is 32-bit)
INT_MAX = 2**31 - 1
#: text columns are cut to this many characters (``error`` to ERROR_CHARS), with a marker
TEXT_CHARS = 1_000_000
ERROR_CHARS = 2_000


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    marker = f"…[+{len(value) - limit} chars]"
    return value[: max(limit - len(marker), 0)] + marker


def _column_rules(table: Table) -> list[tuple[str, str, int, bool]]:
    """(name, kind, limit, nullable) per column: what :func:`sanitize` enforces. Free text (``Text``
    columns: errors, prompts, answers) is also scrubbed of secrets; names (``String``) are ours."""
    rules = []
    for c in table.columns:
        if isinstance(c.type, Text):
            kind, limit = "free", ERROR_CHARS if c.name == "error" else TEXT_CHARS
        elif isinstance(c.type, String):
            kind, limit = "text", c.type.length or TEXT_CHARS
        else:
            kind, limit = ("int", INT_MAX) if isinstance(c.type, Integer) else ("float", 0)
        rules.append((c.name, kind, limit, bool(c.nullable)))
    return rules


def _clean_text(value: Any, limit: int) -> str:
    text_value = value if type(value) is str else str(value)
    if "\x00" in text_value:
        text_value = text_value.replace("\x00", "")
    if not text_value.isascii():
        try:
            text_value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800"
            text_value = text_value.encode("utf-8", "replace").decode("utf-8")
    return text_value if len(text_value) <= limit else _truncate(text_value, limit)


def _clean_value(value: Any, kind: str, limit: int, nullable: bool, scrub: Callable[[str], str]) -> Any:
    """One value as its column accepts it (see :func:`sanitize`)."""
    if value is None:
        return None
    if kind == "text":
        return _clean_text(value, limit)
    if kind == "free":
        return _clean_text(scrub(value if type(value) is str else str(value)), limit)
    if kind == "int":
        if type(value) is not int:
            number = float(value)
            value = int(number) if math.isfinite(number) else 0
        return value if -limit - 1 <= value <= limit else max(-limit - 1, min(value, limit))
    real = value if type(value) is float else float(value)
    return real if real - real == 0.0 else (None if nullable else 0.0)  # NaN and inf fail x - x == 0


def _plain_column(values: Sequence[Any], kind: str, limit: int, scrub: Callable[[str], str]) -> bool:
    """Whether every value of a column is already as :func:`_clean_value` leaves it, checked on the
    whole column at once (C-level scans, one per check) rather than value by value."""
    types = set(map(type, values))
    nulls = type(None) in types
    types.discard(type(None))
    present = [v for v in values if v is not None] if nulls else values
    if kind in ("text", "free"):
        if not types <= {str}:
            return False
        joined = "\n".join(present)
        if "\x00" in joined or max(map(len, present), default=0) > limit:
            return False
        if not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                return False
        finds = getattr(scrub, "finds", None)  # a Scrubber checks the joined texts in one pass
        return kind == "text" or scrub is str or (finds is not None and not finds(joined))
    if kind == "int":
        return types <= {int} and (not present or (-limit - 1 <= min(present) and max(present) <= limit))
    if not types <= {float}:
        return False
    total = sum(present)
    return total - total == 0.0  # finite: a NaN or an infinity (or an overflow) makes the sum fail


def _sanitize_table(
    table: str, rows: Sequence[Mapping[str, Any]], scrub: Callable[[str], str]
) -> list[Mapping[str, Any]]:
    """Rows of one table as :func:`sanitize` makes them: each column is checked whole and cleaned
    value by value only if it needs it; plain dicts holding exactly the table's columns, all clean,
    are returned as they are (the writer's common case, no copy)."""
    rules, names = _RULES[table], _NAMES[table]
    try:  # lists of the values the rows hold, no new object per row (the writer's GC stays quiet)
        columns = [list(map(operator.itemgetter(name), rows)) for name in names]
        exact = set(map(len, rows)) <= {len(names)} and set(map(type, rows)) <= {dict}
    except KeyError:  # a row without some column: None there
        columns = [[row.get(name) for row in rows] for name in names]
        exact = False
    clean = True
    for i, (_, kind, limit, nullable) in enumerate(rules):
        if not _plain_column(columns[i], kind, limit, scrub):
            columns[i] = [_clean_value(v, kind, limit, nullable, scrub) for v in columns[i]]
            clean = False
    if clean and exact:
        return rows if isinstance(rows, list) else list(rows)
    return [dict(zip(names, values)) for values in zip(*columns)]


def sanitize_rows(rows: Iterable[Row], scrub: Callable[[str], str] = str) -> list[Row]:
    """Rows of any tables as :func:`sanitize` makes them, grouped by table (the writer's batches):
    secrets scrubbed, NUL and lone surrogates removed, text cut to its column (with a marker),
    integers clamped to 32 bits, non-finite floats NULL (or 0 where the column is NOT NULL), numpy
    scalars made plain. Each column of each table is checked at once, so plain rows cost little."""
    batch = rows if isinstance(rows, list) else list(rows)
    by_table: collections.defaultdict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for table, row in batch:
        by_table[table].append(row)
    clean = {table: _sanitize_table(table, group, scrub) for table, group in by_table.items()}
    if all(clean[table] is group for table, group in by_table.items()):
        return batch  # every row was clean as it came: the batch itself, no new tuple per row
    return [(table, row) for table, group in clean.items() for row in group]


def sanitize(table: str, row: Mapping[str, Any], scrub: Callable[[str], str] = str) -> Mapping[str, Any]:
    """One row as :func:`sanitize_rows` makes it."""
    return _sanitize_table(table, [row], scrub)[0]


_RULES = {t.name: _column_rules(t) for t in (calls, attempts, feedback, call_features)}
_NAMES = {name: [rule[0] for rule in rules] for name, rules in _RULES.items()}


def _copy_insert(conn: Any, table: Table, rows: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """PostgreSQL: COPY rows straight into the table (psycopg 3's COPY protocol, several times faster
    than ``executemany``) behind a savepoint; returns the rows inserted. A key already present fails
    the whole COPY, which only a replayed batch meets: the savepoint is rolled back and the rows go
    through a transaction-scoped temporary table and one ``INSERT ... SELECT ... ON CONFLICT DO
    NOTHING RETURNING``, which names the rows that were new."""
    from psycopg.errors import UniqueViolation

    columns = [c.name for c in table.columns]
    names = ", ".join(columns)
    values = operator.itemgetter(*columns)
    with conn.connection.driver_connection.cursor() as cur:
        cur.execute("SAVEPOINT zeta_copy")
        try:
            _copy_rows(cur, table.name, table, map(values, rows))
        except UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT zeta_copy")
        else:
            cur.execute("RELEASE SAVEPOINT zeta_copy")
            return rows
        temp = f"zeta_copy_{table.name}"
        cur.execute(f"CREATE TEMP TABLE {temp} (LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DROP")
        _copy_rows(cur, temp, table, map(values, rows))
        cur.execute(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {temp} ON CONFLICT DO NOTHING RETURNING {names}"
        )
        inserted = [dict(zip(columns, row)) for row in cur.fetchall()]
        cur.execute(f"DROP TABLE {temp}")  # a later batch in the same transaction (a bisection) makes it again
    return inserted


def _copy_rows(cur: Any, target: str, table: Table, rows: Iterable[Sequence[Any]]) -> None:
    """COPY rows (tuples in the order of ``table``'s columns) into ``target`` in PostgreSQL's binary
    format: no text to format and parse per value (sanitized values fit their columns' types)."""
    names = ", ".join(c.name for c in table.columns)
    with cur.copy(f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_PG_TYPES[table.name])
        for row in rows:
            copy.write_row(row)


def _pg_type(column: Column[Any]) -> str:
    """The PostgreSQL type a binary COPY sends a column's values as."""
    if isinstance(column.type, String):  # Text too; varchar takes text's binary form
        return "text"
    return "int4" if isinstance(column.type, Integer) else "float8"


_PG_TYPES = {name: [_pg_type(c) for c in table.columns] for name, table in TABLES.items()}


def _executemany_insert(conn: Any, table: Table, rows: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """SQLite: the idempotent INSERT by the driver's ``executemany`` on plain tuples, which skips
    SQLAlchemy's per-row parameter processing (sanitized rows hold plain values in every column);
    returns the rows inserted. When some keys were present (a replayed batch), the new rows are read
    back by their rowids, which follow one another up to ``last_insert_rowid()``: the transaction
    holds the write lock from its first insert on, and SQLite gives each new row the rowid after the
    largest (below 2**63 - 1)."""
    columns = [c.name for c in table.columns]
    names = ", ".join(columns)
    values = operator.itemgetter(*columns)
    cursor = conn.connection.driver_connection.cursor()  # the driver's own: it takes an iterator of tuples
    try:
        cursor.executemany(
            f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING",
            map(values, rows),
        )
        inserted = cursor.rowcount  # the rows' changes summed: a present key adds none
        if inserted == len(rows):
            return rows
        last = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
    finally:
        cursor.close()
    if not inserted:
        return []
    found = conn.exec_driver_sql(
        f"SELECT {names} FROM {table.name} WHERE rowid BETWEEN ? AND ?", (last - inserted + 1, last)
    )
    return [dict(zip(columns, row)) for row in found]


def _is_row_problem(exc: BaseException) -> bool:
    """Whether a failed write was refused for what some row holds (bisect it) rather than because the
    database is away, locked or slow (journal and retry)."""
    names = {cls.__name__ for cls in type(exc).__mro__}  # SQLAlchemy's classes and the drivers' share these names
    if names & {"DataError", "IntegrityError"}:
        return True
    if isinstance(exc, DBAPIError | SATimeoutError) or names & {"DatabaseError", "InterfaceError"}:
        return False
    return isinstance(exc, (StatementError, ValueError, TypeError, OverflowError))


def _describe(exc: BaseException) -> str:
    """An error in one line: its type and the driver's message (first line)."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0] if detail else ''}"[:500]


class _Bounded:
    """One database operation on its own daemon thread, so that its caller can stop waiting for it.

    A frozen server holds a socket read that no client-side timeout interrupts; the thread is then
    left behind (it finishes, or not, on its own) and the caller treats the store as away.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name="zeta-store-op", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter, whatever it is
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class StoreTimeout(Exception):
    """A database operation did not finish in time (internal: the writer treats it as an outage)."""


class Journal:
    """A local append-only file of rows the database does not have yet, replayed when it answers.

    Each store claims one journal file (an exclusive ``flock`` held while it is open), so several
    processes on one host never share a file; on open, a store also adopts the files that no live
    process holds, which a crashed or cut-off process left behind. Appends and the removal of
    replayed rows take one lock, so calls (``durability = "journal"``) and the writer may append
    while the writer replays.
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.key = key
        self.lock = threading.Lock()
        for slot in itertools.count():
            path = directory / f"{key}-{slot}.jsonl"
            try:  # a read-only home (a container's) must say so, and how to fix it, not raise an OSError
                directory.mkdir(parents=True, exist_ok=True)
                fh = open(path, "a+b")  # noqa: SIM115 - held open (and flocked) until close()
            except OSError as exc:
                raise StoreError(
                    f"cannot write the log's journal in {directory} ({exc.strerror or exc}): set journal_dir "
                    "(or XDG_STATE_HOME) to a writable directory"
                ) from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self.path, self._fh = path, fh
            break
        self.rows = len(self.read()[0])  # rows in our file not yet in the database

    def append(self, batch: Sequence[Row]) -> None:
        """Write rows durably (flushed and fsynced) before the caller forgets them."""
        data = "".join(json.dumps([t, r], separators=(",", ":")) + "\n" for t, r in batch).encode()
        with self.lock:
            _durable(self._fh, data)
            self.rows += len(batch)

    def read(self, path: Path | None = None) -> tuple[list[Row], int]:
        """The complete rows of a journal file and the byte offset they end at (a torn last line
        was never acknowledged and is left out)."""
        with self.lock if path is None else contextlib.nullcontext():
            data = (path or self.path).read_bytes()
        end = data.rfind(b"\n") + 1
        return [tuple(json.loads(line)) for line in data[:end].splitlines() if line.strip()], end

    def discard(self, end: int, rows: int) -> None:
        """Forget the first ``end`` bytes (``rows`` rows) once the database has them; later appends stay."""
        with self.lock:
            self._fh.seek(end)
            tail = self._fh.read()
            self._fh.seek(0)
            self._fh.truncate(0)
            _durable(self._fh, tail)
            self.rows = max(self.rows - rows, 0)

    def orphans(self) -> list[Path]:
        """Journal files of this store that no open store holds."""
        found = []
        for path in sorted(self.directory.glob(f"{self.key}-*.jsonl")):
            if path == self.path:
                continue
            with open(path, "a+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                fcntl.flock(fh, fcntl.LOCK_UN)
            found.append(path)
        return found

    def dead_letter(self, table: str, row: Mapping[str, Any], error: str) -> None:
        """Keep a row that neither the database's tables nor its dead-letter table took, with why."""
        with open(self.directory / f"{self.key}-dead.jsonl", "a", encoding="utf-8") as fh:
            _durable(fh, json.dumps({"table": table, "row": row, "error": error}, default=str) + "\n")

    def close(self) -> None:
        """Release the file; an empty journal is removed."""
        self._fh.close()
        if self.rows == 0:
            self.path.unlink(missing_ok=True)


def _durable(fh: Any, data: Any) -> None:
    """Write to a file, flushed and fsynced."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


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
_TABLE_NAMES = frozenset(TABLES)
_TABLE_OF = operator.itemgetter(0)
#: seconds without a row after which the writer stops ticking and sleeps until the next hand-over
IDLE_S = 1.0
#: how often the writer checks on a running write (whether to journal, whether it ran past its timeout)
_CHECK_S = 0.05
_WAKE = object()  # durability = "journal": rows are in the journal already, the writer only moves them
Row = tuple[str, Mapping[str, Any]]
DURABILITY = ("batched", "journal")


#: a query's rows column by column: what the warm start reads, and DataFrames are built from
Columns = dict[str, list[Any]]
#: what a read of sums takes from the rollups: (until, condition), see :meth:`Store._sums`
Rolled = tuple[float, Any] | None


def _columns(keys: list[str], rows: Sequence[Sequence[Any]]) -> Columns:
    """Rows as columns, built column by column (pandas probing each SQLAlchemy Row for named fields is slow)."""
    return {key: list(column) for key, column in zip(keys, zip(*rows))} if rows else {key: [] for key in keys}


def _order(table: Table) -> list[Column[Any]]:
    """A log table's time order: by ``ts``, attempts of one call by their index."""
    return [table.c.ts, table.c.idx] if table.name == "attempts" else [table.c.ts]


def _split(items: list[Any]) -> tuple[list[Row], list[_Flush]]:
    """The rows among handed-over items (a call's record expanded into its rows) and the flushes to answer."""
    rows: list[Row] = []
    markers: list[_Flush] = []
    for item in items:
        if type(item) is tuple:  # a row, the common case first
            rows.append(item)
        elif isinstance(item, _Flush):
            markers.append(item)
        elif isinstance(item, CallRecord):
            rows.extend(item.rows())
        elif item is not _WAKE and item is not _STOP:
            rows.append(item)
    return rows, markers


#: every open store of this process: a forked child marks them inherited (see :meth:`Store.check_process`)
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def _mark_inherited() -> None:
    for store in list(_STORES):
        store.inherited = True


os.register_at_fork(after_in_child=_mark_inherited)


class Store:
    """One interface to the log: queue rows without waiting, flush, close, and read back.

    Every database operation is bounded by ``timeout_s``. A batch the database cannot take (down,
    locked, frozen, slow) goes to the local :class:`Journal`, and so does every row that has waited
    in memory longer than ``journal_after_s``; the writer probes with back-off and, once the
    database answers, replays the journal before anything newer. Rows are idempotent (primary keys
    with ``ON CONFLICT DO NOTHING``), so a replayed row is never written twice. A batch refused for
    what a row holds is bisected: the good rows land, each refused row goes to the ``dead_letters``
    table with the database's error (or, if that too refuses it, to a ``-dead.jsonl`` file beside
    the journal). Only if the journal cannot be written either are rows held in memory, up to
    ``buffer_rows``; beyond that they are counted in ``dropped`` and logged as errors.

    ``durability = "batched"`` (default) queues rows in memory; a hard kill loses at most the rows
    of the last ``linger_s`` (``journal_after_s`` during an outage). ``"journal"`` appends and
    fsyncs each call's rows to the journal before the call returns: nothing acknowledged is lost.
    ``background=True`` (the router) opens even when the database is away: rows are journaled and
    the schema is migrated when it answers.
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
        timeout_s: float = 2.0,
        journal_after_s: float = 1.0,
        durability: str = "batched",
        background: bool = False,
        scrub: Callable[[str], str] = str,
    ) -> None:
        if durability not in DURABILITY:
            raise StoreError(f"durability must be one of {list(DURABILITY)}, got {durability!r}")
        self.pid = os.getpid()
        self.inherited = False  # set in a forked child: the writer thread and the connections stayed behind
        self.url = url
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.buffer_rows = buffer_rows
        self.timeout_s = timeout_s
        self.journal_after_s = journal_after_s
        self.write_rows = batch_size  # rows per transaction: one writer batch, one COPY or executemany per table
        self.durability = durability
        self.scrub = scrub
        try:
            self.engine = _engine(url, pgbouncer, timeout_s)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open store {self.safe_url}: {type(exc).__name__}: {getattr(exc, 'orig', exc)}"
            ) from None
        key = "journal-" + hashlib.sha1(self.safe_url.encode()).hexdigest()[:16]
        try:  # before the database is touched: a journal that cannot be written stops the store here
            self.journal = Journal(Path(journal_dir) if journal_dir else default_journal_dir(), key)
        except StoreError:
            self.engine.dispose()
            raise
        self._insert_feedback = _insert(self.engine, feedback)  # one row, its winner returned (insert_feedback)
        self._stuck: _Bounded | None = None  # a database operation we stopped waiting for
        self._next_probe = 0.0
        self._delay = 0.05
        self._migrated = not migrate
        if migrate:
            try:  # a router does not wait long for an absent database; a command does
                wait = timeout_s if background else max(timeout_s, 60.0)
                if self.call(current_revision, self.engine, timeout=wait) != SCHEMA_HEAD:
                    import alembic.command  # noqa: F401  (Python work, before the clock of the bounded migration starts)

                    self.call(upgrade, self.engine, timeout=wait)
                self._migrated = True
            except (SQLAlchemyError, StoreError) as exc:
                if not background:
                    self.journal.close()
                    raise StoreError(f"cannot open store {self.safe_url}: {_describe(exc)}") from None
                log.warning("store %s is not reachable (%s): journaling until it is", self.safe_url, _describe(exc))
        self._items: collections.deque[Any] = collections.deque()  # rows and markers, in order
        self._wake = threading.Event()
        self._asleep = True  # the writer waits for a hand-over rather than ticking (see _run)
        self._since = time.monotonic()  # no row of the batch being written was handed over before this
        self._urgent = False  # a flush or stop waits in the queue: no lingering
        self.written = {name: 0 for name in TABLES}  # rows inserted (or found present), per table
        self.errors = 0  # failed database writes
        self.dead = 0  # rows refused by the database, kept as dead letters
        self.dropped = 0  # rows lost because neither the database nor the journal took them
        self.crashes = 0  # unexpected errors caught in the writer (its rows were journaled)
        self._backlog: list[Row] = []  # rows neither the database nor the journal took yet
        self._closed = False
        _STORES.add(self)
        for path in self.journal.orphans():  # adopt what crashed processes left: one file to replay
            rows, _ = self.journal.read(path)
            if rows:
                self.journal.append(rows)
            path.unlink(missing_ok=True)
        if self._migrated and self.journal.rows:
            self._replay()
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

    @property
    def available(self) -> bool:
        """Whether the database answered the writer's last operation (False while journaling)."""
        return (
            self._migrated and self._stuck is None and self.journal.rows == 0 and self._next_probe <= time.monotonic()
        )

    def check_process(self) -> None:
        """Raise StoreError in a forked child: a fork copies neither the writer thread (rows queued there
        would never be written) nor connections it can share safely with its parent."""
        if self.inherited:
            raise StoreError(
                f"the log store was opened in process {self.pid} and this is its forked child {os.getpid()}, "
                "which inherits neither its writer thread nor its connections: open a new Router (or Store) here"
            )

    # -- bounded operations ---------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on its own thread, waiting at most ``timeout`` (the store's ``timeout_s``);
        raises StoreError if it fails for want of the database or does not finish in time (the
        operation is then remembered as hung, so the writer does not pile more onto the database)."""
        self.check_process()
        op = _Bounded(lambda: fn(*args))
        limit = self.timeout_s if timeout is None else timeout
        try:
            if not op.done.wait(limit):
                self._stuck = op
                raise StoreTimeout(f"no answer within {limit:g} s")
            return op.outcome()
        except (SQLAlchemyError, StoreTimeout) as exc:
            raise StoreError(f"store {self.safe_url} failed: {_describe(exc)}") from None

    # -- writing (never blocks the caller) --------------------------------------------------------
    def put(self, table: str, row: Mapping[str, Any]) -> None:
        """Queue one row for ``table``; the background writer inserts it."""
        self.put_many(((table, row),))

    def put_many(self, items: Iterable[Row]) -> None:
        """Queue several rows, in order (with ``durability = "journal"``: journaled first)."""
        self.check_process()
        if self._closed:
            raise StoreError("the store is closed")
        rows = list(items)
        if not _TABLE_NAMES.issuperset(map(_TABLE_OF, rows)):
            unknown = next(table for table, _ in rows if table not in TABLES)
            raise StoreError(f"unknown log table {unknown!r}; tables are {sorted(TABLES)}")
        if self.durability == "journal":
            self.journal.append(sanitize_rows(rows, self.scrub))
            self._hand_over((_WAKE,), urgent=False)
        else:
            self._hand_over(rows, urgent=False)

    def put_call(self, record: CallRecord) -> None:
        """Queue one call's rows as its record: the writer builds them (``durability = "journal"``: now)."""
        if self._closed or self.inherited or self.durability == "journal":
            self.put_many(record.rows())  # (which refuses a closed or inherited store)
        else:
            self._hand_over((record,), urgent=False)

    def _hand_over(self, items: Sequence[Any], urgent: bool) -> None:
        """Give the writer rows (one atomic ``extend``). While rows flow the writer collects them on
        its own ``linger_s`` tick, so a call wakes no thread; only a sleeping (idle) writer, a full
        batch, a flush or a stop sets the event."""
        self._items.extend(items)
        if urgent:
            self._urgent = True
        if (urgent or self._asleep or len(self._items) >= self.batch_size) and not self._wake.is_set():
            self._wake.set()  # (setting it again takes a lock: a full queue would pay it on every call)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row queued so far is in the database or the journal. False on timeout,
        if the writer has stopped, or if rows were lost since the store opened."""
        self.check_process()
        marker = _Flush()
        self._hand_over([marker], urgent=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not marker.event.wait(0.1):
            if not self._writer.is_alive() or (deadline is not None and time.monotonic() >= deadline):
                return False
        return self.dropped == 0

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, stop the writer and release connections (idempotent).

        Rows the database cannot take stay in the journal and are written by the next store
        opened on the same URL. Raises StoreError if rows were lost. In a forked child it only marks
        the store closed: the writer, the journal and the connections are the parent's.
        """
        if self._closed:
            return
        self._closed = True
        if self.inherited:
            return
        self._hand_over([_STOP], urgent=True)
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise StoreError(f"could not write the queued log records to {self.safe_url} within {timeout} s")
        if self.journal.rows:
            if self._stuck is not None:  # a write that hung may finish now: give it one timeout
                self._stuck.done.wait(self.timeout_s)
            self._next_probe = 0.0
            self._replay()
        if self.journal.rows or self._backlog:
            log.warning("%d log rows wait in %s for %s", self.pending, self.journal.path, self.safe_url)
        self.journal.close()
        if self._stuck is None:
            self.engine.dispose()
        if self.dropped:
            raise StoreError(f"{self.dropped} log rows were lost: neither {self.safe_url} nor the journal took them")

    def _run(self) -> None:
        """Deliver what was handed over every ``linger_s`` (at once for a flush, a stop or a full
        batch) in one transaction: the writer's own tick, not a wake-up per call, and one commit per
        batch are what keep it from taking CPU and the GIL from the call path. After ``IDLE_S``
        without a row it sleeps until the next hand-over (or journal probe). Nothing raised in here
        stops the writer: rows of a batch that hit an unexpected error are journaled."""
        stop = False
        idle_ticks = math.ceil(IDLE_S / self.linger_s) if self.linger_s > 0 else 0
        quiet = idle_ticks  # ticks in a row that found nothing: the writer starts asleep
        since = time.monotonic()  # no row of the next batch was handed over before this
        while not stop:
            if not self._items and quiet >= idle_ticks:
                self._asleep = True  # from here on a hand-over wakes us
                if not self._items:
                    self._wake.wait(self._idle_wait())
                self._asleep = False
                self._wake.clear()
                since = time.monotonic()  # what woke us was handed over just before (by the wake-up's delay)
            if not self._urgent and len(self._items) < self.batch_size and (self._items or quiet < idle_ticks):
                self._wake.wait(self.linger_s)  # the tick (a flush, a stop or a full batch cuts it short)
            self._wake.clear()  # before draining: a flush or stop handed over from now on is seen next turn
            self._urgent = False
            take = self._items.popleft  # at most a batch: what was handed over by now (others only append)
            items: list[Any] = [take() for _ in itertools.repeat(None, min(len(self._items), self.batch_size))]
            self._since, since = since, time.monotonic()  # the batch's rows came after the last drain
            quiet = 0 if items else quiet + 1
            if not items and not (self.pending and time.monotonic() >= self._next_probe):
                continue  # an empty tick: nothing to write, no journal probe due
            stop = any(item is _STOP for item in items)
            rows, markers = _split(items)
            try:
                self._deliver(rows)
            except Exception as exc:  # a bug must not stop the log: keep the rows, count and report it
                self.crashes += 1
                log.error("log writer error (%s): journaling %d rows", _describe(exc), len(rows), exc_info=True)
                self._keep(rows)
            for marker in markers:
                marker.event.set()

    def _idle_wait(self) -> float | None:
        """How long the idle writer sleeps: until the next probe while rows wait in the journal."""
        if not self.journal.rows and self._migrated:
            return None
        return max(self._next_probe - time.monotonic(), 0.05)

    def _deliver(self, rows: list[Row]) -> None:
        """Put a batch in the database if it answers, else in the journal (or, failing that, memory)."""
        if self._backlog:
            rows, self._backlog = self._backlog + rows, []
        rows = sanitize_rows(rows, self.scrub)
        if self.journal.rows:  # the database was away: newer rows join the journal before its replay
            self._keep(rows)  # (whose probe may wait on a locked or frozen database), in their order
            self._replay()
        elif rows and not self._write(rows):
            self._keep(rows)

    def _keep(self, rows: list[Row]) -> None:
        """Journal rows the database did not take; hold them in memory if the journal fails too."""
        if not rows:
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

    def _write(self, rows: list[Row]) -> bool:
        """Insert rows, ``write_rows`` per transaction; rows refused for their content are bisected
        down to dead letters. False if the database is away (the caller journals the batch)."""
        if not self._ready():
            return False
        for start in range(0, len(rows), self.write_rows):
            placed = self._write_chunk(rows[start : start + self.write_rows], rows[start:])
            if placed is not None:
                return placed
        return True

    def _write_chunk(self, chunk: list[Row], rest: list[Row]) -> bool | None:
        """Write one chunk: None when it landed and the batch goes on; True when the rest of the
        batch is in the journal instead; False when the database is away and nothing was journaled."""
        landed, journaled, refused = self._try_insert(chunk, rest)
        if refused is None:
            return None if landed and not journaled else journaled
        if journaled:  # the rows are in the journal now: its replay bisects them
            self._replay()
            return True
        return None if self._bisect(chunk, refused) else False

    def _try_insert(self, rows: list[Row], rest: list[Row]) -> tuple[bool, bool, Exception | None]:
        """Insert rows (bounded, see :meth:`_await`): (whether they landed, whether ``rest`` was
        journaled, the error if the database refused them for what they hold); an outage is recorded."""
        op = _Bounded(lambda: self._insert_rows(rows))
        finished, journaled = self._await(op, rest)
        if not finished:
            return False, journaled, None
        try:
            op.outcome()
        except Exception as exc:  # noqa: BLE001 - any driver error: a row problem (bisect) or an outage (journal)
            if _is_row_problem(exc):
                return False, journaled, exc
            self._outage(exc)
            return False, journaled, None
        self._healthy(rows)
        return True, journaled, None

    def _await(self, op: _Bounded, rest: list[Row]) -> tuple[bool, bool]:
        """Wait for one of the writer's inserts: (whether it finished, whether ``rest`` was journaled).

        While it runs no row waits in memory longer than ``journal_after_s``: ``rest`` (the batch's
        unwritten rows), then the rows handed over meanwhile, are journaled once the batch's oldest
        row (handed over after the drain before it, ``_since``) is within two checks of that age, the
        margin for the check's interval and the journal's fsync. Counting from the insert's start
        instead let rows that queued behind a slow write, or behind a probe of a locked database, wait
        for both (1.0-1.9 s). An insert still running after ``timeout_s`` is left to finish on its own
        (replaying the journal later finds its rows present) and the store is treated as away.
        """
        started = time.monotonic()
        journaled = False
        while not op.done.wait(_CHECK_S):
            now = time.monotonic()
            if not journaled and now - self._since + 2 * _CHECK_S >= self.journal_after_s:
                if rest:
                    self.journal.append(rest)
                journaled = True
            if journaled:
                self._journal_waiting()
            if now - started >= self.timeout_s:
                self._stuck = op
                self._outage(StoreTimeout(f"no answer within {self.timeout_s:g} s"))
                return False, journaled
        return True, journaled

    def _journal_waiting(self) -> None:
        """Journal the rows handed over since the current batch began (their flushes are then
        answered): they must not wait in memory behind a slow write."""
        items: list[Any] = []
        while self._items:
            item = self._items.popleft()
            if item is _STOP:  # left for the writer's loop, which stops on it
                self._items.appendleft(item)
                break
            items.append(item)
        rows, markers = _split(items)
        self._keep(sanitize_rows(rows, self.scrub))
        for marker in markers:
            marker.event.set()

    def _bisect(self, rows: list[Row], exc: BaseException) -> bool:
        """Find the rows a database refuses by halving the batch; the rest is written."""
        if len(rows) == 1:
            self._dead_letter(rows[0], exc)
            return True
        half = len(rows) // 2
        return self._insert_or_bisect(rows[:half]) and self._insert_or_bisect(rows[half:])

    def _insert_or_bisect(self, rows: list[Row]) -> bool:
        """Insert rows (bounded); if one is refused for what it holds, bisect. False if the database is away."""
        landed, _, refused = self._try_insert(rows, [])
        return landed or (refused is not None and self._bisect(rows, refused))

    def _dead_letter(self, row: Row, exc: BaseException) -> None:
        table, values = row
        error = self.scrub(_describe(exc))[:ERROR_CHARS]
        key = json.dumps([values.get(c.name) for c in TABLES[table].primary_key.columns], default=str)[:64]
        letter = dict(ts=time.time(), table_name=table, row_key=key, row=json.dumps(values, default=str), error=error)
        self.dead += 1
        log.error("log row refused by %s, kept as a dead letter: %s %s: %s", self.safe_url, table, key, error)
        try:
            self.call(self._insert_dead, letter)
        except Exception:  # noqa: BLE001 - the dead-letter file is the last resort for whatever failed
            self.journal.dead_letter(table, values, error)

    def _insert_dead(self, letter: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(_insert(self.engine, dead_letters), [letter])

    def _insert_rows(self, rows: Sequence[Row]) -> None:
        """Insert rows in one transaction, parents first, skipping keys already present: on PostgreSQL
        by COPY (:func:`_copy_insert`), on SQLite by the driver's ``executemany``. The attempts that
        were new are added to their rollups in the same transaction: each counts once, however often
        it is replayed."""
        by_table: dict[str, list[Mapping[str, Any]]] = {name: [] for name in TABLES}
        for table, row in rows:
            by_table[table].append(row)
        insert = _copy_insert if self.engine.dialect.name == "postgresql" else _executemany_insert
        with self.engine.begin() as conn:
            for name in ("calls", "attempts", "feedback", "call_features"):
                if not by_table[name]:
                    continue
                new = insert(conn, TABLES[name], by_table[name])
                if name in ROLLUPS:
                    _add_rollups(conn, name, new)

    def _healthy(self, rows: Sequence[Row]) -> None:
        self._delay = 0.05
        for table, n in collections.Counter(map(operator.itemgetter(0), rows)).items():
            self.written[table] += n

    def _outage(self, exc: BaseException) -> None:
        self.errors += 1
        self._next_probe = time.monotonic() + self._delay
        log.warning(
            "log write to %s failed (%s); journaling, next try in %.2f s", self.safe_url, _describe(exc), self._delay
        )
        self._delay = min(self._delay * 2, 2.0)

    def _ready(self) -> bool:
        """Whether to try the database now: not backing off, no earlier operation still hung, schema migrated."""
        if self._stuck is not None:
            if not self._stuck.done.is_set():
                return False
            self._stuck = None
        if time.monotonic() < self._next_probe:
            return False
        if not self._migrated:
            try:
                self.call(upgrade, self.engine)
            except StoreError as exc:
                self._outage(exc)
                return False
            self._migrated = True
        return True

    def _replay(self) -> bool:
        """Move our journal into the database if it answers; True when the journal is empty."""
        rows, end = self.journal.read()
        if not rows:
            self.journal.discard(end, 0)
            return True
        for start in range(0, len(rows), self.write_rows):
            chunk = sanitize_rows(rows[start : start + self.write_rows], self.scrub)
            if not self._ready() or not self._insert_or_bisect(chunk):
                return False
        self.journal.discard(end, len(rows))
        return True

    def describe(self) -> dict[str, Any]:
        """The writer's counters, for metrics and reports."""
        counters = ("pending", "errors", "dead", "dropped", "crashes", "available")
        return {"written": dict(self.written), "queued": len(self._items), **{k: getattr(self, k) for k in counters}}

    # -- reading --------------------------------------------------------------------------------
    def find_call(self, call_id: str) -> dict[str, Any] | None:
        """The logged call row, or None (reads the database: flush first for recent calls)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.call_id == call_id)).mappings().first()
        return dict(row) if row else None

    def insert_feedback(self, row: Mapping[str, Any]) -> bool:
        """Insert one feedback row now, unless the call already has one: True if this row won.
        The primary key on ``feedback.call_id`` decides, so two processes rating a call at once
        cannot both win."""
        clean = sanitize("feedback", row, self.scrub)
        with self.engine.begin() as conn:
            won = conn.execute(self._insert_feedback.values(clean).returning(feedback.c.call_id)).first() is not None
            if won:
                _add_rollups(conn, "feedback", [clean])
        if won:
            self.written["feedback"] += 1
        return won

    def has_feedback(self, call_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(feedback.c.call_id).where(feedback.c.call_id == call_id)).first() is not None

    def tail(self, table: str, task_type: str, limit: int, columns: Sequence[str], where: Any = None) -> Columns:
        """The last ``limit`` rows of a task type (optionally filtered), in time order, column by column."""
        t = TABLES[table]
        query = select(*(t.c[name] for name in columns)).where(t.c.task_type == task_type)
        if where is not None:
            query = query.where(where)
        return self._read(query.order_by(*(c.desc() for c in _order(t))).limit(limit), reverse=True)

    def attempt_sums(self, task_type: str, where: Any = None, rolled: Rolled = None) -> Columns:
        """Per model of a task type: attempts ``n``, successes ``succ``, and over successes the sums
        of latency, log-latency, its square and cost: what an undiscounted policy keeps. ``rolled``:
        see :meth:`_sums`."""
        a, r = attempts.c, attempt_rollups.c
        loglat = _loglat_sql(a.latency_s, self.engine.dialect.name)
        scanned = [func.count().label("n"), *_success_sums(a.outcome, 1.0, a.latency_s, loglat, a.cost)]
        summed = [
            func.sum(r.n).label("n"),
            *_success_sums(r.outcome, cast(r.n, Float), r.lat_sum, r.loglat_sum, r.cost_sum, squares=r.loglat_sq),
        ]
        return self._sums("attempts", task_type, scanned, where, rolled, summed)

    def feedback_sums(self, task_type: str, where: Any = None, rolled: Rolled = None) -> Columns:
        """Per model of a task type: ratings ``acc_n`` and the sum of accuracy ``acc_sum``. ``rolled``: see :meth:`_sums`."""
        f, r = feedback.c, feedback_rollups.c
        scanned = [func.count().label("acc_n"), func.sum(f.accuracy).label("acc_sum")]
        summed = [func.sum(r.acc_n).label("acc_n"), func.sum(r.acc_sum).label("acc_sum")]
        return self._sums("feedback", task_type, scanned, where, rolled, summed)

    def _sums(
        self, table: str, task_type: str, scanned: list[Any], where: Any, rolled: Rolled, summed: list[Any]
    ) -> Columns:
        """Per model of a task type, the labelled sums ``scanned`` over the rows of ``table`` that meet ``where``.

        With ``rolled = (until, condition)`` the rows of the whole rollup buckets before ``until``
        are read from the table's rollups instead (the labelled sums ``summed`` over the keys that
        meet ``condition``, a condition on the rollup table, or all when it is None) and only the
        later rows are scanned: the same sums, up to float rounding, in time proportional to the
        buckets rather than the rows. ``where`` must then hold for every row before ``until`` that
        ``condition`` admits. One statement: one snapshot of the log. Plain lists per column: the
        warm start of summed policies needs no pandas.
        """
        t = TABLES[table]
        query = select(t.c.model, *scanned).where(t.c.task_type == task_type)
        if where is not None:
            query = query.where(where)
        if rolled is None:
            query = query.group_by(t.c.model)
        else:
            until, condition = rolled
            first = rollup_bucket(until)  # the first bucket scanned: every earlier one ends by ``until``
            if first * ROLLUP_BUCKET_S > until:  # float rounding at a bucket's edge
                first -= 1
            bucket_of = _bucket_sql(t.c.ts, self.engine.dialect.name)
            query = query.where(t.c.ts >= first * ROLLUP_BUCKET_S - 1.0, bucket_of >= first).group_by(t.c.model)
            r = ROLLUPS[table].c
            kept = select(r.model, *summed).where(r.task_type == task_type, r.bucket < first)
            if condition is not None:
                kept = kept.where(condition)
            parts = union_all(query, kept.group_by(r.model)).subquery()
            query = select(
                parts.c.model,
                *(
                    cast(func.sum(parts.c[c.name]), Integer if c.name in ("n", "acc_n") else Float).label(c.name)
                    for c in scanned
                ),
            ).group_by(parts.c.model)
        return self._read(query)

    def _read(self, query: Any, reverse: bool = False) -> Columns:
        """A query's rows (``reverse``: last first) column by column."""
        with self.engine.connect() as conn:
            result = conn.execute(query)
            return _columns(list(result.keys()), result.all()[::-1] if reverse else result.all())

    def prune(self, older_than: float, *, dry_run: bool = False) -> dict[str, int]:
        """Delete calls, attempts and feedback that started before ``older_than`` (unix time);
        returns the rows deleted per table. Feedback goes with its call, whenever it arrived.
        ``dry_run`` rolls the deletion back: the counts of what it would delete."""
        with self.engine.connect() as conn:  # old rows are found by task type and time: see _task_types
            old_calls = and_(calls.c.task_type.in_(_task_types(conn, calls)), calls.c.ts < older_than)
            old_attempts = and_(attempts.c.task_type.in_(_task_types(conn, attempts)), attempts.c.ts < older_than)
            deleted = {
                "feedback": conn.execute(
                    delete(feedback).where(feedback.c.call_id.in_(select(calls.c.call_id).where(old_calls)))
                ).rowcount,
                "attempts": conn.execute(delete(attempts).where(old_attempts)).rowcount,
                "calls": conn.execute(delete(calls).where(old_calls)).rowcount,
            }
            cut = rollup_bucket(older_than)  # earlier buckets lost all their attempts; this one some
            conn.execute(delete(attempt_rollups).where(attempt_rollups.c.bucket < cut))
            rebuild_rollups(conn, "attempts", cut)
            rebuild_rollups(conn, "feedback")  # ratings go with their calls, from any hour
            if dry_run:
                conn.rollback()
            else:
                conn.commit()
        return deleted

    def rebuild_rollups(self) -> None:
        """Recompute the rollups from every attempt and rating, for a log loaded around the store (a
        bulk insert): the warm start reads the rollups, the writer keeps them only for its own rows."""
        with self.engine.begin() as conn:
            for table in ROLLUPS:
                rebuild_rollups(conn, table)

    def count(self, table: str) -> int:
        """Rows in one table of the log."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one())

    def frame(self, table: str, task_types: Iterable[str] | None = None, **filters: Any) -> pd.DataFrame:
        """:meth:`columns` as a DataFrame (for analysis: pandas is imported here, never on a router's path)."""
        import pandas as pd

        return pd.DataFrame(self.columns(table, task_types, **filters))

    def columns(
        self,
        table: str,
        task_types: Iterable[str] | None = None,
        *,
        since: float | None = None,
        exclude_router: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> Columns:
        """A table's rows in time order, column by column: optionally some task types, rows from
        ``since`` (unix time) on, not written by router ``exclude_router``, only some ``columns``."""
        t = TABLES[table]
        query = select(*(t.c[name] for name in columns)) if columns else select(t)
        if task_types is not None:
            query = query.where(t.c.task_type.in_(list(task_types)))
        if since is not None:
            query = query.where(t.c.ts >= since)
        if exclude_router is not None:
            query = query.where(or_(t.c.router_id.is_(None), t.c.router_id != exclude_router))
        return self._read(query.order_by(*_order(t)))
