"""Several targets under several estimators on one log, side by side, with what was skipped and dropped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from .._exceptions import ReplayError
from .._policies import Objective
from .data import Logged, as_logged
from .estimators import ESTIMATORS, Estimator, learning_bootstrap
from .learning import Replayed
from .targets import Static, parse_target, resolve


@dataclass(frozen=True, eq=False)
class Comparison:
    """Several policies under several estimators on one log, with what was skipped and dropped."""

    table: pd.DataFrame  # columns: estimator, policy, value, ci_low, ci_high, ess, n
    skipped: tuple[str, ...]
    dropped: Mapping[str, int]
    n: int
    alpha: float
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        """A plain-text comparison table, policy by policy."""
        lines = [f"{self.n:,} logged rounds"]
        for reason, count in self.dropped.items():
            lines.append(f"dropped {count:,} rows {reason}")
        lines += list(self.notes)
        if self.table[["ci_low", "ci_high"]].isna().any(axis=None):
            lines.append(
                "an unavailable interval: over a tenth of the bootstrap replays could not be replayed, or the "
                "estimate fell outside its interval (too few matched rounds to trust either)"
            )
        level = f"{100 * (1 - self.alpha):g}% interval"
        header = f"{'policy':<24} {'estimator':<9} {'value':>9}  {level:<22} {'ess':>10} {'n':>10}"
        lines += ["", header, "-" * len(header)]
        for r in self.table.to_dict("records"):
            low, high = r["ci_low"], r["ci_high"]
            ci = "unavailable" if math.isnan(low) or math.isnan(high) else f"[{low:.4g}, {high:.4g}]"
            lines.append(
                f"{r['policy']:<24} {r['estimator']:<9} {r['value']:>9.4g}  {ci:<22} {r['ess']:>10,.0f} {r['n']:>10,}"
            )
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def compare(
    data: Logged | pd.DataFrame,
    targets: Sequence[Any],
    estimators: Sequence[str | Estimator] = ("replay", "ips", "snips", "dm", "dr"),
    *,
    objective: Objective | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    learning_boot: int = 200,
    alpha: float = 0.05,
    clip: float | None = None,
    progress: bool = False,
    skip_failing: bool = False,
) -> Comparison:
    """Evaluate every target (a spec string or a target object) with every estimator, side by side.

    Estimators given by name are built with ``n_boot``, ``alpha``, ``seed`` and ``clip``; instances
    keep their own settings. A learning target is replayed once and all its estimators read that
    one trajectory; its ``learning_boot`` bootstrap replays are shared by the estimators too. An
    estimator that does not apply (IPS-style ones for a policy that exposes no action
    probabilities) is skipped and named in :attr:`Comparison.skipped`, never given a number.
    ``progress`` shows tqdm bars (stderr) for replays and bootstraps that take over a second.
    ``skip_failing``: a target or estimator that raises :class:`ReplayError` on this log (say, a
    replay that matches no round of a task type) is named in ``skipped`` with the reason, and the
    others are still evaluated.

    A learning target's value is one replay and its interval comes from fresh replays of resampled
    logs; where the value falls outside that interval, the interval is withheld (NaN) and a note says so.
    """
    logged = as_logged(data)
    built: list[Estimator] = []
    for e in estimators:
        if isinstance(e, Estimator):
            built.append(e)
            continue
        if e not in ESTIMATORS:
            raise ReplayError(f"unknown estimator {e!r}; choose from {sorted(ESTIMATORS)}")
        cls = ESTIMATORS[e]
        extra = {"clip": clip} if "clip" in cls.__dataclass_fields__ else {}
        built.append(cls(n_boot=n_boot, alpha=alpha, seed=seed, learning_boot=learning_boot, **extra))
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    notes: list[str] = []
    for target in targets:
        try:
            target = parse_target(target, objective=objective, seed=seed) if isinstance(target, str) else target
            resolved = resolve(logged, target, progress)
        except ReplayError as exc:
            if not skip_failing:
                raise
            name = str(getattr(target, "name", target))
            skipped.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            continue
        if isinstance(target, Static):
            tables = ", ".join(f"{g} -> {m[0]}" for g, m in zip(logged.groups, logged.models))
            notes.append(f"static: the first of each task type's models ({tables})")
        usable = [e for e in built if e.applies_to(resolved)]
        why = "it exposes no action probabilities while it learns"
        skipped += [f"{e.name} for {resolved.name}: {why}" for e in built if e not in usable]
        learned = None
        if isinstance(resolved, Replayed) and usable:
            learned = learning_bootstrap(logged, resolved.learning, usable, learning_boot, seed, progress)
        for i, est in enumerate(usable):
            try:
                estimate = est.evaluate_resolved(logged, resolved, progress, None if learned is None else learned[i])
            except ReplayError as exc:
                if not skip_failing:
                    raise
                skipped.append(f"{est.name} for {resolved.name}: {exc}")
                continue
            outside = not math.isnan(estimate.ci_low) and not estimate.ci_low <= estimate.value <= estimate.ci_high
            if isinstance(resolved, Replayed) and outside:
                notes.append(
                    f"{est.name} for {resolved.name}: the estimate {estimate.value:.4g} lies outside its bootstrap interval; interval withheld"
                )
                estimate = replace(estimate, ci_low=math.nan, ci_high=math.nan)
            rows.append(vars(estimate))
    table = pd.DataFrame(rows, columns=["estimator", "policy", "value", "ci_low", "ci_high", "ess", "n"])
    return Comparison(table, tuple(skipped), dict(logged.dropped), logged.n, alpha, tuple(notes))
