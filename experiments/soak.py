"""Soak test of the call path: 20,000 async calls at concurrency 32 under random faults and a store restart.

A simulated fleet of three chat models (``zeta_adaptive.simulate.Fleet``, real loopback HTTP) runs in
a separate process (so it does not share the router's GIL), driven through a pipe. All the time,
every model has random faults: HTTP 500s, 429s with ``Retry-After`` and hangs. On top of that a
schedule, keyed to the share of calls issued, injects: a hang storm, resets (a model going down and
coming back, four times), a model that dies for a long stretch and comes back, a 429 storm, a 500
storm, a short total outage of every model, and (full run) a restart of the log store: a private
PostgreSQL server (initdb / pg_ctl in a temporary folder, on a free loopback port) stopped and
started mid-run, while the router's writer journals.

The router (Thompson sampling, hedging at the primary's p95, per-model breakers, in-flight limit
24, deadline 2.5 s) serves every call with ``achat``. After ``close()`` every call and attempt the
router returned or raised (``AllModelsFailed.attempts``) is looked up in the database: nothing may
be missing, changed or written twice.

Targets (issue 5): every call served while at least one model is healthy, zero calls past their
deadline beyond the documented margin (0.25 s), zero lost or duplicated records.

    .venv/bin/python -m experiments.soak [--calls N] [--concurrency C] [--time-cap S] [--quick] [--out DIR]

``--quick``: ~1,000 calls, SQLite only (no PostgreSQL restart), for the smoke test.
Outputs: soak.csv (one row per metric), soak_phases.csv (per fault window), soak_calls.csv (one row
per call), soak.md, soak.png.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import resource
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import FleetProcess, PrivatePostgres, postgres_bindir

MSG = [{"role": "user", "content": "Say hello."}]
MARGIN_S = 0.25  # the documented deadline margin (README, "Deadlines")
ROUTE = ("alpha", "beta", "gamma")
MEDIANS = {"alpha": 0.6, "beta": 0.8, "gamma": 1.0}  # median latency of each model, seconds (at scale 1)
MAX_IN_FLIGHT = 24
HEDGE_Q = 0.95


@dataclass(frozen=True)
class Setup:
    """Every duration of the soak, multiplied by ``scale`` (1 for the measurement, smaller for --quick)."""

    scale: float = 1.0

    def s(self, seconds: float) -> float:
        return round(seconds * self.scale, 4)

    @property
    def deadline_s(self) -> float:
        return self.s(8.0)

    @property
    def timeout_s(self) -> float:
        return self.s(3.0)

    @property
    def base_faults(self) -> dict[str, Any]:
        """Random faults every model has all the time: 1% 500s, 0.5% 429s, 0.2% hangs past the attempt timeout."""
        return {
            "latency_sigma": 0.3,
            "error_rate": 0.01,
            "rate_limit_rate": 0.005,
            "retry_after_s": self.s(0.5),
            "hang_rate": 0.002,
            "hang_s": self.s(12.0),
        }

    @property
    def specs(self) -> list[dict[str, Any]]:
        return [{"name": name, "latency_s": self.s(median), **self.base_faults} for name, median in MEDIANS.items()]

    @property
    def storm_retry_after_s(self) -> float:
        return self.s(2.0)

    @property
    def breaker(self) -> dict[str, Any]:
        return {
            "consecutive_failures": 3,
            "failure_rate": 0.5,
            "window": 20,
            "min_calls": 10,
            "cooldown_s": self.s(1.0),
            "max_cooldown_s": self.s(8.0),
            "when_all_cooling": "wait",
        }


# -- the fault schedule ----------------------------------------------------------------------------------


@dataclass
class Window:
    """A fault applied when a share ``start`` of the calls has been issued and lifted at share ``end``
    (or, with ``seconds``, that long after it was applied)."""

    label: str
    kind: str  # hangs | reset | death | store | 429 | 500 | outage
    start: float
    end: float | None
    unhealthy: tuple[str, ...] = ()  # models not healthy while the fault is on
    on: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    off: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    t0: float | None = None  # when applying the fault began (seconds since the start of the run)
    t1: float | None = None  # when lifting it was done
    spans: dict[str, list[float]] = field(default_factory=dict)  # model -> [fault may be on from, until]
    seconds: float | None = None


def schedule(setup: Setup, with_store: bool) -> list[Window]:
    def _restore(name: str, keys: list[str]) -> tuple[str, dict[str, Any]]:
        spec = next(s for s in setup.specs if s["name"] == name)
        return name, {k: spec[k] for k in keys}

    down = lambda *names: [(n, {"down": True}) for n in names]  # noqa: E731
    up = lambda *names: [(n, {"down": False}) for n in names]  # noqa: E731
    windows = [
        Window(
            "hang storm: gamma 30% hangs",
            "hangs",
            0.08,
            0.16,
            ("gamma",),
            [("gamma", {"hang_rate": 0.3})],
            [_restore("gamma", ["hang_rate"])],
        ),
        *[
            Window(
                f"reset: beta down and back #{k + 1}",
                "reset",
                f,
                None,
                ("beta",),
                down("beta"),
                up("beta"),
                seconds=setup.s(1.5),
            )
            for k, f in enumerate((0.20, 0.24, 0.28, 0.32))
        ],
        Window("alpha dies and comes back", "death", 0.36, 0.50, ("alpha",), down("alpha"), up("alpha")),
        Window(
            f"429 storm: beta 30% 429 Retry-After {setup.storm_retry_after_s:g} s",
            "429",
            0.58,
            0.68,
            ("beta",),
            [("beta", {"rate_limit_rate": 0.3, "retry_after_s": setup.storm_retry_after_s})],
            [_restore("beta", ["rate_limit_rate", "retry_after_s"])],
        ),
        Window(
            "500 storm: alpha 50% 500s",
            "500",
            0.74,
            0.80,
            ("alpha",),
            [("alpha", {"error_rate": 0.5})],
            [_restore("alpha", ["error_rate"])],
        ),
        Window(
            "total outage: every model down",
            "outage",
            0.88,
            None,
            ROUTE,
            down(*ROUTE),
            up(*ROUTE),
            seconds=setup.s(4.0),
        ),
    ]
    if with_store:
        windows.append(Window("store restart: PostgreSQL stopped", "store", 0.54, 0.66))
    return sorted(windows, key=lambda w: w.start)


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Calls:
    """What the router returned or raised, one entry per call, in issue order."""

    index: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)  # seconds since the run started
    end: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # measured by the caller around achat
    router_latency: list[float] = field(default_factory=list)  # measured by the router (calls.latency_s)
    ok: list[bool] = field(default_factory=list)
    call_id: list[str | None] = field(default_factory=list)
    model: list[str | None] = field(default_factory=list)
    attempts: list[list[tuple[str, str, float, str]]] = field(default_factory=list)  # model, outcome, latency, error
    error: list[str] = field(default_factory=list)

    def add(
        self,
        i: int,
        t0: float,
        t1: float,
        ok: bool,
        call_id: str | None,
        model: str | None,
        attempts: list,
        router_latency: float,
        error: str,
    ) -> None:
        self.index.append(i)
        self.start.append(t0)
        self.end.append(t1)
        self.latency.append(t1 - t0)
        self.router_latency.append(router_latency)
        self.ok.append(ok)
        self.call_id.append(call_id)
        self.model.append(model)
        self.attempts.append([(a.model, a.outcome, a.latency_s, a.error) for a in attempts])
        self.error.append(error)


async def soak(args: Any, tmp: Path, pg: PrivatePostgres | None) -> dict[str, Any]:
    from tqdm import tqdm

    from zeta_adaptive import AllModelsFailed, RequestRejected, Router

    n, concurrency = args.calls, args.concurrency
    setup = Setup(args.time_scale)
    windows = schedule(setup, with_store=pg is not None)
    url = pg.url if pg is not None else f"sqlite:///{tmp / 'soak.db'}"
    journal_dir = tmp / "journal"
    calls = Calls()
    unexpected: list[str] = []
    samples: list[
        tuple[float, int, int, int, float]
    ] = []  # (t, journal rows, store errors, rows written, worst loop lag)
    lag: list[float] = []
    journaled = {"rows": 0, "batches": 0, "first": None, "last": None}
    state = {"issued": 0, "done": 0, "stop": False}

    with FleetProcess(setup.specs, seed=args.seed) as fleet:
        cfg = {
            "store": url,
            "deadline_s": setup.deadline_s,
            "seed": args.seed,
            "journal_dir": str(journal_dir),
            "breaker": setup.breaker,
            "models": fleet.model_config(timeout_s=setup.timeout_s, max_in_flight=MAX_IN_FLIGHT),
            "routes": {
                "simple": {
                    "models": list(ROUTE),
                    "policy": "thompson",
                    **({"hedge_quantile": args.hedge} if args.hedge else {}),
                }
            },
        }
        router = Router(cfg)
        store = router.store
        # warm-up, not measured: one direct backend request per model builds its HTTP pool (the
        # first use of a model creates an httpx.AsyncClient on the event loop; see soak.md)
        warmup: dict[str, float] = {}
        stall = {"max": 0.0, "on": True}

        async def watch_warmup() -> None:  # how long the event loop is blocked while the pools are built
            while stall["on"]:
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                stall["max"] = max(stall["max"], time.perf_counter() - before - 0.005)

        watcher = asyncio.create_task(watch_warmup())
        await asyncio.sleep(0)
        for name, model in router.config.models.items():
            t0 = time.perf_counter()
            await router.backend.achat(model, MSG, {"max_tokens": 4}, setup.timeout_s)
            warmup[name] = time.perf_counter() - t0
        stall["on"] = False
        await watcher
        gc_pauses: list[tuple[float, int, float]] = []  # (t, generation, seconds) of each collection during the run
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_pauses.append((gc_started[0] - t_start, info["generation"], time.perf_counter() - gc_started[0]))

        gc.callbacks.append(on_gc)
        t_start = time.perf_counter()
        cpu0 = _cpu(resource.RUSAGE_SELF)
        clock = lambda: time.perf_counter() - t_start  # noqa: E731

        real_append = store.journal.append

        def counting_append(batch: Any) -> None:  # observe the journal (runs in the writer thread)
            real_append(batch)
            journaled["rows"] += len(batch)
            journaled["batches"] += 1
            journaled["first"] = journaled["first"] if journaled["first"] is not None else clock()
            journaled["last"] = clock()

        store.journal.append = counting_append  # type: ignore[method-assign]

        async def apply(w: Window, phase: str) -> None:
            if w.kind == "store":
                assert pg is not None
                before = clock()
                await asyncio.to_thread(pg.stop if phase == "on" else pg.start)
                times = [("store", before + t_start, clock() + t_start)]
            else:
                times = await asyncio.to_thread(fleet.update, w.on if phase == "on" else w.off)
            for name, before, after in times:
                if phase == "on":
                    w.spans[name] = [before - t_start, float("inf")]
                else:
                    w.spans[name][1] = after - t_start
            if phase == "on":
                w.t0 = min(before for _, before, _ in times) - t_start
            else:
                w.t1 = max(after for _, _, after in times) - t_start

        async def timed(w: Window) -> None:
            await apply(w, "on")
            deadline = time.perf_counter() + (w.seconds or 0.0)
            while time.perf_counter() < deadline and not state["stop"]:
                await asyncio.sleep(0.005)
            await apply(w, "off")

        async def controller() -> None:
            pending = [(w.start, "on", w) for w in windows] + [(w.end, "off", w) for w in windows if w.end is not None]
            pending.sort(key=lambda p: p[0])
            running: list[asyncio.Task] = []
            while pending:
                while pending and (state["issued"] >= pending[0][0] * n or state["stop"]):
                    _, phase, w = pending.pop(0)
                    if state["stop"] and phase == "on":  # the run ended first (time cap): never applied
                        pending = [p for p in pending if p[2] is not w]
                        continue
                    if phase == "off":  # a fault is lifted only after it was applied
                        await asyncio.gather(*[t for t in running if getattr(t, "window", None) is w])
                    task = asyncio.create_task(apply(w, phase) if w.seconds is None or phase == "off" else timed(w))
                    task.window = w  # type: ignore[attr-defined]
                    running.append(task)
                await asyncio.sleep(0.002)
            await asyncio.gather(*running)

        async def monitor() -> None:
            worst = 0.0
            while not state["stop"]:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lag.append(time.perf_counter() - before - 0.01)
                worst = max(worst, lag[-1])
                if len(lag) % 5 == 0:
                    samples.append((clock(), store.journal.rows, store.errors, sum(store.written.values()), worst))
                    worst = 0.0

        bar = tqdm(total=n, desc="soak calls", unit="call", mininterval=0.5, smoothing=0.1)
        cap_at = time.perf_counter() + args.time_cap

        async def worker() -> None:
            while state["issued"] < n and time.perf_counter() < cap_at:
                i = state["issued"]
                state["issued"] += 1
                t0 = clock()
                try:
                    r = await router.achat("simple", MSG, max_tokens=16)
                    calls.add(i, t0, clock(), True, r.call_id, r.model, r.attempts, r.latency_s, "")
                except (AllModelsFailed, RequestRejected) as exc:
                    calls.add(i, t0, clock(), False, exc.call_id, None, exc.attempts, float("nan"), type(exc).__name__)
                except Exception as exc:  # a bug: the router must not raise anything else
                    calls.add(i, t0, clock(), False, None, None, [], float("nan"), f"{type(exc).__name__}: {exc}")
                    if len(unexpected) < 5:
                        unexpected.append(traceback.format_exc())
                state["done"] += 1
                bar.update(1)

        ctl = asyncio.create_task(controller())
        mon = asyncio.create_task(monitor())
        try:
            await asyncio.gather(*[worker() for _ in range(concurrency)])
            t_calls_end = clock()
            cpu_self = _cpu(resource.RUSAGE_SELF) - cpu0
            bar.close()
        finally:
            state["stop"] = True
            await ctl  # lift every fault still on (restarts PostgreSQL if it is down)
            await mon
            prefs = router.preferences("simple").reset_index().to_dict("records")
            t_close = time.perf_counter()
            await router.aclose()
            close_s = time.perf_counter() - t_close
            gc.callbacks.remove(on_gc)
        fleet_requests = fleet.requests()
        cpu_fleet = fleet.cpu()

    left_in_journal = sum(
        sum(1 for line in p.read_text(encoding="utf-8").splitlines(keepends=True) if line.endswith("\n"))
        for p in journal_dir.glob("*.jsonl")
    )
    db = read_log(url)
    return {
        "n": n,
        "concurrency": concurrency,
        "windows": windows,
        "calls": calls,
        "unexpected": unexpected,
        "samples": samples,
        "lag": lag,
        "journaled": journaled,
        "duration_s": t_calls_end,
        "close_s": close_s,
        "store_errors": store.errors,
        "store_dropped": store.dropped,
        "left_in_journal": left_in_journal,
        "db": db,
        "prefs": prefs,
        "fleet_requests": fleet_requests,
        "url": store.safe_url,
        "time_cap_hit": state["issued"] < n,
        "warmup": warmup,
        "warmup_stall_s": stall["max"],
        "gc": gc_pauses,
        "setup": setup,
        "cpu_self_s": cpu_self,
        "cpu_fleet_s": cpu_fleet,
    }


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def read_log(url: str) -> dict[str, Any]:
    import pandas as pd
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            calls = pd.read_sql("SELECT call_id, outcome, model, n_attempts FROM calls", conn)
            attempts = pd.read_sql("SELECT call_id, idx, model, outcome FROM attempts", conn)
    finally:
        engine.dispose()
    return {"calls": calls, "attempts": attempts}


# -- analysis -------------------------------------------------------------------------------------------


def _intersect(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for s1, e1 in a:
        for s2, e2 in b:
            s, e = max(s1, s2), min(e1, e2)
            if s < e:
                out.append((s, e))
    return out


def no_model_healthy(windows: list[Window], end: float) -> list[tuple[float, float]]:
    """Intervals in which every model of the route was down or in a fault storm."""
    spans: list[tuple[float, float]] = [(0.0, float("inf"))]
    for model in ROUTE:
        mine = [
            (a, min(b, end))
            for w in windows
            if model in w.unhealthy
            for a, b in [w.spans.get(model, (0.0, 0.0))]
            if a < b
        ]
        spans = _intersect(spans, mine)
    return spans


def check_records(calls: Calls, db: dict[str, Any]) -> dict[str, int]:
    """Every call and attempt the router reported against the rows in the database."""
    db_calls, db_attempts = db["calls"], db["attempts"]
    expected_calls = {
        cid: (ok, model, atts, err)
        for cid, ok, model, atts, err in zip(calls.call_id, calls.ok, calls.model, calls.attempts, calls.error)
        if cid
    }
    expected_attempts = {
        (cid, i): (m, o) for cid, (_, _, atts, _) in expected_calls.items() for i, (m, o, _, _) in enumerate(atts)
    }
    ids = set(db_calls["call_id"])
    keys = set(zip(db_attempts["call_id"], db_attempts["idx"].astype(int)))
    row_of = {cid: (outcome, model, n_att) for cid, outcome, model, n_att in db_calls.itertuples(index=False)}
    call_mismatch = 0
    for cid, (ok, model, atts, err) in expected_calls.items():
        if cid in row_of:
            outcome, logged_model, n_att = row_of[cid]
            want = ("ok", model) if ok else ("rejected" if err == "RequestRejected" else "failed", None)
            got = (outcome, logged_model if isinstance(logged_model, str) else None)
            call_mismatch += int(got != want or int(n_att) != len(atts))
    logged = {(c, int(i)): (m, o) for c, i, m, o in db_attempts.itertuples(index=False)}
    attempt_mismatch = sum(1 for k, v in expected_attempts.items() if k in logged and logged[k] != v)
    return {
        "calls_reported": len(expected_calls),
        "calls_rows": len(db_calls),
        "calls_missing": len(set(expected_calls) - ids),
        "calls_extra": len(ids - set(expected_calls)),
        "calls_duplicated": len(db_calls) - len(ids),
        "calls_mismatched": call_mismatch,
        "attempts_reported": len(expected_attempts),
        "attempts_rows": len(db_attempts),
        "attempts_missing": len(set(expected_attempts) - keys),
        "attempts_extra": len(keys - set(expected_attempts)),
        "attempts_duplicated": len(db_attempts) - len(keys),
        "attempts_mismatched": attempt_mismatch,
    }


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def analyse(res: dict[str, Any]) -> dict[str, Any]:
    calls: Calls = res["calls"]
    start, end = np.array(calls.start), np.array(calls.end)
    lat, ok = np.array(calls.latency), np.array(calls.ok)
    windows: list[Window] = res["windows"]
    deadline = res["setup"].deadline_s
    dark = no_model_healthy(windows, res["duration_s"])
    excused = np.array([any(s < e1 and t0 < e for s, e in dark) for t0, e1 in zip(start, end)], dtype=bool)
    failed = ~ok
    records = check_records(calls, res["db"])
    lost = (
        records["calls_missing"]
        + records["attempts_missing"]
        + records["calls_mismatched"]
        + records["attempts_mismatched"]
    )
    duplicated = (
        records["calls_extra"]
        + records["calls_duplicated"]
        + records["attempts_extra"]
        + records["attempts_duplicated"]
    )
    outcomes = Counter(o for atts in calls.attempts for _, o, _, _ in atts)
    n_att = np.array([len(a) for a in calls.attempts])
    hedged = np.array(
        [
            any(a[1] == "cancelled" for a in atts) or (len(atts) > 1 and sum(a[2] for a in atts) > rl + 1e-3)
            for atts, rl in zip(calls.attempts, calls.router_latency)
        ]
    )
    retried_same = np.array(
        [any(a[0] == b[0] and a[1] == "rate_limited" for a, b in itertools.pairwise(atts)) for atts in calls.attempts]
    )
    store_windows = [w for w in windows if w.kind == "store" and w.t0 is not None]
    lag_ms = np.array(res["lag"]) * 1000
    m: dict[str, Any] = {
        "calls_planned": res["n"],
        "calls_completed": len(ok),
        "time_cap_hit": res["time_cap_hit"],
        "concurrency": res["concurrency"],
        "duration_s": res["duration_s"],
        "throughput_calls_per_s": len(ok) / res["duration_s"] if res["duration_s"] else float("nan"),
        "success_rate": float(ok.mean()) if len(ok) else float("nan"),
        "success_rate_while_some_model_healthy": float(ok[~excused].mean()) if (~excused).any() else float("nan"),
        "calls_failed": int(failed.sum()),
        "failed_while_some_model_healthy": int((failed & ~excused).sum()),
        "failed_while_no_model_healthy": int((failed & excused).sum()),
        "calls_while_no_model_healthy": int(excused.sum()),
        "unexpected_exceptions": sum(1 for e in calls.error if e and e not in ("AllModelsFailed", "RequestRejected")),
        "latency_p50_s": _pct(lat, 50),
        "latency_p99_s": _pct(lat, 99),
        "latency_p999_s": _pct(lat, 99.9),
        "latency_max_s": float(lat.max()) if len(lat) else float("nan"),
        "latency_p50_ok_s": _pct(lat[ok], 50),
        "latency_p99_ok_s": _pct(lat[ok], 99),
        "deadline_s": deadline,
        "calls_past_deadline": int((lat > deadline).sum()),
        "calls_past_deadline_beyond_margin": int((lat > deadline + MARGIN_S).sum()),
        "max_overshoot_s": float(max(lat.max() - deadline, 0.0)) if len(lat) else float("nan"),
        "attempts": int(n_att.sum()),
        "calls_with_fallback_or_hedge": int((n_att > 1).sum()),
        "calls_hedged": int(hedged.sum()),
        "calls_429_retried_same_model": int(retried_same.sum()),
        **{f"attempts_{k}": v for k, v in sorted(outcomes.items())},
        **records,
        "lost_records": lost,
        "duplicated_records": duplicated,
        "store_outage_s": sum((w.t1 or res["duration_s"]) - w.t0 for w in store_windows) if store_windows else 0.0,
        "journaled_rows_during_outage": res["journaled"]["rows"],
        "journaled_batches": res["journaled"]["batches"],
        "store_outage_from_s": store_windows[0].t0 if store_windows else float("nan"),
        "store_outage_to_s": (store_windows[0].t1 or float("nan")) if store_windows else float("nan"),
        "journal_first_append_s": res["journaled"]["first"] if res["journaled"]["first"] is not None else float("nan"),
        "journal_last_append_s": res["journaled"]["last"] if res["journaled"]["last"] is not None else float("nan"),
        "journal_peak_rows_sampled": max((s[1] for s in res["samples"]), default=0),
        "journal_rows_left_after_close": res["left_in_journal"],
        "store_write_errors": res["store_errors"],
        "store_rows_dropped": res["store_dropped"],
        "close_s": res["close_s"],
        "router_cpu_ms_per_call": res["cpu_self_s"] / max(len(ok), 1) * 1000,
        "fleet_cpu_ms_per_call": res["cpu_fleet_s"] / max(len(ok), 1) * 1000,
        "event_loop_lag_p99_ms": _pct(lag_ms, 99),
        "event_loop_lag_max_ms": float(lag_ms.max()) if len(lag_ms) else float("nan"),
        "gc_collections_gen2": sum(1 for _, g, _ in res["gc"] if g == 2),
        "gc_pause_max_ms": max((p for _, _, p in res["gc"]), default=0.0) * 1000,
        "warmup_loop_stall_ms": res["warmup_stall_s"] * 1000,
    }
    return {"metrics": m, "excused": excused, "dark": dark}


TARGETS = {
    "failed_while_some_model_healthy": "every call served while at least one model is healthy",
    "calls_past_deadline_beyond_margin": f"no call past its deadline beyond the {MARGIN_S} s margin",
    "lost_records": "zero lost records (calls + attempts missing or changed in the database)",
    "duplicated_records": "zero duplicated records (rows written twice or not reported by the router)",
    "unexpected_exceptions": "the router raises only AllModelsFailed / RequestRejected",
}


def phase_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per fault window (and the quiet rest): calls started in it, success, latency, traffic share."""
    calls: Calls = res["calls"]
    start = np.array(calls.start)
    lat, ok = np.array(calls.latency), np.array(calls.ok)
    models = np.array([m or "" for m in calls.model])
    rows = []
    covered = np.zeros(len(start), dtype=bool)
    spans = []
    for w in res["windows"]:
        if w.t0 is None:
            continue
        t1 = w.t1 if w.t1 is not None else res["duration_s"]
        sel = (start >= w.t0) & (start < t1)
        covered |= sel
        spans.append((w.label, w.t0, t1, sel))
        if w.kind == "store" and w.t1 is not None:  # the writer replays the journal as soon as the database is back
            after = (start >= w.t1) & (start < w.t1 + 5.0)
            covered |= after
            spans.append(("5 s after the store returned (journal replay)", w.t1, w.t1 + 5.0, after))
    spans.append(("no injected fault (random faults only)", float("nan"), float("nan"), ~covered))
    for label, t0, t1, sel in spans:
        k = int(sel.sum())
        rows.append(
            {
                "window": label,
                "from_s": t0,
                "to_s": t1,
                "calls": k,
                "success": float(ok[sel].mean()) if k else float("nan"),
                "p50_s": _pct(lat[sel], 50),
                "p99_s": _pct(lat[sel], 99),
                "max_s": float(lat[sel].max()) if k else float("nan"),
                **{f"share_{m}": float((models[sel] == m).mean()) if k else float("nan") for m in ROUTE},
            }
        )
    return rows


