"""Where a routed call's time goes: client CPU and wall time per call against direct httpx (and against the
package at another git revision, in the same process), then cProfile over routed calls.

A route (``--route``: a one-model ``thompson`` route by default, or the throughput benchmark's
one-model ``static`` and three-model ``thompson3`` routes) with the SQLite log on (a policy update
and a log hand-over on every call) calls the loopback mock of ``experiments/mock_backend.py``,
sync (``router.chat`` vs ``httpx.Client``) or, with ``--mode async``, one call at a time on an
event loop (``await router.achat`` vs ``httpx.AsyncClient``: concurrency 1 of bench_throughput). After an untimed warm-up, blocks
of direct calls, routed calls and (with ``--baseline REV``) routed calls through the package as it
was at ``REV`` (extracted with ``git archive`` and imported under another name) alternate in a
rotating order, so every contender sees the same machine load. Each block's client CPU time (all
threads, the log writers included) is charged to it, counted until its router's log is flushed.
Then ``--profile`` more routed calls run under cProfile (this tree only; the calling thread only)
and the top functions by own and by cumulative time are written out.

Each block's calling-thread CPU (``schedstat``, read once per block) is reported beside it: in
async mode that is the event loop's, what bounds throughput at concurrency 1.

    .venv/bin/python -m experiments.profile_callpath [--mode sync|async] [--route thompson|static|thompson3]
        [--baseline REV] [--calls N] [--rounds R] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import io
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

import zeta_adaptive

from .mock_backend import MockServer

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
BODY = {"max_tokens": 16, "model": "mock", "messages": MESSAGES}
ROOT = Path(__file__).resolve().parent.parent


#: route name -> (models, policy)
ROUTES = {"thompson": (1, "thompson"), "static": (1, "static"), "thompson3": (3, "thompson")}


def config(base_url: str, folder: Path, route: str = "thompson") -> dict[str, Any]:
    """The route ``one`` (see ROUTES) on the mock, logging to a SQLite file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    n, policy = ROUTES[route]
    models = {f"m{i}": {"base_url": base_url, "model": "mock", "timeout_s": 60.0} for i in range(n)}
    return {
        "deadline_s": 120.0,
        "store": f"sqlite:///{folder / 'profile.db'}",
        "journal_dir": str(folder / "journal"),
        "seed": 7,
        "models": models,
        "routes": {"one": {"models": list(models), "policy": policy}},
    }


def package_at(rev: str, folder: Path) -> ModuleType:
    """The package as it was at git revision ``rev``, imported as ``zeta_baseline`` (its imports are relative)."""
    archive = subprocess.run(["git", "archive", rev, "zeta_adaptive"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    spec = importlib.util.spec_from_file_location(
        "zeta_baseline",
        folder / "zeta_adaptive" / "__init__.py",
        submodule_search_locations=[str(folder / "zeta_adaptive")],
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules["zeta_baseline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thread_cpu_ns(native_id: int | None) -> int:
    """CPU time of one thread of this process so far (Linux ``schedstat``); 0 for no thread."""
    if native_id is None:
        return 0
    return int(Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()[0])


#: runs n calls of one contender, returns each call's wall time in ns
Runner = Callable[[int], list[int]]


def sync_runner(fn: Callable[[], Any]) -> Runner:
    """n calls of ``fn`` one after another on this thread."""

    def run(n: int) -> list[int]:
        walls = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            walls.append(time.perf_counter_ns() - t0)
        return walls

    return run


def async_runner(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]]) -> Runner:
    """n awaits of ``fn`` one after another on ``loop``, run on this thread (concurrency 1)."""

    async def calls(n: int) -> list[int]:
        walls = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await fn()
            walls.append(time.perf_counter_ns() - t0)
        return walls

    return lambda n: loop.run_until_complete(calls(n))


def burst(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]], n: int, concurrency: int = 8) -> None:
    """n calls at most ``concurrency`` at once: the connection pool then holds as many connections."""

    async def calls() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                await fn()

        await asyncio.gather(*(one() for _ in range(n)))

    loop.run_until_complete(calls())


def _nothing() -> None:
    """Direct calls log nothing: no settling."""


