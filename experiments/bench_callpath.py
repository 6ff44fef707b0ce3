"""The router's own work per call, in process: a routed call vs a direct httpx call through one
``httpx.MockTransport`` that answers at once (no network), the SQLite log on.

Prints, per mode and route, the median over blocks of the calling thread's CPU time per call,
direct and routed, and the difference: what the call path adds. CPU time of the calling thread
leaves out the log writer's thread and varies far less with other load on the machine than wall
time. ``--baseline REV`` times the package as it was at a git revision too, in the same process
(blocks rotating), so both versions see the same load.

    .venv/bin/python -m experiments.bench_callpath [--mode sync|async|both] [--baseline REV] [--calls N] [--blocks B]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

import zeta_adaptive

from .profile_callpath import package_at

MSG = [{"role": "user", "content": "hi"}]
BODY = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
TRANSPORT = httpx.MockTransport(lambda request: httpx.Response(200, json=BODY))
URL = "http://127.0.0.1:1/v1"


def config(directory: str, models: list[str], policy: str) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{directory}/log.db",
        "journal_dir": directory,
        "store_timeout_s": 30.0,
        "models": {m: {"base_url": "http://127.0.0.1:1/v1"} for m in models},
        "routes": {"simple": {"models": models, "policy": policy}},
    }


def measure(
    models: list[str], policy: str, mode: str, calls: int, blocks: int, baseline: ModuleType | None = None
) -> dict[str, float]:
    """Median calling-thread CPU µs per call over ``blocks`` rotating blocks of ``calls`` calls each:
    ``direct``, ``routed`` and, given another version of the package, ``baseline``."""
    packages: dict[str, Any] = {"routed": zeta_adaptive}
    if baseline is not None:
        packages["baseline"] = baseline
    with tempfile.TemporaryDirectory() as directory, httpx.Client(transport=TRANSPORT) as client:
        routers = {}
        for name, package in packages.items():
            Path(directory, name).mkdir()
            routers[name] = package.Router(config(f"{directory}/{name}", models, policy), transport=TRANSPORT)
        try:

            def direct() -> None:
                client.post(f"{URL}/chat/completions", json={"model": "a", "messages": MSG}).json()

            async def adirect(aclient: httpx.AsyncClient) -> None:
                (await aclient.post(f"{URL}/chat/completions", json={"model": "a", "messages": MSG})).json()

            async def many(router: Any) -> None:
                async with httpx.AsyncClient(transport=TRANSPORT) as aclient:
                    for _ in range(calls):
                        await (router.achat("simple", MSG) if router is not None else adirect(aclient))

            def block(name: str) -> float:
                router = routers.get(name)
                cpu = time.thread_time()
                if mode == "async":
                    asyncio.run(many(router))
                else:
                    for _ in range(calls):
                        router.chat("simple", MSG) if router is not None else direct()
                return (time.thread_time() - cpu) / calls * 1e6

            names = ["direct", *routers]
            for name in names:  # warm-up
                block(name)
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for b in range(blocks):  # interleaved, the order rotating, so all see the same load
                for name in names[b % len(names) :] + names[: b % len(names)]:
                    cpu[name].append(block(name))
        finally:
            for router in routers.values():
                router.close()
    return {name: statistics.median(values) for name, values in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--blocks", type=int, default=21, help="timed blocks per contender")
    parser.add_argument("--mode", choices=("sync", "async", "both"), default="both")
    parser.add_argument("--baseline", default=None, help="also time the package at this git revision")
    args = parser.parse_args()
    baseline = package_at(args.baseline, Path(tempfile.mkdtemp(prefix="zeta-callpath-"))) if args.baseline else None
    for mode in ("sync", "async") if args.mode == "both" else (args.mode,):
        for models, policy in ((["a"], "static"), (["a", "b", "c"], "thompson")):
            got = measure(models, policy, mode, args.calls, args.blocks, baseline)
            line = (
                f"{mode} {policy} {len(models)} model(s): calling-thread CPU per call: direct {got['direct']:.0f} µs, "
                f"routed {got['routed']:.0f} µs, added {got['routed'] - got['direct']:.0f} µs"
            )
            if baseline is not None:
                line += f"; at {args.baseline} {got['baseline']:.0f} µs, added {got['baseline'] - got['direct']:.0f} µs"
            print(line)


if __name__ == "__main__":
    main()