# -- outputs --------------------------------------------------------------------------------------------

COLORS = {
    "hangs": "tab:orange",
    "reset": "tab:purple",
    "death": "tab:red",
    "store": "tab:blue",
    "429": "tab:olive",
    "500": "tab:brown",
    "outage": "black",
}


def plot(res: dict[str, Any], path: Path) -> None:
    from .common import savefig, setup_matplotlib

    plt = setup_matplotlib()
    calls: Calls = res["calls"]
    end, lat, ok = np.array(calls.end), np.array(calls.latency), np.array(calls.ok)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.scatter(end[ok], lat[ok], s=1, alpha=0.25, color="tab:green", label="served", rasterized=True)
    ax.scatter(end[~ok], lat[~ok], s=10, marker="x", color="red", label="failed", rasterized=True)
    if len(end):
        edges = np.linspace(0, end.max(), min(120, max(10, len(end) // 100)) + 1)
        centers, p50, p99 = [], [], []
        for a, b in itertools.pairwise(edges):
            sel = (end >= a) & (end < b)
            if sel.sum() >= 5:
                centers.append((a + b) / 2)
                p50.append(np.percentile(lat[sel], 50))
                p99.append(np.percentile(lat[sel], 99))
        ax.plot(centers, p50, color="tab:green", lw=1.5, label="p50 per bin")
        ax.plot(centers, p99, color="darkgreen", lw=1.2, ls="--", label="p99 per bin")
    deadline = res["setup"].deadline_s
    ax.axhline(deadline, color="grey", lw=1)
    ax.axhline(deadline + MARGIN_S, color="grey", lw=1, ls=":")
    ax.text(
        end.max() if len(end) else 0,
        deadline * 1.05,
        f"deadline {deadline:g} s (+{MARGIN_S} s margin dotted)",
        fontsize=8,
        color="grey",
        ha="right",
    )
    seen = set()
    for w in res["windows"]:
        if w.t0 is None:
            continue
        t1 = w.t1 if w.t1 is not None else end.max()
        label = w.label if w.kind != "reset" else "reset: beta down and back"
        for a in (ax, ax2):
            a.axvspan(
                w.t0,
                t1,
                color=COLORS[w.kind],
                alpha=0.15 if w.kind != "outage" else 0.3,
                label=label if (a is ax and label not in seen) else None,
            )
        seen.add(label)
    ax.set_yscale("log")
    ax.set_ylabel("call latency, s (log)")
    ax.set_title(
        f"Soak: {len(end):,} calls at concurrency {res['concurrency']}, random faults and injected fault windows"
    )
    ax.legend(fontsize=7, loc="lower center", ncol=4, markerscale=3, framealpha=0.9)
    ax.grid(alpha=0.3)
    if res["samples"]:
        t, rows, _errors, _written, worst = map(np.array, zip(*res["samples"]))
        ax2.plot(t, rows, color="tab:blue", label="rows waiting in the journal")
        ax2.set_ylabel("journal rows")
        ax3 = ax2.twinx()
        ax3.plot(t, worst * 1000, color="grey", lw=0.6, alpha=0.7, label="worst event-loop lag per 50 ms")
        ax3.set_ylabel("loop lag, ms")
        h1, l1 = ax2.get_legend_handles_labels()
        h2, l2 = ax3.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax2.set_xlabel("seconds since start")
    ax2.grid(alpha=0.3)
    savefig(fig, path)


def write_outputs(res: dict[str, Any], an: dict[str, Any], args: Any) -> dict[str, Any]:
    from .common import markdown_table, write_csv, write_markdown

    m = an["metrics"]
    setup: Setup = res["setup"]
    rows = []
    for key, value in m.items():
        target = "0" if key in TARGETS else ""
        met = ("yes" if value == 0 else "NO") if key in TARGETS else ""
        rows.append({"metric": key, "value": value, "target": target, "met": met})
    write_csv(args.out / "soak.csv", rows)
    phases = phase_rows(res)
    write_csv(args.out / "soak_phases.csv", phases)
    calls: Calls = res["calls"]
    write_csv(
        args.out / "soak_calls.csv",
        [
            {
                "i": i,
                "start_s": round(s, 4),
                "latency_s": round(lt, 4),
                "ok": int(ok),
                "model": mod or "",
                "attempts": " ".join(f"{a}:{o}:{lt:.3f}" for a, o, lt, _ in atts),
                "excused": int(ex),
            }
            for i, s, lt, ok, mod, atts, ex in zip(
                calls.index, calls.start, calls.latency, calls.ok, calls.model, calls.attempts, an["excused"]
            )
        ],
    )
    write_csv(
        args.out / "soak_timeline.csv",
        [
            {
                "t_s": round(t, 3),
                "journal_rows": j,
                "store_errors": e,
                "rows_written": w,
                "worst_loop_lag_ms": round(lg * 1000, 1),
            }
            for t, j, e, w, lg in res["samples"]
        ],
    )
    deadline = setup.deadline_s
    late = [
        {
            "call": i,
            "start_s": st,
            "latency_s": lt,
            "ok": "yes" if k else "no",
            "attempts (model:outcome:latency)": " ".join(f"{a}:{o}:{x:.2f}" for a, o, x, _ in atts),
        }
        for i, st, lt, k, atts in zip(calls.index, calls.start, calls.latency, calls.ok, calls.attempts)
        if lt > deadline + MARGIN_S
    ]
    unserved = [
        {
            "call": i,
            "start_s": st,
            "latency_s": lt,
            "attempts (model:outcome:latency)": " ".join(f"{a}:{o}:{x:.2f}" for a, o, x, _ in atts),
        }
        for i, st, lt, k, atts, ex in zip(
            calls.index, calls.start, calls.latency, calls.ok, calls.attempts, an["excused"]
        )
        if not k and not ex
    ]
    target_rows = [
        {"target": text, "measured": m[key], "met": "yes" if m[key] == 0 else "NO"} for key, text in TARGETS.items()
    ]
    headline = [
        (
            "calls completed / planned",
            f"{m['calls_completed']:,} / {m['calls_planned']:,}" + (" (time cap hit)" if m["time_cap_hit"] else ""),
        ),
        ("duration, throughput", f"{m['duration_s']:.1f} s, {m['throughput_calls_per_s']:.0f} calls/s"),
        ("success rate (all calls)", f"{m['success_rate']:.4%}"),
        ("success rate while at least one model healthy", f"{m['success_rate_while_some_model_healthy']:.4%}"),
        (
            "failed calls: total / while no model healthy / while some model healthy",
            f"{m['calls_failed']} / {m['failed_while_no_model_healthy']} / {m['failed_while_some_model_healthy']}",
        ),
        (
            "latency p50 / p99 / p99.9 / max (caller-measured, all calls)",
            f"{m['latency_p50_s'] * 1000:.1f} ms / {m['latency_p99_s'] * 1000:.0f} ms / {m['latency_p999_s'] * 1000:.0f} ms / {m['latency_max_s'] * 1000:.0f} ms",
        ),
        (
            "calls past deadline (any) / beyond the margin; max overshoot",
            f"{m['calls_past_deadline']} / {m['calls_past_deadline_beyond_margin']}; {m['max_overshoot_s'] * 1000:.0f} ms",
        ),
        (
            "attempts; calls with a 2nd attempt; hedged calls; 429 retried on the same model",
            f"{m['attempts']:,}; {m['calls_with_fallback_or_hedge']:,}; {m['calls_hedged']:,}; {m['calls_429_retried_same_model']:,}",
        ),
        (
            "records: calls reported / rows; attempts reported / rows",
            f"{m['calls_reported']:,} / {m['calls_rows']:,}; {m['attempts_reported']:,} / {m['attempts_rows']:,}",
        ),
        ("lost / duplicated records", f"{m['lost_records']} / {m['duplicated_records']}"),
        (
            "store outage; rows journaled during it; store write errors; rows dropped; rows left in journal after close",
            f"{m['store_outage_s']:.2f} s; {m['journaled_rows_during_outage']:,}; {m['store_write_errors']}; {m['store_rows_dropped']}; {m['journal_rows_left_after_close']}",
        ),
        (
            "event-loop lag p99 / max; longest GC pause; gen-2 collections",
            f"{m['event_loop_lag_p99_ms']:.1f} ms / {m['event_loop_lag_max_ms']:.1f} ms; {m['gc_pause_max_ms']:.0f} ms; {m['gc_collections_gen2']}",
        ),
    ]
    attempt_mix = ", ".join(
        f"{k[9:]} {v:,}"
        for k, v in m.items()
        if k.startswith("attempts_")
        and k[9:]
        in ("ok", "timeout", "connect_error", "rate_limited", "server_error", "client_error", "malformed", "cancelled")
    )
    phase_table = markdown_table(
        ["window", "from_s", "to_s", "calls", "success", "p50_s", "p99_s", "max_s", *[f"share_{x}" for x in ROUTE]],
        phases,
    )
    prefs = markdown_table(
        ["model", "breaker", "in_flight", "fleet requests"],
        [
            [p["model"], p.get("breaker", ""), p.get("in_flight", ""), res["fleet_requests"].get(p["model"], "")]
            for p in res["prefs"]
        ],
    )
    base = setup.base_faults
    errors = Counter(
        f"{o} ({(e.split(':')[0] or '-')[:40]})"
        for atts in calls.attempts
        for _, o, _, e in atts
        if o not in ("ok", "cancelled")
    )
    notes = [
        "Fleet: three chat models in a separate process, median latency "
        + ", ".join(f"{n} {setup.s(v) * 1000:.0f} ms" for n, v in MEDIANS.items())
        + f" (lognormal sigma 0.3); every model always has {base['error_rate']:.0%} HTTP 500, {base['rate_limit_rate']:.1%} 429 with "
        f"Retry-After {base['retry_after_s']:g} s and {base['hang_rate']:.1%} hangs ({base['hang_s']:g} s, past the {setup.timeout_s:g} s attempt timeout)"
        + (f"; every duration is scaled by {setup.scale:g} (--time-scale)." if setup.scale != 1 else "."),
        f"Router: route `simple` = {list(ROUTE)}, Thompson sampling, hedge_quantile {args.hedge or 'off'}, deadline {setup.deadline_s:g} s, "
        f"attempt timeout {setup.timeout_s:g} s, max_in_flight {MAX_IN_FLIGHT}, breaker {setup.breaker}. Store: {res['url']} "
        f"({'private PostgreSQL server, stopped and started mid-run' if args.store == 'postgres' else 'SQLite file, no store restart'}).",
        "Fault windows start and end when the given share of calls has been issued; the times shown are when applying began and when "
        "lifting was done. A model is unhealthy while it is down or in a storm (from the moment its change began until it was undone); "
        "a failed call is excused only if, at some moment of its life, no model was healthy.",
        "Latency is measured by the caller around `await router.achat(...)`, so it includes event-loop scheduling delay. "
        f"Router process CPU: {m['router_cpu_ms_per_call']:.2f} ms per call; fleet process: {m['fleet_cpu_ms_per_call']:.2f} ms per call.",
        "Warm-up (not measured): one direct `router.backend.achat` per model before the run, because the first request to a model "
        "builds its httpx.AsyncClient on the event loop: first requests took "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in res["warmup"].items())
        + f" (model latency included); the event loop was blocked for up to {m['warmup_loop_stall_ms']:.0f} ms at a stretch meanwhile.",
        "Records: after `close()`, every call id and every (call id, attempt index) the router returned or raised "
        "(ChatResult.attempts, AllModelsFailed.attempts) is looked up in the database; lost = missing or changed "
        "(outcome, model, n_attempts); duplicated = rows written twice or rows the router never reported.",
        f"Attempt outcomes: {attempt_mix}. Failed attempts by error: "
        + ", ".join(f"{k} {v:,}" for k, v in errors.most_common())
        + ".",
        "Files: soak.csv (metrics), soak_phases.csv, soak_calls.csv (one row per call), soak_timeline.csv (journal and loop lag "
        "every 50 ms), soak.png.",
    ]
    if res["unexpected"]:
        notes.append("Unexpected exceptions (first): ```" + res["unexpected"][0].replace("\n", " | ") + "```")
    write_markdown(
        args.out / "soak.md",
        "Soak: the call path under random faults and a store restart",
        ["target", "measured", "met"],
        target_rows,
        command=args.command,
        sections=[
            ("Headline numbers", markdown_table(["measure", "value"], headline)),
            ("Per fault window (calls started in it)", phase_table),
            ("Models at the end", prefs),
            *(
                [
                    (
                        f"Calls past the deadline beyond the margin (first 15 of {len(late)})",
                        markdown_table(list(late[0]), late[:15]),
                    )
                ]
                if late
                else []
            ),
            *(
                [
                    (
                        f"Calls that failed while some model was healthy (first 15 of {len(unserved)})",
                        markdown_table(list(unserved[0]), unserved[:15]),
                    )
                ]
                if unserved
                else []
            ),
        ],
        notes=notes,
        quick=args.quick,
    )
    plot(res, args.out / "soak.png")
    return m


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .common import parse_args

    args = parse_args(
        __doc__,
        argv,
        **{
            "--calls": {"type": int, "default": None, "help": "number of calls (default 20,000; 1,000 with --quick)"},
            "--concurrency": {"type": int, "default": 32, "help": "calls in flight at once"},
            "--time-cap": {
                "type": float,
                "default": None,
                "help": "stop issuing calls after this many seconds (default 1,800; 90 with --quick)",
            },
            "--store": {
                "choices": ["postgres", "sqlite"],
                "default": None,
                "help": "log store (default postgres; sqlite with --quick)",
            },
            "--hedge": {"type": float, "default": HEDGE_Q, "help": "hedge_quantile of the route (0 turns hedging off)"},
            "--time-scale": {
                "type": float,
                "default": None,
                "help": "multiply every latency, timeout and deadline (default 1; 0.2 with --quick)",
            },
        },
    )
    args.calls = args.calls or (1_000 if args.quick else 20_000)
    args.time_cap = args.time_cap or (90.0 if args.quick else 1_800.0)
    args.store = args.store or ("sqlite" if args.quick else "postgres")
    args.time_scale = args.time_scale or (0.2 if args.quick else 1.0)
    tmp = Path(tempfile.mkdtemp(prefix="zeta-soak-"))
    pg = None
    try:
        if args.store == "postgres":
            if postgres_bindir() is None:
                raise SystemExit("no PostgreSQL binaries under /usr/lib/postgresql/*/bin: use --store sqlite")
            pg = PrivatePostgres()
            pg.start()
        res = asyncio.run(soak(args, tmp, pg))
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    an = analyse(res)
    m = write_outputs(res, an, args)
    print((args.out / "soak.md").read_text())
    return {"metrics": m, "out": args.out}


if __name__ == "__main__":
    main()
