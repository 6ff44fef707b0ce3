"""Offline replay validated on data nobody here wrote (Open Bandit Dataset) and on the router's own logs.

1. Open Bandit Dataset (../shared/data/obd, OBP 0.5.7 sample, 10,000 rounds each of a uniformly
   random and a Bernoulli Thompson sampling logging policy, 80 items, 3 positions): using only the
   BTS logs and their propensities, estimate the click rate of the uniformly random policy (1/80 per
   item at every position) with IPS, SNIPS, DM and DR, and compare with its on-policy value, the
   mean click of the random logs. Also with weights clipped at 100, DR with other reward models (the
   cell means fitted in-sample, as before issue 19; a ridge over the 80 user-item affinities), its
   spread over the cross-fitting's fold seeds, and its sensitivity to the reward model's
   pseudo-count. OBP's own numbers on the same file are the reference.
2. Router logs: a simulated loopback fleet of three chat models (different error rates and
   accuracies) is routed under the ``random`` policy with accuracy feedback for every answer; then
   every policy (learning ones replayed, fixed ones too) is evaluated offline, and run online on the
   same fleet for ground truth: ``--online-runs`` runs of the replay's horizon (the number of
   matched rounds) for learning policies, their mean being the online value.
3. Calibration of a learning policy's interval, where the truth is known precisely: the same three
   models simulated in process (no HTTP), ``--calibration-logs`` random-policy logs; for each, the
   replay's 95% interval against the policy's expected online value at the replay's horizon
   (a learning curve averaged over 400 online runs). Shown next to the interval that resamples only
   the matched rounds of one trajectory, which ignores the policy's own randomness.

    .venv/bin/python -m experiments.replay_validation [--quick] [--out DIR] [--calls N] [--online-runs R]
        [--fixed-calls N] [--n-boot B] [--learning-boot B] [--calibration-logs L]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from zeta_adaptive import POLICIES, AllModelsFailed, Objective, Router, make_policy
from zeta_adaptive.replay import (
    DR,
    CellMeans,
    FeatureRidge,
    Learning,
    Replay,
    Uniform,
    compare,
    from_frame,
    load_logged,
    prepare,
)
from zeta_adaptive.simulate import Fleet, ModelSpec

from .common import markdown_table, parse_args, savefig, setup_matplotlib, write_csv, write_markdown

OBD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "obd"
#: OBP 0.5.7 on the BTS sample, uniform target (from the issue)
OBP = {"ips": 0.002360, "snips": 0.002334, "dr": 0.003402}
TASK = "chat"
SPECS = (
    ModelSpec("small-3b", latency_s=0.002, error_rate=0.02, accuracy={TASK: 0.62}),
    ModelSpec("mid-8b", latency_s=0.004, error_rate=0.05, accuracy={TASK: 0.80}),
    ModelSpec("large-70b", latency_s=0.008, error_rate=0.15, accuracy={TASK: 0.86}),
)
ROUTE = [s.name for s in SPECS]  # the static table's order: the old table sent everything to small-3b
#: expected reward of each model: P(success) x mean accuracy
EXPECTED = {s.name: (1 - s.error_rate) * s.accuracy[TASK] for s in SPECS}
MESSAGES = [{"role": "user", "content": "Summarise the release notes."}]
OBJECTIVE = Objective()  # the router's default: P(success) * accuracy - 0.1 * latency_s


def obd_frame(policy: str) -> pd.DataFrame:
    """One OBD sample as a replay frame: item = action, click = reward, position in the reward model,
    the user-item affinities as features (for :class:`FeatureRidge`)."""
    raw = pd.read_csv(OBD / policy / "all" / "all.csv", index_col=0)
    affinities = [c for c in raw.columns if c.startswith("user-item_affinity_")]
    return from_frame(
        raw,
        action="item_id",
        reward="click",
        propensity="propensity_score",
        position="position",
        time="timestamp",
        features=affinities,
    )


#: DR's reward models compared on OBD besides the default (cell means cross-fitted over 5 folds)
DR_MODELS = {
    "dr (in-sample cell means, before)": CellMeans(),
    "dr (ridge on 80 user-item affinities, 5 folds)": FeatureRidge(folds=5),
}


def _obd_row(label: str, e: Any, truth: float) -> dict:
    """One OBD table row from an estimator's result (a compare() record or an Estimate)."""
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k)
    return {
        "part": "obd",
        "estimator": label,
        "policy": "uniform",
        "value": get("value"),
        "ci_low": get("ci_low"),
        "ci_high": get("ci_high"),
        "ess": get("ess"),
        "n": get("n"),
        "truth": truth,
        "rel_error": abs(get("value") - truth) / truth,
        "covers_truth": get("ci_low") <= truth <= get("ci_high"),
        "obp": OBP.get(label),
    }


