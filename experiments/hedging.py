"""Hedged requests against a heavy-tailed primary: p50 / p99 / p99.9 and extra load, hedging off vs on.

A route of two models over real loopback HTTP (``zeta_adaptive.simulate.Fleet`` in a separate
process): the primary answers in ~10 ms (lognormal, median 10 ms, sigma 0.3) but 3% of its requests
hang for 2 s before answering; the backup answers in ~12 ms and never hangs. The policy
is ``static`` (the primary is always asked first) and the breaker is set not to open
(``consecutive_failures`` 1000), so hedging is the only thing that differs between configurations:

* ``off``: no ``hedge_quantile``: a hung primary costs its 2 s;
* ``q=0.90`` and ``q=0.95``: ``hedge_quantile`` on the route: if the primary has not answered by
  that quantile of its recent successful latencies, the backup is asked too; the first success
  wins and the other attempt is cancelled.

Calls arrive open-loop (one Poisson process at ``--rate`` per second, so a hung call does not hold
back the next ones) and go to the three configurations in turn, all in one event loop: each
configuration has its own router and its own fleet process, rebuilt per seed with the same seed (so
the k-th request to a model draws the same fault in every configuration), and whatever else the
machine does at a given moment hits all three alike. The first ``WARMUP`` calls of each
configuration and seed are left out (the router needs 10 successful primary latencies before it
can hedge).

Extra load: the share of calls that sent a second request (with two models, a hedge: a hang here
ends in a late answer, not a failure), and attempts per call.

    .venv/bin/python -m experiments.hedging [--calls N] [--rate R] [--seeds S] [--quick] [--out DIR]

``--calls`` is per configuration and seed; ``--rate`` is for all three configurations together.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .common import FleetProcess, markdown_table, parse_args, savefig, setup_matplotlib, write_csv, write_markdown

MSG = [{"role": "user", "content": "Say hello."}]
CONFIGS = {"off": None, "q=0.90": 0.90, "q=0.95": 0.95}
PRIMARY = {"name": "primary", "latency_s": 0.010, "latency_sigma": 0.3, "hang_rate": 0.03, "hang_s": 2.0}
BACKUP = {"name": "backup", "latency_s": 0.012, "latency_sigma": 0.3}
TIMEOUT_S = 5.0  # past the 2 s hang: a hung request answers late, it does not time out
DEADLINE_S = 10.0
WARMUP = 50


async def run_seed(
    fleets: dict[str, FleetProcess], n: int, rate: float, seed: int, tmp: Path
) -> dict[str, dict[str, Any]]:
    """One seed: the configurations side by side, each with its own router and its own fleet (rebuilt
    with the same seed, so the k-th request to a model draws the same fault in every configuration).
    ``3 n`` calls arrive as one Poisson process at ``rate`` and go to the configurations in turn, so
    that whatever else the machine does hits every configuration alike."""
    from zeta_adaptive import AllModelsFailed, Router

    names = list(CONFIGS)
    routers: dict[str, Router] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for config, hedge in CONFIGS.items():
            fleets[config].build([PRIMARY, BACKUP], seed)
            route: dict[str, Any] = {"models": ["primary", "backup"], "policy": "static"}
            if hedge is not None:
                route["hedge_quantile"] = hedge
            routers[config] = Router(
                {
                    "store": f"sqlite:///{tmp / f'hedging-{seed}-{config}.db'}",
                    "journal_dir": str(tmp / f"journal-{config}"),
                    "deadline_s": DEADLINE_S,
                    "seed": seed,
                    "breaker": {"consecutive_failures": 1000, "min_calls": 10},
                    "models": fleets[config].model_config(timeout_s=TIMEOUT_S),
                    "routes": {"simple": route},
                }
            )
            for model in routers[config].config.models.values():  # build the HTTP pools before timing anything
                await routers[config].backend.achat(model, MSG, {"max_tokens": 4}, TIMEOUT_S)
            out[config] = {
                "latency": np.full(n, np.nan),
                "n_attempts": np.zeros(n, dtype=int),
                "hedged": np.zeros(n, dtype=bool),
                "ok": np.zeros(n, dtype=bool),
                "late": np.zeros(n),
                "failures": [],
            }

        async def one(config: str, i: int) -> None:
            res = out[config]
            t0 = time.perf_counter()
            try:
                r = await routers[config].achat("simple", MSG, max_tokens=16)
                attempts, res["ok"][i] = r.attempts, True
                overlap = sum(a.latency_s for a in attempts) > r.latency_s + 1e-3
            except AllModelsFailed as exc:
                attempts, overlap = exc.attempts, False
                res["failures"].append(" ".join(f"{a.model}:{a.outcome}:{a.latency_s:.2f}" for a in attempts))
            res["latency"][i] = time.perf_counter() - t0
            res["n_attempts"][i] = len(attempts)
            res["hedged"][i] = any(a.outcome == "cancelled" for a in attempts) or overlap

        arrivals = np.cumsum(np.random.default_rng([seed, 7]).exponential(1.0 / rate, n * len(names)))
        before = {c: fleets[c].requests() for c in names}
        count = dict.fromkeys(names, 0)
        tasks = []
        start = time.perf_counter()
        for j, at in enumerate(arrivals):
            config = names[(j + seed) % len(names)]
            i, count[config] = count[config], count[config] + 1
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out[config]["late"][i] = time.perf_counter() - (start + at)
            tasks.append(asyncio.create_task(one(config, i)))
        await asyncio.gather(*tasks)
        for config, hedge in CONFIGS.items():
            after = fleets[config].requests()
            out[config]["requests"] = {k: after[k] - before[config][k] for k in after}
            out[config]["hedge_delay_s"] = (
                routers[config].health.latency_quantile("primary", hedge) if hedge is not None else None
            )
    finally:
        for router in routers.values():
            await router.aclose()
    return out


def summarise(config: str, seed: int | str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = np.concatenate([r["latency"][WARMUP:] for r in runs])
    att = np.concatenate([r["n_attempts"][WARMUP:] for r in runs])
    hedged = np.concatenate([r["hedged"][WARMUP:] for r in runs])
    ok = np.concatenate([r["ok"][WARMUP:] for r in runs])
    late = np.concatenate([r["late"][WARMUP:] for r in runs])
    calls_total = sum(len(r["latency"]) for r in runs)
    requests = sum(sum(r["requests"].values()) for r in runs)
    backup = sum(r["requests"].get("backup", 0) for r in runs)
    delays = [r["hedge_delay_s"] for r in runs if r["hedge_delay_s"] is not None]
    return {
        "config": config,
        "seed": seed,
        "calls": len(lat),
        "success": float(ok.mean()),
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p90_ms": float(np.percentile(lat, 90) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "p999_ms": float(np.percentile(lat, 99.9) * 1000),
        "max_ms": float(lat.max() * 1000),
        "mean_ms": float(lat.mean() * 1000),
        "second_request_share": float((att >= 2).mean()),
        "hedged_share": float(hedged.mean()),
        "attempts_per_call": float(att.mean()),
        "requests_per_call": requests / calls_total,  # requests that reached a server, warm-up calls included
        "backup_requests_per_call": backup / calls_total,
        "hedge_delay_ms_at_end": float(np.mean(delays) * 1000) if delays else float("nan"),
        "dispatch_late_p99_ms": float(np.percentile(late, 99) * 1000),
    }


def plot(results: dict[str, list[dict[str, Any]]], summary: dict[str, dict[str, Any]], path: Path) -> None:
    plt = setup_matplotlib()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for k, (config, runs) in enumerate(results.items()):
        color = f"C{k}"
        lat = np.sort(np.concatenate([r["latency"][WARMUP:] for r in runs])) * 1000
        ccdf = 1.0 - np.arange(len(lat)) / len(lat)
        ax.step(
            lat,
            ccdf,
            where="post",
            color=color,
            lw=1.8,
            label=f"{config}: p99 {summary[config]['p99_ms']:.0f} ms (all seeds)",
        )
        if len(runs) > 1:
            for r in runs:  # one thin line per seed: the spread is the machine's noise
                one = np.sort(r["latency"][WARMUP:]) * 1000
                ax.step(one, 1.0 - np.arange(len(one)) / len(one), where="post", color=color, lw=0.6, alpha=0.35)
    for q, style in ((0.01, ":"), (0.001, "--")):
        ax.axhline(q, color="grey", lw=0.8, ls=style)
        ax.text(5, q * 1.15, f"p{100 * (1 - q):g}", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("call latency, ms (log)")
    ax.set_ylabel("share of calls slower (log)")
    ax.set_title("Latency tail: primary 10 ms with 3% hangs of 2 s, backup 12 ms (thin: one seed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    names = list(results)
    x = np.arange(len(names))
    ax2.bar(
        x - 0.2,
        [summary[c]["second_request_share"] * 100 for c in names],
        0.4,
        label="calls that sent a 2nd request, %",
    )
    ax2.bar(
        x + 0.2,
        [(summary[c]["requests_per_call"] - 1) * 100 for c in names],
        0.4,
        label="extra requests reaching the fleet, %",
    )
    ax2.set_xticks(x, names)
    ax2.set_ylabel("%")
    ax2.set_title("Extra load")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="y")
    savefig(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--calls": {
                "type": int,
                "default": None,
                "help": "calls per configuration and seed (default 2,000; 80 with --quick)",
            },
            "--rate": {
                "type": float,
                "default": None,
                "help": "arrivals per second, all configurations together (default 15; 60 with --quick)",
            },
            "--seeds": {"type": int, "default": None, "help": "seeds (default 3; 1 with --quick)"},
        },
    )
    n = args.calls or (80 if args.quick else 2_000)
    rate = args.rate or (60.0 if args.quick else 15.0)
    n_seeds = args.seeds or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="zeta-hedging-"))
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    fleets: dict[str, FleetProcess] = {}
    try:
        # one fleet process per configuration, so no configuration's load lands on another's fleet; started side by side
        with ThreadPoolExecutor(len(CONFIGS)) as pool:
            for config, fleet in zip(
                CONFIGS, pool.map(lambda _: FleetProcess([PRIMARY, BACKUP], seed=args.seed), CONFIGS)
            ):
                fleets[config] = fleet
        for s in tqdm(range(n_seeds), desc="hedging seeds", unit="seed"):
            for config, res in asyncio.run(run_seed(fleets, n, rate, args.seed + s, tmp)).items():
                results[config].append(res)
    finally:
        for fleet in fleets.values():
            fleet.close()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {c: summarise(c, "all", runs) for c, runs in results.items()}
    per_seed = [summarise(c, args.seed + i, [r]) for c, runs in results.items() for i, r in enumerate(runs)]
    write_csv(args.out / "hedging.csv", list(summary.values()))
    write_csv(args.out / "hedging_runs.csv", per_seed)

    def spread(config: str, key: str) -> str:
        values = np.array([row[key] for row in per_seed if row["config"] == config])
        return f"{values.mean():.0f} ± {values.std(ddof=1):.0f}" if len(values) > 1 else f"{values.mean():.0f}"

    table = [
        {
            "hedge_quantile": c if c != "off" else "off",
            "calls": summary[c]["calls"],
            "p50 ms": summary[c]["p50_ms"],
            "p99 ms": summary[c]["p99_ms"],
            "p99.9 ms": summary[c]["p999_ms"],
            "max ms": summary[c]["max_ms"],
            "p99 ms per seed (mean ± sd)": spread(c, "p99_ms"),
            "calls with a 2nd request": f"{summary[c]['second_request_share']:.1%}",
            "hedged calls": f"{summary[c]['hedged_share']:.1%}",
            "attempts per call": summary[c]["attempts_per_call"],
            "requests reaching the fleet per call": summary[c]["requests_per_call"],
            "hedge delay at end, ms": summary[c]["hedge_delay_ms_at_end"],
            "success": f"{summary[c]['success']:.2%}",
        }
        for c in CONFIGS
    ]
    off, q95 = summary["off"], summary["q=0.95"]
    notes = [
        f"Fleet (separate process): primary median {PRIMARY['latency_s'] * 1000:.0f} ms (lognormal sigma {PRIMARY['latency_sigma']}), "
        f"{PRIMARY['hang_rate']:.0%} of its requests hang {PRIMARY['hang_s']:g} s before answering; backup median "
        f"{BACKUP['latency_s'] * 1000:.0f} ms, no faults. Attempt timeout {TIMEOUT_S:g} s, deadline {DEADLINE_S:g} s, policy static, "
        "breaker consecutive_failures 1000 (kept closed), min_calls 10 (the latency quantile needs 10 successes).",
        f"{n:,} calls per configuration and seed, {n_seeds} seed(s) from {args.seed}; all calls arrive open-loop as one Poisson process at "
        f"{rate:g}/s and go to the configurations in turn (each has its own router and fleet, rebuilt with the same seed). The first "
        f"{WARMUP} calls of each configuration and seed are left out of the latency figures; percentiles pool the seeds.",
        "Latency is measured by the caller around `await router.achat(...)`. 'Calls with a 2nd request': calls with two or more attempts "
        "(here always a hedge). 'Hedged calls': a cancelled attempt or two attempts that overlapped. "
        "'Attempts per call': attempts the router made, cancelled ones included; 'requests reaching the fleet per call': requests "
        "the fleet's servers received / calls of the run (an attempt cancelled before its request left the client is not counted).",
        f"Effect at q=0.95: p99 {off['p99_ms']:.0f} → {q95['p99_ms']:.0f} ms, p99.9 {off['p999_ms']:.0f} → {q95['p999_ms']:.0f} ms, "
        f"for {q95['attempts_per_call'] - off['attempts_per_call']:+.1%} attempts per call.",
        "Dispatch lateness (how late a call started against its arrival time: the event loop's lag) p99: "
        + ", ".join(f"{c} {summary[c]['dispatch_late_p99_ms']:.1f} ms" for c in CONFIGS)
        + ". Where it is high the machine was busy (other processes), and the tail of every configuration includes that lag; "
        "the per-seed table shows it run by run.",
        "Files: hedging.csv (pooled), hedging_runs.csv (per seed), hedging.png (latency CCDF and extra load).",
    ]
    failures = [(c, f) for c, runs in results.items() for r in runs for f in r["failures"]]
    if failures:
        notes.append(f"Failed calls: {len(failures)}; first: " + "; ".join(f"{c}: {f}" for c, f in failures[:3]) + ".")
    seed_table = [
        {
            "hedge_quantile": row["config"],
            "seed": row["seed"],
            "p50 ms": row["p50_ms"],
            "p99 ms": row["p99_ms"],
            "p99.9 ms": row["p999_ms"],
            "hedged calls": f"{row['hedged_share']:.1%}",
            "hedge delay at end, ms": row["hedge_delay_ms_at_end"],
            "dispatch lateness p99, ms": row["dispatch_late_p99_ms"],
        }
        for row in sorted(per_seed, key=lambda r: (r["seed"], list(CONFIGS).index(r["config"])))
    ]
    write_markdown(
        args.out / "hedging.md",
        "Hedging: p99 of a route whose primary has a heavy tail",
        list(table[0]),
        table,
        command=args.command,
        sections=[("Per seed", markdown_table(list(seed_table[0]), seed_table))],
        notes=notes,
        quick=args.quick,
    )
    plot(results, summary, args.out / "hedging.png")
    print((args.out / "hedging.md").read_text())
    return {"summary": summary, "out": args.out}


if __name__ == "__main__":
    main()
