"""Store outages: routing goes on, rows wait in the journal, and every row lands exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import call_row
from sqlalchemy import create_engine, text

from zeta_adaptive import Router, Store
from zeta_adaptive._store import metadata
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a store going away under router processes

MSG = [{"role": "user", "content": "hi"}]


def test_rows_wait_in_the_journal_while_the_table_is_gone(sqlite_url, tmp_path):
    store = Store(sqlite_url, journal_dir=tmp_path / "j")
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE calls RENAME TO calls_away"))  # every insert now fails
    for i in range(50):
        store.put("calls", call_row(f"c{i}", ts=float(i)))
    assert store.flush(10)
    assert store.journal.rows == 50 and store.errors >= 1
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE calls_away RENAME TO calls"))
    time.sleep(2.1)  # past the longest back-off
    for i in range(50, 60):
        store.put("calls", call_row(f"c{i}", ts=float(i)))
    assert store.flush(10)
    assert store.journal.rows == 0
    assert store.count("calls") == 60
    store.close()
    engine.dispose()
    assert not list((tmp_path / "j").glob("*.jsonl"))  # an empty journal is removed


def test_a_journal_left_by_a_dead_process_is_replayed_at_next_open(sqlite_url, tmp_path):
    journal_dir = tmp_path / "j"
    Store(sqlite_url, journal_dir=journal_dir).close()
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE calls"))
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import call_row
        from zeta_adaptive._store import Store
        store = Store({sqlite_url!r}, journal_dir={str(journal_dir)!r})
        for i in range(30):
            store.put("calls", call_row(f"c{{i}}", ts=float(i)))
        assert store.flush(10) and store.journal.rows == 30
        os._exit(0)  # dies without closing
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(list(journal_dir.glob("*.jsonl"))) == 1
    metadata.tables["calls"].create(engine)
    store = Store(sqlite_url, journal_dir=journal_dir)
    assert store.count("calls") == 30
    store.put("calls", call_row("c0", ts=0.0))  # already there: written once
    store.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM calls")).scalar_one() == 30
    engine.dispose()


@pytest.mark.postgres
def test_postgres_stopped_and_restarted_mid_run_loses_nothing(private_pg, tmp_path):
    specs = [ModelSpec("a", latency_s=0.001, error_rate=0.2), ModelSpec("b", latency_s=0.001)]
    with Fleet(specs, seed=4) as fleet:
        cfg = fleet.fleet_config({"simple": ["a", "b"]}, store=private_pg.url, seed=1)
        cfg["journal_dir"] = str(tmp_path / "journal")
        cfg["breaker"] = {"consecutive_failures": 1000, "min_calls": 1000}
        calls = attempts = 0
        with Router(cfg) as router:
            for phase in range(3):
                if phase == 1:
                    private_pg.stop()
                if phase == 2:
                    private_pg.start()
                    time.sleep(0.5)
                for _ in range(150):
                    result = router.chat("simple", MSG)  # routing goes on whatever the database does
                    calls += 1
                    attempts += len(result.attempts)
                    router.feedback(result.call_id, 0.9)
                if phase == 1:
                    assert router.flush(30)
                    assert router.store.journal.rows > 0  # the outage was real and rows went to the journal
    engine = create_engine(private_pg.url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), count(DISTINCT call_id) FROM calls")).one() == (calls, calls)
        assert conn.execute(text("SELECT count(*) FROM attempts")).scalar_one() == attempts
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar_one() == calls
    engine.dispose()
