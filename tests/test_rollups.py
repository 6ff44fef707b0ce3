"""The hourly rollups of attempts and ratings: written once per inserted row, however often a batch is
replayed, kept by prune and backfilled by migration 0007, and summing to what a scan of the rows
gives under every rule the warm start applies; on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from alembic import command
from helpers import call_row
from sqlalchemy import and_, create_engine, func, or_, select

from zeta_adaptive._lessons import teaches_sql
from zeta_adaptive._store import (
    ROLLUP_BUCKET_S,
    Store,
    _alembic_config,
    attempt_rollups,
    attempts,
    calls,
    feedback,
    feedback_rollups,
)

HOUR = ROLLUP_BUCKET_S
#: (outcome, status, error): every case the warm start's rule tells apart
KINDS = [
    ("ok", 200, None),
    ("server_error", 500, "internal"),
    ("timeout", None, None),
    ("client_error", 400, "bad request"),  # rejected: teaches nothing (with 400 rejecting)
    ("client_error", 400, "Invalid model name passed in model=x"),  # LiteLLM's unknown model: misconfigured
    ("client_error", 422, "model-not-found"),  # not the marker: '_' is no wildcard
    ("client_error", 404, "model_not_found"),  # misconfigured by status and error
    ("cancelled", None, None),
    ("context_exceeded", 400, "context length"),
]


def _attempt_rows(
    n: int, start: float, seed: int, router_id: str = "other", hours: float = 5
) -> list[tuple[str, dict]]:
    """``n`` calls of one attempt each over ``hours`` from ``start`` (two of them exactly on an
    hour's edge), of every kind, with latencies below and above the floor; every third one rated a
    minute later (by ``router_id`` too)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, dict]] = []
    for i in range(n):
        outcome, status, error = KINDS[i % len(KINDS)]
        ts = start + float(rng.uniform(0, hours * HOUR)) if i > 1 else (start // HOUR + 1 + i) * HOUR
        cid = f"{seed:04x}{i:08x}"
        rows.append(("calls", call_row(cid, ts=ts)))
        latency = float(rng.choice([0.0, 1e-6, rng.lognormal(-1, 1)]))
        rows.append(
            (
                "attempts",
                {
                    "call_id": cid,
                    "idx": 0,
                    "ts": ts,
                    "task_type": "code" if i % 4 else "simple",
                    "model": ["a", "b", "c"][i % 3],
                    "outcome": outcome,
                    "status": status,
                    "latency_s": latency,
                    "tokens_in": 3,
                    "tokens_out": 4,
                    "cost": float(rng.uniform(0, 0.01)),
                    "error": error,
                    "router_id": router_id,
                },
            )
        )
        if i % 3 == 0:
            rating = {"ts": ts + 60.0, "accuracy": float(rng.uniform()), "router_id": router_id}
            rows.append(("feedback", {"call_id": cid, "task_type": rows[-1][1]["task_type"], "model": "a", **rating}))
    return rows


def _compare(store: Store, cut: float, rejecting: list[int], started: float | None = None) -> None:
    """The warm start's sums read through the rollups equal a scan of the attempts, per task type, as
    the learner reads them: rows before ``cut`` not of router ``me``, which began at ``started``."""
    a = attempts.c
    where = and_(teaches_sql(attempts, rejecting), or_(a.router_id.is_(None), a.router_id != "me"), a.ts < cut)
    until = cut if started is None else min(cut, started)
    f = feedback.c
    rated = and_(or_(f.router_id.is_(None), f.router_id != "me"), f.ts < cut)
    for task in ("code", "simple"):
        for sums, where_, condition, count in (
            (store.attempt_sums, where, teaches_sql(attempt_rollups, rejecting), "n"),
            (store.feedback_sums, rated, None, "acc_n"),
        ):
            scanned = pd.DataFrame(sums(task, where_)).sort_values("model").reset_index(drop=True)
            rolled = pd.DataFrame(sums(task, where_, (until, condition))).sort_values("model").reset_index(drop=True)
            assert len(scanned) > 0
            assert list(rolled["model"]) == list(scanned["model"])
            assert list(rolled[count]) == list(scanned[count])
            for column in set(scanned.columns) - {"model", count}:
                np.testing.assert_allclose(rolled[column].astype(float), scanned[column].astype(float), rtol=1e-9)


def _rollup_total(store: Store, table: str = "attempts") -> int:
    """The rows a table's rollups count."""
    count = attempt_rollups.c.n if table == "attempts" else feedback_rollups.c.acc_n
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(count), 0))).scalar_one())


