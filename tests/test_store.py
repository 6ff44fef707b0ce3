"""The outcome log: migrations, batched background writes, idempotency, reads, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from helpers import call_row, router_config
from sqlalchemy import create_engine, event, inspect, text

from zeta_adaptive import Config, Router, StoreError
from zeta_adaptive import _store as store_module
from zeta_adaptive._store import Store
from zeta_adaptive.cli import main


def _attempt(call_id: str, idx: int) -> dict:
    return {
        "call_id": call_id,
        "idx": idx,
        "ts": 1.0 + idx,
        "task_type": "code",
        "model": "m",
        "outcome": "ok",
        "status": 200,
        "latency_s": 0.01,
        "tokens_in": 3,
        "tokens_out": 4,
        "cost": 0.0,
        "error": None,
    }


def test_migrations_create_the_tables_once(store_url):
    Store(store_url).close()
    Store(store_url).close()  # a second open finds the schema current
    engine = create_engine(store_url)
    try:
        names = set(inspect(engine).get_table_names())
        assert {"calls", "attempts", "feedback", "dead_letters", "alembic_version"} <= names
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == store_module.SCHEMA_HEAD
            )
    finally:
        engine.dispose()


def test_the_schema_head_the_store_knows_is_alembics():
    """Opening a current log skips Alembic because the store knows the newest revision; it must be Alembic's."""
    from alembic.script import ScriptDirectory

    from zeta_adaptive._store import SCHEMA_HEAD, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config(None)).get_current_head() == SCHEMA_HEAD


@pytest.mark.slow  # a fresh interpreter, or seconds of real time: not in make test-fast
def test_opening_a_current_log_does_not_import_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'zeta.db'}"
    Store(url).close()  # creates and stamps the log
    code = f"import sys; from zeta_adaptive import Store; Store({url!r}).close(); print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_rows_written_in_batches_from_many_threads(store_url):
    store = Store(store_url, batch_size=500)
    n_threads, per_thread = 4, 750

    def produce(t: int) -> None:
        for i in range(per_thread):
            cid = f"t{t}c{i}"
            store.put_many([("calls", call_row(cid)), ("attempts", _attempt(cid, 0))])

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.flush(timeout=60)
    assert store.count("calls") == n_threads * per_thread
    assert store.count("attempts") == n_threads * per_thread
    store.close()


def test_a_record_handed_in_twice_is_written_once(store_url):
    store = Store(store_url)
    store.put("calls", call_row("dup"))
    store.flush()
    store.put("calls", call_row("dup"))  # e.g. a retried batch
    store.put("attempts", _attempt("dup", 0))
    store.put("attempts", _attempt("dup", 0))
    store.close()
    reopened = Store(store_url)
    assert reopened.count("calls") == 1
    assert reopened.count("attempts") == 1
    reopened.close()


def test_reads_and_close_semantics(sqlite_url):
    store = Store(sqlite_url)
    store.put("calls", call_row("abc"))
    store.flush()
    assert store.find_call("abc")["model"] == "m"
    assert store.find_call("nope") is None
    assert not store.has_feedback("abc")
    frame = store.frame("calls", ["code"])
    assert frame["call_id"].tolist() == ["abc"]
    assert store.frame("calls", ["other"]).empty
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.put("calls", call_row("late"))


