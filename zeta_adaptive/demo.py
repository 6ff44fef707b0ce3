"""The demo: a simulated fleet on loopback, about 2,000 routed calls with feedback, one model degrading
halfway, and a report of what the router learned. Needs no network beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ._config import sqlite_file
from ._exceptions import ZetaError
from ._router import Router
from .analysis import load_log, model_summary
from .simulate import DEGRADATION, DEGRADED_MODEL, Fleet, example_fleet, example_routes

__all__ = ["DemoReport", "run_demo", "TASK_MIX", "DEGRADED_MODEL"]

#: the columns of ``Router.preferences()`` the demo prints per task type
BELIEF_VIEW = ("rank", "p_best", "utility", "utility_low", "utility_high", "n", "n_effective", "breaker")

#: share of each task type in the demo's traffic
TASK_MIX = {"simple": 0.35, "code": 0.30, "reasoning": 0.20, "embedding": 0.15}

PROMPTS = {
    "simple": "What is the capital of France?",
    "code": "Write a Python function that merges two sorted lists.\n```python\ndef merge(a, b):\n```",
    "reasoning": "A train leaves at 9:00 at 80 km/h, another at 10:00 at 120 km/h. Explain step by step when the second catches up.",
}


@dataclass
class DemoReport:
    """What the demo did and what the router learned."""

    calls: int
    failed: int
    store: str
    summary: pd.DataFrame
    preferences: pd.DataFrame  # Router.preferences() at the end: rows by (task_type, model), best rank first
    primary_share: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # phase -> task -> primary counts

    def render(self) -> str:
        """A plain-text report for the terminal."""
        lines = [f"Routed {self.calls} calls ({self.failed} failed after every fallback)."]
        lines.append(f"At call {self.calls // 2}, {DEGRADED_MODEL} degraded ({DEGRADATION}).\n")
        for task in self.preferences.index.unique("task_type"):
            belief = self.preferences.loc[task]
            lines.append(f"== {task}: learned order {' > '.join(belief.index)}")
            for phase in ("before", "after"):
                counts = self.primary_share.get(phase, {}).get(task, Counter())
                total = sum(counts.values()) or 1
                shares = ", ".join(f"{m} {c / total:.0%}" for m, c in counts.most_common())
                lines.append(f"   primary {phase} degradation: {shares}")
            table = self.summary[self.summary["task_type"] == task].drop(columns="task_type")
            lines.append(table.to_string(index=False, float_format="{:.3f}".format))
            lines.append("   what the policy believes now:")
            lines.append(belief[list(BELIEF_VIEW)].reset_index().to_string(index=False, float_format="{:.3f}".format))
            lines.append("")
        lines.append(f"The log is in {self.store}")
        return "\n".join(lines)


async def _drive(
    router: Router, fleet: Fleet, calls: int, concurrency: int, seed: int, progress: bool
) -> tuple[int, dict[str, dict[str, Counter[str]]]]:
    rng = np.random.default_rng(seed)
    tasks = rng.choice(list(TASK_MIX), size=calls, p=list(TASK_MIX.values()))
    primary: dict[str, dict[str, Counter[str]]] = {"before": {}, "after": {}}
    failed = 0
    next_index = 0
    bar = tqdm(total=calls, desc="routing", unit="call", disable=not progress)

    async def worker() -> None:
        nonlocal failed, next_index
        while next_index < calls:
            i = next_index
            next_index += 1
            if i == calls // 2:
                fleet.update(DEGRADED_MODEL, **DEGRADATION)
            task = str(tasks[i])
            try:
                if task == "embedding":
                    result: Any = await router.aembed([f"document {i}", f"query {i}"])
                else:
                    result = await router.achat(task, [{"role": "user", "content": PROMPTS[task]}], max_tokens=64)
                    if rng.random() < 0.8:  # some answers are never rated
                        router.feedback(result.call_id, fleet.sample_accuracy(result.model, task))
                phase = "before" if i < calls // 2 else "after"
                primary[phase].setdefault(task, Counter())[result.ranking[0]] += 1
            except ZetaError:
                failed += 1
            bar.update()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return failed, primary


def _start_fresh(store: str) -> None:
    """Move an earlier SQLite demo log aside (to ``<file>.prev``), so the log holds one run."""
    path = sqlite_file(store)
    if path is not None and path.exists():
        path.replace(path.with_name(path.name + ".prev"))
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def run_demo(
    calls: int = 2000,
    store: str = "sqlite:///zeta.db",
    seed: int = 0,
    concurrency: int = 16,
    progress: bool = True,
    fresh: bool = True,
) -> DemoReport:
    """Run the demo end to end and return its report (the log stays in ``store``).

    With ``fresh`` (the default) an existing SQLite log is moved to ``<file>.prev`` first, so the
    log holds exactly one run, which is what the analysis notebook and report expect.
    """
    if fresh:
        _start_fresh(store)
    with example_fleet(seed) as fleet:
        config = fleet.fleet_config(
            {t: list(m) for t, m in example_routes().items()}, store=store, deadline_s=5.0, seed=seed
        )
        for task, route in config["routes"].items():
            route.update({"policy": "static"} if task == "embedding" else {"policy": "thompson", "discount": 0.99})
        router = Router(config)

        async def main() -> tuple[int, dict[str, dict[str, Counter[str]]]]:
            async with router:
                return await _drive(router, fleet, calls, concurrency, seed, progress)

        failed, primary = asyncio.run(main())
    log = load_log(store)
    return DemoReport(calls, failed, router.store.safe_url, model_summary(log), router.preferences(), primary)
