"""Cost budget: a Lagrange multiplier on cost, updated from the running spend, so a route's mean cost per call tracks its budget.

With route key ``budget_per_call = B``, after every call of cost c the multiplier moves by
dual (sub)gradient ascent, ``lam <- lam + rate * (c - B) / scale``, where ``scale`` is
the dearest model's mean cost per call (so ``rate`` is free of the price unit), and the policy's
objective becomes the route's objective with ``w_cost + lam / scale``. Overspending raises the
price of cost until cheaper models win often enough; underspending lowers it back to the
objective's own weight, and below it when the route spends less than it may: the budget is a
target, not only a cap, so dearer models are used more when the route underspends. Because ``lam`` integrates the spend's error, the cumulative overspend is
bounded by ``lam * scale / rate``: the mean cost per call converges to B whenever B is reachable.
``lam`` is kept within the widest score gap the objective's other terms can make (1 for accuracy
plus the latency term of the slowest model): beyond it the price of cost alone decides every call,
and integrating further only winds up a debt (anti-windup). Without that bound, a route that
underspends while its dear model is still untried (an untried model's mean cost is 0, so a negative
price cannot draw calls to it) wound ``lam`` down by 0.02 a call, and once the model was tried it took
every call for about as many calls as the wind-up had lasted (1,500 on RouteLLM's MMLU at budget 0.1).
It works with every policy, since every policy scores models through its ``objective``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._policies import LAT_N, Objective, Policy, served_means

__all__ = ["BudgetPacer"]


class BudgetPacer:
    """Holds a policy's mean cost per call near ``budget`` by adapting its objective's cost weight."""

    def __init__(self, budget: float, objective: Objective, rate: float = 0.02) -> None:
        if not budget > 0:
            raise ValueError(f"budget_per_call must be > 0, got {budget!r}")
        if not rate > 0:
            raise ValueError(f"budget_rate must be > 0, got {rate!r}")
        self.budget = float(budget)
        self.base = objective
        self.rate = float(rate)
        self.multiplier = 0.0  # lam, in units of the objective per the dearest model's cost
        self.scale = self.budget
        self.calls = 0
        self.spent = 0.0

    def observe(self, cost: float, policy: Policy) -> None:
        """Account one finished call's cost and set the policy's cost weight for the next calls."""
        self.calls += 1
        self.spent += cost
        bound = 1.0
        if policy.stats[LAT_N].any():  # once a model has a successful attempt, it has a mean cost
            latency, costs = served_means(policy.stats)
            self.scale = max(float(costs.max()), self.budget)
            bound += self.base.w_latency * float(latency.max())
        lam = self.multiplier + self.rate * (cost - self.budget) / self.scale
        self.multiplier = min(max(lam, -bound), bound)
        policy.objective = replace(self.base, w_cost=self.cost_weight)
        policy._changed()

    @property
    def cost_weight(self) -> float:
        """The objective's cost weight now: the route's own plus the multiplier's price of cost."""
        return self.base.w_cost + self.multiplier / self.scale

    def snapshot(self) -> dict[str, Any]:
        """The budget's state, for ``preferences()`` and reports."""
        return {
            "budget_per_call": self.budget,
            "spend_per_call": self.spent / self.calls if self.calls else 0.0,
            "cost_weight": self.cost_weight,
            "budget_calls": self.calls,
        }
