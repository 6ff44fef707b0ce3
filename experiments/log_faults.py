"""Log faults: poison rows, a frozen store, a SIGKILLed worker, and the cost of durability (issue 13).

Four experiments on the outcome log, through the public API only (``Router``, ``Store``), over real
loopback HTTP, real SQLite files and a private PostgreSQL server (initdb / pg_ctl in a temporary
folder, the recipe of tests/test_outage.py; its parts are skipped when there are no binaries):

1. **Poison rows.** Routed calls over a hostile backend whose answers carry NUL bytes and lone
   surrogates in error bodies, usage tokens of 10**23, and a 401 that echoes the Authorization
   header (the key configured from an environment variable, with a trailing newline as a key file
   has); a steady model answers the fallback. Among the router's rows, rows the database refuses
   (NOT NULL violations in ``calls`` and ``feedback``) are queued through ``router.store``. Counted
   after ``close()``: rows lost, rows duplicated (count vs distinct keys), dead letters, and every
   occurrence of the key in the database, the journal, exceptions and log lines.
2. **A frozen store.** The private PostgreSQL is SIGSTOPped for a few seconds while a router serves
   a call and a feedback at a steady rate; latency before, during and after, and rows lost or
   duplicated once the server resumes and the router closes.
3. **A SIGKILLed worker.** A router process (answering calls and recording each answered call id
   and when) is SIGKILLed during a freeze (PostgreSQL) and during a write lock (SQLite), with
   ``durability = "batched"`` and ``"journal"``; a new store then replays the journal. Reported:
   calls answered, lost, the age at the kill of the oldest lost call against the documented bound
   (batched: ``journal_after_s`` = 1 s during an outage; journal: nothing), duplicated rows.
4. **The cost of durability.** Interleaved rounds of routed sync calls (one-model route, the
   loopback mock backend in its own process) with ``durability`` batched, journal, and a store that
   discards every row (no log writes), on SQLite; the added microseconds per call.

    .venv/bin/python -m experiments.log_faults [--quick] [--out DIR]

Outputs: log_faults.csv (one row per measured value), log_faults_timeline.csv (each call of the
freeze experiment), log_faults.md, log_faults.png. ``--quick`` is a smoke run (< 40 s).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text

from zeta_adaptive import AllModelsFailed, Router, Store

from .common import (
    PrivatePostgres,
    markdown_table,
    parse_args,
    percentile,
    postgres_bindir,
    run_interleaved,
    savefig,
    setup_matplotlib,
    write_csv,
    write_markdown,
)
from .mock_backend import MockServer

MSG = [{"role": "user", "content": "hi"}]
KEY = "sk-logfaults-7c1d0e4f9a2b"
KEY_ENV = "ZETA_LOGFAULTS_KEY"
JOURNAL_AFTER_S = 1.0  # Store's default journal_after_s: the documented loss bound during an outage
TABLE_KEYS = {
    "calls": "call_id",
    "attempts": "call_id || ':' || idx",
    "feedback": "call_id",
    "dead_letters": "table_name || ':' || row_key",
}


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run (the full measurement, or the smoke run)."""

    poison_calls: int
    freeze_before_s: float
    freeze_s: float
    freeze_after_s: float
    period_s: float  # one call and one feedback every period
    kill_after_calls: int
    hold_s: float  # how long the freeze or lock lasts before the SIGKILL
    cost_calls: int
    cost_rounds: int
    postgres: bool  # run the PostgreSQL parts (when its binaries are here)


FULL = Plan(300, 3.0, 5.0, 3.0, 0.02, 100, 3.0, 200, 5, True)
QUICK = Plan(40, 0.8, 2.0, 0.8, 0.02, 30, 1.5, 40, 2, False)  # SQLite only: initdb alone takes seconds


# -- loopback backends --------------------------------------------------------------------------


