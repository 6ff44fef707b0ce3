"""The router's own work per call, in process: an instant backend (no I/O), the SQLite log on.

Prints, per mode and route, the median over blocks of the wall time and of the calling thread's
CPU time per call. The CPU time leaves out the network, the backend and the log writer's thread,
so it measures what the call path itself costs and varies far less with other load on the
machine than wall time. To compare two versions, run it with each on ``PYTHONPATH``:

    PYTHONPATH=/path/to/old .venv/bin/python experiments/bench_callpath.py
    .venv/bin/python experiments/bench_callpath.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

from zeta_adaptive import Router
from zeta_adaptive.backends import Outcome, Reply

ANSWER = Reply(Outcome.OK, 0.0005, 200, tokens_in=10, tokens_out=5, text="fine")
MSG = [{"role": "user", "content": "hi"}]


class Instant:
    """A backend that answers at once, so only the router's work is timed."""

    def chat(self, model: Any, messages: Any, params: Any, timeout_s: float) -> Reply:
        return ANSWER

    async def achat(self, model: Any, messages: Any, params: Any, timeout_s: float) -> Reply:
        return ANSWER

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def config(directory: str, models: list[str], policy: str) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{directory}/log.db",
        "journal_dir": directory,
        "store_timeout_s": 30.0,
        "models": {m: {"base_url": "http://127.0.0.1:1/v1"} for m in models},
        "routes": {"simple": {"models": models, "policy": policy}},
    }


def measure(models: list[str], policy: str, mode: str, calls: int, blocks: int) -> tuple[float, float]:
    """Median wall and calling-thread CPU µs per call over ``blocks`` blocks of ``calls`` calls."""
    with tempfile.TemporaryDirectory() as directory:
        with Router(config(directory, models, policy), backend=Instant()) as router:  # type: ignore[arg-type]

            async def many() -> None:
                for _ in range(calls):
                    await router.achat("simple", MSG)

            def block() -> None:
                if mode == "sync":
                    for _ in range(calls):
                        router.chat("simple", MSG)
                else:
                    asyncio.run(many())

            block()  # warm-up
            walls, cpus = [], []
            for _ in range(blocks):
                wall, cpu = time.perf_counter(), time.thread_time()
                block()
                walls.append((time.perf_counter() - wall) / calls * 1e6)
                cpus.append((time.thread_time() - cpu) / calls * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--blocks", type=int, default=21, help="timed blocks per contender")
    args = parser.parse_args()
    for mode in ("sync", "async"):
        for models, policy in ((["a"], "static"), (["a", "b", "c"], "thompson")):
            wall, cpu = measure(models, policy, mode, args.calls, args.blocks)
            print(
                f"{mode} {policy} {len(models)} model(s): wall {wall:.0f} µs/call, calling-thread CPU {cpu:.0f} µs/call"
            )


if __name__ == "__main__":
    main()
