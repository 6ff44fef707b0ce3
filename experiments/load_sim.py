"""The adaptive concurrency limit alone, in simulated time: how fast it follows a capacity that halves.

``experiments/load.py`` measures the whole router over loopback HTTP, where a stall of the busy
measuring machine shows in the latencies too. Here the same controller (:class:`AdaptiveLimit`,
its clock injected) routes a discrete-event simulation, so the numbers depend on the controller
alone and are the same on any machine. The scenario is load.py's ``halving``: Poisson calls at
40/s; ``better`` has 4 slots, 2 from halfway through the run; ``bigger`` has 8; every request takes
100 ms (lognormal, sigma 0.1) once it has a slot, requests wait for a slot in turn, and requests in
service when the capacity drops finish. A call goes to ``better`` if it is below its limit, else
to ``bigger`` (spill-over), else waits for the first reply, as the router does; before each claim
the controller sees the send times of the requests out (as ``Health`` shows them).

Rules compared: ``fast path`` (the defaults: ``fast_after`` slow replies in a row, or requests out
that long, shrink the limit at once), ``windows only`` (``fast_after`` beyond any run: a decision
per window, the rule before), and the ``oracle`` (limits equal to the true slots at every moment).
Statistics leave out the first 30 % of each run, as load.py does.

A second table asks whether answers of varying length are taken for queueing: a server with 16
slots is kept busy (demand above any limit, as :func:`serve` does), its latency at no load spread
lognormally with sigma 0.1 to 1 (an LLM's answers vary in length; sigma 0.3-1 is typical), and the
table gives the limit the controller settles at (the median after the first 1,000 of 3,000 replies)
against the 16 slots.

    .venv/bin/python -m experiments.load_sim [--runs N] [--seconds S] [--quick] [--out DIR] [--seed N]
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import deque
from typing import Any

import numpy as np

from zeta_adaptive import AdaptiveLimit, LoadConfig

from .common import parse_args, percentile, write_csv, write_markdown

SERVICE_S = 0.1
RATE = 40.0
WARMUP = 0.3
MODELS = ("better", "bigger")
RULES = {"fast path": LoadConfig(), "windows only": LoadConfig(fast_after=1_000_000), "oracle": None}
SPREADS = (0.1, 0.3, 0.6, 1.0)
SLOTS = 16


class Clock:
    """Simulated time, injected into the controllers."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve(
    limit: AdaptiveLimit, clock: Clock, capacity: list[int], service_s: float, seed: int = 0, spread: float = 0.1
) -> list[int]:
    """Serve ``len(capacity)`` requests, the i-th on a server of ``capacity[i]`` slots (FIFO), each
    taking ``service_s`` times a lognormal of ``spread``, with demand above any limit: the limit
    after each reply. Before each send the controller sees the requests out, as ``Health`` shows them."""
    rng = np.random.default_rng(seed)
    calls = len(capacity)
    free_at: list[float] = []  # when each busy slot frees (FIFO: a request takes the first slot to free)
    out: list[tuple[float, float]] = []  # (done, sent) of the requests out
    limits: list[int] = []
    sent = 0
    while len(limits) < calls:
        limit.overdue(sorted(at for _, at in out))
        while len(out) < limit.limit and sent < calls:  # demand exceeds any limit: keep it full
            slots = capacity[sent]
            while len(free_at) > slots:  # capacity shrank: the slots freeing last are gone
                free_at.remove(max(free_at))
                heapq.heapify(free_at)
            begin = clock.now if len(free_at) < slots else max(clock.now, heapq.heappop(free_at))
            done = begin + service_s * math.exp(spread * rng.standard_normal())
            heapq.heappush(free_at, done)
            heapq.heappush(out, (done, clock.now))
            sent += 1
            limit.started(len(out))
        done, at = heapq.heappop(out)
        clock.now = done
        limit.sample(done - at)
        limits.append(limit.limit)
    return limits


def _settled(spread: float, seed: int) -> dict[str, Any]:
    """The limit a busy server of SLOTS slots with this latency spread settles at."""
    clock = Clock()
    limits = serve(AdaptiveLimit(LoadConfig(), clock=clock), clock, [SLOTS] * 3000, SERVICE_S, seed, spread)
    settled = limits[1000:]
    return {"spread": spread, "seed": seed, "median_limit": float(np.median(settled)), "lowest_limit": min(settled)}


