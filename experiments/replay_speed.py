"""Speed of offline evaluation on 1,000,000 synthetic logged calls (a benchmark, not a timed test).

Targets from the issue: IPS, SNIPS and DR in under 1 s each; the replay of a learning policy over
1,000,000 calls with 5 models in under 20 s. The log looks like :func:`load_logged`'s output for one
task type under the ``random`` policy (propensity 1/5): primary success, latency, cost, accuracy
feedback, reward = success x accuracy. Estimator times are the median of ``--repeats`` runs of
``estimate`` on prepared arrays (preparing the DataFrame is timed separately); a learning replay is
timed as ``Replay.matched`` (the whole replay; the estimate is the mean reward of those rounds),
median of ``--replay-repeats``. One interval is timed, for scale.

    .venv/bin/python -m experiments.replay_speed [--quick] [--out DIR] [--calls N] [--repeats R] [--replay-repeats R]
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd

from zeta_adaptive import POLICIES, Objective, make_policy
from zeta_adaptive.replay import DM, DR, IPS, SNIPS, Always, Learning, Replay, Uniform, prepare

from .common import machine_line, markdown_table, parse_args, write_csv, write_markdown

MODELS = ("m0", "m1", "m2", "m3", "m4")
SUCCESS = np.array([0.98, 0.95, 0.9, 0.97, 0.85])
ACCURACY = np.array([0.6, 0.75, 0.85, 0.7, 0.8])
LATENCY = np.array([0.2, 0.5, 1.5, 0.4, 0.9])


def synthetic_log(n: int, seed: int) -> pd.DataFrame:
    """A router-shaped log of n calls under the uniformly random policy over five models."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(MODELS), n)
    success = (rng.random(n) < SUCCESS[a]).astype(float)
    accuracy = np.where(success > 0, rng.beta(20 * ACCURACY[a], 20 * (1 - ACCURACY[a])), np.nan)
    return pd.DataFrame(
        {
            "call_id": np.arange(n).astype(str),
            "time": np.arange(n, dtype=float),
            "task_type": "chat",
            "action": np.asarray(MODELS, dtype=object)[a],
            "propensity": 1.0 / len(MODELS),
            "success": success,
            "latency_s": LATENCY[a] * rng.lognormal(0.0, 0.3, n),
            "cost": 0.0,
            "accuracy": accuracy,
            "reward": success * np.nan_to_num(accuracy),
        }
    )