def test_unreachable_database_raises_store_error_without_the_password():
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://user:s3cret-pw@127.0.0.1:1/nothing")
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_cli_db_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(main, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0, result.output
    assert "newest schema" in result.output
    engine = create_engine(url)
    assert "attempts" in inspect(engine).get_table_names()
    engine.dispose()


def test_cli_db_upgrade_reads_the_store_from_a_config(tmp_path):
    cfg = Config.from_toml("examples/fleet.toml").to_dict()
    cfg["store"] = f"sqlite:///{tmp_path / 'from-config.db'}"
    path = tmp_path / "fleet.toml"
    lines = [
        f'store = "{cfg["store"]}"',
        "[models.a]",
        'base_url = "http://127.0.0.1:9/v1"',
        "[routes.simple]",
        'models = ["a"]',
    ]
    path.write_text("\n".join(lines))
    result = CliRunner().invoke(main, ["db", "upgrade", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-config.db").exists()


def _written_without_flush(store: Store, table: str, rows: int, within_s: float = 30.0) -> bool:
    """Whether ``rows`` rows reach ``table`` with nobody flushing (polled, bounded)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if store.count(table) >= rows:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow  # a fresh interpreter, or seconds of real time: not in make test-fast
def test_the_writer_delivers_on_its_own_tick_and_wakes_from_idle(sqlite_url, tmp_path, monkeypatch):
    """Rows handed over while the writer ticks, and after it went idle, are written with no flush:
    a hand-over that wakes no thread never leaves rows behind."""
    monkeypatch.setattr(store_module, "IDLE_S", 0.1)  # asleep after two empty ticks of 50 ms
    store = Store(sqlite_url, journal_dir=tmp_path / "journal", linger_s=0.05)
    try:
        store.put("calls", call_row("first"))  # the writer starts asleep: this hand-over wakes it
        assert _written_without_flush(store, "calls", 1)
        for i in range(20):  # while it ticks, hand-overs do not wake it; its tick takes them
            store.put("calls", call_row(f"tick{i}"))
            time.sleep(0.005)
        assert _written_without_flush(store, "calls", 21)
        for round_ in range(3):  # idle past IDLE_S: asleep, and woken again by the next row
            time.sleep(0.3)
            store.put("calls", call_row(f"after-idle{round_}"))
            assert _written_without_flush(store, "calls", 22 + round_)
    finally:
        store.close()
    reopened = Store(sqlite_url, journal_dir=tmp_path / "journal")
    assert reopened.count("calls") == 24
    reopened.close()


def _indexes(engine, table: str) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes(table)}


def test_migration_0008_drops_the_time_only_indexes_and_prune_finds_old_rows_without_them(store_url, tmp_path):
    from alembic import command

    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            command.upgrade(store_module._alembic_config(conn), "0007")
        assert {"ix_attempts_ts"} <= _indexes(engine, "attempts") and {"ix_calls_ts"} <= _indexes(engine, "calls")
        with engine.begin() as conn:  # a log written at 0007, two task types, an hour apart
            rows = [
                call_row(f"c{i}", ts=1000.0 + 3600 * (i % 2), task_type=("code", "chat")[i % 3 == 0]) for i in range(8)
            ]
            conn.execute(store_module.calls.insert(), rows)
            conn.execute(
                store_module.attempts.insert(),
                [{**_attempt(r["call_id"], 0), "ts": r["ts"], "task_type": r["task_type"]} for r in rows],
            )
        store = Store(store_url, journal_dir=tmp_path)  # migrates to the head
        try:
            assert "ix_attempts_ts" not in _indexes(engine, "attempts")
            assert "ix_calls_ts" not in _indexes(engine, "calls")
            assert store.count("attempts") == 8
            with store.engine.connect() as conn:
                assert sorted(store_module._task_types(conn, store_module.attempts)) == ["chat", "code"]
            assert store.prune(2000.0) == {"feedback": 0, "attempts": 4, "calls": 4}
            assert store.count("calls") == store.count("attempts") == 4
        finally:
            store.close()
        with engine.begin() as conn:
            command.downgrade(store_module._alembic_config(conn), "0007")
        assert "ix_attempts_ts" in _indexes(engine, "attempts") and "ix_calls_ts" in _indexes(engine, "calls")
    finally:
        engine.dispose()


def test_prune_reads_old_rows_through_the_task_type_index(sqlite_url, tmp_path):
    """SQLite's plans for the statements prune runs on calls and attempts search the (task_type, ts)
    index rather than scan the table."""
    store = Store(sqlite_url, journal_dir=tmp_path)
    try:
        store.put_many(
            [("calls", call_row("c1", task_type="a")), ("attempts", {**_attempt("c1", 0), "task_type": "a"})]
        )
        assert store.flush(10)
        ran: list[tuple[str, tuple]] = []
        event.listen(store.engine, "before_cursor_execute", lambda c, cur, sql, params, *_: ran.append((sql, params)))
        assert store.prune(5.0) == {"feedback": 0, "attempts": 1, "calls": 1}
        deletes = [
            (sql, params) for sql, params in ran if sql.startswith(("DELETE FROM calls", "DELETE FROM attempts"))
        ]
        assert len(deletes) == 2
        with store.engine.connect() as conn:
            for sql, params in deletes:
                table = sql.split()[2]
                plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
                assert f"SEARCH {table} USING INDEX ix_{table}_task_ts (task_type=? AND ts<?)" in plan, plan
    finally:
        store.close()


def test_rows_queued_behind_a_slow_write_are_journaled_within_journal_after_s(sqlite_url, tmp_path, monkeypatch):
    # The first batch's write takes 0.7 s and lands; the row handed over meanwhile then meets a
    # database that hangs. It must reach the journal within journal_after_s of its hand-over: counted
    # from its own write's start, as before, it waited for both (about 1.55 s here).
    store = Store(sqlite_url, journal_dir=tmp_path / "journal", timeout_s=2.0, journal_after_s=1.0)
    real_insert, real_append = store._insert_rows, store.journal.append
    delays = iter([0.7, 2.5])  # fault injection around the real insert: slow, then hanging

    def slow_insert(rows):
        time.sleep(next(delays, 0.0))
        real_insert(rows)

    journaled: list[tuple[float, set[str]]] = []

    def append(batch):
        real_append(batch)
        journaled.append((time.monotonic(), {row["call_id"] for table, row in batch if table == "calls"}))

    monkeypatch.setattr(store, "_insert_rows", slow_insert)
    monkeypatch.setattr(store.journal, "append", append)
    store.put("calls", call_row("a"))
    time.sleep(0.25)  # the writer is in the slow write of "a"
    handed = time.monotonic()
    store.put("calls", call_row("b"))
    deadline = handed + 4.0
    while not journaled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert journaled and journaled[0][1] == {"b"}
    assert journaled[0][0] - handed <= store.journal_after_s + 0.15
    store.close()
    reopened = Store(sqlite_url)
    assert reopened.count("calls") == 2  # "a" written, "b" replayed from the journal (or found present): once each
    reopened.close()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_sqlite_in_memory_is_refused_before_anything_is_written(tmp_path, url):
    """An in-memory SQLite database is one per connection: the background writer would see no tables
    and journal every row for a database that dies with the process. It is refused at once, by name."""
    with pytest.raises(StoreError, match=r"SQLite in memory is one database per connection.*name a file"):
        Store(url)
    config = router_config(url, {"m": "http://127.0.0.1:9/v1"}, {"r": ["m"]}, tmp_path=tmp_path)
    with pytest.raises(StoreError, match="SQLite in memory"):
        Router(config)
    assert not (tmp_path / "journal").exists() or not any((tmp_path / "journal").iterdir())


def test_a_journal_directory_that_cannot_be_made_is_a_store_error_naming_it(tmp_path):
    """Where the journal cannot be written (a read-only home in a container; here a path under a file,
    which fails for root too) the router does not start, and says where and what to set."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    config = router_config(
        f"sqlite:///{tmp_path / 'log.db'}", {"m": "http://127.0.0.1:9/v1"}, {"r": ["m"]}, journal_dir=str(blocked / "j")
    )
    with pytest.raises(StoreError, match=r"cannot write the log's journal in .*a-file/j .*set journal_dir"):
        Router(config)