def block(run: Runner, n: int, settle: Callable[[], Any], writer: int | None) -> tuple[float, ...]:
    """Client CPU µs per call (until ``settle`` returns), median wall µs per call, the calling
    thread's context switches per call (a thread it wakes, or the GIL, takes the CPU from it), the
    log writer thread's CPU µs per call and the calling thread's (the event loop's, in async mode)."""
    me = threading.get_native_id()
    c0, t0 = time.process_time_ns(), thread_cpu_ns(me)
    w0 = thread_cpu_ns(writer)
    u0 = resource.getrusage(resource.RUSAGE_THREAD)
    walls = run(n)
    u1 = resource.getrusage(resource.RUSAGE_THREAD)
    mine = (thread_cpu_ns(me) - t0) / 1000.0 / n
    settle()
    switches = (u1.ru_nvcsw - u0.ru_nvcsw + u1.ru_nivcsw - u0.ru_nivcsw) / n
    cpu = (time.process_time_ns() - c0) / 1000.0 / n
    return cpu, statistics.median(walls) / 1000.0, switches, (thread_cpu_ns(writer) - w0) / 1000.0 / n, mine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "async"), default="sync", help="router.chat or await router.achat")
    parser.add_argument("--route", choices=tuple(ROUTES), default="thompson", help="the routed calls' route")
    parser.add_argument("--baseline", default=None, help="also time the package at this git revision")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed block")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per contender")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls per contender first")
    parser.add_argument(
        "--burst", type=int, default=0, help="async: first this many calls per contender at concurrency 8"
    )
    parser.add_argument("--profile", type=int, default=3000, help="routed calls under cProfile")
    parser.add_argument("--out", type=Path, default=None, help="write profile_callpath.md here (else stdout only)")
    parser.add_argument("--dump", type=Path, default=None, help="save the raw cProfile stats to this file")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="zeta-profile-"))
    packages = {"routed": zeta_adaptive}
    if args.baseline:
        packages[f"routed at {args.baseline}"] = package_at(args.baseline, folder / "baseline")
    loop = asyncio.new_event_loop()
    with MockServer() as mock:
        client = httpx.Client(base_url=mock.base_url + "/", timeout=60.0)
        # pooled as the router pools a model's connections (zeta_adaptive._backends.pool_limits), so that
        # after --burst both keep the same connections: httpcore checks each one on every request
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)
        aclient = httpx.AsyncClient(base_url=mock.base_url + "/", timeout=60.0, limits=limits)
        routers = {
            name: pkg.Router(config(mock.base_url, folder / str(i), args.route))
            for i, (name, pkg) in enumerate(packages.items())
        }
        try:
            table: dict[str, tuple[Runner, Callable[[], Any]]] = {}
            if args.mode == "sync":
                table["direct"] = (sync_runner(lambda: client.post("chat/completions", json=BODY).json()), _nothing)
                for name, router in routers.items():
                    table[name] = (sync_runner(partial(router.chat, "one", MESSAGES, max_tokens=16)), router.flush)
            else:

                async def adirect() -> Any:
                    return (await aclient.post("chat/completions", json=BODY)).json()

                fns: dict[str, Callable[[], Awaitable[Any]]] = {"direct": adirect}
                for name, router in routers.items():
                    fns[name] = partial(router.achat, "one", MESSAGES, max_tokens=16)
                for name, fn in fns.items():
                    burst(loop, fn, args.burst)
                    table[name] = (async_runner(loop, fn), routers[name].flush if name in routers else _nothing)
            for run, settle in table.values():
                run(args.warmup)
                settle()
            cpu: dict[str, list[float]] = {name: [] for name in table}
            wall: dict[str, list[float]] = {name: [] for name in table}
            switches: dict[str, list[float]] = {name: [] for name in table}
            writer_cpu: dict[str, list[float]] = {name: [] for name in table}
            own_cpu: dict[str, list[float]] = {name: [] for name in table}
            writers = {name: router.store._writer.native_id for name, router in routers.items()}
            names = list(table)
            load = [os.getloadavg()[0]]
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    run, settle = table[name]
                    c, w, s, wc, oc = block(run, args.calls, settle, writers.get(name))
                    cpu[name].append(c)
                    wall[name].append(w)
                    switches[name].append(s)
                    writer_cpu[name].append(wc)
                    own_cpu[name].append(oc)
            load.append(os.getloadavg()[0])
            profiler = cProfile.Profile()
            run, settle = table["routed"]
            profiler.enable()
            run(args.profile)
            settle()
            profiler.disable()
            if args.dump is not None:
                profiler.dump_stats(args.dump)
        finally:
            for router in routers.values():
                loop.run_until_complete(router.aclose())
            loop.run_until_complete(aclient.aclose())
            loop.close()
            client.close()
    base_cpu, base_wall = statistics.median(cpu["direct"]), statistics.median(wall["direct"])
    base_own = statistics.median(own_cpu["direct"])
    thread = "event-loop thread" if args.mode == "async" else "calling thread"
    lines = [
        f"{args.mode} calls, route {args.route}: {args.rounds} rotating blocks of {args.calls} calls per contender; "
        f"{f'after a burst of {args.burst} calls at concurrency 8; ' if args.burst else ''}"
        f"medians over blocks (µs per call); load average {load[0]:.2f} before, {load[1]:.2f} after",
        "",
        f"| contender | client CPU µs/call | added CPU | {thread} CPU µs/call | added | log writer CPU µs/call "
        "| wall p50 µs | added wall | context switches/call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in table:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        s, wc = statistics.median(switches[name]), statistics.median(writer_cpu[name])
        oc = statistics.median(own_cpu[name])
        lines.append(
            f"| {name} | {c:.0f} | {c - base_cpu:+.0f} | {oc:.0f} | {oc - base_own:+.0f} | {wc:.0f} | {w:.0f} "
            f"| {w - base_wall:+.0f} | {s:.2f} |"
        )
    lines.append("")
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(25)
        lines += [f"## cProfile of {args.profile} routed calls, by {key}", "", "```", buf.getvalue().strip(), "```", ""]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_callpath.md").write_text("# Routed call profile\n\n" + report + "\n")


if __name__ == "__main__":
    main()