def test_rollups_count_each_attempt_once_and_sum_to_the_scan(store_url, tmp_path):
    start = (time.time() // HOUR - 8) * HOUR
    first, second = _attempt_rows(300, start, 1), _attempt_rows(200, start, 2)
    store = Store(store_url, journal_dir=tmp_path)
    try:
        store.put_many(first)
        assert store.flush(30)
        store.put_many(first[:100] + second)  # a replayed batch: some rows present, some new
        assert store.flush(30)
        store.put_many(first[::2])  # and one that holds nothing new
        assert store.flush(30)
        assert store.count("attempts") == _rollup_total(store) == 500
        assert store.count("feedback") == _rollup_total(store, "feedback") == 100 + 67
        late = {"call_id": second[-1][1]["call_id"], "ts": time.time(), "task_type": "code", "model": "b"}
        assert store.insert_feedback({**late, "accuracy": 0.25})  # a rating looked up in the log: its own path
        assert not store.insert_feedback({**late, "accuracy": 0.75})
        assert _rollup_total(store, "feedback") == 168
        for cut in (start + 2.5 * HOUR, start + 3 * HOUR, time.time()):  # mid-bucket, on an edge, now
            for rejecting in ([400, 413, 422], [422]):
                _compare(store, cut, rejecting)
    finally:
        store.close()


def test_the_warm_start_leaves_out_its_own_rows_in_the_buckets_it_sums(store_url, tmp_path):
    """A warm start retried after an outage: rows stamped after the router began (at 2.5 h) are its
    own; the rollups are read up to that start and the scan after it drops them by router id."""
    start = (time.time() // HOUR - 8) * HOUR
    started = start + 2.5 * HOUR
    store = Store(store_url, journal_dir=tmp_path)
    try:
        store.put_many(_attempt_rows(200, start, 3) + _attempt_rows(90, started + 1, 4, router_id="me", hours=2))
        assert store.flush(30)
        _compare(store, start + 4.2 * HOUR, [400, 413, 422], started=started)
    finally:
        store.close()


def test_prune_keeps_the_rollups_equal_to_the_scan(store_url, tmp_path):
    start = (time.time() // HOUR - 8) * HOUR
    store = Store(store_url, journal_dir=tmp_path)
    try:
        store.put_many(_attempt_rows(300, start, 5))
        assert store.flush(30)
        assert store.prune(start + 2.5 * HOUR, dry_run=True)["attempts"] > 0
        assert _rollup_total(store) == 300  # a dry run rolls the rollups back too
        deleted = store.prune(start + 2.5 * HOUR)
        assert 0 < deleted["attempts"] < 300 and 0 < deleted["feedback"] < 100
        assert _rollup_total(store) == store.count("attempts") == 300 - deleted["attempts"]
        assert _rollup_total(store, "feedback") == store.count("feedback") == 100 - deleted["feedback"]
        _compare(store, time.time(), [400, 413, 422])
    finally:
        store.close()


def test_migration_0007_backfills_the_rollups_of_an_existing_log(store_url, tmp_path):
    start = (time.time() // HOUR - 8) * HOUR
    rows = _attempt_rows(200, start, 6)
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0006")
        with engine.begin() as conn:  # a log written before the rollups existed
            for table in (calls, attempts, feedback):
                conn.execute(table.insert(), [r for t, r in rows if t == table.name])
    finally:
        engine.dispose()
    store = Store(store_url, journal_dir=tmp_path)  # migrates to the head
    try:
        assert _rollup_total(store) == 200
        assert _rollup_total(store, "feedback") == 67
        _compare(store, time.time(), [400, 413, 422])
    finally:
        store.close()
