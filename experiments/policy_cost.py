"""Decision cost: microseconds of one decision cycle per policy, next to MABWiser, same run.

A cycle is what the router does per call: ``rank()`` (the order with the primary's propensity),
then ``update()`` with the attempt's outcome. For MABWiser it is ``predict()`` then
``partial_fit()`` of that one observation (its ThompsonSampling, UCB1, EpsilonGreedy and Random
next to ours of the same name; KL-UCB has no MABWiser counterpart and is shown next to its UCB1).
2, 3, 5 and 8 models; every contender is first warmed up with 2,000 cycles (untimed), then timed
in alternating blocks (all contenders interleaved, the order rotating each round, so machine noise
hits all alike), with ``time.perf_counter_ns`` around each call. Outcomes are drawn before the
timing. Reported: median, p99 and mean (the mean includes Thompson's amortised batch redraws) of
rank, update and the whole cycle. Targets (issue 16) are on the median cycle: UCB1 and KL-UCB
under 20 µs, Thompson under 10 µs.

Our policies use the router's default Objective() (success, and latency with w_latency = 0.1, so
Thompson also samples a log-latency posterior); ``thompson (success only)`` uses
Objective(w_latency=0, w_cost=0), the same model as MABWiser's ThompsonSampling.

``--baseline FILE`` also times the targeted policies of another ``_policies.py`` (for example the
one before a change, from ``git show REV:zeta_adaptive/_policies.py``) in the same interleaved
rounds, as "name (baseline)". Without MABWiser installed (the ``bench`` extra) its rows are left
out. The machine has 2 cores and other processes may run: compare within a run. BLAS thread
variables are left as they are.

    .venv/bin/python -m experiments.policy_cost [--quick] [--out DIR] [--baseline FILE]
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from tqdm import tqdm

import zeta_adaptive

from .common import interleave, markdown_table, parse_args, publish, savefig, setup_matplotlib, summary_row, write_csv

PROBS = {
    2: (0.55, 0.70),
    3: (0.55, 0.60, 0.70),
    5: (0.30, 0.50, 0.60, 0.65, 0.70),
    8: (0.30, 0.40, 0.50, 0.55, 0.60, 0.65, 0.68, 0.70),
}
OURS = ("static", "random", "epsilon_greedy", "ucb1", "kl_ucb", "thompson", "thompson (success only)")
PEERS = ("mabwiser_ts", "mabwiser_ucb1", "mabwiser_eps", "mabwiser_random")
LABEL = {
    "mabwiser_ts": "MABWiser ThompsonSampling",
    "mabwiser_ucb1": "MABWiser UCB1",
    "mabwiser_eps": "MABWiser EpsilonGreedy",
    "mabwiser_random": "MABWiser Random",
}
#: median cycle targets (µs) of issue 16, and the MABWiser policy each is shown next to
TARGET_CYCLE_US = {"ucb1": 20.0, "kl_ucb": 20.0, "thompson": 10.0}
PEER_OF = {
    "thompson": "mabwiser_ts",
    "ucb1": "mabwiser_ucb1",
    "kl_ucb": "mabwiser_ucb1",
    "epsilon_greedy": "mabwiser_eps",
    "random": "mabwiser_random",
}
BASELINE = " (baseline)"
clock = time.perf_counter_ns


class Contender:
    """One policy instance with its own pre-drawn outcomes; ``block(n)`` runs n timed cycles."""

    def __init__(self, name: str, k: int, seed: int, steps: int, policies: ModuleType = zeta_adaptive) -> None:
        self.name = name
        rng = np.random.default_rng([seed, k, 3])
        p = np.asarray(PROBS[k])
        self.outcomes = (rng.random((steps, k)) < p).tolist()  # python bools: lookup costs nothing
        self.latency = np.exp(rng.normal(np.log(0.5), 0.3, steps)).tolist()
        self.t = 0
        self.rank_ns: list[int] = []
        self.update_ns: list[int] = []
        if name in PEERS:
            from mabwiser.mab import MAB, LearningPolicy

            lp = {
                "mabwiser_ts": LearningPolicy.ThompsonSampling(),
                "mabwiser_ucb1": LearningPolicy.UCB1(alpha=1),
                "mabwiser_eps": LearningPolicy.EpsilonGreedy(epsilon=0.1),
                "mabwiser_random": LearningPolicy.Random(),
            }[name]
            self.mab = MAB(list(range(k)), lp, seed=seed)
            self.mab.fit(decisions=list(range(k)), rewards=[int(self.outcomes[j][j]) for j in range(k)])
            self.t = k
            self.block = self._block_mabwiser
        else:
            base = name.split(" ")[0]
            objective = (
                policies.Objective(w_latency=0.0, w_cost=0.0) if "success only" in name else policies.Objective()
            )
            self.policy = policies.make_policy(base, [f"model-{i}" for i in range(k)], objective, seed=seed)
            self.block = self._block_ours

    def _block_ours(self, n: int, timed: bool = True) -> None:
        policy, outcomes, latency = self.policy, self.outcomes, self.latency
        index = policy.index
        rank_ns, update_ns = self.rank_ns, self.update_ns
        start = self.t
        for t in range(start, start + n):
            t0 = clock()
            ranking = policy.rank()
            t1 = clock()
            model = ranking.primary
            ok = outcomes[t][index[model]]
            t2 = clock()
            policy.update(model, ok, latency[t], 0.0)
            t3 = clock()
            if timed:
                rank_ns.append(t1 - t0)
                update_ns.append(t3 - t2)
        self.t = start + n

    def _block_mabwiser(self, n: int, timed: bool = True) -> None:
        mab, outcomes = self.mab, self.outcomes
        rank_ns, update_ns = self.rank_ns, self.update_ns
        start = self.t
        for t in range(start, start + n):
            t0 = clock()
            arm = mab.predict()
            t1 = clock()
            reward = int(outcomes[t][arm])
            t2 = clock()
            mab.partial_fit(decisions=[arm], rewards=[reward])
            t3 = clock()
            if timed:
                rank_ns.append(t1 - t0)
                update_ns.append(t3 - t2)
        self.t = start + n


def stats_us(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    return {"median": float(np.median(us)), "p99": float(np.percentile(us, 99)), "mean": float(us.mean())}


def load_baseline(path: Path) -> ModuleType:
    """Another ``_policies.py`` as a module of its own (it imports nothing from the package), given
    a ``make_policy`` over its own policy classes (the package's lives in ``_registry``)."""
    spec = importlib.util.spec_from_file_location("baseline_policies", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    classes = {c.name: c for c in vars(module).values() if isinstance(c, type) and getattr(c, "name", "")}
    module.make_policy = lambda name, models, objective, **options: classes[name](
        models, objective=objective, **options
    )
    return module


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(
        __doc__,
        argv,
        **{"--baseline": {"type": Path, "default": None, "help": "another _policies.py to time alongside"}},
    )
    warmup, rounds, block = (100, 2, 25) if args.quick else (2_000, 40, 250)
    have_mabwiser = importlib.util.find_spec("mabwiser") is not None
    baseline = load_baseline(args.baseline) if args.baseline else None
    names = OURS + (PEERS if have_mabwiser else ()) + (tuple(p + BASELINE for p in TARGET_CYCLE_US) if baseline else ())
    steps = warmup + rounds * block + 10
    rows = []
    bar = tqdm(total=len(PROBS) * len(names) * (rounds + 1), desc="cost blocks", unit="block")
    for k in PROBS:
        contenders = {
            name: Contender(
                name.removesuffix(BASELINE),
                k,
                seed=args.seed + 101,
                steps=steps,
                **({"policies": baseline} if name.endswith(BASELINE) else {}),
            )
            for name in names
        }
        for c in contenders.values():  # warm-up: not timed
            c.block(warmup - c.t, timed=False)
            bar.update(1)
        gc.collect()
        for _, name in interleave(names, rounds):
            contenders[name].block(block)
            bar.update(1)
        for name, c in contenders.items():
            rank, update = np.asarray(c.rank_ns, dtype=float), np.asarray(c.update_ns, dtype=float)
            source = (
                "MABWiser"
                if name in PEERS
                else "zeta_adaptive baseline"
                if name.endswith(BASELINE)
                else "zeta_adaptive"
            )
            row = {"models": k, "policy": name, "source": source, "cycles": len(rank)}
            for part, ns in (("rank", rank), ("update", update), ("cycle", rank + update)):
                row.update({f"{part}_{stat}_us": v for stat, v in stats_us(ns).items()})
            rows.append(row)
    bar.close()
    write_csv(args.out / "policy_cost.csv", rows)

    by = {(r["models"], r["policy"]): r for r in rows}
    headline, verdicts = [], {}
    for k in PROBS:
        for ours, limit in TARGET_CYCLE_US.items():
            a, peer = by[(k, ours)], PEER_OF[ours]
            b = by.get((k, peer))
            met = a["cycle_median_us"] < limit
            verdicts[(k, ours)] = met
            headline.append(
                summary_row(
                    f"{k} models, {ours} decision (rank with propensity + update), median / p99 µs",
                    f"{a['cycle_median_us']:.1f} / {a['cycle_p99_us']:.0f} (rank {a['rank_median_us']:.1f})",
                    f"{LABEL[peer]}: {b['cycle_median_us']:.1f} / {b['cycle_p99_us']:.0f}"
                    if b
                    else "MABWiser not installed",
                    f"{b['cycle_median_us'] / a['cycle_median_us']:.3g} (peer / ours, median)" if b else "–",
                    f"< {limit:g} µs median cycle",
                    met,
                )
            )
    sections = []
    if baseline:
        before_after = [
            {
                "models": k,
                "policy": ours,
                "baseline cycle: median": by[(k, ours + BASELINE)]["cycle_median_us"],
                "now: median": by[(k, ours)]["cycle_median_us"],
                "speed-up": by[(k, ours + BASELINE)]["cycle_median_us"] / by[(k, ours)]["cycle_median_us"],
                "baseline rank": by[(k, ours + BASELINE)]["rank_median_us"],
                "now rank": by[(k, ours)]["rank_median_us"],
            }
            for k in PROBS
            for ours in TARGET_CYCLE_US
        ]
        write_csv(args.out / "policy_cost_baseline.csv", before_after)
        sections.append(
            (
                f"Before / after, same interleaved rounds (baseline: {args.baseline.name}, µs)",
                markdown_table(list(before_after[0]), before_after),
            )
        )
    detail = [
        {
            "models": r["models"],
            "policy": LABEL.get(r["policy"], r["policy"]),
            "rank / predict: median": r["rank_median_us"],
            "p99": r["rank_p99_us"],
            "update / partial_fit: median": r["update_median_us"],
            "p99 ": r["update_p99_us"],
            "cycle: median": r["cycle_median_us"],
            "cycle p99": r["cycle_p99_us"],
            "cycle mean": r["cycle_mean_us"],
            "peer / ours (cycle median)": (
                by[(r["models"], PEER_OF[r["policy"]])]["cycle_median_us"] / r["cycle_median_us"]
                if r["policy"] in PEER_OF and (r["models"], PEER_OF[r["policy"]]) in by
                else "–"
            ),
        }
        for r in rows
    ]
    sections.append(("Every contender (µs)", markdown_table(list(detail[0]), detail)))
    notes = [
        f"Microseconds; 'a / b' is median / p99. {rounds} rounds x {block} cycles per contender and model count "
        f"({rounds * block} timed cycles each) after {warmup} untimed warm-up cycles; all contenders alternate block by block, the order rotating each round.",
        "Cycle = rank() (with propensity) + update(); MABWiser: predict() + partial_fit() of one observation. "
        "Each part timed separately with perf_counter_ns; the outcome lookup between them is not timed. GC left enabled.",
        "Ours use the default Objective() (latency weighted 0.1: Thompson also draws log-latency); 'thompson (success only)' uses "
        "Objective(w_latency=0, w_cost=0) like MABWiser's Beta-Bernoulli model. KL-UCB is compared with MABWiser's UCB1 (MABWiser has no KL-UCB).",
        "Thompson redraws its 256-draw batch every max(1, min(32, updates/100)) updates; the mean includes that amortised cost, the median rarely does.",
        "UCB1 and KL-UCB compute their index per model in plain Python from parts cached per model and recomputed only for the "
        "model that changed (KL-UCB: one exponential per model along the tangent at its bound's root, Newton's method when that tangent stops being exact).",
        "Machine: 2 cores shared with other processes (see load_avg below); BLAS thread variables untouched. Compare within this run, not across runs.",
    ]
    if not have_mabwiser:
        notes.append("MABWiser is not installed (pip install -e '.[bench]'): its rows are missing.")
    _plot(rows, args.out / "policy_cost.png")
    publish(args, "policy_cost", "Decision cost per call: ours vs MABWiser", headline, sections=sections, notes=notes)
    return {"rows": rows, "verdicts": verdicts, "out": args.out}


def _plot(rows: list[dict], path: Path) -> None:
    plt = setup_matplotlib()
    ks = sorted({r["models"] for r in rows})
    grid = (len(ks) + 1) // 2
    fig, axes = plt.subplots(grid, 2, figsize=(14, 4.8 * grid), sharex=True)
    for ax, k in zip(np.atleast_1d(axes).ravel(), ks):
        sub = [r for r in rows if r["models"] == k]
        y = np.arange(len(sub))
        labels = [LABEL.get(r["policy"], r["policy"]) for r in sub]
        rank = np.array([r["rank_median_us"] for r in sub])
        update = np.array([r["update_median_us"] for r in sub])
        p99 = np.array([r["cycle_p99_us"] for r in sub])
        colors = [
            "tab:orange" if r["source"] == "MABWiser" else "tab:gray" if "baseline" in r["source"] else "tab:blue"
            for r in sub
        ]
        ax.barh(y, rank, color=colors, alpha=0.9, label="rank / predict (median)")
        ax.barh(y, update, left=rank, color=colors, alpha=0.45, label="update / partial_fit (median)")
        ax.plot(p99, y, "k|", markersize=12, label="cycle p99")
        for yi, (r, u) in enumerate(zip(rank, update)):
            ax.text(r + u, yi, f" {r + u:.1f}", va="center", fontsize=7)
        for limit in sorted(set(TARGET_CYCLE_US.values())):
            ax.axvline(limit, color="tab:red", ls="--", lw=0.8, label=f"cycle target {limit:g} µs")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(left=1.0)
        ax.set_xlabel("µs per decision cycle (log scale)")
        ax.set_title(f"{k} models: median rank + update (blue: ours, grey: baseline, orange: MABWiser)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    savefig(fig, path)


if __name__ == "__main__":
    main()