def policy_alone(name: str, objective: Objective, steps: int, seed: int) -> None:
    """The policy's own cost: ``steps`` cycles of rank, update and feedback, with no replay around them."""
    rng = np.random.default_rng(seed)
    policy = make_policy(name, MODELS, objective, seed=seed)
    ok = (rng.random(steps) < 0.9).tolist()
    for t in range(steps):
        model = policy.rank().primary
        policy.update(model, ok[t], 0.5, 0.0)
        if ok[t]:
            policy.feedback(model, 0.7)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    args = parse_args(
        __doc__,
        **{
            "--calls": {"type": int, "default": 1_000_000, "help": "logged calls"},
            "--repeats": {"type": int, "default": 3, "help": "timed runs per estimator"},
            "--replay-repeats": {"type": int, "default": 1, "help": "timed runs per learning replay"},
        },
    )
    if args.quick:
        args.calls, args.repeats, args.replay_repeats = 50_000, 1, 1
    start_machine = machine_line()
    df = synthetic_log(args.calls, args.seed)
    prep_s, data = timed(lambda: prepare(df), 1)
    rows = [
        {
            "what": "prepare (DataFrame -> arrays)",
            "estimator": "",
            "target": "",
            "seconds": prep_s,
            "value": "",
            "matched": "",
            "goal_s": "",
        }
    ]
    for target in (Uniform(), Always("m2")):
        for est in (IPS(), SNIPS(), DM(), DR()):
            seconds, value = timed(lambda est=est, target=target: est.estimate(data, target), args.repeats)
            goal = 1.0 if est.name in ("ips", "snips", "dr") else ""
            rows.append(
                {
                    "what": "estimate",
                    "estimator": est.name,
                    "target": target.name,
                    "seconds": seconds,
                    "value": value,
                    "matched": "",
                    "goal_s": goal,
                }
            )
    objective = Objective()  # the router's default: latency enters the score
    learning = [p for p in ("thompson", "ucb1", "epsilon_greedy", "static") if p in POLICIES]
    for name in learning:
        # a new target object per run: a log remembers the replay of each target it has seen
        seconds, matched = timed(
            lambda name=name: Replay().matched(data, Learning(name, objective=objective, seed=args.seed)),
            args.replay_repeats,
        )
        value = float(data.reward[matched].mean())  # the replay estimate (one task type)
        rows.append(
            {
                "what": "replay (learning, 5 models)",
                "estimator": "replay",
                "target": name,
                "seconds": seconds,
                "value": value,
                "matched": len(matched),
                "goal_s": 20.0,
            }
        )
        steps = len(matched)
        own_s, _ = timed(lambda name=name, steps=steps: policy_alone(name, objective, steps, args.seed), 1)
        rows.append(
            {
                "what": "the policy alone, same number of decisions",
                "estimator": "",
                "target": name,
                "seconds": own_s,
                "value": "",
                "matched": len(matched),
                "goal_s": "",
            }
        )
    boot_s, interval = timed(lambda: IPS(n_boot=200).interval(data, Uniform()), 1)
    rows.append(
        {
            "what": "interval, 200 resamples",
            "estimator": "ips",
            "target": "uniform",
            "seconds": boot_s,
            "value": f"[{interval[0]:.4f}, {interval[1]:.4f}]",
            "matched": "",
            "goal_s": "",
        }
    )
    write_csv(args.out / "replay_speed.csv", rows)
    alone = {r["target"]: r["seconds"] for r in rows if r["what"].startswith("the policy alone")}
    headline = []
    for name in ("ips", "snips", "dr"):
        worst = max((r for r in rows if r["estimator"] == name and r["what"] == "estimate"), key=lambda r: r["seconds"])
        headline.append(
            {
                "workload": f"{name.upper()} estimate, {args.calls:,} logged calls (slower of two targets)",
                "ours": f"{worst['seconds']:.3f} s",
                "target": "< 1 s",
                "met?": "met" if worst["seconds"] < 1.0 else "MISSED",
            }
        )
    for r in rows:
        if r["what"].startswith("replay ("):
            own = alone[r["target"]]
            headline.append(
                {
                    "workload": f"replay of {r['target']} learning, {args.calls:,} calls, 5 models",
                    "ours": f"{r['seconds']:.1f} s",
                    "target": f"< 20 s (the policy's own decisions: {own:.1f} s, {1e6 * own / r['matched']:.0f} us each)",
                    "met?": "met" if r["seconds"] < 20.0 else "MISSED",
                }
            )
    write_markdown(
        args.out / "replay_speed.md",
        f"Offline replay speed: {args.calls:,} logged calls, 5 models",
        ["workload", "ours", "target", "met?"],
        headline,
        command=args.command,
        sections=[
            (
                "All measurements",
                markdown_table(["what", "estimator", "target", "seconds", "goal_s", "matched", "value"], rows),
            )
        ],
        notes=[
            "estimate: median of the repeats on prepared arrays; DR and DM fit their reward model inside the timing",
            "replay: one policy per run, updated only on matched rounds (about 1 in 5 here); the cost per matched round is "
            "the policy's own rank + update + feedback (timed alone on the next row), the rest is vectorised: "
            "a replay that misses its goal does so by the policy's own cycle",
            f"machine at the start: {start_machine}",
        ],
        quick=args.quick,
    )
    print((args.out / "replay_speed.md").read_text())


if __name__ == "__main__":
    main()