class Canned:
    """A loopback OpenAI-like server: ``answer(n, headers) -> (status, payload)`` for the n-th request."""

    def __init__(self, answer: Callable[[int, Any], tuple[int, dict]]) -> None:
        outer = self
        self.requests = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = (
                True  # keep-alive: headers and body are two writes, Nagle would hold the body 40 ms
            )

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                status, payload = answer(n, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # clients that hang up (a killed worker) are expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(tokens_in: int = 3, tokens_out: int = 2) -> dict:
    return {
        "choices": [{"message": {"role": "assistant", "content": "fine"}}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
    }


def hostile(n: int, headers: Any) -> tuple[int, dict]:
    """A NUL byte and a lone surrogate in an error body, absurd token counts, an echoed Authorization header."""
    kind = n % 4
    if kind == 0:
        return 500, {"error": {"message": "engine \x00 failed \ud800 badly"}}
    if kind == 1:
        return 200, ok(tokens_in=10**23, tokens_out=-(10**30))
    if kind == 2:
        return 401, {"error": {"message": f"bad key: Authorization: {headers.get('Authorization')} (key {KEY})"}}
    return 200, ok()


def steady(n: int, headers: Any) -> tuple[int, dict]:
    return 200, ok()


def config(store: str, journal: Path, models: dict[str, str], route: list[str], **extra: Any) -> dict:
    return {
        "store": store,
        "journal_dir": str(journal),
        "models": {name: {"base_url": url, "timeout_s": 5.0} for name, url in models.items()},
        "routes": {"simple": {"models": route, "policy": "static"}},
        "breaker": {"consecutive_failures": 10**6, "min_calls": 10**6},
        **extra,
    }


# -- the stores -----------------------------------------------------------------------------------


class Databases:
    """Fresh databases: SQLite files in a folder, and PostgreSQL databases in the private server."""

    def __init__(self, root: Path, pg: PrivatePostgres | None) -> None:
        self.root = root
        self.pg = pg
        self.made = 0

    def fresh(self, kind: str) -> str:
        self.made += 1
        name = f"lf{self.made}"
        if kind == "sqlite":
            return f"sqlite:///{self.root / (name + '.db')}"
        assert self.pg is not None
        admin = create_engine(self.pg.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.pg.url.rsplit("/", 1)[0] + "/" + name

    def kinds(self) -> list[str]:
        return ["sqlite"] + (["postgresql"] if self.pg is not None else [])


def read_table(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


def keys_in(url: str, table: str) -> list[str]:
    """Every row's key in ``table`` (with repeats, if any)."""
    return [r[0] for r in read_table(url, f"SELECT {TABLE_KEYS[table]} FROM {table}")]


def duplicated(url: str) -> int:
    """Rows beyond the first of each key, over every table."""
    return sum(len(k) - len(set(k)) for k in (keys_in(url, t) for t in TABLE_KEYS))


def everything_in(url: str, folder: Path) -> str:
    """Every text the log holds: every row of every table, and every file of the journal folder."""
    rows = [str(r) for t in TABLE_KEYS for r in read_table(url, f"SELECT * FROM {t}")]
    files = [p.read_text(errors="replace") for p in folder.glob("*") if p.is_file()] if folder.exists() else []
    return "\n".join(rows + files)


# -- freezing PostgreSQL ------------------------------------------------------------------------------


class Held:
    """A fault held for a while: a frozen PostgreSQL or a write-locked SQLite file; ``release()`` ends it."""

    def __init__(self, url: str, pg: PrivatePostgres | None) -> None:
        self.pg = pg
        self.conn = None
        if pg is not None:
            pg.signal(signal.SIGSTOP)
        else:
            self.engine = create_engine(url)
            self.conn = self.engine.connect()
            self.conn.exec_driver_sql("BEGIN IMMEDIATE")  # another writer holds the lock

    def release(self) -> None:
        if self.pg is not None:
            self.pg.signal(signal.SIGCONT)
        else:
            self.conn.rollback()
            self.conn.close()
            self.engine.dispose()


# -- 1. poison rows -----------------------------------------------------------------------------------


class Captured(logging.Handler):
    """Every log line of the library, kept as text (to look for the key in it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")


def poison(dbs: Databases, kind: str, plan: Plan) -> dict[str, Any]:
    url = dbs.fresh(kind)
    journal = dbs.root / f"journal-poison-{kind}"
    bad, good = Canned(hostile), Canned(steady)
    os.environ[KEY_ENV] = KEY + "\n"
    cfg = config(url, journal, {"hostile": bad.url, "steady": good.url}, ["hostile", "steady"])
    cfg["models"]["hostile"]["api_key_env"] = KEY_ENV
    handler = Captured()
    lib = logging.getLogger("zeta_adaptive")
    lib.addHandler(handler)
    old_level = lib.level
    lib.setLevel(logging.DEBUG)
    calls: set[str] = set()
    attempts: set[str] = set()
    rated: set[str] = set()
    refused: list[str] = []
    texts: list[str] = []
    failed = 0
    try:
        with Router(cfg) as router:
            for i in range(plan.poison_calls):
                try:
                    result = router.chat("simple", MSG)
                    call_id, tried = result.call_id, result.attempts
                    if i % 2 == 0:
                        router.feedback(call_id, 0.5)
                        rated.add(call_id)
                except AllModelsFailed as exc:
                    failed += 1
                    call_id, tried = exc.call_id, exc.attempts
                    texts.append(str(exc))
                calls.add(call_id)
                attempts.update(f"{call_id}:{k}" for k in range(len(tried)))
                texts += [a.error or "" for a in tried]
                if i % 25 == 0:  # rows every database refuses (NOT NULL), in the same batches as the good ones
                    row = {
                        "call_id": f"refused-{i}",
                        "task_type": "simple",
                        "policy": "static",
                        "propensity": 1.0,
                        "ranking": "[]",
                        "model": None,
                        "outcome": "ok",
                        "latency_s": 0.0,
                        "tokens_in": 0,
                        "tokens_out": 0,
                        "cost": 0.0,
                        "n_attempts": 0,
                    }
                    router.store.put("calls", row)  # no ts
                    router.store.put(
                        "feedback",
                        {"call_id": f"refused-fb-{i}", "ts": time.time(), "task_type": "simple", "model": "steady"},
                    )
                    refused += [f"refused-{i}", f"refused-fb-{i}"]
            texts.append(repr(router))
            store = router.store
    finally:
        lib.removeHandler(handler)
        lib.setLevel(old_level)
        bad.close()
        good.close()
        del os.environ[KEY_ENV]
    db_calls, db_attempts, db_feedback = (set(keys_in(url, t)) for t in ("calls", "attempts", "feedback"))
    letters = read_table(url, "SELECT row_key FROM dead_letters")
    lettered = {json.loads(k)[0] for (k,) in letters}
    big, small = read_table(url, "SELECT max(tokens_in), min(tokens_out) FROM attempts")[0]
    errors = [e for (e,) in read_table(url, "SELECT error FROM attempts WHERE error IS NOT NULL")]
    haystack = everything_in(url, journal) + "\n".join(texts) + handler.buffer.getvalue()
    return {
        "calls made": len(calls),
        "calls failed": failed,
        "attempts made": len(attempts),
        "feedback given": len(rated),
        "calls rows": len(db_calls & calls),
        "attempts rows": len(db_attempts & attempts),
        "feedback rows": len(db_feedback & rated),
        "rows lost": len(calls - db_calls) + len(attempts - db_attempts) + len(rated - db_feedback),
        "rows duplicated": duplicated(url),
        "refused rows queued": len(refused),
        "dead letters": len(letters),
        "refused rows not in dead letters": len(set(refused) - lettered),
        "store dead counter": store.dead,
        "writer crashes": store.crashes,
        "max tokens_in": big,
        "min tokens_out": small,
        "errors with NUL": sum("\x00" in e for e in errors),
        "key occurrences": haystack.count(KEY),
        "key occurrences in log lines": handler.buffer.getvalue().count(KEY),
    }


# -- 2. a frozen store ----------------------------------------------------------------------------


def frozen(dbs: Databases, plan: Plan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert dbs.pg is not None
    url = dbs.fresh("postgresql")
    good = Canned(steady)
    cfg = config(url, dbs.root / "journal-frozen", {"m": good.url}, ["m"])
    timeline: list[dict[str, Any]] = []
    made, rated = set(), set()
    window: dict[str, float] = {}
    journaled = 0
    try:
        router = Router(cfg)
        start = time.monotonic()
        window["from"], window["to"] = plan.freeze_before_s, plan.freeze_before_s + plan.freeze_s
        end = window["to"] + plan.freeze_after_s

        def hold() -> None:
            time.sleep(max(start + window["from"] - time.monotonic(), 0.0))
            window["from"] = time.monotonic() - start
            dbs.pg.signal(signal.SIGSTOP)
            time.sleep(plan.freeze_s)
            dbs.pg.signal(signal.SIGCONT)
            window["to"] = time.monotonic() - start

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        tick = start
        while (now := time.monotonic()) < start + end:
            t0 = time.perf_counter()
            result = router.chat("simple", MSG)
            t1 = time.perf_counter()
            router.feedback(result.call_id, 0.5)
            t2 = time.perf_counter()
            made.add(result.call_id)
            rated.add(result.call_id)
            journaled = max(journaled, router.store.journal.rows)
            timeline.append(
                {
                    "t_s": now - start,
                    "end_s": time.monotonic() - start,
                    "call_ms": (t1 - t0) * 1e3,
                    "feedback_ms": (t2 - t1) * 1e3,
                    "both_ms": (t2 - t0) * 1e3,
                }
            )
            tick = max(tick + plan.period_s, time.monotonic())  # a steady rate: no burst to catch up after a stall
            time.sleep(max(tick - time.monotonic(), 0.0))
        holder.join(30)
        t0 = time.perf_counter()
        router.close()
        close_s = time.perf_counter() - t0
    finally:
        dbs.pg.signal(signal.SIGCONT)
        good.close()
    for row in timeline:  # "during": the call or its feedback overlapped the freeze
        row["phase"] = (
            "before" if row["end_s"] < window["from"] else "after" if row["t_s"] >= window["to"] else "during"
        )
    db_calls, db_feedback = set(keys_in(url, "calls")), set(keys_in(url, "feedback"))
    out: dict[str, Any] = {
        "freeze from s": window["from"],
        "freeze to s": window["to"],
        "calls made": len(made),
        "feedback given": len(rated),
    }
    for phase in ("before", "during", "after"):
        both = [r["both_ms"] for r in timeline if r["phase"] == phase]
        out[f"{phase}: calls"] = len(both)
        for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
            out[f"{phase}: call+feedback {name} ms"] = percentile(both, q) if both else None
        for part in ("call", "feedback"):
            values = [r[f"{part}_ms"] for r in timeline if r["phase"] == phase]
            out[f"{phase}: {part} p50 ms"] = percentile(values, 50) if values else None
            out[f"{phase}: {part} max ms"] = max(values) if values else None
    out.update(
        {
            "max journal rows during freeze": journaled,
            "close s": close_s,
            "rows lost": len(made - db_calls) + len(rated - db_feedback),
            "rows duplicated": duplicated(url),
        }
    )
    return out, timeline


# -- 3. a SIGKILLed worker -------------------------------------------------------------------------

WORKER = """
import json, sys, time
from zeta_adaptive import Router
cfg = json.loads(sys.argv[1])
router = Router(cfg)
done = open(sys.argv[2], "a")
while True:
    r = router.chat("simple", [{"role": "user", "content": "hi"}])
    done.write(f"{r.call_id} {time.time()}\\n"); done.flush()
    time.sleep(0.005)
"""


class Worker:
    """A router process on a fresh database that answers calls without pause and records each answered call id and when."""

    def __init__(self, dbs: Databases, kind: str, durability: str, backend: str) -> None:
        self.kind, self.durability = kind, durability
        self.url = dbs.fresh(kind)
        self.journal = dbs.root / f"journal-kill-{dbs.made}"
        cfg = config(self.url, self.journal, {"m": backend}, ["m"], durability=durability)
        Store(self.url, journal_dir=self.journal).close()  # the schema, before the worker starts
        self.ledger = dbs.root / f"answered-{dbs.made}.txt"
        self.ledger.touch()
        self.errors = dbs.root / f"worker-{dbs.made}.err"
        with open(self.errors, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(cfg), str(self.ledger)], stdout=subprocess.DEVNULL, stderr=err
            )
        self.kill_at = 0.0

    def answered(self) -> dict[str, float]:
        return {
            p[0]: float(p[1]) for p in (line.split() for line in self.ledger.read_text().splitlines()) if len(p) == 2
        }

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kill_at = time.time()
        self.proc.wait(30)

    def count(self, held_at: float) -> dict[str, Any]:
        """Replay what the dead worker journaled (a new store does) and compare the log with what it answered."""
        answered = self.answered()
        Store(self.url, journal_dir=self.journal).close()
        logged = set(keys_in(self.url, "calls"))
        lost = [t for c, t in answered.items() if c not in logged]
        bound = JOURNAL_AFTER_S if self.durability == "batched" else 0.0
        oldest = self.kill_at - min(lost) if lost else 0.0
        return {
            "calls answered": len(answered),
            "answered during the fault": sum(t >= held_at for t in answered.values()),
            "calls lost": len(lost),
            "oldest lost call age at kill s": oldest,
            "documented bound s": bound,
            "within bound": oldest <= bound,
            "rows duplicated": duplicated(self.url),
        }


def killed(
    dbs: Databases, kind: str, durabilities: Iterable[str], plan: Plan, backend: str
) -> dict[str, dict[str, Any]]:
    """Router processes (one per durability, side by side) answer calls; freeze PostgreSQL or write-lock
    each SQLite file, SIGKILL them all while it lasts, then replay and count."""
    workers = [Worker(dbs, kind, d, backend) for d in durabilities]
    held: list[Held] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(
            w.proc.poll() is None and len(w.answered()) < plan.kill_after_calls for w in workers
        ):
            time.sleep(0.05)
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"a router worker died before the fault: {w.errors.read_text()[-2000:]}")
        held = [Held("", dbs.pg)] if kind == "postgresql" else [Held(w.url, None) for w in workers]
        held_at = time.time()
        time.sleep(plan.hold_s)
        for w in workers:
            w.kill()
    finally:
        for w in workers:
            w.kill()
        for h in held:
            h.release()
    return {w.durability: w.count(held_at) for w in workers}


# -- 4. the cost of durability -------------------------------------------------------------------------


class DiscardingStore(Store):
    """A store that drops every row it is handed: the 'no log writes' baseline."""

    def put_many(self, items: Iterable[Any]) -> None:
        return None


def durability_cost(dbs: Databases, plan: Plan) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    with MockServer() as mock:
        routers: dict[str, Router] = {}
        for name in ("no log writes", "batched", "journal"):
            url = dbs.fresh("sqlite")
            journal = dbs.root / f"journal-cost-{dbs.made}"
            mode = "journal" if name == "journal" else "batched"
            cfg = config(url, journal, {"m": mock.base_url}, ["m"], durability=mode)
            store = DiscardingStore(url, journal_dir=journal) if name == "no log writes" else None
            routers[name] = Router(cfg, store=store)

        def task(name: str) -> Callable[[int], list[float]]:
            router = routers[name]

            def run(_round: int) -> list[float]:
                out = []
                for _ in range(plan.cost_calls):
                    t0 = time.perf_counter_ns()
                    router.chat("simple", MSG)
                    out.append((time.perf_counter_ns() - t0) / 1e3)
                router.flush(30)  # the writer's work stays in this contender's round
                return out

            return run

        for name in routers:  # warm up connections and code paths
            task(name)(0)
        got = run_interleaved({name: task(name) for name in routers}, plan.cost_rounds)
        for router in routers.values():
            router.close()
    samples = {name: np.concatenate(rounds) for name, rounds in got.items()}
    base = {q: float(np.percentile(samples["no log writes"], q)) for q in (50, 95)}
    rows = []
    for name, values in samples.items():
        p50, p95 = float(np.percentile(values, 50)), float(np.percentile(values, 95))
        rounds_p50 = [float(np.percentile(r, 50)) for r in got[name]]
        rows.append(
            {
                "durability": name,
                "calls": len(values),
                "p50 us": p50,
                "p95 us": p95,
                "added p50 us": p50 - base[50],
                "added p95 us": p95 - base[95],
                "round p50 spread us": max(rounds_p50) - min(rounds_p50),
            }
        )
    return rows, samples


# -- outputs ----------------------------------------------------------------------------------------


def plot(
    timeline: list[dict[str, Any]], window: tuple[float, float] | None, samples: dict[str, np.ndarray], path: Path
) -> None:
    plt = setup_matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    if timeline:
        t = [r["t_s"] for r in timeline]
        left.scatter(t, [r["call_ms"] for r in timeline], s=6, label="call (chat)")
        left.scatter(t, [r["feedback_ms"] for r in timeline], s=6, marker="x", label="feedback")
        left.axvspan(*window, color="tab:red", alpha=0.15, label="PostgreSQL frozen (SIGSTOP)")
        left.set_yscale("log")
        left.legend(loc="upper right", fontsize=8)
    else:
        left.text(
            0.5, 0.5, "no PostgreSQL (quick run, or no binaries): no freeze", ha="center", transform=left.transAxes
        )
    left.set_xlabel("time since the router started serving (s)")
    left.set_ylabel("latency (ms, log scale)")
    left.set_title("Call and feedback latency around a frozen store")
    names = list(samples)
    right.boxplot([samples[n] for n in names], showfliers=False)
    right.set_xticks(range(1, len(names) + 1), names)
    right.set_ylabel("routed sync call latency (µs)")
    right.set_title("Cost of durability (SQLite)")
    savefig(fig, path)


def long_rows(part: str, store: str, scenario: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"part": part, "store": store, "scenario": scenario, "metric": k, "value": v} for k, v in values.items()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(__doc__, argv)
    plan = QUICK if args.quick else FULL
    began = time.monotonic()
    pg = PrivatePostgres() if postgres_bindir() is not None and plan.postgres else None
    root = Path(tempfile.mkdtemp(prefix="zeta-logfaults-"))
    csv_rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"poison": {}, "killed": {}}
    timeline: list[dict[str, Any]] = []
    backend = Canned(steady)
    try:
        if pg is not None:
            pg.start()
            print(f"[{time.monotonic() - began:5.1f} s] == private PostgreSQL on port {pg.port}", flush=True)
        dbs = Databases(root, pg)
        for kind in dbs.kinds():
            print(f"[{time.monotonic() - began:5.1f} s] == poison rows, {kind}", flush=True)
            results["poison"][kind] = poison(dbs, kind, plan)
            csv_rows += long_rows("poison rows", kind, "hostile backend + refused rows", results["poison"][kind])
        if pg is not None:
            print(f"[{time.monotonic() - began:5.1f} s] == frozen store", flush=True)
            results["frozen"], timeline = frozen(dbs, plan)
            csv_rows += long_rows("frozen store", "postgresql", f"SIGSTOP {plan.freeze_s:g} s", results["frozen"])
        for kind in dbs.kinds():
            print(f"[{time.monotonic() - began:5.1f} s] == SIGKILL, {kind}", flush=True)
            fault = "frozen (SIGSTOP)" if kind == "postgresql" else "write-locked"
            for durability, got in killed(dbs, kind, ("batched", "journal"), plan, backend.url).items():
                results["killed"][(kind, durability)] = got
                csv_rows += long_rows("SIGKILLed worker", kind, f"{durability}, {fault} {plan.hold_s:g} s", got)
        print(f"[{time.monotonic() - began:5.1f} s] == cost of durability", flush=True)
        cost, samples = durability_cost(dbs, plan)
        print(f"[{time.monotonic() - began:5.1f} s] == done", flush=True)
        for row in cost:
            csv_rows += long_rows(
                "cost of durability", "sqlite", row["durability"], {k: v for k, v in row.items() if k != "durability"}
            )
    finally:
        backend.close()
        if pg is not None:
            if pg.running:
                pg.signal(signal.SIGCONT)
            pg.destroy()
    results["cost"] = cost
    write_csv(args.out / "log_faults.csv", csv_rows)
    write_csv(args.out / "log_faults_timeline.csv", timeline)
    frozen_res = results.get("frozen")
    window = (frozen_res["freeze from s"], frozen_res["freeze to s"]) if frozen_res else None
    plot(timeline, window, samples, args.out / "log_faults.png")
    write_report(args, plan, results, pg is not None)
    return results


def write_report(args: Any, plan: Plan, res: dict[str, Any], with_pg: bool) -> None:
    head: list[dict[str, Any]] = []

    def verdict(good: bool) -> str:
        return "met" if good else "MISSED"

    for kind, p in res["poison"].items():
        clean = p["rows lost"] == 0 and p["rows duplicated"] == 0 and p["refused rows not in dead letters"] == 0
        head.append(
            {
                "workload": f"poison rows, {kind}: lost / duplicated / dead letters of {p['refused rows queued']} refused",
                "ours": f"{p['rows lost']} / {p['rows duplicated']} / {p['dead letters']}",
                "target": "0 / 0 / all refused",
                "met?": verdict(clean),
            }
        )
        head.append(
            {
                "workload": f"poison rows, {kind}: key occurrences (DB, journal, exceptions, logs)",
                "ours": p["key occurrences"],
                "target": "0",
                "met?": verdict(p["key occurrences"] == 0),
            }
        )
    f = res.get("frozen")
    if f:
        head.append(
            {
                "workload": f"frozen PostgreSQL ({plan.freeze_s:g} s): call+feedback p99 / max during the freeze (ms)",
                "ours": f"{f['during: call+feedback p99 ms']:.1f} / {f['during: call+feedback max ms']:.0f}",
                "target": "max ≤ store_timeout_s (2 s) + 0.25 s",
                "met?": verdict(f["during: call+feedback max ms"] <= 2000 + 250),
            }
        )
        head.append(
            {
                "workload": "frozen PostgreSQL: rows lost / duplicated after it resumes",
                "ours": f"{f['rows lost']} / {f['rows duplicated']}",
                "target": "0 / 0",
                "met?": verdict(f["rows lost"] == 0 and f["rows duplicated"] == 0),
            }
        )
    for (kind, durability), k in res["killed"].items():
        head.append(
            {
                "workload": f"SIGKILL during a {'freeze' if kind == 'postgresql' else 'write lock'}, {kind}, {durability}: oldest lost call (s before kill)",
                "ours": f"{k['oldest lost call age at kill s']:.2f} ({k['calls lost']} of {k['calls answered']} lost, {k['rows duplicated']} dup.)",
                "target": f"≤ {k['documented bound s']:g} s, 0 dup.",
                "met?": verdict(k["within bound"] and k["rows duplicated"] == 0),
            }
        )
    cost = {r["durability"]: r for r in res["cost"]}
    for mode, base in (("batched", "no log writes"), ("journal", "batched")):
        head.append(
            {
                "workload": f"durability {mode} vs {base}, added p50 / p95 per routed sync call (µs, SQLite)",
                "ours": f"{cost[mode]['p50 us'] - cost[base]['p50 us']:.0f} / {cost[mode]['p95 us'] - cost[base]['p95 us']:.0f}",
                "target": "(measured)",
                "met?": "",
            }
        )

    poison_cols = [
        "calls made",
        "attempts made",
        "feedback given",
        "calls rows",
        "attempts rows",
        "feedback rows",
        "rows lost",
        "rows duplicated",
        "refused rows queued",
        "dead letters",
        "writer crashes",
        "max tokens_in",
        "errors with NUL",
        "key occurrences",
    ]
    poison_t = _transpose(res["poison"], poison_cols)
    frozen_t = ""
    if f:
        parts = [f"{p} {q}" for p in ("call", "feedback") for q in ("p50", "max")]
        phases = [
            {
                "phase": ph,
                "calls": f[f"{ph}: calls"],
                **{q: f[f"{ph}: call+feedback {q} ms"] for q in ("p50", "p99", "max")},
                **{c: f[f"{ph}: {c} ms"] for c in parts},
            }
            for ph in ("before", "during", "after")
        ]
        frozen_t = markdown_table(["phase", "calls", "p50", "p99", "max", *parts], phases) + (
            f"\n\ncall + feedback latency (ms), one of each every {plan.period_s * 1e3:.0f} ms (the next at once when one took longer, no catching up); 'during' = the "
            f"call or its feedback overlapped the freeze. PostgreSQL frozen (SIGSTOP sent to SIGCONT done) from "
            f"{f['freeze from s']:.2f} s to {f['freeze to s']:.2f} s. Journal held up to {f['max journal rows during freeze']} rows; "
            f"close() took {f['close s']:.2f} s; rows lost {f['rows lost']}, duplicated {f['rows duplicated']}."
        )
    kill_t = _transpose(
        {f"{k} {d}": v for (k, d), v in res["killed"].items()},
        [
            "calls answered",
            "answered during the fault",
            "calls lost",
            "oldest lost call age at kill s",
            "documented bound s",
            "rows duplicated",
        ],
    )
    cost_t = markdown_table(
        ["durability", "calls", "p50 us", "p95 us", "added p50 us", "added p95 us", "round p50 spread us"], res["cost"]
    )
    sections = [
        ("Poison rows", poison_t),
        ("A frozen store", frozen_t or "skipped (quick run, or no PostgreSQL binaries)"),
        ("A SIGKILLed worker", kill_t),
        ("The cost of durability", cost_t),
    ]
    notes = [
        "Poison: the hostile model answers in turn a 500 whose body holds a NUL byte and a lone surrogate, a 200 with usage "
        "tokens 10**23 / -10**30, a 401 that echoes the Authorization header and the key (configured with a trailing newline), "
        "and a good answer; the steady model answers the fallbacks. Every 25th call, a calls row without ts and a feedback row "
        "without accuracy are queued through router.store (NOT NULL: refused by every database).",
        "rows lost = calls, attempts and feedback the router reported that the log does not hold; rows duplicated = rows beyond "
        "the first per key, over every table.",
        f"SIGKILL: two router processes (batched and journal, side by side) call a loopback backend without pause; once each "
        f"has answered {plan.kill_after_calls} calls the fault is applied for {plan.hold_s:g} s, then SIGKILL; a new Store replays the journal. The documented bound is "
        "journal_after_s (1 s) in batched mode during an outage, nothing in journal mode.",
        "Why the batched losses are small: rows wait in memory while an insert runs until the batch's oldest row is within "
        "0.1 s of journal_after_s; then the rest of the batch and every row handed over meanwhile are journaled. A frozen "
        "PostgreSQL keeps that insert hung until store_timeout_s, after which the store is away; from then on, and while "
        "a locked SQLite answers 'database is locked' to each probe, every new batch is journaled before the probe runs, "
        "so only the rows of the last tick or two are in memory at the kill. (Until 2026-12-01 a batch waited in memory "
        "behind each probe of a locked SQLite, and the oldest loss sat at 0.9-1.03 s.)",
        "Feedback on a call of this process is one synchronous insert while the store answers (the database's unique key "
        "decides), so its latency is one transaction; while the store is away it is journaled. The first feedback after "
        "the freeze began waited store_timeout_s (2 s), once; no call waited on the store.",
        "Latencies depend on the machine's load (load_avg below: this is a shared 2-core machine); counts of lost and "
        "duplicated rows do not.",
        f"Cost: {plan.cost_rounds} interleaved rounds of {plan.cost_calls} calls per contender (flush after each round), "
        "mock backend in its own process; 'no log writes' is a Store whose put_many discards the rows.",
    ]
    if not plan.postgres:
        notes.append("Quick run: SQLite only (no private PostgreSQL, so no frozen store).")
    elif not with_pg:
        notes.append("No PostgreSQL binaries on this machine: the PostgreSQL parts were skipped.")
    write_markdown(
        args.out / "log_faults.md",
        "Log faults: poison rows, a frozen store, a SIGKILLed worker, the cost of durability",
        ["workload", "ours", "target", "met?"],
        head,
        command=args.command,
        notes=notes,
        sections=sections,
        quick=args.quick,
    )


def _transpose(by_column: dict[str, dict[str, Any]], metrics: list[str]) -> str:
    return markdown_table(["metric", *by_column], [[m, *(v[m] for v in by_column.values())] for m in metrics])


if __name__ == "__main__":
    main()
