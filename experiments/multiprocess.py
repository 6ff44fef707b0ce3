"""Several router processes on one PostgreSQL: throughput, log write rate, shared learning, lost rows.

Issue 8's experiment. A simulated fleet of three chat models (``zeta_adaptive.simulate.Fleet``,
real loopback HTTP) runs in its own child process, so it shares no GIL with any router. Two
configurations route the same load against it, one after the other, each on an emptied log:

* ``4x16``: 4 router processes (``python -m experiments.multiprocess --worker``), each ``await router.achat``
  at concurrency 16 (an ``asyncio.Semaphore``), ``calls / 4`` calls each;
* ``1x64``: 1 router process at concurrency 64, all the calls.

Every router uses the same config: a Thompson-sampling route over the three models, default
breakers, ``refresh_s`` (so ``Router.sync()`` runs in the background and each process learns the
others' attempts) and the same PostgreSQL database. When half the calls are done (summed from the
workers' progress lines), the parent tells the fleet to degrade the best model (``alpha``: error
rate 0.6 and 5x its latency). Each worker samples ``router.preferences()`` every 0.2 s; its demotion
time is the first sample after the degradation in which ``alpha`` is no longer first.

The parent samples the row counts of ``calls`` and ``attempts`` every 0.5 s (the log write rate)
and, when it can read ``/proc`` of the server, the CPU time of the postmaster and its children
(the database CPU). After the last call every worker flushes its log, waits 2.5 refresh
intervals (so its syncs have seen the others' last rows) and reports its final ranking; after the
workers close, the rows in the database are compared with the calls and attempts the workers
report (per worker too, through ``attempts.router_id``).

PostgreSQL: ``ZETA_TEST_POSTGRES_URL`` if set (a throwaway database: its zeta_adaptive tables are
dropped before each configuration), else a private server (initdb / pg_ctl from
/usr/lib/postgresql/*/bin in a temporary folder on a free loopback port, as the ``postgres`` user
when run as root), removed afterwards.

Targets (issue 8): every process demotes the degraded model within 2 refresh intervals of the
first one; no lost rows.

    .venv/bin/python -m experiments.multiprocess [--calls N] [--quick] [--out DIR] [--refresh S]

``--quick``: ~2,000 calls, a smoke test. Outputs: multiprocess.csv (one row per configuration),
multiprocess_workers.csv (one row per worker), multiprocess_timeline.csv (per worker and 0.25 s
bin: calls and the degraded model's primary share), multiprocess_rows.csv (the parent's samples:
rows in the log, write rate, database CPU), multiprocess_outcomes.csv (attempts by model, outcome and
phase), multiprocess.md, multiprocess.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import FleetProcess, PrivatePostgres, postgres_bindir, spawn

MSG = [{"role": "user", "content": "Say hello."}]
TASK = "simple"
MODELS = ("alpha", "beta", "gamma")
DEGRADED = "alpha"
SPECS = [
    {"name": "alpha", "latency_s": 0.010, "latency_sigma": 0.2, "tokens_out": 16},
    {"name": "beta", "latency_s": 0.020, "latency_sigma": 0.2, "tokens_out": 16},
    {"name": "gamma", "latency_s": 0.040, "latency_sigma": 0.2, "tokens_out": 16},
]
DEGRADE = {"error_rate": 0.6, "latency_s": 0.050}  # alpha: 60% HTTP 500 and 5x its median latency
ACCURACY = {"alpha": 0.9, "beta": 0.75, "gamma": 0.6}  # mean accuracy of each model's answers (feedback)
TIMEOUT_S, DEADLINE_S = 10.0, 30.0
CONCENTRATION = 20.0
SYNC_OVERLAP_S = 5.0  # Router.SYNC_OVERLAP_S: how far back each sync() reads again  # an answer's accuracy is Beta(mean * c, (1 - mean) * c), as simulate.Fleet draws it
SAMPLE_S = 0.2  # how often each worker samples router.preferences()
ROWS_SAMPLE_S = 0.5  # how often the parent counts rows and reads the database CPU
BIN_S = 0.25  # timeline bins of the plot
CONFIGS = (("4x16", 4, 16), ("1x64", 1, 64))


# == child: one router process =======================================================================


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_child() -> None:
    """One router process. Reads its job (JSON) from the first stdin line, prints ``{"ready": ...}``,
    waits for ``go``, makes its calls (printing ``{"p": done}`` progress lines), prints
    ``{"finished": ...}``, waits for ``report``, flushes, waits ``settle_s``, prints its report."""
    import numpy  # noqa: F401 - imported before the job arrives: the parent starts its children early

    import zeta_adaptive  # noqa: F401

    out, sys.stdout = sys.stdout, sys.stderr
    job = json.loads(sys.stdin.readline())

    def say(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    asyncio.run(_worker(job, say))


async def _worker(job: dict[str, Any], say: Any) -> None:
    import numpy as np

    from zeta_adaptive import Router, ZetaError

    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(job["config"]["seed"])
    n, concurrency, time_cap = int(job["calls"]), int(job["concurrency"]), float(job["time_cap_s"])
    ends: list[float] = []  # per finished call: time.time() at its end
    primary_degraded: list[int] = []  # 1 if its first attempt went to the degraded model
    samples: list[tuple[float, list[str]]] = []  # (time.time(), preferences order)
    counts = {"calls": 0, "attempts": 0, "feedback": 0, "failed": 0, "unexpected": 0}
    errors: list[str] = []
    router = Router(job["config"])
    try:
        say({"ready": True, "router_id": router.router_id})
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
        cpu0, t0 = _cpu_self(), time.time()
        sem = asyncio.Semaphore(concurrency)
        done = asyncio.Event()

        async def one() -> None:
            result = None
            try:
                result = await router.achat(TASK, MSG, max_tokens=16)
                attempts = result.attempts
            except ZetaError as exc:  # AllModelsFailed and friends: logged, with their attempts
                attempts = list(getattr(exc, "attempts", []))
                counts["failed"] += 1
            except Exception as exc:
                attempts = []
                counts["unexpected"] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
            finally:
                sem.release()
            if result is not None:  # the caller rates the answer at once
                mean = ACCURACY[result.model]
                router.feedback(result.call_id, float(rng.beta(mean * CONCENTRATION, (1 - mean) * CONCENTRATION)))
                counts["feedback"] += 1
            counts["attempts"] += len(attempts)
            ends.append(time.time())
            primary_degraded.append(int(bool(attempts) and attempts[0].model == job["degraded"]))

        async def sampler() -> None:
            while not done.is_set():
                order = list(router.preferences(TASK).index)
                samples.append((time.time(), order))
                try:
                    await asyncio.wait_for(done.wait(), SAMPLE_S)
                except TimeoutError:
                    pass

        async def progress() -> None:
            while not done.is_set():
                say({"p": len(ends)})
                try:
                    await asyncio.wait_for(done.wait(), 0.25)
                except TimeoutError:
                    pass

        helpers = [asyncio.create_task(sampler()), asyncio.create_task(progress())]
        tasks = set()
        for _ in range(n):
            await sem.acquire()
            if time.time() - t0 > time_cap:
                sem.release()
                break
            counts["calls"] += 1
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        t1 = time.time()
        done.set()
        await asyncio.gather(*helpers)
        cpu1 = _cpu_self()
        say({"p": len(ends)})
        say({"finished": True})
        line = await loop.run_in_executor(None, sys.stdin.readline)
        flushed = await loop.run_in_executor(None, router.flush, 60.0)
        await asyncio.sleep(float(job["settle_s"]))  # the refresher syncs the others' last rows
        prefs = router.preferences(TASK).reset_index().to_dict("records")
        policy = router.policies[TASK]
        report = {
            "router_id": router.router_id,
            "t0": t0,
            "t1": t1,
            **counts,
            "errors": errors,
            "cpu_s": cpu1 - cpu0,
            "flushed": flushed,
            "ends": [round(t, 4) for t in ends],
            "primary_degraded": primary_degraded,
            "samples": samples,
            "final_order": [row["model"] for row in prefs],
            "final_prefs": [
                {k: row[k] for k in ("model", "utility", "success_rate", "latency_p50_s", "n", "breaker")}
                for row in prefs
            ],
            "learned": int(policy.updates),  # attempts this policy learned: its own at once, the others' through sync()
        }
    finally:
        await router.aclose()
    report["store_dropped"] = router.store.dropped
    report["store_pending"] = router.store.pending
    say({"report": report})


# == the database ===================================================================================


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def proc_cpu(pid: int, children: bool = False) -> float | None:
    """CPU seconds of a process (utime + stime), plus its reaped children's when ``children``."""
    f = _stat(pid)
    if f is None:
        return None
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / _TICK