def obd_validation(n_boot: int, seed: int) -> tuple[list[dict], list[dict], float]:
    """Estimates of the uniform policy's click rate from the BTS logs, against the random logs' mean."""
    random_logs = prepare(obd_frame("random"))
    truth = float(random_logs.reward.mean())
    bts = prepare(obd_frame("bts"))
    rows = []
    for clip in (None, 100.0):
        table = compare(bts, ["uniform"], ["ips", "snips", "dm", "dr"], seed=seed, n_boot=n_boot, clip=clip).table
        for r in table.to_dict("records"):
            if clip is not None and r["estimator"] == "dm":
                continue  # DM has no weights to clip
            rows.append(_obd_row(r["estimator"] + (f" (clip {clip:g})" if clip else ""), r, truth))
    for label, model in DR_MODELS.items():
        rows.append(_obd_row(label, DR(n_boot=n_boot, seed=seed, reward_model=model).evaluate(bts, Uniform()), truth))
    sensitivity = []
    for label, make in (
        ("cell means, 5 folds (default)", lambda s: CellMeans(folds=5, seed=s)),
        ("ridge on the affinities, 5 folds", lambda s: FeatureRidge(folds=5, seed=s)),
    ):
        values = np.array([DR(reward_model=make(s)).estimate(bts, Uniform()) for s in range(10)])
        sensitivity.append(
            {
                "dr reward model": label,
                "setting": "fold seeds 0-9",
                "dr": values.mean(),
                "sd": values.std(),
                "rel_error": abs(values.mean() - truth) / truth,
                "mean_rel_error": float(np.mean(np.abs(values - truth))) / truth,
            }
        )
    for m in (0.5, 1.0, 2.0, 5.0, 10.0, 100.0):
        e = DR(n_boot=n_boot, seed=seed, reward_model=CellMeans(pseudo_count=m, folds=5)).evaluate(bts, Uniform())
        sensitivity.append(
            {
                "dr reward model": "cell means, 5 folds",
                "setting": f"pseudo_count {m:g} (default 1)",
                "dr": e.value,
                "sd": None,
                "rel_error": abs(e.value - truth) / truth,
                "mean_rel_error": None,
            }
        )
    return rows, sensitivity, truth


def router_config(fleet: Fleet, url: str, policy: str, options: dict, seed: int, order: list[str]) -> dict:
    """A one-route config on the fleet; circuit breakers off.

    Cooldowns change which models are eligible over wall-clock time, which a replay at a different
    pace cannot reproduce; this validation is about the policies.
    """
    cfg = fleet.fleet_config(routes={TASK: order}, store=url, seed=seed)
    cfg["objective"] = {"w_latency": OBJECTIVE.w_latency, "w_cost": OBJECTIVE.w_cost, "kind": OBJECTIVE.kind}
    cfg["routes"][TASK].update(policy=policy, **options)
    cfg["breaker"] = {"consecutive_failures": 10**6, "failure_rate": 1.0, "min_calls": 10**6}
    return cfg