class _Run:
    """One simulated run: the events in time order, the servers' slots and queues, the router's limits."""

    def __init__(self, config: LoadConfig | None, seconds: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.seconds = seconds
        self.config = config
        self.limits = {m: AdaptiveLimit(config, clock=lambda: self.now) for m in MODELS} if config else {}
        self.out: dict[str, dict[int, float]] = {m: {} for m in MODELS}  # request -> send time, oldest first
        self.busy = dict.fromkeys(MODELS, 0)
        self.queued: dict[str, deque[int]] = {m: deque() for m in MODELS}
        self.waiting: deque[int] = deque()  # calls waiting for a free model, in turn
        self.arrived: dict[int, float] = {}
        self.answered: list[tuple[float, str, float]] = []  # (arrival, model, latency)
        self.events: list[tuple[float, int, str, Any]] = []
        self.order = itertools.count()

    def slots(self, model: str) -> int:
        return 8 if model == "bigger" else (4 if self.now < self.seconds / 2 else 2)

    def limit(self, model: str) -> int:
        if self.config is None:
            return self.slots(model)
        limit = self.limits[model]
        limit.overdue(self.out[model].values())
        return limit.limit

    def at(self, when: float, kind: str, data: Any) -> None:
        heapq.heappush(self.events, (when, next(self.order), kind, data))

    def dispatch(self, call: int) -> bool:
        """Send the call to the first model below its limit; False if every model is at its limit."""
        for model in MODELS:
            if len(self.out[model]) < self.limit(model):
                self.out[model][call] = self.now
                if self.config is not None:
                    self.limits[model].started(len(self.out[model]))
                self.queued[model].append(call)
                self.serve(model)
                return True
        return False

    def serve(self, model: str) -> None:
        """Start what the model's free slots allow, in turn."""
        while self.queued[model] and self.busy[model] < self.slots(model):
            self.busy[model] += 1
            service = SERVICE_S * float(np.exp(0.1 * self.rng.standard_normal()))
            self.at(self.now + service, "done", (model, self.queued[model].popleft()))

    def run(self) -> list[tuple[float, str, float]]:
        calls = itertools.count()
        when = 0.0
        while (when := when + float(self.rng.exponential(1.0 / RATE))) < self.seconds:
            self.at(when, "arrive", next(calls))
        self.at(self.seconds / 2, "halve", None)
        while self.events:
            self.now, _, kind, data = heapq.heappop(self.events)
            if kind == "arrive":
                self.arrived[data] = self.now
                if self.waiting or not self.dispatch(data):
                    self.waiting.append(data)
            elif kind == "halve":
                continue  # slots() reads the time: requests in service finish, new ones wait for 2
            else:
                model, call = data
                self.busy[model] -= 1
                sent = self.out[model].pop(call)
                if self.config is not None:
                    self.limits[model].sample(self.now - sent)
                self.answered.append((self.arrived[call], model, self.now - self.arrived[call]))
                self.serve(model)
                while self.waiting and self.dispatch(self.waiting[0]):
                    self.waiting.popleft()
        return self.answered


def _row(rule: str, seed: int, seconds: float) -> dict[str, Any]:
    answered = _Run(RULES[rule], seconds, seed).run()
    kept = [(at, model, latency) for at, model, latency in answered if at >= WARMUP * seconds]
    after = [latency for at, _, latency in kept if at >= seconds / 2]
    latencies = [latency for _, _, latency in kept]
    return {
        "rule": rule,
        "seed": seed,
        "calls": len(kept),
        "p50_per_service": percentile(latencies, 50) / SERVICE_S,
        "p99_per_service": percentile(latencies, 99) / SERVICE_S,
        "p99_after_the_drop_per_service": percentile(after, 99) / SERVICE_S,
        "max_per_service": max(latencies) / SERVICE_S,
        "share_better": sum(model == "better" for _, model, _ in kept) / len(kept),
    }


def main() -> None:
    args = parse_args(
        __doc__,
        **{
            "--seconds": {"type": float, "default": 10.0, "help": "simulated seconds per run"},
            "--runs": {"type": int, "default": 100, "help": "seeds per rule"},
        },
    )
    runs = 3 if args.quick else args.runs
    rows = [_row(rule, seed, args.seconds) for rule in RULES for seed in range(args.seed, args.seed + runs)]
    write_csv(args.out / "load_sim.csv", rows)
    keys = ["p50_per_service", "p99_per_service", "p99_after_the_drop_per_service", "max_per_service", "share_better"]
    summary = []
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule]
        summary.append(
            {
                "rule": rule,
                "runs": len(mine),
                **{f"median {k}": statistics.median(r[k] for r in mine) for k in keys},
                "worst p99_per_service": max(r["p99_per_service"] for r in mine),
                "runs with p99 <= 3 service times": sum(r["p99_per_service"] <= 3.0 for r in mine),
            }
        )
    write_markdown(
        args.out / "load_sim.md",
        "Adaptive limit after a capacity halving, in simulated time",
        list(summary[0]),
        summary,
        command=args.command,
        quick=args.quick,
        notes=[
            f"{runs} runs of {args.seconds:g} simulated seconds per rule (seeds {args.seed}..{args.seed + runs - 1}); "
            f"Poisson calls at {RATE:g}/s, service {SERVICE_S * 1000:.0f} ms; the first {WARMUP:.0%} of each run left "
            "out. No wall clock is involved: the machine's load does not change these numbers.",
        ],
    )
    spread_rows = [_settled(spread, seed) for spread in SPREADS for seed in range(args.seed, args.seed + min(runs, 10))]
    write_csv(args.out / "load_sim_spread.csv", spread_rows)
    write_markdown(
        args.out / "load_sim_spread.md",
        f"Adaptive limit on a busy {SLOTS}-slot server whose latency spreads (simulated time)",
        [
            "latency spread (sigma of log latency)",
            "runs",
            "median settled limit (median of runs)",
            "runs' range",
            "lowest",
        ],
        [
            [
                spread,
                len(mine := [r for r in spread_rows if r["spread"] == spread]),
                statistics.median(r["median_limit"] for r in mine),
                f"{min(r['median_limit'] for r in mine):g}-{max(r['median_limit'] for r in mine):g}",
                min(r["lowest_limit"] for r in mine),
            ]
            for spread in SPREADS
        ],
        command=args.command,
        quick=args.quick,
        notes=[
            f"{SLOTS} slots, service {SERVICE_S * 1000:.0f} ms x lognormal(sigma), demand above any limit; the "
            "settled limit is the median over replies 1,000-3,000 of 3,000. Before the controller learned the "
            "no-load spread (2026-11-30) it settled at 1 for every sigma >= 0.3.",
        ],
    )
    print(f"wrote {args.out / 'load_sim.md'} and {args.out / 'load_sim_spread.md'}")


if __name__ == "__main__":
    main()
