"""The router's own work per call, in process: a routed call vs a direct httpx call through one
``httpx.MockTransport`` that answers at once (no network), the SQLite log on.

Prints, per mode and route, the median over blocks of the calling thread's CPU time per call,
direct and routed, and the difference: what the call path adds. CPU time of the calling thread
leaves out the log writer's thread and varies far less with other load on the machine than wall
time. To compare two versions, run it with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import httpx

from zeta_adaptive import Router

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


def measure(models: list[str], policy: str, mode: str, calls: int, blocks: int) -> tuple[float, float]:
    """Median calling-thread CPU µs per call, direct and routed, over ``blocks`` blocks of ``calls`` calls each."""
    with tempfile.TemporaryDirectory() as directory:
        with (
            Router(config(directory, models, policy), transport=TRANSPORT) as router,
            httpx.Client(transport=TRANSPORT) as client,
        ):

            def direct() -> None:
                client.post(f"{URL}/chat/completions", json={"model": "a", "messages": MSG}).json()

            async def adirect(aclient: httpx.AsyncClient) -> None:
                (await aclient.post(f"{URL}/chat/completions", json={"model": "a", "messages": MSG})).json()

            async def many(routed: bool) -> None:
                async with httpx.AsyncClient(transport=TRANSPORT) as aclient:
                    for _ in range(calls):
                        await (router.achat("simple", MSG) if routed else adirect(aclient))

            def block(routed: bool) -> float:
                cpu = time.thread_time()
                if mode == "async":
                    asyncio.run(many(routed))
                else:
                    for _ in range(calls):
                        router.chat("simple", MSG) if routed else direct()
                return (time.thread_time() - cpu) / calls * 1e6

            block(True), block(False)  # warm-up
            routed, plain = [], []
            for _ in range(blocks):  # interleaved, so both see the same load
                routed.append(block(True))
                plain.append(block(False))
    return statistics.median(plain), statistics.median(routed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--blocks", type=int, default=21, help="timed blocks per contender")
    args = parser.parse_args()
    for mode in ("sync", "async"):
        for models, policy in ((["a"], "static"), (["a", "b", "c"], "thompson")):
            plain, routed = measure(models, policy, mode, args.calls, args.blocks)
            print(
                f"{mode} {policy} {len(models)} model(s): calling-thread CPU per call: direct {plain:.0f} µs, "
                f"routed {routed:.0f} µs, added {routed - plain:.0f} µs"
            )


if __name__ == "__main__":
    main()
