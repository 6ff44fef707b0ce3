"""Load-aware routing under open-loop Poisson traffic: throughput, p50/p99 latency, share per model and accuracy.

Simulated models with request slots (``ModelSpec.slots``: that many requests are served at once,
the others queue first come first served, as on a GPU server) answer over loopback HTTP from a
separate process (``experiments.common.FleetProcess``); every request takes ``SERVICE_S`` (lognormal, sigma 0.1)
once it has a slot. Scenarios (rates in calls per second, capacities ``slots / SERVICE_S``):

* ``quarter``: the better model (accuracy 0.90) has a quarter of the other's slots (2 vs 8), and
  the traffic exceeds its capacity (40/s against 20/s; 100/s in all);
* ``halving``: the better model's slots halve (4 -> 2) halfway through the run;
* ``three``: three models with 2, 4 and 8 slots (accuracy 0.90, 0.80, 0.70) at 40/s.

Policies: ``static`` (the better model first, always), ``thompson`` (load off: what the router did
before), ``thompson+adaptive`` (``load = "adaptive"``: learned concurrency limits, spill-over), and
the ``oracle``: thompson with each model's ``max_in_flight`` set to its true slots (and changed at
the moment the capacity halves). Thompson learns accuracy from feedback (the answering model's
accuracy drawn as ``Fleet.sample_accuracy``). Each policy gets a fresh fleet and router; calls
arrive as one Poisson process for ``--seconds`` seconds; the calls of the first 30 % of that time
(warm-up: the limits and the accuracies are being learned) are left out of the statistics. ``accuracy`` is the mean of the answering models' mean accuracies.

``--runs N`` repeats everything with seeds ``seed .. seed + N - 1`` (the targets table gives each
run's p99 and their median); ``--scale K`` multiplies every service time by K and divides every
rate by K (and the timeouts by K): the same load, on which a stall of the measuring machine weighs
K times less. The defaults (30 s, 3 runs, scale 3: about 20 minutes) are the run the README quotes;
the unscaled 100 ms is ``--scale 1``.

    .venv/bin/python -m experiments.load [--seconds S] [--runs N] [--scale K] [--quick] [--out DIR] [--seed N]
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from zeta_adaptive import AllModelsFailed, Router
from zeta_adaptive.simulate import Fleet, ModelSpec

from .common import (
    FleetProcess,
    markdown_table,
    parse_args,
    percentile,
    savefig,
    setup_matplotlib,
    write_csv,
    write_markdown,
)

SERVICE_S = 0.1
TASK = "simple"
MSG = [{"role": "user", "content": "Say hello."}]
POLICIES = ("static", "thompson", "thompson+adaptive", "oracle")
WARMUP = 0.3  # share of each run's duration left out at its start (every policy learns then)


def _model(name: str, slots: int, accuracy: float) -> dict[str, Any]:
    return {"name": name, "latency_s": SERVICE_S, "latency_sigma": 0.1, "slots": slots, "default_accuracy": accuracy}


#: name -> (models, offered rate per second, capacity changes as (fraction of the run, model, new slots))
SCENARIOS: dict[str, tuple[list[dict[str, Any]], float, list[tuple[float, str, int]]]] = {
    "quarter": ([_model("better", 2, 0.90), _model("bigger", 8, 0.75)], 40.0, []),
    "halving": ([_model("better", 4, 0.90), _model("bigger", 8, 0.75)], 40.0, [(0.5, "better", 2)]),
    "three": ([_model("small", 2, 0.90), _model("medium", 4, 0.80), _model("large", 8, 0.70)], 40.0, []),
}


def _config(
    fleet: FleetProcess, specs: list[dict[str, Any]], policy: str, store: str, seed: int, scale: float
) -> dict[str, Any]:
    models = fleet.model_config(timeout_s=5.0 * scale)
    if policy == "oracle":
        for spec in specs:
            models[spec["name"]]["max_in_flight"] = spec["slots"]
    route = {"models": [s["name"] for s in specs], "policy": "static" if policy == "static" else "thompson"}
    if policy == "thompson+adaptive":
        route["load"] = "adaptive"
    return {"store": store, "deadline_s": 10.0 * scale, "seed": seed, "models": models, "routes": {TASK: route}}


async def _run(
    scenario: str, policy: str, seconds: float, seed: int, scale: float, fleet: FleetProcess, tmp: Path
) -> dict[str, Any]:
    """One policy on one scenario: open-loop Poisson calls for ``seconds``; the row of statistics."""
    specs, rate, changes = SCENARIOS[scenario]
    specs = [{**s, "latency_s": s["latency_s"] * scale} for s in specs]
    rate /= scale
    fleet.build(specs, seed)
    truth = Fleet([ModelSpec(**s) for s in specs])  # never started: only its sample_accuracy
    rng = np.random.default_rng(seed)
    calls: list[tuple[str | None, float]] = []  # (answering model, latency) in arrival order
    arrivals: list[float] = []  # seconds from the start
    loop = asyncio.get_running_loop()

    with Router(
        _config(fleet, specs, policy, f"sqlite:///{tmp / f'{scenario}-{policy}-{seed}.db'}", seed, scale),
        warm_start=False,
    ) as router:

        async def one(i: int) -> None:
            start = time.perf_counter()
            try:
                result = await router.achat(TASK, MSG)
            except AllModelsFailed:
                calls[i] = (None, time.perf_counter() - start)
                return
            calls[i] = (result.model, time.perf_counter() - start)
            await router.afeedback(result.call_id, truth.sample_accuracy(result.model, TASK, rng))

        tasks = []
        pending = sorted(changes)
        start = time.perf_counter()
        at = start
        while (at := at + rng.exponential(1.0 / rate)) < start + seconds:
            while pending and at >= start + pending[0][0] * seconds:
                _, name, slots = pending.pop(0)
                await loop.run_in_executor(None, fleet.update, [(name, {"slots": slots})])
                if policy == "oracle":
                    router.health.models[name] = dataclasses.replace(router.health.models[name], max_in_flight=slots)
            await asyncio.sleep(max(at - time.perf_counter(), 0.0))
            calls.append((None, 0.0))
            arrivals.append(at - start)
            tasks.append(asyncio.create_task(one(len(calls) - 1)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        limits = router.preferences(TASK)["limit"].to_dict()
    kept = [c for c, at in zip(calls, arrivals, strict=True) if at >= WARMUP * seconds]
    answered = [(m, lat) for m, lat in kept if m is not None]
    latencies = [lat for _, lat in answered]
    accuracy = {s["name"]: s["default_accuracy"] for s in specs}
    row: dict[str, Any] = {
        "scenario": scenario,
        "policy": policy,
        "seed": seed,
        "load_avg": os.getloadavg()[0],
        "offered_per_s": rate,
        "service_s": SERVICE_S * scale,
        "calls": len(calls),
        "throughput_per_s": len(calls) / elapsed * len(answered) / max(len(kept), 1),
        "failed": len(kept) - len(answered),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "p99_per_service": percentile(latencies, 99) / (SERVICE_S * scale),  # the target: <= 3
        "accuracy": float(np.mean([accuracy[m] for m, _ in answered])),
    }
    for s in specs:
        row[f"share_{s['name']}"] = sum(m == s["name"] for m, _ in answered) / max(len(answered), 1)
        row[f"limit_{s['name']}"] = limits[s["name"]] if policy == "thompson+adaptive" else None
    return row


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: thompson+adaptive against the oracle on the issue's targets, run by run and the median."""
    out = []
    for scenario, (specs, _rate, _changes) in SCENARIOS.items():
        ours = [r for r in rows if r["scenario"] == scenario and r["policy"] == "thompson+adaptive"]
        oracle = [r for r in rows if r["scenario"] == scenario and r["policy"] == "oracle"]
        best = f"share_{specs[0]['name']}"
        gaps = [a["accuracy"] - o["accuracy"] for a, o in zip(ours, oracle, strict=True)]
        met = sum(r["p99_per_service"] <= 3.0 and gap >= -0.01 for r, gap in zip(ours, gaps, strict=True))
        out.append(
            {
                "scenario": scenario,
                "p99 / service time, by run": ", ".join(f"{r['p99_per_service']:.2f}" for r in ours),
                "median": _median(ours, "p99_per_service"),
                "oracle's median": _median(oracle, "p99_per_service"),
                "p99 target": "<= 3",
                "share of the better model": _median(ours, best),
                "oracle's share": _median(oracle, best),
                "accuracy - oracle's": float(statistics.median(gaps)),
                "accuracy target": ">= -0.01",
                "runs meeting both": f"{met} of {len(ours)}",
            }
        )
    return out


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 3.2), sharey=True)
    for ax, scenario in zip(axes, SCENARIOS, strict=True):
        by = [[r for r in rows if r["scenario"] == scenario and r["policy"] == p] for p in POLICIES]
        x = np.arange(len(POLICIES))
        p50 = [statistics.median(r["p50_s"] / r["service_s"] for r in b) for b in by]
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, [_median(b, "p99_per_service") for b in by], 0.4, label="p99")
        ax.axhline(3.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, [p.replace("+", "+\n") for p in POLICIES], fontsize=7)
        ax.set_title(scenario)
        ax.set_yscale("log")
    axes[0].set_ylabel("latency / service time (median of runs)")
    axes[0].legend()
    savefig(fig, path)


