"""How far past its deadline a call against a hostile backend ends, and what a gzip bomb costs.

A simulated fleet (real loopback HTTP) has a model that drips (headers, then one body byte every
0.2 s for 60 s), a model that answers with a gzip bomb (1 GiB of JSON whitespace, ~1 MB on the
wire) and a healthy one. Each kind of call (sync, async, sync stream, async stream, embeddings)
is made against the dripping model alone with ``deadline_s = 2``: the table gives when it ended.
The bomb is asked for sync and async; the table gives the time and the peak resident memory added
while the call ran (sampled from /proc every millisecond).

    .venv/bin/python -m experiments.hostile_bounds [--out experiments/results]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from zeta_adaptive import AllModelsFailed, Router, StreamBroken
from zeta_adaptive.simulate import Fleet, ModelSpec

from .common import RESULTS

MSG = [{"role": "user", "content": "Say hello."}]
DEADLINE_S = 2.0
MARGIN_S = 0.25


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


class PeakRss:
    """The largest resident set size seen while the block runs, minus the size before it."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.added = max(self.peak, rss_mib()) - self.before


async def drained(router: Router) -> str:
    """Read a whole async stream."""
    return "".join([delta async for delta in await router.achat("simple", MSG, stream=True)])


def timed(run: Any) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        run()
        error = "answered"
    except (AllModelsFailed, StreamBroken) as exc:
        error = exc.attempts[-1].outcome
    return time.perf_counter() - start, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    specs = [
        ModelSpec("drip", latency_s=0.0, drip_rate=1.0, hang_s=60.0),
        ModelSpec("drip-embed", kind="embedding", latency_s=0.0, drip_rate=1.0, hang_s=60.0),
        ModelSpec("bomb", latency_s=0.0, bomb_rate=1.0),
    ]
    rows: list[tuple[str, float, str, str]] = []
    with Fleet(specs) as fleet, tempfile.TemporaryDirectory() as tmp:
        cfg = fleet.fleet_config(
            {"simple": ["drip"], "embedding": ["drip-embed"], "bomb": ["bomb"]},
            store=f"sqlite:///{tmp}/z.db",
            deadline_s=DEADLINE_S,
        )
        for model in cfg["models"].values():
            model["timeout_s"] = 60.0  # the call's deadline is the bound
        with Router(cfg) as router:
            for label, run in [
                ("sync chat", lambda: router.chat("simple", MSG)),
                ("async chat", lambda: asyncio.run(router.achat("simple", MSG))),
                ("sync stream", lambda: "".join(router.chat("simple", MSG, stream=True))),
                ("async stream", lambda: asyncio.run(drained(router))),
                ("sync embed", lambda: router.embed(["x"])),
                ("async embed", lambda: asyncio.run(router.aembed(["x"]))),
            ]:
                elapsed, outcome = timed(run)
                rows.append((f"drip, {label}", elapsed, outcome, ""))
            for label, run in [
                ("sync chat", lambda: router.chat("bomb", MSG)),
                ("async chat", lambda: asyncio.run(router.achat("bomb", MSG))),
            ]:
                with PeakRss() as rss:
                    elapsed, outcome = timed(run)
                rows.append((f"gzip bomb, {label}", elapsed, outcome, f"{rss.added:.1f}"))
    lines = [
        "# Hostile backends: when calls end, what a bomb costs",
        "",
        f"Reproduce: `.venv/bin/python -m experiments.hostile_bounds`. Deadline {DEADLINE_S:g} s, documented margin {MARGIN_S} s.",
        "",
        "| backend, call | ended after (s) | attempt outcome | peak RSS added (MiB) |",
        "|---|---|---|---|",
        *[f"| {name} | {elapsed:.3f} | {outcome} | {rss} |" for name, elapsed, outcome, rss in rows],
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile_bounds.md").write_text("\n".join(lines))
    print("\n".join(lines))
    late = [name for name, elapsed, _, _ in rows if elapsed > DEADLINE_S + MARGIN_S]
    if late:
        raise SystemExit(f"past the deadline beyond the margin: {late}")


if __name__ == "__main__":
    main()
