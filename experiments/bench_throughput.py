"""Throughput: routed async calls per second at concurrency 1, 8 and 64 vs direct httpx, same backend.

A fixed number of chat calls is launched with ``asyncio.gather`` under a semaphore of the given
concurrency against the fast mock backend (``experiments/mock_backend.py``, its own process);
calls per second = calls / wall time of the whole batch. Contenders: direct ``httpx.AsyncClient``
(keep-alive pool of 64, ``response.json()``), ``await router.achat`` on a ``static`` one-model route
and on a ``thompson`` three-model route (logging on, into a SQLite file; the wall time of a batch
includes flushing its log rows, so the writer's work is not left outside the measurement), and
LiteLLM Router's ``acompletion`` as a reference (fewer calls: it is much slower).

On a shared two-core machine one batch can run several times slower than the next, so the
measurement is many short batches: at each concurrency an untimed warm-up batch per contender,
then ``rounds`` rounds (21: single rounds vary 0.5-1.6x even on a quiet machine, and the median
of 9 rounds still swung by 15% from one run to the next), each running every contender's batch once,
the order rotating each round.
The share of direct is the median over rounds of (ours / direct in the same round), so a slow
stretch of the machine hits both sides of each ratio; the median batch and the range are shown
too. CPU per call is measured three ways: the client process's (all threads, also LiteLLM's
background threads once it is loaded), the event-loop thread's alone (``time.thread_time``), and
the work a call costs in this process (the loop thread's plus the log writer thread's, by
``time.pthread_getcpuclockid``): CPU time is nearly free of other jobs' noise, so on a loaded
machine ``cpu share`` (direct's loop CPU per call / ours' loop + writer CPU per call, median
over rounds) says what the wall-clock share cannot.

Target (issue 9): routed throughput at least 90% of direct httpx at every concurrency.

    .venv/bin/python -m experiments.bench_throughput [--quick] [--rounds N] [--out DIR]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .bench_overhead import FOREIGN, ROUTE_LABEL, ROUTES, Contenders, guard_loopback
from .common import interleave, markdown_table, parse_args, savefig, setup_matplotlib, write_csv, write_markdown
from .mock_backend import MockServer

CONCURRENCY = (1, 8, 64)
TARGET_SHARE = 0.90
#: untimed calls through each route first: Thompson sampling redraws its batch of posterior draws
#: after every update for its first 100 updates, then every updates/100 up to every 32, so a fresh
#: route costs more per call for its first ~3,200 calls (what a decision costs: policy_cost)
STEADY = 3200


ERRORS: dict[str, int] = {}  # failed calls per contender (counted, not fatal: a loaded machine can stall a call)


async def batch(fn: Callable[[], Awaitable[str]], calls: int, concurrency: int, name: str = "") -> float:
    """Run ``calls`` calls, at most ``concurrency`` at once; returns calls per second."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            try:
                await fn()
            except Exception as exc:
                ERRORS[name] = ERRORS.get(name, 0) + 1
                if ERRORS[name] <= 3:
                    print(f"{name}: call failed: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return calls / (time.perf_counter() - t0)


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _writer_cpu() -> float:
    """CPU seconds of the log writer threads so far (0 without one)."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name == "zeta-store-writer" and t.ident is not None and t.is_alive()
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--no-litellm": {"action": "store_true", "help": "skip the LiteLLM reference"},
            "--rounds": {"type": int, "default": None, "help": "rounds per concurrency (default 21; 2 with --quick)"},
        },
    )
    rounds = args.rounds or (2 if args.quick else 21)
    calls, peer_calls = (64, 32) if args.quick else (300, 50)
    steady = 64 if args.quick else STEADY
    guard_loopback()
    folder = Path(tempfile.mkdtemp(prefix="zeta-bench-throughput-"))
    # per (concurrency, contender), one entry per round: calls/s, process CPU µs per call, loop-thread CPU µs per call
    rates: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    loop_cpu: dict[tuple[int, str], list[float]] = {}
    work_cpu: dict[tuple[int, str], list[float]] = {}  # loop thread + log writer thread
    with MockServer() as mock:
        c = Contenders(mock.base_url, folder, with_litellm=not args.no_litellm)
        table = c.async_table()
        router = c.router
        size = {name: peer_calls if name.startswith("LiteLLM") else calls for name in table}

        async def timed(name: str, conc: int) -> None:
            n = size[name]
            c0, l0, w0, t0 = time.process_time(), time.thread_time(), _writer_cpu(), time.perf_counter()
            await batch(table[name], n, conc, name)
            if name.startswith("ours"):  # charge the batch for writing its log rows
                await asyncio.to_thread(router.flush)
            wall = time.perf_counter() - t0
            rates.setdefault((conc, name), []).append(n / wall)
            cpu.setdefault((conc, name), []).append((time.process_time() - c0) / n * 1e6)
            loop = time.thread_time() - l0
            loop_cpu.setdefault((conc, name), []).append(loop / n * 1e6)
            work_cpu.setdefault((conc, name), []).append((loop + _writer_cpu() - w0) / n * 1e6)

        async def run_all() -> None:
            try:
                for name, fn in table.items():  # the routes' policies past their first updates (see STEADY)
                    if name.startswith("ours"):
                        await batch(fn, steady, 8, name)
                # and the connections that left closed: each concurrency's warm-up opens what it needs,
                # for every contender alike (httpcore checks every pooled connection on each request)
                await c.aclose()
                total = len(CONCURRENCY) * rounds * len(table)
                with tqdm(total=total, desc="throughput batches", unit="batch") as bar:
                    for conc in CONCURRENCY:
                        for name, fn in table.items():  # warm-up at this concurrency: the pools as it needs them
                            await batch(fn, min(size[name], 64), conc, name)
                        await asyncio.to_thread(router.flush)
                        gc.collect()
                        for _, name in interleave(list(table), rounds):
                            await timed(name, conc)
                            bar.update(1)
            finally:
                await c.aclose()

        asyncio.run(run_all())
        logged = c.close()

    rows = []
    for (conc, name), got in rates.items():
        direct = rates[(conc, "direct httpx")]
        rows.append(
            {
                "concurrency": conc,
                "contender": name,
                "calls_per_batch": size[name],
                "batches": len(got),
                "calls_per_s": _median(got),
                "min_calls_per_s": float(min(got)),
                "max_calls_per_s": float(max(got)),
                "share_of_direct": _median([o / d for o, d in zip(got, direct, strict=True)]),
                "share_of_direct_lo": float(min(o / d for o, d in zip(got, direct, strict=True))),
                "share_of_direct_hi": float(max(o / d for o, d in zip(got, direct, strict=True))),
                "cpu_us_per_call": _median(cpu[(conc, name)]),
                "loop_cpu_us_per_call": _median(loop_cpu[(conc, name)]),
                "work_cpu_us_per_call": _median(work_cpu[(conc, name)]),
                "cpu_share_of_direct": _median(
                    [d / o for o, d in zip(work_cpu[(conc, name)], loop_cpu[(conc, "direct httpx")], strict=True)]
                ),
                "failed_calls": ERRORS.get(name, 0),
            }
        )
    write_csv(args.out / "bench_throughput.csv", rows)
    by = {(r["concurrency"], r["contender"]): r for r in rows}
    summary = []
    for conc in CONCURRENCY:
        d = by[(conc, "direct httpx")]
        for route in ROUTES:
            o = by[(conc, f"ours {route}")]
            p = by.get((conc, f"LiteLLM {route}"))
            peer = f"direct httpx {d['calls_per_s']:.0f}/s ({d['min_calls_per_s']:.0f}..{d['max_calls_per_s']:.0f})"
            if p is not None:
                peer += f"; LiteLLM {p['calls_per_s']:.0f}/s"
            summary.append(
                {
                    "workload": f"throughput, async, concurrency {conc}, {ROUTE_LABEL[route]}",
                    "ours": f"{o['calls_per_s']:.0f} calls/s ({o['min_calls_per_s']:.0f}..{o['max_calls_per_s']:.0f})",
                    "peer": peer,
                    "ratio": f"{o['share_of_direct']:.0%} of direct (rounds {o['share_of_direct_lo']:.0%}..{o['share_of_direct_hi']:.0%});"
                    f" cpu share {o['cpu_share_of_direct']:.0%} ({o['work_cpu_us_per_call']:.0f} vs {d['loop_cpu_us_per_call']:.0f} µs a call)",
                    "target": f">= {TARGET_SHARE:.0%} of direct",
                    "met?": "met" if o["share_of_direct"] >= TARGET_SHARE else "MISSED",
                }
            )
    write_csv(args.out / "bench_throughput_summary.csv", summary)
    notes = [
        f"At each concurrency: an untimed warm-up batch per contender, then {rounds} rounds of one batch per contender ({calls} calls each; "
        f"LiteLLM {peer_calls}), the order rotating each round. calls_per_s: median batch, range in brackets; share_of_direct: median over "
        "rounds of ours / direct in the same round (lo..hi: its range).",
        f"Before the first concurrency, {steady} untimed calls through each route (concurrency 8), so Thompson sampling is past the early phase where it redraws "
        "its batch of posterior draws after nearly every update (in a run without this, 2026-11-30 at load 3-4.7, the fresh Thompson route reached 64% of direct at concurrency 1, cpu share 85%); "
        "then every contender's connection pools are closed, so each concurrency starts from the connections its own warm-up opens, alike for all. "
        "httpcore checks every pooled connection on each request (about 60 µs each here): until 2026-11-30 ours kept the 8 connections of those untimed calls "
        "for the first 30 s of concurrency 1 while direct httpx had 1, which cost ours about 350 µs a call there (experiments/results/profile_callpath.md).",
        "Backend: experiments/mock_backend.py in its own process on 127.0.0.1 (one asyncio loop); the client is one process, one event loop.",
        f"Ours log to a SQLite file; each of our batches includes waiting for its rows to be written. Log rows found: {logged} calls for {c.calls} routed calls.",
        f"Connections or name lookups outside loopback refused during the run: {len(FOREIGN)}. "
        f"Failed calls (counted, not retried; all concurrencies): {sum(ERRORS.values())}{' ' + str(ERRORS) if ERRORS else ''}.",
        "Two cores: client, backend and log writer share them, so at high concurrency the client is CPU-bound and every microsecond of CPU per call shows. "
        "cpu_us_per_call = the client process's CPU time per call (all threads: the log writer, and LiteLLM's background threads once it is loaded), "
        "median batch; loop_cpu_us_per_call = the event-loop thread's alone; work_cpu_us_per_call = the loop thread's plus the log writer thread's; "
        "cpu_share_of_direct = median over rounds of direct's loop CPU / ours' work CPU per call. httpx's own CPU per call grows with the number of pooled connections (httpcore scans them all, idle ones quadratically, "
        "for every request), which is why direct httpx can be slower at concurrency 64 than at 8.",
    ]
    write_markdown(
        args.out / "bench_throughput.md",
        "Throughput: routed async calls per second vs direct httpx",
        list(summary[0]),
        summary,
        command=args.command,
        sections=[("Every contender (calls/s)", markdown_table(list(rows[0]), rows))],
        notes=notes,
        quick=args.quick,
    )
    _plot(rows, args.out / "bench_throughput.png")
    print((args.out / "bench_throughput.md").read_text())
    return {"rows": rows, "summary": summary, "out": args.out}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = setup_matplotlib()
    names = list(dict.fromkeys(r["contender"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(names)
    x = np.arange(len(CONCURRENCY))
    by = {(r["concurrency"], r["contender"]): r for r in rows}
    colors = {
        "direct httpx": "tab:gray",
        "ours static": "tab:blue",
        "ours thompson": "tab:cyan",
        "LiteLLM static": "tab:orange",
        "LiteLLM thompson": "tab:red",
    }
    for j, name in enumerate(names):
        med = np.array([by[(cc, name)]["calls_per_s"] for cc in CONCURRENCY])
        lo = med - np.array([by[(cc, name)]["min_calls_per_s"] for cc in CONCURRENCY])
        hi = np.array([by[(cc, name)]["max_calls_per_s"] for cc in CONCURRENCY]) - med
        ax.bar(x + j * width, med, width, yerr=[lo, hi], capsize=2, label=name, color=colors.get(name))
    ax.set_xticks(x + width * (len(names) - 1) / 2, [f"concurrency {cc}" for cc in CONCURRENCY])
    ax.set_ylabel("calls per second (median batch, range)")
    ax.set_title("Async chat calls to a loopback mock: routed (logging on) vs direct httpx", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    savefig(fig, path)


if __name__ == "__main__":
    main()