def main() -> None:
    args = parse_args(
        __doc__,
        **{
            "--seconds": {"type": float, "default": 30.0, "help": "seconds of traffic per policy and scenario"},
            "--runs": {"type": int, "default": 3, "help": "repeat everything with this many seeds (1 with --quick)"},
            "--scale": {"type": float, "default": 3.0, "help": "service times x SCALE and rates / SCALE"},
        },
    )
    # the defaults are the README's run (about 20 minutes): the machine's stalls weigh less at 3x the service times
    seconds = 1.0 if args.quick else args.seconds
    if args.quick:
        args.runs = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FleetProcess(SCENARIOS["quarter"][0], args.seed) as fleet:
        for seed in range(args.seed, args.seed + args.runs):
            for scenario in SCENARIOS:
                for policy in POLICIES:
                    row = asyncio.run(_run(scenario, policy, seconds, seed, args.scale, fleet, Path(tmp)))
                    print(
                        f"seed {seed} {scenario:8} {policy:18} p50 {row['p50_s']:.3f} p99 {row['p99_s']:.3f} "
                        f"acc {row['accuracy']:.3f} load {row['load_avg']:.1f}",
                        flush=True,
                    )
                    rows.append(row)
    write_csv(args.out / "load.csv", rows, columns=list(dict.fromkeys(k for r in rows for k in r)))
    columns = ["scenario", "policy", "seed", "load_avg", "throughput_per_s", "p50_s", "p99_s", "accuracy", "failed"]
    shares = sorted({k for r in rows for k in r if k.startswith(("share_", "limit_"))})
    targets = _targets(rows)
    write_markdown(
        args.out / "load.md",
        "Load-aware routing (open-loop Poisson traffic)",
        columns + shares,
        rows,
        command=args.command,
        quick=args.quick,
        sections=[("thompson+adaptive against the oracle", markdown_table(list(targets[0]), targets))],
        notes=[
            f"Service time {SERVICE_S * args.scale * 1000:.0f} ms per request once it has a slot, rates scaled by "
            f"1/{args.scale:g}; {seconds:g} s of traffic per run, {args.runs} run(s); the calls of each run's first "
            f"{WARMUP:.0%} left out; latencies are end to end, as the caller sees them. `load_avg`: the machine's "
            "1-minute load average when the run ended (2 cores, shared).",
        ],
    )
    _plot(rows, args.out / "load.png")
    print(f"wrote {args.out / 'load.md'}")


if __name__ == "__main__":
    main()
