"""Learning targets: a policy of this package run along the log, learning only where it matches (Li et al. 2011).

The replay records, at every decision, the policy's probability of each model being primary
(one-hot for a deterministic ranking, else :meth:`~zeta_adaptive._policies.Policy.primary_probabilities`),
so IPS, SNIPS, DM and DR read the same trajectory as the replay estimator. A policy that exposes
no probabilities for a random decision (epsilon-greedy) gets the replay estimate only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._exceptions import ReplayError
from .._policies import Objective, Policy
from .._registry import make_policy
from .data import Logged
from .probabilities import ActionProbs, Resolved


@dataclass(frozen=True, eq=False)
class Learning:
    """A policy of this package that learns during the replay, one instance per task type.

    ``policy`` is a name for :func:`make_policy` (with ``options`` and ``objective``) or a factory
    ``(models, seed) -> Policy``; task type ``i`` (in sorted order) gets seed ``seed + i``, as in the
    router. ``seed`` also draws the replay's rejection sampling, so a trajectory is reproducible.
    """

    policy: str | Callable[[Sequence[str], int], Policy]
    options: Mapping[str, Any] = field(default_factory=dict)
    objective: Objective | None = None
    seed: int = 0
    label: str = ""

    @property
    def name(self) -> str:
        """The label, else the policy's name."""
        return self.label or (
            self.policy if isinstance(self.policy, str) else getattr(self.policy, "__name__", "policy")
        )

    def build(self, models: Sequence[str], index: int) -> Policy:
        """A fresh policy for one task type's models."""
        if callable(self.policy):
            return self.policy(models, self.seed + index)
        try:
            return make_policy(self.policy, models, self.objective, seed=self.seed + index, **self.options)
        except (TypeError, ValueError) as exc:
            raise ReplayError(f"policy {self.name}: {exc}") from None

    def resolve(self, data: Logged, progress: bool = False) -> Replayed:
        """Run the policy along the log (Li et al. 2011, with rejection for non-uniform logs).

        Per task type, a round is a candidate with probability ``min propensity / propensity`` (1
        for uniformly random logs), drawn once, vectorised. The policy ranks; the next candidate
        round whose logged primary is the policy's primary is matched, and only then does the policy
        learn (from the primary attempt and its feedback). Every candidate round holds each model
        with the same probability (``min propensity``), so skipping to it is equivalent in
        distribution to Li et al.'s round-by-round test, and only matched rounds cost Python work.
        """
        if np.any((data.accuracy < 0) | (data.accuracy > 1)):
            raise ReplayError(
                f"{self.name} learns rewards as accuracies in [0, 1]; this log's rewards range outside it"
            )
        u = np.random.default_rng(np.random.SeedSequence([self.seed, 1])).random(data.n)
        accepted: list[np.ndarray] = []
        tables: list[np.ndarray] = []
        row_step = np.zeros(data.n, dtype=np.int64)
        exposes = True
        with tqdm(
            total=data.n, desc=f"replay {self.name}", unit="round", disable=not progress, leave=False, delay=1.0
        ) as bar:
            for g in range(len(data.groups)):
                rows = np.flatnonzero(data.group == g)
                steps, table = self._run_group(data, g, rows, u[rows], exposes, bar if progress else None)
                accepted.append(rows[steps])
                if table is None:
                    exposes = False
                    continue
                row_step[rows] = sum(len(done) for done in tables) + steps.searchsorted(np.arange(len(rows)))
                tables.append(table)
        probs = ActionProbs(np.concatenate(tables), row_step) if exposes else None
        return Replayed(self.name, probs, accepted=np.sort(np.concatenate(accepted)), learning=self)

    def _run_group(
        self, data: Logged, g: int, rows: np.ndarray, u: np.ndarray, record: bool, bar: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One task type's replay: the matched positions in ``rows``, and the policy's action
        probabilities at each decision (None if not ``record``ed or not exposed)."""
        models = data.models[g]
        act = data.action[rows]
        idx = data.model_index(g)
        unseen = [m for m, a in zip(models, idx) if not np.any(act == a)]
        if unseen:
            raise ReplayError(
                f"{self.name}: task type {data.groups[g]!r} has model(s) {unseen} the log never chose; "
                "a policy that tries them cannot be replayed (log traffic to them, or leave them out of the models)"
            )
        mu = data.propensity[rows]
        candidate = u * mu < mu.min()
        positions = {m: np.flatnonzero(candidate & (act == a)).tolist() for m, a in zip(models, idx)}
        succ = (data.success[rows] > 0).tolist()
        lat = data.latency_s[rows].tolist()
        cost = data.cost[rows].tolist()
        acc = data.accuracy[rows].tolist()
        policy = self.build(models, g)
        steps: list[int] = []
        dists: list[int | np.ndarray] = []  # per decision: the primary's index if deterministic, else all probabilities
        pos = 0
        while True:
            ranking = policy.rank()
            model = ranking.primary
            if record and ranking.propensity >= 1.0:
                dists.append(policy.index[model])
            elif record:
                probabilities = policy.primary_probabilities()
                record = probabilities is not None
                if probabilities is not None:
                    dists.append(probabilities)
            cand = positions[model]
            j = bisect_left(cand, pos)
            if j == len(cand):
                break
            t = cand[j]
            steps.append(t)
            policy.update(model, succ[t], lat[t], cost[t])
            if acc[t] == acc[t]:  # not NaN: the primary was rated
                policy.feedback(model, acc[t])
            if bar is not None:
                bar.update(t + 1 - pos)
            pos = t + 1
        if bar is not None:
            bar.update(len(rows) - pos)
        if not steps:
            raise ReplayError(f"{self.name}: no round of task type {data.groups[g]!r} could be replayed")
        if not record:
            return np.asarray(steps, dtype=np.int64), None
        table = np.zeros((len(dists), len(data.actions)))
        one_hot = np.array([isinstance(d, int) for d in dists], dtype=bool)
        if one_hot.any():
            table[np.flatnonzero(one_hot), idx[[d for d in dists if isinstance(d, int)]]] = 1.0
        if not one_hot.all():
            table[np.ix_(np.flatnonzero(~one_hot), idx)] = np.stack([d for d in dists if not isinstance(d, int)])
        return np.asarray(steps, dtype=np.int64), table


@dataclass(frozen=True, eq=False)
class Replayed(Resolved):
    """A learning target resolved: the rows its replay matched, in time order, and the target, for the interval."""

    accepted: np.ndarray = field(kw_only=True)
    learning: Learning = field(kw_only=True)
