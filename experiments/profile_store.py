"""Where the SQLite log writer's CPU goes per attempt: its stages timed one by one, the threads of a
real run, and the WAL checkpoints' share.

Three measurements on the rows of ``bench_store`` (60,000 calls, 75,000 attempts, 135,000 rows):

* Stages: the writer's work on each 5,000-row batch, done step by step in one thread with
  ``time.thread_time`` around each step (grouping the rows, sanitizing them, the rollup increments,
  each table's ``executemany``, the rollup upsert, the commit), into a fresh
  SQLite file, best of ``--rounds`` passes; then the same batches through the store's own
  ``_insert_rows`` (SQLAlchemy's transaction included), so the sum of the steps can be checked
  against the whole. The stages are private functions of ``zeta_adaptive._store``: this script
  reads them on purpose.
* Threads: a real ``Store`` fed with ``put_many`` call by call as ``bench_store`` does; the CPU of
  the producer (main thread) and of the writer thread are read from ``/proc``, and the rest of the
  process's CPU is the insert threads' (each batch runs on a thread of its own, bounded in time).
* Checkpoints: the raw driver's batches with SQLite's automatic checkpoint (``wal_autocheckpoint``
  pages) against no automatic checkpoint and a ``PASSIVE`` one after each batch, timed apart.

    .venv/bin/python -m experiments.profile_store [--calls N] [--rounds R] [--out DIR]
"""

from __future__ import annotations

import operator
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zeta_adaptive import TABLES, Store
from zeta_adaptive._store import _add_rollups, _executemany_insert, _increments, sanitize_rows

from .bench_store import make_calls
from .common import markdown_table, parse_args, write_markdown

Row = tuple[str, dict[str, Any]]
BATCH = 5000


def _batches(calls: list[list[Row]]) -> list[list[Row]]:
    flat = [row for rows in calls for row in rows]
    return [flat[i : i + BATCH] for i in range(0, len(flat), BATCH)]


def stages(folder: Path, batches: list[list[Row]]) -> dict[str, float]:
    """CPU seconds per stage of the writer's transaction, over every batch."""
    store = Store(f"sqlite:///{folder / 'stages.db'}", journal_dir=folder / "journal")
    spent: dict[str, float] = {}
    clock = time.thread_time

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = clock()
        out = fn()
        spent[name] = spent.get(name, 0.0) + clock() - start
        return out

    try:
        _increments("attempts", [batches[0][1][1]])  # imports what the increments read, off the clock
        with store.engine.connect() as conn:  # the statements through SQLAlchemy, as the store runs them
            for batch in batches:
                clean = timed("sanitize", lambda b=batch: sanitize_rows(list(b)))
                by = timed("group by table", lambda c=clean: _group(c))
                timed("begin", lambda: conn.begin())
                for name in ("calls", "attempts"):
                    timed(f"executemany {name}", lambda n=name, b=by: _executemany_insert(conn, TABLES[n], b[n]))
                timed("rollup increments (Python)", lambda b=by: _increments("attempts", b["attempts"]))
                timed("rollup increments + upsert", lambda b=by: _add_rollups(conn, "attempts", b["attempts"]))
                timed("commit", lambda: conn.commit())
    finally:
        store.close()
    spent["rollup upsert (SQL)"] = spent.pop("rollup increments + upsert") - spent["rollup increments (Python)"]
    return spent


