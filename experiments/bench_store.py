"""Log writes: attempts per second the background writer sustains into SQLite and PostgreSQL.

Rows are shaped as ``Router._log`` writes them: per call one ``calls`` row and its ``attempts``
rows (1 attempt for 80% of calls, 2 for 15%, 3 for 5%; time-ordered call ids as the router makes), handed to
``Store.put_many`` call by call from the main thread, as the router does. The clock runs from the
first ``put_many`` until ``Store.flush()`` returns (every row committed), so the producer's
queueing cost and the writer's inserts both count. Afterwards the rows are counted in the
database: none may be missing.

* SQLite: a file in a temporary folder (WAL, ``synchronous=NORMAL``, as the store sets it up).
* PostgreSQL: the server named by ``ZETA_TEST_POSTGRES_URL`` (in a throwaway schema), else a
  private server started with ``initdb`` / ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` in a
  temporary folder on a free loopback port (default settings: fsync on); skipped with a note when
  neither exists.
* Peer: the naive alternative, one transaction per call (SQLAlchemy Core, the same INSERT ... ON
  CONFLICT DO NOTHING), on the same database, fewer calls.
* Floor: the same rows as tuples through the driver's ``executemany`` (5,000 rows a transaction,
  no queue, no SQLAlchemy per-row work): what this machine gives at best right now, so the gap
  between it and the writer is the writer's own cost.

Repeats (``--repeats``, default 5) run interleaved (SQLite, PostgreSQL, and the naive writers,
rotating), each into a fresh database file / schema, after one untimed warm-up run of every writer
(imports, first connections and statement caches stay out of the repeats); the table gives the
median, the middle half and the range. Every repeat of the background writers is listed with the
share of a core the process got and the machine's load, and the notes say what the spread follows.
``--baseline REV`` adds the background writer of another git revision (``git archive``) to the same
interleaving: an A/B comparison in one process, under the same load.

Targets: >= 50,000 rows/s into SQLite, >= 20,000 rows/s into PostgreSQL, no row lost (issue 16;
rows = attempts + calls rows; issue 9 put the same numbers in attempts/s, so both are reported).
Lag: a paced run per backend measures the time from a call's ``put_many`` to its row being committed.

    .venv/bin/python -m experiments.bench_store [--quick] [--out DIR] [--backends sqlite,postgres] [--repeats N] [--baseline REV]
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from zeta_adaptive import new_call_id

from .common import PrivatePostgres, interleave, markdown_table, parse_args, postgres_bindir, write_csv, write_markdown
from .profile_callpath import package_at

TARGETS = {"sqlite": 50_000.0, "postgres": 20_000.0}
TASKS = ("code", "simple", "reasoning")
MODELS = ("coder-7b", "general-7b", "reasoner-14b")
ROUTER_ID = "0123456789abcdef"
FLOOR = "floor: driver executemany of tuples, no queue"
#: the steady rate of the lag run: well under either target, so a lag that grows means the writer falls behind
PACED_ROWS_PER_S = 10_000.0


# -- realistic rows ------------------------------------------------------------------------------


def make_calls(n: int, seed: int) -> list[list[tuple[str, dict[str, Any]]]]:
    """``n`` calls, each the list of rows Router._log hands to put_many (calls row, then attempts)."""
    rng = np.random.default_rng(seed)
    n_attempts = rng.choice([1, 2, 3], size=n, p=[0.80, 0.15, 0.05])
    latency = rng.lognormal(np.log(0.4), 0.5, size=(n, 3))
    task = rng.integers(0, len(TASKS), size=n)
    first = rng.integers(0, len(MODELS), size=n)
    ts0 = time.time() - n * 0.01
    out = []
    for i in range(n):
        call_id = new_call_id()
        k = int(n_attempts[i])
        order = [MODELS[(first[i] + j) % len(MODELS)] for j in range(len(MODELS))]
        ts = ts0 + i * 0.01
        attempts = []
        for j in range(k):
            ok = j == k - 1
            attempts.append(
                (
                    "attempts",
                    {
                        "call_id": call_id,
                        "idx": j,
                        "ts": ts + j * 0.3,
                        "task_type": TASKS[task[i]],
                        "model": order[j],
                        "outcome": "ok" if ok else "server_error",
                        "status": 200 if ok else 500,
                        "latency_s": float(latency[i, j]),
                        "tokens_in": 120,
                        "tokens_out": 48 if ok else 0,
                        "cost": 0.00021 if ok else 0.0,
                        "error": None if ok else "simulated internal error",
                    },
                )
            )
        call = {
            "call_id": call_id,
            "ts": ts,
            "task_type": TASKS[task[i]],
            "policy": "thompson",
            "propensity": 0.62,
            "ranking": '["' + '", "'.join(order) + '"]',
            "model": order[k - 1],
            "outcome": "ok",
            "latency_s": float(latency[i, :k].sum()),
            "tokens_in": 120 * k,
            "tokens_out": 48,
            "cost": 0.00021,
            "n_attempts": k,
            "prompt": None,
            "answer": None,
            "skipped": None,
        }
        out.append([("calls", _full("calls", call)), *((t, _full(t, r)) for t, r in attempts)])
    return out


def _full(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row with every column of the current schema (as Router._log sends them): a router id
    where the table has one, None for the other columns this script does not know."""
    from zeta_adaptive import TABLES

    full = {c.name: None for c in TABLES[table].columns}
    if "router_id" in full:
        full["router_id"] = ROUTER_ID
    full.update(row)
    return full