def server_cpu(postmaster: int) -> float | None:
    """CPU seconds of a PostgreSQL server so far: the postmaster, its reaped children (exited
    backends) and its live children (backends and background processes)."""
    total = proc_cpu(postmaster, children=True)
    if total is None:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f is not None and int(f[1]) == postmaster:
                total += (int(f[11]) + int(f[12])) / _TICK
    return total


def find_postmaster(url: str) -> int | None:
    """The postmaster's pid when the server runs on this host and /proc shows it (best effort)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            f = _stat(backend)
            if f is None:
                return None
            parent = int(f[1])
            comm = Path(f"/proc/{parent}/comm").read_text().strip()
            return parent if "postgres" in comm or "postmaster" in comm else None
    except Exception:
        return None
    finally:
        engine.dispose()


def reset_log(url: str, journal_dir: Path) -> None:
    """Drop zeta_adaptive's tables and create them again (one migration, before the workers start)."""
    from sqlalchemy import create_engine, text

    from zeta_adaptive import Store

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("DROP TABLE IF EXISTS feedback, attempts, calls, dead_letters, call_features, alembic_version CASCADE")
        )
    engine.dispose()
    Store(url, journal_dir=journal_dir).close()


class RowSampler(threading.Thread):
    """Counts rows in calls, attempts and feedback (and reads the server's CPU) every ROWS_SAMPLE_S,
    over one connection held open, whose backend's own CPU is left out of the database CPU."""

    def __init__(self, url: str, postmaster: int | None) -> None:
        super().__init__(name="row-sampler", daemon=True)
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        self.engine = create_engine(url, poolclass=NullPool)
        self.conn = self.engine.connect()
        self.backend = int(self.conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        self.conn.commit()
        self.own_xacts = 1  # transactions of this sampler, left out of the count
        self.postmaster = postmaster
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def db_cpu(self) -> float | None:
        """CPU seconds of the server so far, without this sampler's backend."""
        if not self.postmaster:
            return None
        total = server_cpu(self.postmaster)
        own = proc_cpu(self.backend) or 0.0
        return None if total is None else total - own

    def sample(self) -> dict[str, Any]:
        from sqlalchemy import text

        with self.lock:
            calls, attempts, feedback, xacts = self.conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM attempts), (SELECT count(*) FROM feedback), "
                    "(SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database())"
                )
            ).one()
            self.conn.commit()
            self.own_xacts += 1
            row = {
                "t": time.time(),
                "calls_rows": int(calls),
                "attempts_rows": int(attempts),
                "feedback_rows": int(feedback),
                "db_cpu_s": self.db_cpu(),
                "xacts": int(xacts) - self.own_xacts,
            }
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self.stop_event.wait(ROWS_SAMPLE_S):
            try:
                self.sample()
            except Exception:
                pass

    def finish(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(10)
        try:
            self.sample()
        finally:
            self.conn.close()
            self.engine.dispose()


def count_rows(url: str, t_degrade: float | None) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            calls, distinct = conn.execute(text("SELECT count(*), count(DISTINCT call_id) FROM calls")).one()
            attempts = conn.execute(text("SELECT count(*) FROM attempts")).scalar_one()
            feedback = conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()
            outcomes = conn.execute(
                text(
                    "SELECT model, ts >= :t AS after, outcome, count(*), avg(latency_s) FROM attempts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                ),
                {"t": t_degrade if t_degrade is not None else float("inf")},
            ).all()
            by_router = dict(conn.execute(text("SELECT router_id, count(*) FROM attempts GROUP BY router_id")).all())
            orphans = conn.execute(
                text(
                    "SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM calls c WHERE c.call_id = a.call_id)"
                )
            ).scalar_one()
            late = conn.execute(  # attempts written more than Router.SYNC_OVERLAP_S after their ts (their call's end - their start)
                text(
                    "SELECT count(*) FROM attempts a JOIN calls c ON c.call_id = a.call_id WHERE c.ts + c.latency_s - a.ts > :overlap"
                ),
                {"overlap": SYNC_OVERLAP_S},
            ).scalar_one()
            mismatched = conn.execute(
                text(
                    "SELECT count(*) FROM calls c WHERE c.n_attempts <> "
                    "(SELECT count(*) FROM attempts a WHERE a.call_id = c.call_id)"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return {
        "calls": int(calls),
        "distinct_calls": int(distinct),
        "attempts": int(attempts),
        "feedback": int(feedback),
        "outcomes": [
            {
                "model": m,
                "phase": "after" if after else "before",
                "outcome": o,
                "attempts": int(n),
                "mean_latency_s": float(lat),
            }
            for m, after, o, n, lat in outcomes
        ],
        "by_router": {k: int(v) for k, v in by_router.items()},
        "orphan_attempts": int(orphans),
        "calls_attempts_mismatch": int(mismatched),
        "late_attempts": int(late),
    }


# == one configuration ===============================================================================


def _read_lines(
    proc: subprocess.Popen, sink: list[dict[str, Any]], progress: dict[int, int], key: int, wake: threading.Event
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "p" in msg:
            progress[key] = int(msg["p"])
        else:
            sink.append(msg)
        wake.set()


def run_config(
    label: str,
    procs: list[subprocess.Popen],
    fleet: FleetProcess,
    concurrency: int,
    args: Any,
    url: str,
    postmaster: int | None,
    tmp: Path,
) -> dict[str, Any]:
    """Run one configuration end to end on already started children (its router processes and its
    fleet); returns everything measured."""
    from tqdm import tqdm

    journal = tmp / f"journal-{label}"
    t_setup = time.monotonic()

    def note(what: str) -> None:
        print(f"[{label}] {what} at {time.monotonic() - t_setup:.1f} s", file=sys.stderr, flush=True)

    processes = len(procs)
    reset_log(url, journal)
    fleet.build(SPECS, args.seed)  # a fresh fleet per configuration (new ports, fresh generators)
    note("log emptied and migrated, fleet started")
    sampler: RowSampler | None = None
    try:
        sampler = RowSampler(url, postmaster)
        base = {
            "store": url,
            "refresh_s": args.refresh,
            "journal_dir": str(journal),
            "deadline_s": DEADLINE_S,
            "models": {name: {"base_url": fleet.urls[name], "timeout_s": TIMEOUT_S} for name in MODELS},
            "routes": {TASK: {"models": list(MODELS), "policy": "thompson", "discount": args.discount}},
        }
        share = [args.calls // processes + (1 if i < args.calls % processes else 0) for i in range(processes)]
        messages: list[list[dict[str, Any]]] = [[] for _ in range(processes)]
        progress = {i: 0 for i in range(processes)}
        wake = threading.Event()
        for i in range(processes):
            job = {
                "config": {**base, "seed": args.seed * 100 + i},
                "calls": share[i],
                "concurrency": concurrency,
                "time_cap_s": args.time_cap,
                "settle_s": 2.5 * args.refresh,
                "degraded": DEGRADED,
            }
            p = procs[i]
            assert p.stdin is not None
            p.stdin.write(json.dumps(job) + "\n")
            p.stdin.flush()
            threading.Thread(target=_read_lines, args=(p, messages[i], progress, i, wake), daemon=True).start()

        def wait_for(key: str, timeout: float) -> list[dict[str, Any]]:
            end = time.monotonic() + timeout
            while True:
                got = [next((m for m in ms if key in m), None) for ms in messages]
                if all(g is not None for g in got):
                    return got  # type: ignore[return-value]
                dead = [i for i, p in enumerate(procs) if p.poll() is not None and got[i] is None]
                if dead or time.monotonic() > end:
                    raise RuntimeError(
                        f"{label}: worker(s) {dead or 'timeout'} before '{key}' (exit codes {[p.poll() for p in procs]})"
                    )
                wake.wait(0.1)
                wake.clear()

        ready = wait_for("ready", 120)
        note(f"{processes} router process(es) ready")
        router_ids = [r["router_id"] for r in ready]
        cpu_db0 = sampler.db_cpu()
        fleet_cpu0 = proc_cpu(fleet.proc.pid)
        sampler.sample()
        sampler.start()
        t_go = time.time()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        t_degrade, calls_at_degrade = None, None
        bar = tqdm(total=args.calls, desc=f"{label} calls", unit="call", mininterval=0.5)
        end = time.monotonic() + args.time_cap + 120
        while True:
            done = sum(progress.values())
            bar.update(done - bar.n)
            if t_degrade is None and done >= args.calls // 2:
                fleet.update([(DEGRADED, DEGRADE)])
                t_degrade, calls_at_degrade = time.time(), done  # the degradation is in force
            if all(any("finished" in m for m in ms) for ms in messages):
                break
            if any(p.poll() is not None for p in procs) or time.monotonic() > end:
                raise RuntimeError(
                    f"{label}: a worker ended early or the run overran (exit codes {[p.poll() for p in procs]})"
                )
            wake.wait(0.05)
            wake.clear()
        bar.update(sum(progress.values()) - bar.n)
        bar.close()
        t_done = time.time()
        cpu_db1 = sampler.db_cpu()
        fleet_cpu1 = proc_cpu(fleet.proc.pid)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("report\n")
            p.stdin.flush()
        note("calls done")
        reports = [m["report"] for m in wait_for("report", 120 + 3 * args.refresh)]
        note("reports in")
        for p in procs:
            p.wait(60)
        sampler.finish()
        fleet_requests = fleet.requests()
    finally:
        if sampler is not None and not sampler.conn.closed:
            sampler.stop_event.set()
            if sampler.is_alive():
                sampler.join(10)
            sampler.conn.close()
            sampler.engine.dispose()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    db = count_rows(url, t_degrade)
    return {
        "label": label,
        "processes": processes,
        "concurrency": concurrency,
        "t_go": t_go,
        "t_done": t_done,
        "t_degrade": t_degrade,
        "calls_at_degrade": calls_at_degrade,
        "reports": reports,
        "router_ids": router_ids,
        "rows": sampler.samples,
        "db": db,
        "db_cpu_s": (cpu_db1 - cpu_db0) if cpu_db0 is not None and cpu_db1 is not None else None,
        "fleet_cpu_s": (fleet_cpu1 - fleet_cpu0) if fleet_cpu0 is not None and fleet_cpu1 is not None else None,
        "fleet_requests": fleet_requests,
    }


# == analysis ========================================================================================


def _demotion(samples: list[tuple[float, list[str]]], t_degrade: float | None) -> dict[str, Any]:
    """When the degraded model first stopped being first in preferences (after t_degrade), and
    from when on it never came back first; seconds after t_degrade (None if never)."""
    if t_degrade is None:
        return {"first_before": None, "demote_s": None, "stable_s": None}
    before = [order for t, order in samples if t < t_degrade]
    after = [(t, order) for t, order in samples if t >= t_degrade]
    first = next((t for t, order in after if order[0] != DEGRADED), None)
    stable = None
    for t, order in reversed(after):
        if order[0] == DEGRADED:
            break
        stable = t
    return {
        "first_before": (before[-1][0] == DEGRADED) if before else None,
        "demote_s": None if first is None else first - t_degrade,
        "stable_s": None if stable is None else stable - t_degrade,
    }


def _kendall(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orders of the same models (no ties): (concordant - discordant) / pairs."""
    pos = {m: i for i, m in enumerate(b)}
    ranks = [pos[m] for m in a]
    n = len(ranks)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
        return 1.0
    score = sum(1 if ranks[i] < ranks[j] else -1 for i, j in pairs)
    return score / len(pairs)


def analyse(
    res: dict[str, Any], refresh_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One summary row, per-worker rows, timeline rows and row-sample rows for a configuration."""
    import numpy as np

    reports, label = res["reports"], res["label"]
    t0 = min(r["t0"] for r in reports)
    t1 = max(r["t1"] for r in reports)
    seconds = t1 - t0
    calls = sum(r["calls"] for r in reports)
    attempts = sum(r["attempts"] for r in reports)
    db = res["db"]
    workers = []
    for i, r in enumerate(reports):
        d = _demotion([(t, o) for t, o in r["samples"]], res["t_degrade"])
        workers.append(
            {
                "config": label,
                "worker": i,
                "router_id": r["router_id"],
                "calls": r["calls"],
                "attempts": r["attempts"],
                "failed_calls": r["failed"],
                "unexpected_errors": r["unexpected"],
                "attempts_rows": db["by_router"].get(r["router_id"], 0),
                "calls_per_s": r["calls"] / max(r["t1"] - r["t0"], 1e-9),
                "cpu_s": r["cpu_s"],
                "cpu_us_per_call": 1e6 * r["cpu_s"] / max(r["calls"], 1),
                "degraded_first_before": d["first_before"],
                "demote_s": d["demote_s"],
                "stable_demote_s": d["stable_s"],
                "final_order": " > ".join(r["final_order"]),
                "learned_attempts": r["learned"],
                "store_dropped": r["store_dropped"],
                "store_pending": r["store_pending"],
            }
        )
    demotes = [w["demote_s"] for w in workers]
    stables = [w["stable_demote_s"] for w in workers]
    all_demoted = all(d is not None for d in demotes)
    first = min(d for d in demotes if d is not None) if any(d is not None for d in demotes) else None
    last = max(demotes) if all_demoted else None  # type: ignore[type-var]
    spread = (last - first) if all_demoted and first is not None else None
    orders = [tuple(r["final_order"]) for r in reports]
    modal = max(set(orders), key=orders.count)
    taus = [_kendall(list(a), list(b)) for i, a in enumerate(orders) for b in orders[i + 1 :]]
    lost_calls = calls - db["calls"]
    lost_attempts = attempts - db["attempts"]
    feedback = sum(r["feedback"] for r in reports)
    lost_feedback = feedback - db["feedback"]
    log_rows = db["calls"] + db["attempts"] + db["feedback"]
    unexpected = sum(r["unexpected"] for r in reports)

    # the log write rate from the parent's row counts, during the calls
    rows = res["rows"]
    rt = np.array([s["t"] for s in rows])
    total = np.array([s["calls_rows"] + s["attempts_rows"] + s["feedback_rows"] for s in rows], dtype=float)
    rate = np.diff(total) / np.maximum(np.diff(rt), 1e-9) if len(rows) > 1 else np.array([])
    mid = (rt[1:] + rt[:-1]) / 2 if len(rows) > 1 else np.array([])
    during = (mid >= t0) & (mid <= t1)
    rows_out = []
    for k, s in enumerate(rows):
        rows_out.append(
            {
                "config": label,
                "t_s": s["t"] - t0,
                "calls_rows": s["calls_rows"],
                "attempts_rows": s["attempts_rows"],
                "feedback_rows": s["feedback_rows"],
                "rows_per_s": float(rate[k - 1]) if k > 0 else "",
                "db_cpu_cores": (s["db_cpu_s"] - rows[k - 1]["db_cpu_s"]) / max(s["t"] - rows[k - 1]["t"], 1e-9)
                if k > 0 and s["db_cpu_s"] is not None and rows[k - 1]["db_cpu_s"] is not None
                else "",
            }
        )
    db_cpu = res["db_cpu_s"]
    xacts = rows[-1]["xacts"] - rows[0]["xacts"] if len(rows) > 1 and rows[0].get("xacts") is not None else None
    wall = res["t_done"] - res["t_go"]
    summary = {
        "config": label,
        "processes": res["processes"],
        "concurrency": res["concurrency"],
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / seconds if seconds > 0 else float("nan"),
        "attempts_per_call": attempts / max(calls, 1),
        "log_rows": log_rows,
        "log_rows_per_s": log_rows / seconds if seconds > 0 else float("nan"),
        "log_rows_per_s_sampled_median": float(np.median(rate[during])) if during.any() else float("nan"),
        "log_rows_per_s_sampled_max": float(np.max(rate[during])) if during.any() else float("nan"),
        "db_cpu_s": db_cpu,
        "db_cpu_cores": db_cpu / wall if db_cpu is not None and wall > 0 else None,
        "db_cpu_us_per_row": 1e6 * db_cpu / max(log_rows, 1) if db_cpu is not None else None,
        "db_transactions": xacts,
        "db_transactions_per_s": xacts / seconds if xacts is not None and seconds > 0 else None,
        "log_rows_per_transaction": log_rows / xacts if xacts else None,
        "router_cpu_s": sum(r["cpu_s"] for r in reports),
        "fleet_cpu_s": res["fleet_cpu_s"],
        "calls_at_degrade": res["calls_at_degrade"],
        "first_demote_s": first,
        "last_demote_s": last,
        "demote_spread_s": spread,
        "last_stable_demote_s": max(stables) if all(s is not None for s in stables) else None,
        "target_spread_s": 2 * refresh_s,
        "demote_target_met": bool(spread is not None and spread <= 2 * refresh_s),
        "same_order_share": orders.count(modal) / len(orders),
        "final_order": " > ".join(modal),
        "kendall_tau_mean": float(np.mean(taus)) if taus else 1.0,
        "kendall_tau_min": float(np.min(taus)) if taus else 1.0,
        "learned_share_min": min(r["learned"] for r in reports) / max(db["attempts"] + db["feedback"], 1),
        "learned_min": min(r["learned"] for r in reports),
        "learnable_rows": db["attempts"] + db["feedback"],
        "late_attempts": db.get("late_attempts"),
        "failed_calls": sum(r["failed"] for r in reports),
        "unexpected_errors": unexpected,
        "calls_reported": calls,
        "calls_rows": db["calls"],
        "attempts_reported": attempts,
        "attempts_rows": db["attempts"],
        "feedback_reported": feedback,
        "feedback_rows": db["feedback"],
        "lost_rows": max(lost_calls, 0) + max(lost_attempts, 0) + max(lost_feedback, 0),
        "extra_rows": max(-lost_calls, 0) + max(-lost_attempts, 0) + max(-lost_feedback, 0),
        "orphan_attempts": db["orphan_attempts"],
        "calls_attempts_mismatch": db["calls_attempts_mismatch"],
        "per_router_rows_match": all(w["attempts"] == w["attempts_rows"] for w in workers),
        "store_dropped": sum(r["store_dropped"] for r in reports),
        "no_lost_rows": lost_calls == 0
        and lost_attempts == 0
        and lost_feedback == 0
        and db["distinct_calls"] == db["calls"]
        and unexpected == 0,
    }

    # per worker and bin: calls finished and the degraded model's primary share, time from the degradation
    timeline = []
    origin = res["t_degrade"] if res["t_degrade"] is not None else t0
    for i, r in enumerate(reports):
        ends = np.array(r["ends"], dtype=float)
        flags = np.array(r["primary_degraded"], dtype=float)
        if not len(ends):
            continue
        lo = np.floor((ends.min() - origin) / BIN_S) * BIN_S
        idx = np.floor((ends - origin - lo) / BIN_S).astype(int)
        n = np.bincount(idx)
        s = np.bincount(idx, flags)
        for b in range(len(n)):
            if n[b]:
                timeline.append(
                    {
                        "config": label,
                        "worker": i,
                        "t_s": lo + (b + 0.5) * BIN_S,
                        "calls": int(n[b]),
                        "degraded_primary_share": s[b] / n[b],
                    }
                )
    return summary, workers, timeline, rows_out


# == outputs =========================================================================================


def _rebin(points: list[dict[str, Any]], width: float) -> tuple[list[float], list[float]]:
    """Timeline points (calls, share per BIN_S bin) merged into bins of ``width`` seconds."""
    acc: dict[int, list[float]] = {}
    for p in points:
        k = int(p["t_s"] // width)
        a = acc.setdefault(k, [0.0, 0.0])
        a[0] += p["calls"]
        a[1] += p["calls"] * p["degraded_primary_share"]
    keys = sorted(acc)
    return [(k + 0.5) * width for k in keys], [acc[k][1] / acc[k][0] for k in keys]


def plot(
    results: list[dict[str, Any]],
    timelines: list[dict[str, Any]],
    workers: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    path: Path,
) -> None:
    """Per configuration: the degraded model's primary share per worker around the degradation and
    over the whole run, and the log write rate with the database CPU."""
    from .common import savefig, setup_matplotlib

    plt = setup_matplotlib()
    fig, axes = plt.subplots(3, len(results), figsize=(6.5 * len(results), 10.5), squeeze=False)
    for c, res in enumerate(results):
        label = res["label"]
        mine = [w for w in workers if w["config"] == label]
        for row, (lo, hi, width) in enumerate([(-10.0, 20.0, BIN_S), (None, None, None)]):
            ax = axes[row][c]
            for w in mine:
                pts = [t for t in timelines if t["config"] == label and t["worker"] == w["worker"]]
                if lo is not None:
                    pts = [p for p in pts if lo <= p["t_s"] <= hi]
                span = (max(p["t_s"] for p in pts) - min(p["t_s"] for p in pts)) if pts else 0.0
                xs, ys = _rebin(pts, width or max(BIN_S, span / 150))
                line = ax.plot(xs, ys, lw=1.1, label=f"worker {w['worker']}")[0]
                if w["demote_s"] is not None and lo is not None:
                    ax.axvline(w["demote_s"], color=line.get_color(), ls=":", lw=1.2)
            ax.axvline(0, color="k", lw=1, label=f"{DEGRADED} degraded")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(f"share of calls with {DEGRADED} primary")
            ax.set_xlabel("seconds from the degradation")
            if lo is not None:
                ax.set_xlim(lo, hi)
                ax.set_title(
                    f"{label}: around the degradation ({BIN_S} s bins;\ndotted: the worker's preferences demote {DEGRADED})"
                )
                ax.legend(fontsize=8, loc="center right")
            else:
                ax.set_title(f"{label}: the whole run")
        ax2 = axes[2][c]
        t0 = min(r["t0"] for r in res["reports"])
        pts = [r for r in rows if r["config"] == label and r["rows_per_s"] != ""]
        ax2.plot(
            [p["t_s"] for p in pts],
            [p["rows_per_s"] for p in pts],
            color="tab:blue",
            lw=1,
            label="log rows/s (calls + attempts + feedback)",
        )
        if res["t_degrade"] is not None:
            ax2.axvline(res["t_degrade"] - t0, color="k", lw=1)
        ax2.set_xlabel("seconds from the start")
        ax2.set_ylabel("rows reaching the database per s")
        ax2.set_ylim(bottom=0)
        cpu = [p for p in pts if p["db_cpu_cores"] != ""]
        if cpu:
            ax3 = ax2.twinx()
            ax3.plot([p["t_s"] for p in cpu], [p["db_cpu_cores"] for p in cpu], color="tab:red", lw=0.8, alpha=0.7)
            ax3.set_ylabel("database CPU, cores", color="tab:red")
            ax3.set_ylim(bottom=0)
        ax2.set_title(f"{label}: log write rate (0.5 s samples)" + (" and database CPU (red)" if cpu else ""))
        ax2.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    savefig(fig, path)


def write_outputs(results: list[dict[str, Any]], args: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    from .common import fmt, markdown_table, write_csv, write_markdown

    summaries, workers, timelines, rows = [], [], [], []
    for res in results:
        s, w, t, r = analyse(res, args.refresh)
        summaries.append(s)
        workers += w
        timelines += t
        rows += r
    out = args.out
    write_csv(out / "multiprocess.csv", summaries)
    write_csv(out / "multiprocess_workers.csv", workers)
    write_csv(out / "multiprocess_timeline.csv", timelines)
    write_csv(out / "multiprocess_rows.csv", rows)
    outcomes = [{"config": res["label"], **o} for res in results for o in res["db"]["outcomes"]]
    write_csv(out / "multiprocess_outcomes.csv", outcomes)
    plot(results, timelines, workers, rows, out / "multiprocess.png")

    def cell(s: dict[str, Any], key: str, unit: str = "") -> str:
        v = s.get(key)
        return (
            "–"
            if v is None
            else f"{fmt(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)}{unit}"
        )

    measures = [
        ("processes x concurrency", lambda s: f"{s['processes']} x {s['concurrency']}"),
        ("calls", lambda s: f"{s['calls']:,}"),
        ("total calls per second", lambda s: cell(s, "calls_per_s")),
        ("log rows written (calls + attempts + feedback)", lambda s: f"{s['log_rows']:,}"),
        ("log write rate, rows/s (rows / run time)", lambda s: cell(s, "log_rows_per_s")),
        (
            "log write rate, rows/s sampled every 0.5 s: median / max",
            lambda s: f"{cell(s, 'log_rows_per_s_sampled_median')} / {cell(s, 'log_rows_per_s_sampled_max')}",
        ),
        (
            "database CPU: seconds / cores on average / µs per row",
            lambda s: f"{cell(s, 'db_cpu_s')} / {cell(s, 'db_cpu_cores')} / {cell(s, 'db_cpu_us_per_row')}",
        ),
        (
            "database transactions (log writes, syncs, look-ups): per s / log rows per transaction",
            lambda s: f"{cell(s, 'db_transactions_per_s')} / {cell(s, 'log_rows_per_transaction')}",
        ),
        (
            "router processes' CPU seconds; fleet CPU seconds",
            lambda s: f"{cell(s, 'router_cpu_s')}; {cell(s, 'fleet_cpu_s')}",
        ),
        ("calls done when alpha degraded", lambda s: cell(s, "calls_at_degrade")),
        (
            "demotion after the degradation: first / last process, s",
            lambda s: f"{cell(s, 'first_demote_s')} / {cell(s, 'last_demote_s')}",
        ),
        (
            "spread last - first (target ≤ 2 refresh = " + f"{2 * args.refresh:g} s)",
            lambda s: cell(s, "demote_spread_s"),
        ),
        ("every process demoted for good by, s", lambda s: cell(s, "last_stable_demote_s")),
        (
            "final rankings: share equal to the modal one; modal order",
            lambda s: f"{cell(s, 'same_order_share')}; {s['final_order']}",
        ),
        (
            "Kendall tau between processes' final orders: mean / min",
            lambda s: f"{cell(s, 'kendall_tau_mean')} / {cell(s, 'kendall_tau_min')}",
        ),
        (
            "rows learned by the least-informed process / attempts + feedback rows",
            lambda s: f"{s['learned_min']:,} / {s['learnable_rows']:,}",
        ),
        (
            f"attempts logged more than {SYNC_OVERLAP_S:g} s after they started (sync() may miss them)",
            lambda s: cell(s, "late_attempts"),
        ),
        ("calls reported / rows", lambda s: f"{s['calls_reported']:,} / {s['calls_rows']:,}"),
        ("feedback reported / rows", lambda s: f"{s['feedback_reported']:,} / {s['feedback_rows']:,}"),
        (
            "attempts reported / rows (per process rows match)",
            lambda s: (
                f"{s['attempts_reported']:,} / {s['attempts_rows']:,} ({'yes' if s['per_router_rows_match'] else 'NO'})"
            ),
        ),
        (
            "lost rows; extra rows; attempts without call; calls.n_attempts mismatches",
            lambda s: f"{s['lost_rows']}; {s['extra_rows']}; {s['orphan_attempts']}; {s['calls_attempts_mismatch']}",
        ),
        (
            "failed calls (AllModelsFailed); unexpected errors",
            lambda s: f"{s['failed_calls']}; {s['unexpected_errors']}",
        ),
    ]
    table = [[name, *(f(s) for s in summaries)] for name, f in measures]
    columns = ["measure", *(f"{s['config']}" for s in summaries)]
    multi = next((s for s in summaries if s["processes"] > 1), summaries[0])
    single = next((s for s in summaries if s["processes"] == 1 and s is not multi), None)

    def ratio(key: str) -> str:
        if single is None or not multi.get(key) or not single.get(key):
            return "–"
        return fmt(float(multi[key]) / float(single[key]))

    spread_target = f"≤ {2 * args.refresh:g} s (2 refresh intervals)"
    headline = [
        {
            "workload": f"total calls/s ({multi['config']} vs {single['config'] if single else '–'}, {multi['calls']:,} calls)",
            "ours": cell(multi, "calls_per_s"),
            "peer": cell(single, "calls_per_s") if single else "–",
            "ratio": ratio("calls_per_s"),
            "target": "(reference)",
            "met?": "–",
        },
        {
            "workload": "log write rate, rows/s (calls + attempts + feedback)",
            "ours": cell(multi, "log_rows_per_s"),
            "peer": cell(single, "log_rows_per_s") if single else "–",
            "ratio": ratio("log_rows_per_s"),
            "target": "(reference)",
            "met?": "–",
        },
        {
            "workload": "database CPU, cores on average",
            "ours": cell(multi, "db_cpu_cores"),
            "peer": cell(single, "db_cpu_cores") if single else "–",
            "ratio": ratio("db_cpu_cores"),
            "target": "(reference)",
            "met?": "–",
        },
        {
            "workload": f"every process demotes the degraded model: spread last - first, s ({multi['config']})",
            "ours": cell(multi, "demote_spread_s"),
            "peer": "–",
            "ratio": "–",
            "target": spread_target,
            "met?": "met" if multi["demote_target_met"] else "MISSED",
        },
        {
            "workload": "time from the degradation until every process demoted it, s",
            "ours": cell(multi, "last_demote_s"),
            "peer": cell(single, "last_demote_s") if single else "–",
            "ratio": "–",
            "target": "(reference)",
            "met?": "–",
        },
        {
            "workload": "final rankings: share of processes with the modal order; mean Kendall tau",
            "ours": f"{cell(multi, 'same_order_share')}; {cell(multi, 'kendall_tau_mean')}",
            "peer": "–",
            "ratio": "–",
            "target": "(reference)",
            "met?": "–",
        },
        {
            "workload": "lost rows (calls, attempts, feedback)",
            "ours": f"{multi['lost_rows']} of {multi['calls_reported'] + multi['attempts_reported'] + multi['feedback_reported']:,}",
            "peer": f"{single['lost_rows']} of {single['calls_reported'] + single['attempts_reported'] + single['feedback_reported']:,}"
            if single
            else "–",
            "ratio": "–",
            "target": "0",
            "met?": "met" if all(s["no_lost_rows"] for s in summaries) else "MISSED",
        },
    ]
    head_cols = [
        "workload",
        f"ours ({multi['config']})",
        f"peer ({single['config']})" if single else "peer",
        "ratio (ours / peer)",
        "target",
        "met?",
    ]
    head_rows = [[r["workload"], r["ours"], r["peer"], r["ratio"], r["target"], r["met?"]] for r in headline]
    worker_cols = [
        "config",
        "worker",
        "calls",
        "attempts",
        "attempts_rows",
        "failed_calls",
        "calls_per_s",
        "cpu_us_per_call",
        "degraded_first_before",
        "demote_s",
        "stable_demote_s",
        "learned_attempts",
        "final_order",
    ]
    fleet_desc = ", ".join("{} (median {:g} ms)".format(spec["name"], 1000 * spec["latency_s"]) for spec in SPECS)
    notes = [
        f"Fleet: {fleet_desc}, loopback HTTP, in its own process. "
        f"At half the calls {DEGRADED} gets error_rate {DEGRADE['error_rate']} and median latency {1000 * DEGRADE['latency_s']:g} ms (5x).",
        f"Routers: route `{TASK}` over {', '.join(MODELS)}, policy thompson, discount {args.discount}, default breakers, "
        f"refresh_s {args.refresh:g}, attempt timeout {TIMEOUT_S:g} s, "
        f"deadline {DEADLINE_S:g} s (generous: this machine's CPU, not the models, sets the queueing delay), `achat` with max_tokens 16, "
        f"feedback at once (accuracy drawn around {', '.join('{} {:g}'.format(*kv) for kv in ACCURACY.items())}); seed per process.",
        f"Demotion: each process samples `router.preferences()` every {SAMPLE_S} s (so times have {SAMPLE_S} s resolution); "
        f"a process's demotion time is its first sample after the degradation without {DEGRADED} first. "
        "Each process also routes to the degraded model itself, so it learns from its own failures at once and from "
        "the others' within a refresh interval: the spread measures both together.",
        "Final rankings are read after every process flushed its log and waited 2.5 refresh intervals (syncs done). "
        "'rows learned' is the policy's update count (its own attempts and feedback at once, the other processes' rows through sync()) "
        "over the attempts and feedback rows in the database: 1 means every process learned every row of every process. "
        f"`Router.sync()` reads rows again only {SYNC_OVERLAP_S:g} s back by their `ts` (an attempt's start), while a call's rows are "
        f"written when it ends: attempts logged more than {SYNC_OVERLAP_S:g} s after they started can be missed by the other processes "
        "(counted above; they are learned only at the next warm start).",
        "Log write rate: the parent counts rows in `calls`, `attempts` and `feedback` every 0.5 s over its own connection. "
        f"Database CPU: utime + stime of the postmaster, its live children and its reaped children from /proc ({meta['db_cpu']}), "
        "without the parent's sampling connection; it includes the routers' syncs and feedback look-ups as well as the log writes. "
        "Transactions: pg_stat_database xact_commit + xact_rollback over the run, without the sampler's.",
        "Lost rows: calls, attempts and feedback the workers report making (results and AllModelsFailed.attempts) minus rows in the database, "
        "after every process closed; per process through attempts.router_id.",
        f"PostgreSQL: {meta['postgres']}. The machine has {os.cpu_count()} CPUs shared by the routers, the fleet and the server"
        + (
            f", and other jobs (load average {meta['load_start']} when the run started, {meta['load_end']} at its end)"
            if meta.get("load_start")
            else ""
        )
        + ": the throughput numbers are CPU-bound on this machine, not a property of the database.",
    ]
    if single is not None:
        notes.append(
            f"Same load in one process ({single['config']}): {fmt(single['calls_per_s'])} calls/s vs "
            f"{fmt(multi['calls_per_s'])} with {multi['processes']} processes."
        )
    sections = [
        ("All measures", markdown_table(columns, table)),
        ("Per process", markdown_table(worker_cols, workers)),
        (
            "Attempts by model, outcome and phase (before / after the degradation)",
            markdown_table(["config", "model", "phase", "outcome", "attempts", "mean_latency_s"], outcomes),
        ),
        ("Plot", "![per process: the degraded model's primary share, and the log write rate](multiprocess.png)"),
    ]
    write_markdown(
        out / "multiprocess.md",
        "Several router processes, one PostgreSQL (issue 8)",
        head_cols,
        head_rows,
        command=args.command,
        notes=notes,
        sections=sections,
        quick=args.quick,
    )
    return summaries


# == main ===========================================================================================


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from .common import parse_args

    args = parse_args(
        __doc__,
        argv,
        **{
            "--calls": {
                "type": int,
                "default": None,
                "help": "calls per configuration (default 50,000; 2,000 with --quick)",
            },
            "--refresh": {"type": float, "default": 1.0, "help": "refresh_s of every router (default 1.0)"},
            "--discount": {"type": float, "default": 0.995, "help": "the route's discount (default 0.995)"},
            "--time-cap": {
                "type": float,
                "default": None,
                "help": "stop issuing calls after this many seconds per configuration (default 1,800; 60 with --quick)",
            },
            "--configs": {
                "nargs": "*",
                "default": None,
                "help": f"configurations to run (default all: {' '.join(c[0] for c in CONFIGS)})",
            },
            "--from-raw": {
                "type": Path,
                "default": None,
                "help": "re-write the outputs from the raw JSON a previous run saved (no new run)",
            },
        },
    )
    if args.from_raw is not None:
        raw = json.loads(args.from_raw.read_text())
        for key, value in raw["args"].items():
            if key not in ("out", "command", "from_raw"):
                setattr(args, key, value)
        summaries = write_outputs(raw["results"], args, raw["meta"])
        print((args.out / "multiprocess.md").read_text())
        return summaries
    args.calls = args.calls or (2_000 if args.quick else 50_000)
    args.time_cap = args.time_cap or (60.0 if args.quick else 1800.0)
    configs = [c for c in CONFIGS if args.configs is None or c[0] in args.configs]
    tmp = Path(tempfile.mkdtemp(prefix="zeta-mp-"))
    pg = None
    children: dict[str, list[subprocess.Popen]] = {}
    fleet: FleetProcess | None = None
    t_main = time.monotonic()
    env_url = os.environ.get("ZETA_TEST_POSTGRES_URL")
    try:
        # every child starts (and imports) now, while the database starts; each waits idle for its job
        fleet = FleetProcess()
        for label, n, _ in configs:
            # a router process: it imports, then waits for its first stdin line
            children[label] = [spawn("experiments.multiprocess", "--worker") for _ in range(n)]
        if env_url:
            url, meta_pg = env_url, "ZETA_TEST_POSTGRES_URL (its tables dropped before each configuration)"
            postmaster = find_postmaster(url)
        else:
            bindir = postgres_bindir()
            if bindir is None:
                raise SystemExit(
                    "no PostgreSQL: set ZETA_TEST_POSTGRES_URL or install the server (/usr/lib/postgresql/*/bin)"
                )
            pg = PrivatePostgres(bindir)
            pg.start()
            print(f"[postgres] private server up at {time.monotonic() - t_main:.1f} s", file=sys.stderr, flush=True)
            url, postmaster = pg.url, pg.postmaster_pid()
            meta_pg = f"private server {bindir.parent.name} (fsync=off), loopback port, started by the script"
        meta = {
            "postgres": meta_pg,
            "db_cpu": "measured" if postmaster else "not measurable here: the server is not visible in /proc",
            "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        }
        results = [run_config(label, children[label], fleet, c, args, url, postmaster, tmp) for label, _, c in configs]
    finally:
        for workers in children.values():  # children a failed run left behind
            for p in workers:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if fleet is not None:
            fleet.close()
        if pg is not None:
            pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if not args.quick:  # a measurement's raw data, to re-write its outputs without running it again
        raw = Path(tempfile.gettempdir()) / f"zeta-multiprocess-raw-{os.getpid()}.json"
        plain = {k: v for k, v in vars(args).items() if k not in ("out", "command", "from_raw")}
        raw.write_text(json.dumps({"args": plain, "meta": meta, "results": results}))
        print(f"raw measurements: {raw} (--from-raw to re-write the outputs)", file=sys.stderr)
    summaries = write_outputs(results, args, meta)
    print(f"[outputs] written at {time.monotonic() - t_main:.1f} s", file=sys.stderr, flush=True)
    print((args.out / "multiprocess.md").read_text())
    return summaries


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_child()
    else:
        main()