def _group(rows: list[Row]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {"calls": [], "attempts": []}
    for table, row in rows:
        by[table].append(row)  # type: ignore[arg-type]
    return by


def whole(folder: Path, batches: list[list[Row]]) -> float:
    """CPU seconds of the store's own sanitize and ``_insert_rows`` over the same batches (one thread)."""
    store = Store(f"sqlite:///{folder / 'whole.db'}", journal_dir=folder / "journal")
    try:
        start = time.thread_time()
        for batch in batches:
            store._insert_rows(sanitize_rows(list(batch)))
        return time.thread_time() - start
    finally:
        store.close()


def _thread_cpu(native_id: int) -> float:
    """A thread's CPU seconds (user + system) from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(folder: Path, calls: list[list[Row]]) -> dict[str, float]:
    """A real run: CPU seconds of the producer, the writer thread and the insert threads, and the wall time."""
    store = Store(f"sqlite:///{folder / 'threads.db'}", journal_dir=folder / "journal")
    writer = next(t for t in threading.enumerate() if t.name == "zeta-store-writer")
    assert writer.native_id is not None
    main = threading.get_native_id()
    try:
        p0, m0, w0, t0 = time.process_time(), _thread_cpu(main), _thread_cpu(writer.native_id), time.perf_counter()
        for rows in calls:
            store.put_many(rows)
        assert store.flush(600)
        t1 = time.perf_counter()
        p, m, w = time.process_time() - p0, _thread_cpu(main) - m0, _thread_cpu(writer.native_id) - w0
    finally:
        store.close()
    return {"producer (main thread)": m, "writer thread": w, "insert threads": p - m - w, "process": p, "wall": t1 - t0}


def checkpoints(folder: Path, batches: list[list[Row]], mode: str) -> dict[str, float]:
    """Wall and CPU seconds of the raw driver's batches: ``auto`` (SQLite's automatic checkpoint in
    the commits), or ``passive`` (none in the commits, a PASSIVE checkpoint after each batch, timed apart)."""
    path = folder / f"ckpt-{mode}.db"
    Store(f"sqlite:///{path}", journal_dir=folder / "journal").close()  # the schema
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    auto = con.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    if mode == "passive":
        con.execute("PRAGMA wal_autocheckpoint=0")
    cols = {n: [c.name for c in TABLES[n].columns] for n in ("calls", "attempts")}
    sql = {n: f"INSERT INTO {n} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for n, c in cols.items()}
    getters = {n: operator.itemgetter(*c) for n, c in cols.items()}
    grouped = [_group(b) for b in batches]
    out = {"inserts+commits wall": 0.0, "inserts+commits cpu": 0.0, "checkpoint wall": 0.0, "checkpoint cpu": 0.0}
    for by in grouped:
        w, c = time.perf_counter(), time.thread_time()
        con.execute("BEGIN")
        for name in ("calls", "attempts"):
            con.executemany(sql[name], map(getters[name], by[name]))
        con.execute("COMMIT")
        out["inserts+commits wall"] += time.perf_counter() - w
        out["inserts+commits cpu"] += time.thread_time() - c
        if mode == "passive":
            w, c = time.perf_counter(), time.thread_time()
            con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            out["checkpoint wall"] += time.perf_counter() - w
            out["checkpoint cpu"] += time.thread_time() - c
    con.close()
    out["wal_autocheckpoint"] = auto
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--calls": {"type": int, "default": 60_000, "help": "calls per pass (default 60,000)"},
            "--rounds": {"type": int, "default": 3, "help": "passes; the best is kept (default 3)"},
        },
    )
    n_calls = 3_000 if args.quick else args.calls
    calls = make_calls(n_calls, args.seed)
    batches = _batches(calls)
    n_attempts = sum(len(c) - 1 for c in calls)
    n_rows = sum(len(c) for c in calls)
    per = 1e6 / n_attempts
    best: dict[str, float] = {}
    wholes, runs, ckpt = [], [], {"auto": [], "passive": []}  # type: ignore[var-annotated]
    for _ in range(args.rounds):  # interleaved: every measurement sees the same load
        with tempfile.TemporaryDirectory(prefix="zeta-profile-store-") as tmp:
            folder = Path(tmp)
            for name, value in stages(folder, batches).items():
                best[name] = min(best.get(name, value), value)
            wholes.append(whole(folder, batches))
            runs.append(threads(folder, calls))
            for mode in ckpt:
                ckpt[mode].append(checkpoints(folder, batches, mode))
    total = sum(best.values())
    stage_rows = [{"stage": k, "us_per_attempt": v * per, "share": v / total} for k, v in best.items()]
    stage_rows.append({"stage": "sum of the stages", "us_per_attempt": total * per, "share": 1.0})
    stage_rows.append(
        {"stage": "store: sanitize + _insert_rows (one thread)", "us_per_attempt": min(wholes) * per, "share": "–"}
    )
    run = min(runs, key=lambda r: r["process"])
    thread_rows = [{"thread": k, "us_per_attempt": v * per} for k, v in run.items()]
    ck_rows = []
    for mode, results in ckpt.items():
        r = min(results, key=lambda x: x["inserts+commits wall"] + x["checkpoint wall"])
        ck_rows.append({"mode": mode, **{k: (v * per if k != "wal_autocheckpoint" else v) for k, v in r.items()}})
    notes = [
        f"{n_calls:,} calls = {n_attempts:,} attempts + {n_calls:,} calls rows = {n_rows:,} rows, batches of {BATCH:,} rows; "
        f"best of {args.rounds} passes (stages), the run with the least process CPU (threads).",
        "Stages: CPU time (time.thread_time) of each step, in one thread, no producer; µs per attempt.",
        "Threads: a real run (put_many per call, then flush); CPU of each thread from /proc/self/task (10 ms ticks), "
        "insert threads = process CPU - producer - writer; wall = first put_many to flush().",
        "Checkpoints: the raw driver's executemany per table, one transaction per batch, µs per attempt; "
        "'auto' = SQLite's automatic checkpoint inside the commits, 'passive' = wal_autocheckpoint=0 and "
        "PRAGMA wal_checkpoint(PASSIVE) after each batch, timed apart.",
    ]
    write_markdown(
        args.out / "profile_store.md",
        "Where the SQLite log writer's CPU goes, per attempt",
        list(stage_rows[0]),
        stage_rows,
        command=args.command,
        sections=[
            ("Threads of a real run", markdown_table(list(thread_rows[0]), thread_rows)),
            ("WAL checkpoints", markdown_table(list(ck_rows[0]), ck_rows)),
        ],
        notes=notes,
        quick=args.quick,
    )
    print((args.out / "profile_store.md").read_text())


if __name__ == "__main__":
    main()