# -- databases -----------------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """(base URL, where it comes from); URL None when no PostgreSQL can be had."""
    url = os.environ.get("ZETA_TEST_POSTGRES_URL")
    if url:
        yield url, "ZETA_TEST_POSTGRES_URL (a throwaway schema per run)"
        return
    bindir = postgres_bindir()
    if bindir is None:
        yield None, "no ZETA_TEST_POSTGRES_URL and no /usr/lib/postgresql/*/bin/initdb"
        return
    try:
        server = PrivatePostgres(bindir, fsync=True)  # default settings: the log's writes are what is measured
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        yield None, f"could not start a private PostgreSQL: {exc}"
        return
    try:
        yield (
            server.url,
            f"private server {bindir.parent.name} (initdb/pg_ctl, default settings) on 127.0.0.1:{server.port}",
        )
    finally:
        server.destroy()


class Target:
    """One fresh database per repeat: a SQLite file, or a PostgreSQL schema (search_path in the URL)."""

    def __init__(self, kind: str, folder: Path, pg_url: str | None) -> None:
        self.kind, self.folder, self.pg_url = kind, folder, pg_url
        self.n = 0

    @contextmanager
    def fresh(self) -> Iterator[str]:
        self.n += 1
        if self.kind == "sqlite":
            path = self.folder / f"store-{self.n}.db"
            yield f"sqlite:///{path}"
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            return
        from sqlalchemy import create_engine, text

        assert self.pg_url is not None
        schema = f"zbench_{os.getpid()}_{self.n}"
        admin = create_engine(self.pg_url)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in self.pg_url else "?"
        try:
            yield f"{self.pg_url}{sep}options=-csearch_path%3D{schema}"
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()


# -- the measurements ----------------------------------------------------------------------------


def run_store(
    url: str, calls: list[list[tuple[str, dict[str, Any]]]], journal: Path, package: ModuleType | None = None
) -> dict[str, Any]:
    """The background writer (of ``package``, by default this tree's): put_many per call, then flush;
    count the rows afterwards."""
    import zeta_adaptive

    store = (package or zeta_adaptive).Store(url, journal_dir=journal)
    load = os.getloadavg()[0]
    try:
        expected_attempts = sum(len(c) - 1 for c in calls)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for rows in calls:
            store.put_many(rows)
        t_put = time.perf_counter()
        assert store.flush(600), "flush timed out"
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
    finally:
        store.close()  # rows a slow write sent to the journal are replayed here: count after it
    got_calls, got_attempts = store.count("calls"), store.count("attempts")
    errors, pending = store.errors, store.pending
    return {
        "calls": len(calls),
        "attempts": expected_attempts,
        "seconds": t1 - t0,
        "put_seconds": t_put - t0,
        "attempts_per_s": expected_attempts / (t1 - t0),
        "rows_per_s": (expected_attempts + len(calls)) / (t1 - t0),
        "attempts_per_cpu_s": expected_attempts / max(cpu, 1e-9),
        "cpu_share": cpu / (t1 - t0),
        "calls_found": got_calls,
        "attempts_found": got_attempts,
        "lost": (len(calls) - got_calls) + (expected_attempts - got_attempts),
        "write_errors": errors,
        "journaled": pending,
        "load_1min": load,
    }


