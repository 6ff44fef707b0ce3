"""Per-prompt routing with a cost budget on real model outcomes: RouteLLM's MMLU file (Mixtral-8x7B weak, GPT-4 strong).

The uncontaminated MMLU questions are streamed in random orders; for each question the policy
picks a model, is told that model's correctness (one-sided feedback: never the other model's),
and pays cost 1 for a strong call, 0 for a weak one. A :class:`~zeta_adaptive.BudgetPacer`
holds the strong-call share at each budget of a sweep. The policies run as the router runs them
(rank, update, feedback, pacer), but as objects: 14k questions x budgets x orders through HTTP
would not fit in the time on 2 shared cores. One configuration also runs end to end through
:class:`~zeta_adaptive.Router` over the loopback fleet (:mod:`zeta_adaptive.simulate`), ``--router``.

Policies: ``thompson_subjects`` (per-task Thompson, subjects as task types, one budget multiplier
shared by all subjects), ``thompson_one`` (one task type for all), ``linear_thompson`` and
``lin_ucb`` (MMLU as one task type, no subject given), and ``offline_logreg`` (two logistic
regressions on the same features, trained on a held-out half, routing by the predicted gain,
thresholds at the deciles of its scores as RouteLLM does). Metrics as RouteLLM defines them:
strong-call share, accuracy, PGR, APGR (trapezoid over the share, ends included), CPT(50%), CPT(80%).

    .venv/bin/python -m experiments.routellm_mmlu --orders 10 --router

writes ``experiments/results/routellm_mmlu.{json,md}`` and plots ``routellm_mmlu_*.png``.

Any other benchmark in RouteLLM's response format runs the same way: ``--data FILE`` (a CSV with a
``prompt`` column and a 0/1 or true/false correctness column per model, ``--weak-column`` and
``--strong-column``; optional ``subject`` and ``contaminated`` columns) writes
``routellm_NAME.*`` (``--name``, default the file's stem). Without subjects every question is one
task type and ``thompson_subjects`` is skipped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize
from tqdm import tqdm

from zeta_adaptive import POLICIES, BudgetPacer, Features, Featurizer, Objective, Policy, Router, make_policy
from zeta_adaptive.simulate import Fleet, ModelSpec

from .common import RESULTS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu.csv"
MODELS = ("weak", "strong")
OBJECTIVE = Objective(w_latency=0.0, w_cost=0.0)
BUDGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ONLINE = ("linear_thompson", "probit_thompson", "lin_ucb", "thompson_one", "thompson_subjects")

# RouteLLM, arXiv:2406.18665v4, Table 2 (5-shot MMLU): routers trained elsewhere, not on these questions
PUBLISHED = {
    "random": (0.500, 50.07, 79.93),
    "matrix factorization (Arena)": (0.524, 45.00, 76.86),
    "BERT (Arena + D_gold)": (0.572, 41.30, 72.20),
    "matrix factorization (Arena + D_gold)": (0.597, 35.46, 71.40),
    "causal LLM (Arena + D_gold)": (0.600, 35.49, 70.31),
    "SW ranking (Arena + D_gold), best": (0.603, 35.40, 71.55),
}


def load(path: Path = DATA, weak: str = "weak", strong: str = "strong") -> pd.DataFrame:
    """The questions RouteLLM evaluates on (not flagged contaminated): ``prompt``, ``weak`` and ``strong``
    (1 if that model answered right), and ``subject`` if the file has one."""
    frame = pd.read_csv(path)
    missing = [c for c in ("prompt", weak, strong) if c not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(frame.columns)})")
    if "contaminated" in frame.columns:
        frame = frame[frame["contaminated"].astype(bool) == 0]
    frame = frame.rename(columns={weak: "weak", strong: "strong"})
    for column in ("weak", "strong"):
        values = frame[column].map(
            {True: 1, False: 0, "True": 1, "False": 0, "true": 1, "false": 0}
        )  # 1 == True, 0 == False
        if values.isna().any():
            raise SystemExit(f"{path}: column {column!r} must hold 0/1 or true/false correctness")
        frame[column] = values.astype(int)
    return frame.reset_index(drop=True)


# -- RouteLLM's metrics ---------------------------------------------------------------------------
def curve(points: list[tuple[float, float]], acc_weak: float, acc_strong: float) -> tuple[np.ndarray, np.ndarray]:
    """(share, accuracy) points with both ends, sorted by share."""
    pts = sorted([(0.0, acc_weak), (1.0, acc_strong), *points])
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def metrics(points: list[tuple[float, float]], acc_weak: float, acc_strong: float) -> dict[str, float]:
    """APGR (trapezoid over the strong share, as RouteLLM), CPT(50%) and CPT(80%) in percent."""
    share, acc = curve(points, acc_weak, acc_strong)
    gap = acc_strong - acc_weak
    apgr = (np.trapezoid(acc, share) - acc_weak) / gap
    cpt = {x: float(np.interp(acc_weak + x * gap, acc, share) * 100) for x in (0.5, 0.8)}
    return {"apgr": float(apgr), "cpt50": cpt[0.5], "cpt80": cpt[0.8]}


# -- online runs (policy objects, as the router drives them) -----------------------------------------
class Stream:
    """One policy per task type, one budget multiplier for all of them, fed as the router feeds a policy."""

    def __init__(
        self, kind: str, tasks: list[str], budget: float | None, seed: int, options: dict[str, Any] | None = None
    ) -> None:
        name = "thompson" if kind.startswith("thompson") else kind
        self.contextual = getattr(POLICIES[name], "contextual", False)
        mine = {k: v for k, v in (options or {}).items() if k in POLICIES[name].options}
        self.policies: dict[str, Policy] = {
            t: make_policy(name, MODELS, OBJECTIVE, seed=seed + i, **mine) for i, t in enumerate(tasks)
        }
        rate = {"rate": options["budget_rate"]} if options and "budget_rate" in options else {}
        self.pacer = BudgetPacer(budget, OBJECTIVE, **rate) if budget is not None else None

    def step(self, task: str, x: Features | None, correct: tuple[int, int]) -> tuple[int, int]:
        """Route one question; returns (strong chosen, correct)."""
        policy = self.policies[task]
        if self.pacer is not None:
            policy.objective = replace(OBJECTIVE, w_cost=self.pacer.cost_weight)
        model = (policy.rank(None, x) if self.contextual else policy.rank()).primary
        strong = int(model == "strong")
        right = correct[strong]
        policy.update(model, True, 0.0, float(strong))
        if self.contextual:
            policy.feedback(model, float(right), x)  # type: ignore[call-arg]
        else:
            policy.feedback(model, float(right))
        if self.pacer is not None:
            self.pacer.observe(float(strong), policy)
        return strong, right


def run_online(job: tuple[str, int, float, dict[str, Any]]) -> dict[str, Any]:
    """One policy, one stream order, one budget: strong share, accuracy and the share's error per 1k-call window."""
    kind, order_seed, budget, shared = job
    frame, features, task_type = shared["frame"], shared["features"], shared["task_type"]
    order = np.random.default_rng(order_seed).permutation(len(frame))
    subjects = frame["subject"].to_numpy() if kind == "thompson_subjects" else None
    tasks = sorted(set(subjects)) if subjects is not None else [task_type]
    stream = Stream(kind, tasks, budget, seed=order_seed * 1000 + int(budget * 100), options=shared.get("options"))
    weak, strong_ok = frame["weak"].to_numpy(), frame["strong"].to_numpy()
    chosen = np.empty(len(order), dtype=np.int8)
    right = np.empty(len(order), dtype=np.int8)
    start = time.process_time()
    for n, q in enumerate(order):
        task = subjects[q] if subjects is not None else task_type
        chosen[n], right[n] = stream.step(task, features[q] if stream.contextual else None, (weak[q], strong_ok[q]))
    elapsed = time.process_time() - start
    return {
        "policy": kind,
        "order": order_seed,
        "budget": budget,
        "share": float(chosen.mean()),
        "accuracy": float(right.mean()),
        "us_per_decision": elapsed / len(order) * 1e6,
    }