def drive(
    fleet: Fleet,
    url: str,
    policy: str,
    calls: int,
    seed: int,
    order: list[str] | None = None,
    options: dict | None = None,
) -> None:
    """Route ``calls`` calls one after another, with accuracy feedback for every answer."""
    rng = np.random.default_rng(seed + 10_000)
    with Router(router_config(fleet, url, policy, options or {}, seed, order or ROUTE)) as router:
        for _ in range(calls):
            try:
                result = router.chat(TASK, MESSAGES, max_tokens=8)
            except AllModelsFailed:
                continue
            router.feedback(result.call_id, fleet.sample_accuracy(result.model, TASK, rng))


def online(fleet: Fleet, tmp: Path, spec: str, calls: int, seed: int) -> float:
    """Mean reward (primary success x accuracy) of one online run of a policy spec on the fleet."""
    safe = spec.replace(":", "_").replace("=", "_").replace(",", "_")
    url = f"sqlite:///{tmp / f'online-{safe}-{seed}.db'}"
    if spec.startswith("always:"):
        model = spec.split(":", 1)[1]
        drive(fleet, url, "static", calls, seed, [model] + [m for m in ROUTE if m != model])
    else:
        name, _, opts = spec.partition(":")
        policy = {"uniform": "random"}.get(name, name)
        options = dict((k, float(v)) for k, v in (o.split("=") for o in opts.split(",") if o))
        drive(fleet, url, policy, calls, seed, options=options)
    return float(load_logged(url).reward.mean())


def exact(spec: str) -> float:
    """The expected reward per call of a fixed policy, from the fleet's specs (NaN for learning ones)."""
    if spec == "static":
        return EXPECTED[ROUTE[0]]
    if spec == "uniform":
        return float(np.mean(list(EXPECTED.values())))
    if spec.startswith("always:"):
        return EXPECTED[spec.split(":", 1)[1]]
    return float("nan")


def router_validation(
    calls: int, online_runs: int, fixed_calls: int, n_boot: int, learning_boot: int, seed: int
) -> list[dict]:
    """Offline estimates from random-policy logs vs online runs, for every policy."""
    learning = [p for p in ("thompson", "ucb1", "kl_ucb", "epsilon_greedy") if p in POLICIES]
    specs = [*learning, "static", "uniform", "always:mid-8b", "always:large-70b"]
    rows = []
    with Fleet([dataclasses.replace(s) for s in SPECS], seed=seed) as fleet, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log_url = f"sqlite:///{tmp / 'logged.db'}"
        t0 = time.perf_counter()
        drive(fleet, log_url, "random", calls, seed)
        log_s = time.perf_counter() - t0
        logged = prepare(load_logged(log_url), models={TASK: ROUTE})
        t0 = time.perf_counter()
        offline = compare(
            logged, specs, objective=OBJECTIVE, seed=seed, n_boot=n_boot, learning_boot=learning_boot, progress=True
        ).table
        offline_s = time.perf_counter() - t0
        for spec in tqdm(specs, desc="online runs"):
            mine = offline[offline.policy == spec]
            learns = spec in learning
            horizon = round(mine[mine.estimator == "replay"].ess.iloc[0]) if learns else fixed_calls
            runs = online_runs if learns else 1
            values = [online(fleet, tmp, spec, horizon, seed + 100 + i) for i in range(runs)]
            value = float(np.mean(values))
            spread = float(np.std(values, ddof=1) / np.sqrt(runs)) if runs > 1 else float("nan")
            for r in mine.to_dict("records"):
                rows.append(
                    {
                        "part": "router",
                        **r,
                        "truth": value,
                        "truth_se": spread,
                        "exact": exact(spec),
                        "online_calls": horizon * runs,
                        "rel_error": abs(r["value"] - value) / value,
                        "covers_truth": r["ci_low"] <= value <= r["ci_high"],
                    }
                )
        rows.append({"part": "router-timing", "estimator": "logging", "value": log_s, "n": calls})
        rows.append({"part": "router-timing", "estimator": "offline compare", "value": offline_s, "n": calls})
    return rows


