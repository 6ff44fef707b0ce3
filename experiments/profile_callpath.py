"""Where a routed call's time goes: cProfile over routed sync calls, plus the client CPU per call against direct httpx.

A one-model ``thompson`` route with the SQLite log on (the worst case for the call path's own
work: a policy update and a log hand-over on every call) calls the loopback mock of
``experiments/mock_backend.py``. After an untimed warm-up, blocks of routed and direct calls
alternate; each block's client CPU time (all threads, the log writer included) is charged to it,
counted until the log is flushed. Then ``--profile`` more routed calls run under cProfile and the
top functions by own time and by cumulative time are written out.

    .venv/bin/python experiments/profile_callpath.py [--calls N] [--rounds R] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mock_backend import MockServer

from zeta_adaptive import Router

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
BODY = {"max_tokens": 16, "model": "mock", "messages": MESSAGES}


def config(base_url: str, folder: Path) -> dict[str, Any]:
    """One model behind a ``thompson`` route, logging to a SQLite file."""
    return {
        "deadline_s": 120.0,
        "store": f"sqlite:///{folder / 'profile.db'}",
        "journal_dir": str(folder / "journal"),
        "seed": 7,
        "models": {"m0": {"base_url": base_url, "model": "mock", "timeout_s": 60.0}},
        "routes": {"one": {"models": ["m0"], "policy": "thompson"}},
    }


def cpu_per_call(fn: Any, n: int, settle: Any) -> tuple[float, float]:
    """Client CPU µs per call and median wall µs per call over one block of ``n`` calls."""
    walls = []
    c0 = time.process_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        walls.append(time.perf_counter_ns() - t0)
    settle()
    return (time.process_time_ns() - c0) / 1000.0 / n, statistics.median(walls) / 1000.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per timed block")
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks per contender")
    parser.add_argument("--profile", type=int, default=3000, help="routed calls under cProfile")
    parser.add_argument("--out", type=Path, default=None, help="write the report here (else stdout only)")
    parser.add_argument("--dump", type=Path, default=None, help="save the raw cProfile stats to this file")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="zeta-profile-"))
    with MockServer() as mock:
        client = httpx.Client(base_url=mock.base_url + "/", timeout=60.0)
        router = Router(config(mock.base_url, folder))
        try:
            direct = lambda: client.post("chat/completions", json=BODY).json()  # noqa: E731
            routed = lambda: router.chat("one", MESSAGES, max_tokens=16).text  # noqa: E731
            for _ in range(300):
                direct()
                routed()
            router.flush()
            cpu: dict[str, list[float]] = {"direct": [], "routed": []}
            wall: dict[str, list[float]] = {"direct": [], "routed": []}
            for r in range(args.rounds):
                order = [("direct", direct), ("routed", routed)]
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    c, w = cpu_per_call(fn, args.calls, router.flush)
                    cpu[name].append(c)
                    wall[name].append(w)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.profile):
                routed()
            router.flush()
            profiler.disable()
            if args.dump is not None:
                profiler.dump_stats(args.dump)
        finally:
            router.close()
            client.close()
    lines = [
        f"{args.rounds} alternating blocks of {args.calls} calls each; medians over blocks (µs per call)",
        "",
        "| contender | client CPU µs/call | wall p50 µs |",
        "|---|---|---|",
    ]
    for name in cpu:
        lines.append(f"| {name} | {statistics.median(cpu[name]):.0f} | {statistics.median(wall[name]):.0f} |")
    added_cpu = statistics.median(cpu["routed"]) - statistics.median(cpu["direct"])
    added_wall = statistics.median(wall["routed"]) - statistics.median(wall["direct"])
    lines += ["", f"added by routing: CPU {added_cpu:+.0f} µs/call, wall p50 {added_wall:+.0f} µs", ""]
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