# -- offline reference: logistic regression on the same features ------------------------------------
def matrix(features: list[Features], size: int) -> sp.csr_matrix:
    rows = np.concatenate([np.full(x.nnz, i) for i, x in enumerate(features)])
    return sp.csr_matrix(
        (np.concatenate([x.values for x in features]), (rows, np.concatenate([x.indices for x in features]))),
        shape=(len(features), size),
    )


def logistic(a: sp.csr_matrix, y: np.ndarray, l2: float = 3.0) -> np.ndarray:
    """L2-regularised logistic regression weights (L-BFGS)."""

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = a @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * l2 * w @ w)
        return value, a.T @ (p - y) + l2 * w

    return minimize(loss, np.zeros(a.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 300}).x


def decile_points(score: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> list[tuple[float, float]]:
    """RouteLLM's evaluation of a scoring router: strong above each decile of the scores."""
    points = []
    for q in np.quantile(score, np.linspace(0, 1, 11)[1:-1]):
        to_strong = score > q
        points.append((float(to_strong.mean()), float(np.where(to_strong, strong, weak).mean())))
    return points


def split(frame: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half the questions for training, half for testing; duplicate prompts stay on one side."""
    groups = pd.factorize(frame["prompt"])[0]
    chosen = np.random.default_rng(seed).permutation(groups.max() + 1)[: (groups.max() + 1) // 2]
    train = np.isin(groups, chosen)
    return np.flatnonzero(train), np.flatnonzero(~train)


def offline(frame: pd.DataFrame, x: sp.csr_matrix, seed: int) -> dict[str, Any]:
    train, test = split(frame, seed)
    weak, strong = frame["weak"].to_numpy(float), frame["strong"].to_numpy(float)
    gain = x[test] @ logistic(x[train], strong[train]) - x[test] @ logistic(x[train], weak[train])
    points = decile_points(gain, weak[test], strong[test])
    return {"seed": seed, "points": points, **metrics(points, weak[test].mean(), strong[test].mean())}


def learning_curve(
    frame: pd.DataFrame,
    features: list[Features],
    seed: int,
    budget: float = 0.5,
    options: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """APGR on held-out questions of linear_thompson's learned state (posterior-mean gain) vs calls seen."""
    train, test = split(frame, seed)
    train = np.random.default_rng(seed).permutation(train)
    weak, strong_ok = frame["weak"].to_numpy(), frame["strong"].to_numpy()
    stream = Stream("linear_thompson", ["mmlu"], budget, seed, options)
    policy = stream.policies["mmlu"]
    marks = sorted({m for m in (0, 100, 250, 500, 1000, 2000, 3000, 4500, len(train)) if m <= len(train)})
    out, seen = [], 0
    for mark in marks:
        for q in train[seen:mark]:
            stream.step("mmlu", features[q], (weak[q], strong_ok[q]))
        seen = mark
        gain = np.array([np.subtract(*policy.predict(features[q])[0][::-1]) for q in test])  # strong - weak
        points = decile_points(gain, weak[test], strong_ok[test])
        out.append({"calls": mark, **metrics(points, weak[test].mean(), strong_ok[test].mean())})
    return out


# -- end to end through the router over loopback HTTP -------------------------------------------------
def through_router(
    frame: pd.DataFrame, budget: float, seed: int, limit: int | None, task_type: str = "mmlu"
) -> dict[str, Any]:
    """Stream the questions through Router.chat over the loopback fleet; feedback from the data's correctness."""
    order = np.random.default_rng(seed).permutation(len(frame))[:limit]
    specs = [
        ModelSpec("weak", latency_s=0.0005, latency_sigma=0.0),
        ModelSpec("strong", latency_s=0.0005, latency_sigma=0.0),
    ]
    chosen, right = [], []
    with Fleet(specs, seed=seed) as fleet, tempfile.TemporaryDirectory() as folder:
        config = fleet.fleet_config(
            {task_type: list(MODELS)},
            seed=seed,
            objective={"w_latency": 0.0},
            store=f"sqlite:///{folder}/log.db",
            journal_dir=f"{folder}/journal",
        )
        config["models"]["strong"]["price_out_per_1k"] = 1000.0 / 32  # the fleet's 32 answer tokens cost 1
        config["routes"][task_type].update(policy="linear_thompson", budget_per_call=budget)
        start = time.perf_counter()
        with Router(config) as router:
            for q in tqdm(order, desc=f"router, budget {budget}", leave=False):
                result = router.chat(task_type, [{"role": "user", "content": frame["prompt"][q]}], max_tokens=32)
                correct = int(frame[result.model][q])
                router.feedback(result.call_id, float(correct))
                chosen.append(result.model == "strong")
                right.append(correct)
            prefs = router.preferences(task_type).iloc[0]
        elapsed = time.perf_counter() - start
    return {
        "budget": budget,
        "order": seed,
        "questions": len(order),
        "share": float(np.mean(chosen)),
        "accuracy": float(np.mean(right)),
        "ms_per_call": elapsed / len(order) * 1e3,
        "spend_per_call": prefs["spend_per_call"],
        "cost_weight": prefs["cost_weight"],
    }


# -- report ---------------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]], acc_weak: float, acc_strong: float) -> dict[str, Any]:
    """Per policy: metrics per order, their mean and a 95% interval over orders, and the budget tracking error."""
    frame = pd.DataFrame(rows)
    out: dict[str, Any] = {}
    for kind, runs in frame.groupby("policy"):
        per_order = []
        for _, one in runs.groupby("order"):
            per_order.append(metrics(list(zip(one["share"], one["accuracy"], strict=True)), acc_weak, acc_strong))
        table = pd.DataFrame(per_order)
        by_budget = runs.groupby("budget")[["share", "accuracy"]].mean().reset_index()
        by_budget["pgr"] = (by_budget["accuracy"] - acc_weak) / (acc_strong - acc_weak)
        out[kind] = {
            **{f"{m}_mean": float(table[m].mean()) for m in table},
            **{
                f"{m}_ci": float(1.96 * table[m].std(ddof=1) / np.sqrt(len(table))) if len(table) > 1 else None
                for m in table
            },
            "orders": len(table),
            "budget_error": float((runs["share"] - runs["budget"]).abs().mean()),
            "us_per_decision": float(runs["us_per_decision"].mean()),
            "by_budget": by_budget.to_dict("records"),
        }
    return out


def plot(
    summary: dict[str, Any],
    offline_runs: list[dict[str, Any]],
    curve_rows: list[dict[str, float]],
    acc: tuple[float, float],
    out: Path,
    name: str = "mmlu",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind, s in summary.items():
        b = pd.DataFrame(s["by_budget"])
        share, accuracy = curve(list(zip(b["share"], b["accuracy"], strict=True)), *acc)
        ax.plot(
            share,
            (accuracy - acc[0]) / (acc[1] - acc[0]),
            marker="o",
            ms=3,
            label=f"{kind} (APGR {s['apgr_mean']:.3f})",
        )
    pts = offline_runs[0]["points"]
    share, accuracy = curve(pts, *acc)
    ax.plot(
        share,
        (accuracy - acc[0]) / (acc[1] - acc[0]),
        "k--",
        label=f"offline logreg (APGR {np.mean([r['apgr'] for r in offline_runs]):.3f})",
    )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="random (0.500)")
    ax.set_xlabel("strong-call share")
    ax.set_ylabel("PGR")
    ax.set_title(f"{name}: PGR vs strong-call share (online, one-sided feedback)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"routellm_{name}_pgr.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    lc = pd.DataFrame(curve_rows).groupby("calls")["apgr"].agg(["mean", "std"]).reset_index()
    ax.errorbar(lc["calls"], lc["mean"], yerr=lc["std"], marker="o")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("calls seen (training half, budget 0.5)")
    ax.set_ylabel("held-out APGR of the learned state")
    ax.set_title(f"linear_thompson learning curve on {name}")
    fig.tight_layout()
    fig.savefig(out / f"routellm_{name}_learning.png", dpi=120)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# RouteLLM {result['name']}: per-prompt routing with a cost budget",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['questions']} uncontaminated questions; weak accuracy {result['acc_weak']:.4f}, strong {result['acc_strong']:.4f}. "
        f"Online runs: {result['orders']} stream orders (per policy, see the table) x budgets {list(result['budgets'])} (strong-call share targets), "
        "policy objects driven as the router drives them; intervals are 95% over orders.",
        "",
        "| router | APGR | CPT(50%) | CPT(80%) | mean abs(share - budget) | CPU µs per call (rank, update, feedback, pacer) | orders |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, s in result["online"].items():
        ci = lambda m, s=s: f" ± {s[m + '_ci']:.3f}" if s[m + "_ci"] is not None else ""  # noqa: E731
        lines.append(
            f"| {kind} (online) | {s['apgr_mean']:.3f}{ci('apgr')} | {s['cpt50_mean']:.1f}%{ci('cpt50')} | {s['cpt80_mean']:.1f}%{ci('cpt80')} "
            f"| {s['budget_error']:.4f} | {s['us_per_decision']:.0f} | {s['orders']} |"
        )
    off = pd.DataFrame(result["offline"])
    lines.append(
        f"| offline logistic regression (held-out half, {len(off)} splits) | {off['apgr'].mean():.3f} ± {1.96 * off['apgr'].std(ddof=1) / np.sqrt(len(off)):.3f} "
        f"| {off['cpt50'].mean():.1f}% | {off['cpt80'].mean():.1f}% | n/a | n/a | |"
    )
    for name, (apgr, c50, c80) in result["published"].items():
        lines.append(f"| RouteLLM published: {name} | {apgr:.3f} | {c50:.2f}% | {c80:.2f}% | | | |")
    lines += [
        "",
        "RouteLLM's routers were trained on other data (Chatbot Arena, D_gold); the online routers here learn in-distribution "
        "from the stream's own one-sided feedback, so the comparison is not like-for-like.",
        "",
        "## Per budget (mean over orders)",
        "",
    ]
    for kind, s in result["online"].items():
        lines.append(
            f"**{kind}**: "
            + ", ".join(
                f"budget {r['budget']:.1f} → share {r['share']:.3f}, acc {r['accuracy']:.4f}, PGR {r['pgr']:.3f}"
                for r in s["by_budget"]
            )
        )
        lines.append("")
    if result.get("learning_curve"):
        lc = pd.DataFrame(result["learning_curve"]).groupby("calls")["apgr"].mean()
        lines += [
            "## Learning curve (linear_thompson, held-out APGR of the learned state)",
            "",
            " | ".join(f"{c} calls: {v:.3f}" for c, v in lc.items()),
            "",
        ]
    for r in result.get("router", []):
        lines += [
            "## End to end through Router over loopback HTTP",
            "",
            f"linear_thompson, budget {r['budget']}, {r['questions']} questions: strong share {r['share']:.3f}, accuracy {r['accuracy']:.4f}, "
            f"spend per call {r['spend_per_call']:.3f}, {r['ms_per_call']:.2f} ms per call (HTTP, log, feedback included)",
            "",
        ]
    lines += [
        f"Feature cost: {result['feature_us']:.0f} µs per prompt on average (mean prompt {result['mean_chars']:.0f} characters), "
        f"{result['feature_us_2k']:.0f} µs for a 2,000-character prompt (CPU time, min of repeats; machine shared, 2 cores, "
        f"load average {result.get('load', float('nan')):.1f}).",
        "",
    ]
    return "\n".join(lines)


def timed_features(featurizer: Featurizer, texts: list[str]) -> tuple[list[Features], float, float]:
    """Every text's features, the mean CPU time per text, and the best CPU time for a 2,000-character text."""
    start = time.process_time()
    features = [featurizer.from_text(t) for t in tqdm(texts, desc="features", leave=False)]
    mean_us = (time.process_time() - start) / len(texts) * 1e6
    long = " ".join(texts[:20])[:2000]
    best = min(_time(lambda: featurizer.from_text(long), 200) for _ in range(5))
    return features, mean_us, best


def _time(fn: Any, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


_SHARED: dict[str, Any] = {}


def _init(frame: pd.DataFrame, features: list[Features], options: dict[str, Any], task_type: str) -> None:
    _SHARED.update(frame=frame, features=features, options=options, task_type=task_type)


def _run(job: tuple[str, int, float]) -> dict[str, Any]:
    return run_online((*job, _SHARED))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=10, help="stream orders for linear_thompson (the acceptance target)")
    ap.add_argument("--data", type=Path, default=DATA, help="a benchmark in RouteLLM's response format (default: MMLU)")
    ap.add_argument("--name", default=None, help="the benchmark's name in the outputs (default: the file's stem)")
    ap.add_argument("--weak-column", default="weak", help="the weak model's correctness column")
    ap.add_argument("--strong-column", default="strong", help="the strong model's correctness column")
    ap.add_argument(
        "--orders-other", type=int, default=None, help="stream orders for the other online policies (default: --orders)"
    )
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--policies", nargs="+", default=list(ONLINE), choices=ONLINE)
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (smoke runs)")
    ap.add_argument(
        "--subjects-half",
        type=int,
        default=None,
        metavar="SEED",
        help="only the questions of a random half of the subjects (seeded): held-out splits for screening settings",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="OPTION=VALUE",
        help="policy options for the online runs (JSON values), each given to the policies that take it, e.g. "
        "explore=0.1; budget_rate=R sets the budget pacer's rate",
    )
    ap.add_argument("--router", action="store_true", help="also one run end to end through Router over loopback HTTP")
    ap.add_argument("--router-limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--summarise",
        type=Path,
        default=None,
        help="only summarise the runs of a runs .jsonl file (e.g. a sweep cut short)",
    )
    args = ap.parse_args(argv)
    frame = load(args.data, args.weak_column, args.strong_column)
    name = args.name or args.data.stem
    if args.summarise is not None:
        rows = [json.loads(line) for line in args.summarise.read_text().splitlines() if line.strip()]
        for kind, s in summarise(rows, float(frame["weak"].mean()), float(frame["strong"].mean())).items():
            print(
                f"{kind}: APGR {s['apgr_mean']:.3f} ± {s['apgr_ci'] or 0:.3f}, CPT(50%) {s['cpt50_mean']:.1f}%, "
                f"CPT(80%) {s['cpt80_mean']:.1f}%, mean abs(share - budget) {s['budget_error']:.4f}, {s['orders']} orders"
            )
        return
    if "subject" not in frame.columns:
        if args.subjects_half is not None:
            raise SystemExit(f"{args.data}: --subjects-half needs a 'subject' column")
        if "thompson_subjects" in args.policies:
            print("no 'subject' column: thompson_subjects skipped (every question is one task type)")
            args.policies = [p for p in args.policies if p != "thompson_subjects"]
    if args.subjects_half is not None:
        subjects = sorted(set(frame["subject"]))
        half = np.random.default_rng(100 + args.subjects_half).permutation(subjects)[: len(subjects) // 2]
        frame = frame[frame["subject"].isin(half)].reset_index(drop=True)
    if args.limit:
        frame = frame.iloc[: args.limit].reset_index(drop=True)
    options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    featurizer = make_policy(
        "linear_thompson",
        MODELS,
        **{  # the contextual policies' feature space
            k: v for k, v in options.items() if k in ("feature_bits", "max_chars")
        },
    ).featurizer
    features, feature_us, feature_us_2k = timed_features(featurizer, frame["prompt"].tolist())
    acc_weak, acc_strong = float(frame["weak"].mean()), float(frame["strong"].mean())
    orders = {
        k: args.orders
        if k in ("linear_thompson", "probit_thompson") or args.orders_other is None
        else args.orders_other
        for k in args.policies
    }
    jobs = [(k, o, b) for o in range(args.orders) for k in args.policies for b in args.budgets if o < orders[k]]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (
        multiprocessing.get_context("fork").Pool(
            args.workers, initializer=_init, initargs=(frame, features, options, name)
        ) as pool,
        open(args.out / f"routellm_{name}_runs.jsonl", "w") as progress,
    ):
        for row in tqdm(pool.imap_unordered(_run, jobs), total=len(jobs), desc="online runs"):
            rows.append(row)
            progress.write(json.dumps(row) + "\n")  # kept as runs finish, in case a long sweep is cut short
            progress.flush()
    x = matrix(features, featurizer.size)
    offline_runs = [offline(frame, x, seed) for seed in tqdm(range(args.orders), desc="offline logreg", leave=False)]
    curve_rows = [
        row | {"seed": seed}
        for seed in tqdm(range(min(args.orders, 3)), desc="learning curve", leave=False)
        for row in learning_curve(frame, features, seed, options=options)
    ]
    result = {
        "command": " ".join(
            [".venv/bin/python", "-m", "experiments.routellm_mmlu", *(argv if argv is not None else sys.argv[1:])]
        ),
        "questions": len(frame),
        "acc_weak": acc_weak,
        "acc_strong": acc_strong,
        "orders": orders,
        "budgets": args.budgets,
        "online": summarise(rows, acc_weak, acc_strong),
        "runs": rows,
        "offline": [{k: v for k, v in r.items() if k != "points"} for r in offline_runs],
        "learning_curve": curve_rows,
        "name": name,
        "published": PUBLISHED if args.data == DATA else {},
        "feature_us": feature_us,
        "feature_us_2k": feature_us_2k,
        "mean_chars": float(frame["prompt"].str.len().mean()),
        "load": os.getloadavg()[0],
    }
    if args.router:
        result["router"] = [through_router(frame, 0.5, 0, args.router_limit, name)]
    (args.out / f"routellm_{name}.json").write_text(json.dumps(result, indent=1, default=float))
    (args.out / f"routellm_{name}.md").write_text(markdown(result))
    plot(result["online"], offline_runs, curve_rows, (acc_weak, acc_strong), args.out, name)
    print(markdown(result))


if __name__ == "__main__":
    main()