def _simulate(policy, rng: np.random.Generator, i: int) -> tuple[bool, float]:
    """One call to model i, in process: success, then an accuracy drawn as the fleet draws it."""
    spec = SPECS[i]
    ok = bool(rng.random() >= spec.error_rate)
    mean = spec.accuracy[TASK]
    return ok, float(rng.beta(20 * mean, 20 * (1 - mean))) if ok else float("nan")


def learning_curve(name: str, horizon: int, runs: int, objective: Objective) -> np.ndarray:
    """Expected mean reward of the first h online calls, h = 1..horizon, averaged over runs."""
    rng = np.random.default_rng(12345)
    total = np.zeros(horizon)
    for r in range(runs):
        policy = make_policy(name, ROUTE, objective, seed=10**6 + r)
        rewards = np.zeros(horizon)
        for t in range(horizon):
            model = policy.rank().primary
            ok, acc = _simulate(policy, rng, ROUTE.index(model))
            policy.update(model, ok, SPECS[ROUTE.index(model)].latency_s, 0.0)
            if ok:
                policy.feedback(model, acc)
                rewards[t] = acc
        total += np.cumsum(rewards) / np.arange(1, horizon + 1)
    return total / runs


def calibration(policies: list[str], logs: int, calls: int, learning_boot: int, seed: int) -> list[dict]:
    """Coverage of the expected online value by the replay's interval, over many simulated logs."""
    objective = Objective(w_latency=0.0)
    rows = []
    for name in policies:
        curve = learning_curve(name, int(calls / len(SPECS) * 1.3), 400, objective)
        hits = {"bootstrap of the replay (default)": [], "matched rounds only": []}
        widths = {k: [] for k in hits}
        errors = []
        for i in tqdm(range(logs), desc=f"calibration {name}"):
            rng = np.random.default_rng(seed + 1000 + i)
            a = rng.integers(0, len(SPECS), calls)
            draws = [_simulate(None, rng, int(k)) for k in a]
            ok = np.array([d[0] for d in draws], dtype=float)
            acc = np.array([d[1] for d in draws])
            frame = pd.DataFrame(
                {
                    "action": np.asarray(ROUTE, dtype=object)[a],
                    "propensity": 1 / len(SPECS),
                    "success": ok,
                    "latency_s": [SPECS[k].latency_s for k in a],
                    "cost": 0.0,
                    "accuracy": acc,
                    "reward": np.nan_to_num(acc),
                }
            )
            data = prepare(frame, models=ROUTE)
            target = Learning(name, objective=objective, seed=seed + i)
            est = Replay(learning_boot=learning_boot, seed=seed + i).evaluate(data, target)
            truth = float(curve[min(int(est.ess), len(curve)) - 1])
            matched = data.reward[Replay().matched(data, target)]
            resampled = rng.choice(matched, size=(1000, len(matched))).mean(axis=1)
            fixed = tuple(np.quantile(resampled, [0.025, 0.975]))
            for key, (lo, hi) in (
                ("bootstrap of the replay (default)", (est.ci_low, est.ci_high)),
                ("matched rounds only", fixed),
            ):
                hits[key].append(lo <= truth <= hi)
                widths[key].append((hi - lo) / 2)
            errors.append(est.value - truth)
        for key in hits:
            rows.append(
                {
                    "part": "calibration",
                    "policy": name,
                    "interval": key,
                    "logs": logs,
                    "coverage": float(np.mean(hits[key])),
                    "mean_half_width": float(np.mean(widths[key])),
                    "sd_error": float(np.std(errors)),
                    "mean_error": float(np.mean(errors)),
                }
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Offline intervals (bars) and online values (diamonds) per policy and estimator."""
    plt = setup_matplotlib()
    data = [r for r in rows if r["part"] == "router"]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(data) + 1.2))
    labels = []
    for i, r in enumerate(data):
        ax.plot([r["ci_low"], r["ci_high"]], [i, i], color="tab:blue" if r["covers_truth"] else "tab:red", lw=3)
        ax.plot(r["value"], i, "|", color="black", ms=10)
        ax.plot(r["truth"], i, "D", color="tab:orange", ms=5)
        labels.append(f"{r['policy']} / {r['estimator']}")
    ax.set_yticks(range(len(data)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean reward per call (primary success x accuracy)")
    ax.set_title("Offline 95% intervals (bars) vs online value (diamonds)")
    savefig(fig, path)


def headline(rows: list[dict]) -> list[dict]:
    """The checks in one table: what was checked, the outcome, the target, met or missed."""
    out = []
    obd = [r for r in rows if r["part"] == "obd"]
    if obd:
        plain = {r["estimator"]: r for r in obd}
        covered = sum(bool(r["covers_truth"]) for r in obd)
        out += [
            {
                "workload": "OBD, uniform policy from the BTS logs: IPS/SNIPS/DM/DR intervals (plain, clipped) cover the truth",
                "ours": f"{covered} of {len(obd)}",
                "target": "all",
                "met?": "met" if covered == len(obd) else "MISSED",
            },
            {
                "workload": "OBD: IPS equals OBP 0.5.7's IPW on the same file",
                "ours": f"{plain['ips']['value']:.6f}",
                "target": f"{OBP['ips']:.6f}",
                "met?": "met" if abs(plain["ips"]["value"] - OBP["ips"]) < 5e-7 else "MISSED",
            },
            {
                "workload": "OBD: DR's relative error against the truth",
                "ours": f"{plain['dr']['rel_error']:.1%}",
                "target": f"no more than OBP's DR ({abs(OBP['dr'] - plain['dr']['truth']) / plain['dr']['truth']:.1%})",
                "met?": "met"
                if abs(plain["dr"]["value"] - plain["dr"]["truth"]) <= abs(OBP["dr"] - plain["dr"]["truth"])
                else "MISSED",
            },
        ]
    router = [r for r in rows if r["part"] == "router"]
    for label, chosen in (
        ("the replay estimator", [r for r in router if r["estimator"] == "replay"]),
        ("every estimator", router),
    ):
        inside = sum(bool(r["covers_truth"]) for r in chosen)
        out.append(
            {
                "workload": f"router logs: online value inside the offline 95% interval, {label}",
                "ours": f"{inside} of {len(chosen)}",
                "target": "all",
                "met?": "met" if inside == len(chosen) else "MISSED",
            }
        )
    for r in rows:
        if r["part"] == "calibration":
            out.append(
                {
                    "workload": f"calibration, {r['policy']}: {r['interval']} covers the expected online value",
                    "ours": f"{r['coverage']:.1%} of {r['logs']} logs",
                    "target": "95% nominal",
                    "met?": "–",
                }
            )
    return out


def main() -> None:
    args = parse_args(
        __doc__,
        **{
            "--calls": {"type": int, "default": 6000, "help": "logged calls under the random policy"},
            "--online-runs": {"type": int, "default": 5, "help": "online runs per learning policy"},
            "--fixed-calls": {"type": int, "default": 3000, "help": "online calls per fixed policy"},
            "--n-boot": {"type": int, "default": 1000, "help": "bootstrap resamples (fixed targets)"},
            "--learning-boot": {"type": int, "default": 100, "help": "bootstrap replays (learning policies)"},
            "--calibration-logs": {
                "type": int,
                "default": 30,
                "help": "simulated logs per policy in the calibration study",
            },
        },
    )
    if args.quick:
        args.calls, args.online_runs, args.fixed_calls, args.n_boot, args.learning_boot, args.calibration_logs = (
            600,
            2,
            300,
            200,
            30,
            3,
        )
    notes = []
    rows: list[dict] = []
    sections = []
    if OBD.exists():
        obd_rows, sensitivity, truth = obd_validation(args.n_boot, args.seed)
        rows += obd_rows
        table = pd.DataFrame(obd_rows)[
            ["estimator", "value", "ci_low", "ci_high", "ess", "rel_error", "covers_truth", "obp"]
        ]
        sens = pd.DataFrame(sensitivity)
        sections.append(
            (
                "Open Bandit Dataset: the uniform policy's click rate from the BTS logs",
                f"Truth (on-policy, mean click of the random logs): {truth:.6f} (38 clicks in 10,000 rounds).\n\n"
                + markdown_table(list(table.columns), table.to_dict("records"))
                + "\n\nDR's spread over the cross-fitting's fold seeds, and its sensitivity to the cell means' "
                "pseudo-count (95% intervals: bootstrap over rounds, the reward model refitted on every resample):\n\n"
                + markdown_table(list(sens.columns), sens.to_dict("records")),
            )
        )
    else:
        notes.append(f"Open Bandit Dataset not found at {OBD}: that part was skipped")
    router_rows = router_validation(
        args.calls, args.online_runs, args.fixed_calls, args.n_boot, args.learning_boot, args.seed
    )
    rows += router_rows
    inside = [r for r in router_rows if r["part"] == "router"]
    table = pd.DataFrame(inside)[
        [
            "policy",
            "estimator",
            "value",
            "ci_low",
            "ci_high",
            "ess",
            "truth",
            "truth_se",
            "exact",
            "online_calls",
            "covers_truth",
        ]
    ]
    sections.append(
        (
            "Router logs: offline (random-policy logs) vs online on the same simulated fleet",
            f"{args.calls:,} logged calls under `random`; models {', '.join(f'{s.name} (error {s.error_rate}, accuracy {s.accuracy[TASK]})' for s in SPECS)}; "
            f"static table = {ROUTE[0]}. Learning policies: online value = mean of {args.online_runs} runs of the replay's horizon "
            "(`ess` of the replay row = matched rounds); fixed policies: one run of "
            f"{args.fixed_calls:,} calls. `truth_se` is the standard error of the mean of the online runs; `exact` is a fixed "
            "policy's expected reward from the fleet's specs, (1 - error rate) x mean accuracy.\n\n"
            + markdown_table(list(table.columns), table.to_dict("records"))
            + f"\n\nOnline value inside the offline interval: {sum(r['covers_truth'] for r in inside)} of {len(inside)} (policy, estimator) pairs; "
            f"for the replay estimator {sum(r['covers_truth'] for r in inside if r['estimator'] == 'replay')} of {sum(r['estimator'] == 'replay' for r in inside)}.",
        )
    )
    learning = [p for p in ("thompson", "ucb1") if p in POLICIES]
    calibration_rows = calibration(learning, args.calibration_logs, 900, args.learning_boot, args.seed)
    rows += calibration_rows
    cal = pd.DataFrame(calibration_rows)[
        ["policy", "interval", "logs", "coverage", "mean_half_width", "sd_error", "mean_error"]
    ]
    sections.append(
        (
            "Calibration of a learning policy's 95% interval (in-process simulation, known truth)",
            f"{args.calibration_logs} logs of 900 random-policy calls to the same three models, simulated in process; truth = the policy's "
            "expected mean reward over the replay's horizon (400 online runs). `sd_error` and `mean_error`: spread and bias of the replay "
            "estimate around the truth. The default interval replays resampled logs with fresh seeds; the alternative resamples the "
            "matched rewards of one trajectory and ignores the policy's own randomness.\n\n"
            + markdown_table(list(cal.columns), cal.to_dict("records")),
        )
    )
    write_csv(args.out / "replay_validation.csv", rows)
    plot(rows, args.out / "replay_validation.png")
    timing = [r for r in router_rows if r["part"] == "router-timing"]
    notes += [f"{r['estimator']}: {r['value']:.1f} s for {r['n']:,} calls" for r in timing]
    write_markdown(
        args.out / "replay_validation.md",
        "Offline replay: validation",
        ["workload", "ours", "target", "met?"],
        headline(rows),
        command=args.command,
        sections=sections,
        notes=notes,
        quick=args.quick,
    )
    print(f"wrote {args.out / 'replay_validation.md'}")


if __name__ == "__main__":
    main()