def run_paced(
    url: str, calls: list[list[tuple[str, dict[str, Any]]]], journal: Path, rows_per_s: float
) -> dict[str, Any]:
    """The background writer fed at a steady rate: per call, the lag from its ``put_many`` to its
    ``calls`` row being committed (the writer's ``written`` count, sampled every 2 ms by a thread)."""
    from zeta_adaptive import Store

    store = Store(url, journal_dir=journal)
    per_call = rows_per_s / (sum(len(c) for c in calls) / len(calls))  # calls per second
    put_at = np.empty(len(calls))
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), store.describe()["written"]["calls"]))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        t0 = time.perf_counter()
        for i, rows in enumerate(calls):
            ahead = t0 + i / per_call - time.perf_counter()
            if ahead > 0.001:
                time.sleep(ahead)
            store.put_many(rows)
            put_at[i] = time.perf_counter()
        assert store.flush(600), "flush timed out"
        t1 = time.perf_counter()
        time.sleep(0.01)  # a last sample after the flush
        done.set()
        sampler.join()
    finally:
        done.set()
        store.close()
    times = np.array([t for t, _ in samples])
    counts = np.array([n for _, n in samples])
    first = np.searchsorted(counts, np.arange(1, len(calls) + 1), side="left")  # first sample holding call i
    lag = (times[np.minimum(first, len(times) - 1)] - put_at) * 1000.0
    fifth = max(len(lag) // 5, 1)
    got_calls, got_attempts = store.count("calls"), store.count("attempts")
    expected_attempts = sum(len(c) - 1 for c in calls)
    return {
        "target_rows_per_s": rows_per_s,
        "rows_per_s": sum(len(c) for c in calls) / (t1 - t0),
        "seconds": t1 - t0,
        "lag_p50_ms": float(np.median(lag)),
        "lag_p99_ms": float(np.percentile(lag, 99)),
        "lag_max_ms": float(lag.max()),
        "lag_max_first_fifth_ms": float(lag[:fifth].max()),
        "lag_max_last_fifth_ms": float(lag[-fifth:].max()),
        "lost": (len(calls) - got_calls) + (expected_attempts - got_attempts),
    }


def run_naive(url: str, calls: list[list[tuple[str, dict[str, Any]]]], journal: Path) -> dict[str, Any]:
    """The peer: one transaction per call, in the caller's thread (same tables and INSERT)."""
    from sqlalchemy.dialects import postgresql, sqlite

    from zeta_adaptive import TABLES, Store

    store = Store(url, journal_dir=journal)  # creates the schema; its writer stays idle
    engine = store.engine
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    inserts = {name: dialect.insert(table).on_conflict_do_nothing() for name, table in TABLES.items()}  # as the store
    try:
        expected_attempts = sum(len(c) - 1 for c in calls)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for rows in calls:
            with engine.begin() as conn:
                conn.execute(inserts["calls"], [rows[0][1]])
                conn.execute(inserts["attempts"], [r for _, r in rows[1:]])
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
        got_calls, got_attempts = store.count("calls"), store.count("attempts")
    finally:
        store.close()
    return {
        "calls": len(calls),
        "attempts": expected_attempts,
        "seconds": t1 - t0,
        "put_seconds": t1 - t0,
        "attempts_per_s": expected_attempts / (t1 - t0),
        "rows_per_s": (expected_attempts + len(calls)) / (t1 - t0),
        "attempts_per_cpu_s": expected_attempts / max(cpu, 1e-9),
        "cpu_share": cpu / (t1 - t0),
        "calls_found": got_calls,
        "attempts_found": got_attempts,
        "lost": (len(calls) - got_calls) + (expected_attempts - got_attempts),
        "write_errors": 0,
        "journaled": 0,
    }


def run_floor(url: str, calls: list[list[tuple[str, dict[str, Any]]]], journal: Path) -> dict[str, Any]:
    """The floor: the same rows as tuples through the driver's executemany (``exec_driver_sql``),
    5,000 rows per transaction, in the caller's thread: no queue, no per-row SQLAlchemy work."""
    from zeta_adaptive import TABLES, Store

    store = Store(url, journal_dir=journal)
    engine = store.engine
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    cols = {name: [c.name for c in table.columns] for name, table in TABLES.items()}
    sql = {
        name: f"INSERT INTO {name} ({', '.join(c)}) VALUES ({', '.join(mark for _ in c)}) ON CONFLICT DO NOTHING"
        for name, c in cols.items()
    }
    flat = [row for rows in calls for row in rows]
    try:
        expected_attempts = sum(len(c) - 1 for c in calls)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, len(flat), 5000):
            by: dict[str, list[tuple[Any, ...]]] = {"calls": [], "attempts": []}
            for table, row in flat[start : start + 5000]:
                by[table].append(tuple([row[c] for c in cols[table]]))
            with engine.begin() as conn:
                for name in ("calls", "attempts"):
                    if by[name]:
                        conn.exec_driver_sql(sql[name], by[name])
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
        got_calls, got_attempts = store.count("calls"), store.count("attempts")
    finally:
        store.close()
    return {
        "calls": len(calls),
        "attempts": expected_attempts,
        "seconds": t1 - t0,
        "put_seconds": t1 - t0,
        "attempts_per_s": expected_attempts / (t1 - t0),
        "rows_per_s": (expected_attempts + len(calls)) / (t1 - t0),
        "attempts_per_cpu_s": expected_attempts / max(cpu, 1e-9),
        "cpu_share": cpu / (t1 - t0),
        "calls_found": got_calls,
        "attempts_found": got_attempts,
        "lost": (len(calls) - got_calls) + (expected_attempts - got_attempts),
        "write_errors": 0,
        "journaled": 0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--backends": {"default": "sqlite,postgres", "help": "comma-separated: sqlite, postgres"},
            "--repeats": {"type": int, "default": 5, "help": "interleaved repeats of every writer (default 5)"},
            "--baseline": {"default": None, "help": "also run the background writer of this git revision, interleaved"},
        },
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    repeats, n_calls, n_naive, paced_s = (1, 3_000, 300, 0.5) if args.quick else (args.repeats, 60_000, 2_000, 10.0)
    folder = Path(tempfile.mkdtemp(prefix="zeta-bench-store-"))
    baseline = package_at(args.baseline, folder / "baseline") if args.baseline else None
    journal = folder / "journal"
    data = make_calls(n_calls, args.seed)
    naive_data = make_calls(n_naive, args.seed + 1)
    paced_data = make_calls(int(PACED_ROWS_PER_S * paced_s / 2.25), args.seed + 2)  # 2.25 rows per call
    results: dict[str, list[dict[str, Any]]] = {}
    lag_rows: list[dict[str, Any]] = []
    notes_pg = "not requested"
    with postgres_server() if "postgres" in backends else _none() as (pg_url, pg_from):
        notes_pg = pg_from
        kinds = [k for k in backends if k == "sqlite" or (k == "postgres" and pg_url)]
        targets = {k: Target(k, folder, pg_url) for k in kinds}
        tasks: dict[str, tuple[Callable[[Any], dict[str, Any]], Any]] = {}  # name: (run, its calls)
        for k in kinds:
            tasks[f"{k}: background writer"] = (_task(run_store, targets[k], journal), data)
            if baseline is not None:
                ours_then = functools.partial(run_store, package=baseline)
                tasks[f"{k}: background writer at {args.baseline}"] = (_task(ours_then, targets[k], journal), data)
            tasks[f"{k}: naive, one transaction per call"] = (_task(run_naive, targets[k], journal), naive_data)
            tasks[f"{k}: {FLOOR}"] = (_task(run_floor, targets[k], journal), data)
        for run, calls in tasks.values():  # the warm-up: untimed, a twentieth of the calls
            run(calls[: max(len(calls) // 20, 1)])
        for _, name in tqdm(list(interleave(list(tasks), repeats)), desc="store repeats", unit="run"):
            run, calls = tasks[name]
            results.setdefault(name, []).append(run(calls))
        for k in kinds:  # after the throughput runs: one paced run per backend
            with targets[k].fresh() as url:
                lag_rows.append({"backend": k, **run_paced(url, paced_data, journal, PACED_ROWS_PER_S)})
    shutil.rmtree(folder, ignore_errors=True)

    rows = []
    for name, runs in results.items():
        rates = [r["attempts_per_s"] for r in runs]
        row_rates = [r["rows_per_s"] for r in runs]
        kind, how = name.split(": ", 1)
        rows.append(
            {
                "backend": kind,
                "writer": how,
                "repeats": len(runs),
                "calls": runs[0]["calls"],
                "attempts": runs[0]["attempts"],
                "attempts_per_s": float(np.median(rates)),
                "min_attempts_per_s": float(min(rates)),
                "max_attempts_per_s": float(max(rates)),
                "rows_per_s": float(np.median(row_rates)),
                "p25_rows_per_s": float(np.percentile(row_rates, 25)),
                "p75_rows_per_s": float(np.percentile(row_rates, 75)),
                "attempts_per_cpu_s": float(np.median([r["attempts_per_cpu_s"] for r in runs])),
                "cpu_share": float(np.median([r["cpu_share"] for r in runs])),
                "put_seconds": float(np.median([r["put_seconds"] for r in runs])),
                "seconds": float(np.median([r["seconds"] for r in runs])),
                "lost": sum(r["lost"] for r in runs),
                "write_errors": sum(r["write_errors"] for r in runs),
                "journaled": sum(r["journaled"] for r in runs),
            }
        )
    write_csv(args.out / "bench_store.csv", rows)
    spread_rows, spread_notes = _spread(results)
    write_csv(args.out / "bench_store_repeats.csv", spread_rows)
    by = {(r["backend"], r["writer"]): r for r in rows}
    summary = []
    for kind in ("sqlite", "postgres"):
        if kind not in backends:
            continue
        label = "SQLite file" if kind == "sqlite" else "PostgreSQL"
        o = by.get((kind, "background writer"))
        if o is None:
            summary.append(
                {
                    "workload": f"log writes, {label}: attempts/s",
                    "ours": "not run",
                    "peer": notes_pg,
                    "ratio": "–",
                    "target": f">= {TARGETS[kind]:,.0f}/s, none lost",
                    "met?": "not run",
                }
            )
            continue
        p = by[(kind, "naive, one transaction per call")]
        f = by[(kind, FLOOR)]
        b = by.get((kind, f"background writer at {args.baseline}"))
        met_rows = o["rows_per_s"] >= TARGETS[kind] and o["lost"] == 0
        met_attempts = o["attempts_per_s"] >= TARGETS[kind] and o["lost"] == 0
        lag = next((r for r in lag_rows if r["backend"] == kind), None)
        lag_text = (
            f"; lag at {lag['target_rows_per_s']:,.0f} rows/s p50 {lag['lag_p50_ms']:.0f} ms, p99 {lag['lag_p99_ms']:.0f} ms, max {lag['lag_max_ms']:.0f} ms"
            if lag
            else ""
        )
        summary.append(
            {
                "workload": f"log writes, {label}: rows/s and attempts/s (background writer, batched)",
                "ours": f"{o['rows_per_s']:,.0f} rows/s (median of {o['repeats']}; middle half {o['p25_rows_per_s']:,.0f}..{o['p75_rows_per_s']:,.0f}) = {o['attempts_per_s']:,.0f} attempts/s ({o['min_attempts_per_s']:,.0f}..{o['max_attempts_per_s']:,.0f}) + calls rows; {o['attempts_per_cpu_s']:,.0f} attempts per CPU-s; lost {o['lost']}{lag_text}",
                "peer": f"one transaction per call {p['attempts_per_s']:,.0f}/s; floor (driver executemany, no queue) {f['attempts_per_s']:,.0f}/s",
                "ratio": f"{o['attempts_per_s'] / p['attempts_per_s']:.1f}x naive, {o['attempts_per_s'] / f['attempts_per_s']:.2f}x floor"
                + (f", {o['rows_per_s'] / b['rows_per_s']:.2f}x {args.baseline}" if b else ""),
                "target": f">= {TARGETS[kind]:,.0f} rows/s (issue 16; issue 9 said attempts/s), none lost",
                "met?": f"{'met' if met_rows else 'MISSED'} in rows/s; {'met' if met_attempts else 'MISSED'} in attempts/s",
            }
        )
    write_csv(args.out / "bench_store_summary.csv", summary)
    write_csv(args.out / "bench_store_lag.csv", lag_rows)
    notes = [
        f"Background writer: {n_calls:,} calls per repeat ({by.get(('sqlite', 'background writer'), by.get(('postgres', 'background writer'), {})).get('attempts', 0):,} attempts + one calls row each), "
        f"Store defaults (batch_size 5000); the floor writes the same calls. Naive peer: {n_naive:,} calls per repeat. {repeats} repeats each, interleaved, after an untimed warm-up run of each writer on a twentieth of its calls; median, middle half (p25..p75 of rows/s) and range of attempts/s in brackets."
        + (
            f" 'background writer at {args.baseline}': this benchmark's background writer run with the package at git revision {args.baseline}, in the same interleaving."
            if args.baseline
            else ""
        ),
        "Clock: first put_many until flush() returns, both in the same process (the producer shares the GIL with the writer, as in the router). "
        "put_seconds = time spent queueing alone.",
        "attempts_per_cpu_s = attempts per second of this process's CPU time (all threads; the database server's excluded); "
        "cpu_share = that CPU time over the wall time: well below 1 means the process waited for a core (other load) or for the database.",
        "lost = rows missing from the database after the run (counted with SELECT count(*)); journaled = rows left in the outage journal (must be 0).",
        f"PostgreSQL: {notes_pg}.",
        f"Lag: one run per backend after the throughput runs, {len(paced_data):,} calls put_many'd at a steady {PACED_ROWS_PER_S:,.0f} rows/s "
        "(Store defaults); a thread samples the writer's committed-row count every 2 ms, so a call's lag is the time from its put_many "
        "to the first sample that counts its calls row (resolution 2 ms). lag_max_first_fifth_ms / lag_max_last_fifth_ms: the worst lag "
        "among the first and the last fifth of the calls; a writer that falls behind shows a last fifth far above the first.",
    ]
    write_markdown(
        args.out / "bench_store.md",
        "Log writes: attempts per second into SQLite and PostgreSQL",
        list(summary[0]),
        summary,
        command=args.command,
        sections=[("Every writer", markdown_table(list(rows[0]), rows))]
        + [("What varies between repeats", markdown_table(list(spread_rows[0]), spread_rows) + "\n\n" + spread_notes)]
        * bool(spread_rows)
        + [("Lag from a call's hand-over to its rows being committed", markdown_table(list(lag_rows[0]), lag_rows))]
        * bool(lag_rows),
        notes=notes,
        quick=args.quick,
    )
    print((args.out / "bench_store.md").read_text())
    return {"rows": rows, "summary": summary, "out": args.out}


def _spread(results: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], str]:
    """Each repeat of the background writers, and what their spread follows: the share of a core the
    process got (other load), the producer's queueing time (the GIL it shares with the writer), or
    neither (the writer's own work varies: checkpoints, batch boundaries)."""
    rows, lines = [], []
    for name, runs in results.items():
        if "background writer" not in name:
            continue
        for i, r in enumerate(runs):
            rows.append(
                {
                    "writer": name,
                    "repeat": i + 1,
                    "rows_per_s": r["rows_per_s"],
                    "attempts_per_cpu_s": r["attempts_per_cpu_s"],
                    "cpu_share": r["cpu_share"],
                    "put_seconds": r["put_seconds"],
                    "load_1min": r["load_1min"],
                }
            )
        if len(runs) < 3:
            continue
        rate = np.array([r["rows_per_s"] for r in runs])
        per_cpu = np.array([r["attempts_per_cpu_s"] for r in runs])
        share = np.array([r["cpu_share"] for r in runs])
        put = np.array([r["put_seconds"] for r in runs])
        lines.append(
            f"{name}: rows/s spread (max/min) {rate.max() / rate.min():.2f}, attempts per CPU-s spread "
            f"{per_cpu.max() / per_cpu.min():.2f}; correlation of rows/s with cpu_share {np.corrcoef(rate, share)[0, 1]:+.2f}, "
            f"with put_seconds {np.corrcoef(rate, put)[0, 1]:+.2f}."
        )
    return rows, "\n".join(f"- {line}" for line in lines)


@contextmanager
def _none() -> Iterator[tuple[None, str]]:
    yield None, "not requested"


def _task(fn: Callable[..., dict[str, Any]], target: Target, journal: Path) -> Callable[[Any], dict[str, Any]]:
    def run(data: Any) -> dict[str, Any]:
        with target.fresh() as url:
            return fn(url, data, journal)

    return run


if __name__ == "__main__":
    main()
