"""Where a routed call's time goes: client CPU and wall time per call against direct httpx (and against the
package at another git revision, in the same process), then cProfile over routed calls.

A one-model ``thompson`` route with the SQLite log on (a policy update and a log hand-over on every
call) calls the loopback mock of ``experiments/mock_backend.py``. After an untimed warm-up, blocks
of direct calls, routed calls and (with ``--baseline REV``) routed calls through the package as it
was at ``REV`` (extracted with ``git archive`` and imported under another name) alternate in a
rotating order, so every contender sees the same machine load. Each block's client CPU time (all
threads, the log writers included) is charged to it, counted until its router's log is flushed.
Then ``--profile`` more routed calls run under cProfile (this tree only; the calling thread only)
and the top functions by own and by cumulative time are written out.

    .venv/bin/python -m experiments.profile_callpath [--baseline REV] [--calls N] [--rounds R] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

import zeta_adaptive

from .mock_backend import MockServer

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
BODY = {"max_tokens": 16, "model": "mock", "messages": MESSAGES}
ROOT = Path(__file__).resolve().parent.parent


def config(base_url: str, folder: Path) -> dict[str, Any]:
    """One model behind a ``thompson`` route, logging to a SQLite file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "deadline_s": 120.0,
        "store": f"sqlite:///{folder / 'profile.db'}",
        "journal_dir": str(folder / "journal"),
        "seed": 7,
        "models": {"m0": {"base_url": base_url, "model": "mock", "timeout_s": 60.0}},
        "routes": {"one": {"models": ["m0"], "policy": "thompson"}},
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


def block(
    fn: Callable[[], Any], n: int, settle: Callable[[], Any], writer: int | None
) -> tuple[float, float, float, float]:
    """Client CPU µs per call (until ``settle`` returns), median wall µs per call, the calling
    thread's context switches per call (a thread it wakes, or the GIL, takes the CPU from it), and
    the log writer thread's CPU µs per call."""
    walls = []
    c0 = time.process_time_ns()
    w0 = thread_cpu_ns(writer)
    u0 = resource.getrusage(resource.RUSAGE_THREAD)
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        walls.append(time.perf_counter_ns() - t0)
    u1 = resource.getrusage(resource.RUSAGE_THREAD)
    settle()
    switches = (u1.ru_nvcsw - u0.ru_nvcsw + u1.ru_nivcsw - u0.ru_nivcsw) / n
    cpu = (time.process_time_ns() - c0) / 1000.0 / n
    return cpu, statistics.median(walls) / 1000.0, switches, (thread_cpu_ns(writer) - w0) / 1000.0 / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="also time the package at this git revision")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed block")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per contender")
    parser.add_argument("--profile", type=int, default=3000, help="routed calls under cProfile")
    parser.add_argument("--out", type=Path, default=None, help="write profile_callpath.md here (else stdout only)")
    parser.add_argument("--dump", type=Path, default=None, help="save the raw cProfile stats to this file")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="zeta-profile-"))
    packages = {"routed": zeta_adaptive}
    if args.baseline:
        packages[f"routed at {args.baseline}"] = package_at(args.baseline, folder / "baseline")
    with MockServer() as mock:
        client = httpx.Client(base_url=mock.base_url + "/", timeout=60.0)
        routers = {
            name: pkg.Router(config(mock.base_url, folder / str(i))) for i, (name, pkg) in enumerate(packages.items())
        }
        try:
            table: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                "direct": (lambda: client.post("chat/completions", json=BODY).json(), lambda: None)
            }
            for name, router in routers.items():
                table[name] = (lambda r=router: r.chat("one", MESSAGES, max_tokens=16).text, router.flush)
            for fn, settle in table.values():
                for _ in range(300):
                    fn()
                settle()
            cpu: dict[str, list[float]] = {name: [] for name in table}
            wall: dict[str, list[float]] = {name: [] for name in table}
            switches: dict[str, list[float]] = {name: [] for name in table}
            writer_cpu: dict[str, list[float]] = {name: [] for name in table}
            writers = {name: router.store._writer.native_id for name, router in routers.items()}
            names = list(table)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    fn, settle = table[name]
                    c, w, s, wc = block(fn, args.calls, settle, writers.get(name))
                    cpu[name].append(c)
                    wall[name].append(w)
                    switches[name].append(s)
                    writer_cpu[name].append(wc)
            profiler = cProfile.Profile()
            fn, settle = table["routed"]
            profiler.enable()
            for _ in range(args.profile):
                fn()
            settle()
            profiler.disable()
            if args.dump is not None:
                profiler.dump_stats(args.dump)
        finally:
            for router in routers.values():
                router.close()
            client.close()
    base_cpu, base_wall = statistics.median(cpu["direct"]), statistics.median(wall["direct"])
    lines = [
        f"{args.rounds} rotating blocks of {args.calls} calls per contender; medians over blocks (µs per call)",
        "",
        "| contender | client CPU µs/call | added CPU | log writer CPU µs/call | wall p50 µs | added wall | context switches/call |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in table:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        s, wc = statistics.median(switches[name]), statistics.median(writer_cpu[name])
        lines.append(
            f"| {name} | {c:.0f} | {c - base_cpu:+.0f} | {wc:.0f} | {w:.0f} | {w - base_wall:+.0f} | {s:.2f} |"
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
